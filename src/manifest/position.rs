//! Where every field of every document sits in its file.
//!
//! `serde_yaml` gives typed values but no positions once a value exists, so a
//! second, event-level pass (saphyr-parser) records the line and column of each
//! mapping key and each value, keyed by its [`FieldPath`]. Diagnostics then point
//! at the exact field even for cross-document errors found long after parsing.
//!
//! Invariants: the index never expands aliases (an alias bomb costs one entry),
//! and it stops recording below [`MAX_DEPTH`] so a 10,000-deep document cannot
//! make it quadratic. Past [`MAX_NESTING`] it stops reading the stream and
//! marks the document too deep, so the loader refuses it without handing it to
//! `serde_yaml`, whose scanner reads a whole document before its own recursion
//! limit applies and slows with every open flow level (a 20 KB line of `[`
//! took seconds).
//! Lookups fall back to the nearest recorded ancestor.
//!
//! The index is only needed when there is something to report, so a file
//! is indexed on the first lookup ([`FilePositions`]), not while it loads:
//! ten thousand clean documents never pay for it. Loading still runs the
//! pass first wherever a document could nest past [`MAX_NESTING`]
//! ([`may_nest_too_deep`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use saphyr_parser::{Event, Parser, Span};

/// Deeper fields than this are not indexed (the manifest schema is ~6 deep).
pub const MAX_DEPTH: usize = 24;

/// Nesting past which the stream is not read further: `serde_yaml`'s own
/// recursion limit, so such a document is always an error of its own.
pub const MAX_NESTING: usize = 128;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path into a document, e.g. `spec.export.iscsi.initiators[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// `metadata.annotations["KEY"]`.
    pub fn annotation(key: &str) -> FieldPath {
        FieldPath(vec![
            Seg::Key("metadata".into()),
            Seg::Key("annotations".into()),
            Seg::Key(key.into()),
        ])
    }
    /// The document root.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }
    /// Parses a dotted path of plain keys and `[i]` indices (for code, not input).
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_owned()));
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    segs.push(Seg::Index(i));
                }
            }
        }
        FieldPath(segs)
    }
    /// This path extended by a key.
    #[must_use]
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    /// This path extended by an index.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k)
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Positions of one field: its key (for mapping entries) and its value.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: Option<Pos>,
    value: Pos,
}

/// The positions of one document.
#[derive(Debug, Clone, Default)]
pub struct DocPositions {
    start: Pos,
    entries: HashMap<FieldPath, Entry>,
    /// Keys that appear twice in one mapping: path of the second occurrence.
    duplicates: Vec<(FieldPath, Pos)>,
    /// Where the nesting passed [`MAX_NESTING`]; the stream was not read
    /// further.
    too_deep: Option<Pos>,
}

impl DocPositions {
    /// Where the document starts.
    pub fn start(&self) -> Pos {
        self.start
    }
    /// Where the document nests deeper than [`MAX_NESTING`], if it does.
    pub fn too_deep(&self) -> Option<Pos> {
        self.too_deep
    }
    /// The position of a field's value, or of its nearest recorded ancestor.
    pub fn value(&self, path: &FieldPath) -> Pos {
        self.lookup(path, false)
    }
    /// The position of a field's key (its value's for sequence items), or of
    /// its nearest recorded ancestor.
    pub fn key(&self, path: &FieldPath) -> Pos {
        self.lookup(path, true)
    }
    /// True when the path was recorded (the field is present in the source).
    pub fn has(&self, path: &FieldPath) -> bool {
        self.entries.contains_key(path)
    }
    /// The first duplicated key in this document, if any.
    pub fn first_duplicate(&self) -> Option<&(FieldPath, Pos)> {
        self.duplicates.first()
    }
    fn lookup(&self, path: &FieldPath, want_key: bool) -> Pos {
        let mut segs = path.0.as_slice();
        loop {
            if let Some(e) = self.entries.get(&FieldPath(segs.to_vec())) {
                return if want_key {
                    e.key.unwrap_or(e.value)
                } else {
                    e.value
                };
            }
            match segs.split_last() {
                Some((_, rest)) => segs = rest,
                None => return self.start,
            }
        }
    }
}

/// The positions of the documents of one file, indexed on first use.
pub struct FilePositions {
    src: Arc<str>,
    docs: OnceLock<Vec<DocPositions>>,
}

impl fmt::Debug for FilePositions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilePositions")
            .field("bytes", &self.src.len())
            .field("indexed", &self.docs.get().is_some())
            .finish()
    }
}

impl FilePositions {
    /// The positions of `src`'s documents, indexed when first asked for.
    pub fn lazy(src: Arc<str>) -> Self {
        Self {
            src,
            docs: OnceLock::new(),
        }
    }
    /// The positions of `src`'s documents, indexed already (`docs` is
    /// [`index_documents`] of `src`).
    pub fn indexed(src: Arc<str>, docs: Vec<DocPositions>) -> Self {
        Self {
            src,
            docs: OnceLock::from(docs),
        }
    }
    /// The positions of the `i`-th document of the stream (counting empty
    /// ones), if the index reached it.
    pub fn doc(&self, i: usize) -> Option<&DocPositions> {
        self.docs.get_or_init(|| index_documents(&self.src)).get(i)
    }
}

/// Whether a document of `src` could nest deeper than [`MAX_NESTING`]:
/// each flow collection opens with its own `[` or `{`, and each block
/// collection inside another starts at a greater column of a line, so no
/// document nests deeper than the file's flow indicators plus its longest
/// line. `false` is a proof; `true` means "index now and look".
pub fn may_nest_too_deep(src: &str) -> bool {
    let flow = src.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    let longest = src.split('\n').map(str::len).max().unwrap_or(0);
    flow + longest + 1 >= MAX_NESTING
}

enum Frame {
    Map {
        path: FieldPath,
        key: Option<(String, Pos)>,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
    /// A container below `MAX_DEPTH` or used as a mapping key: not recorded.
    Skip,
}

/// Indexes every document of a YAML stream. Stops quietly at a syntax error
/// (`serde_yaml` reports those); documents after it are absent.
pub fn index_documents(src: &str) -> Vec<DocPositions> {
    let mut docs = Vec::new();
    let mut cur: Option<DocPositions> = None;
    let mut stack: Vec<Frame> = Vec::new();
    let mut skip_depth = 0usize;
    for item in Parser::new_from_str(src) {
        let (event, span) = match item {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(at) = scanner_too_deep(&e) {
                    cur.get_or_insert_with(DocPositions::default).too_deep = Some(at);
                }
                break;
            }
        };
        if skip_depth > 0 {
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    skip_depth += 1;
                    // The skipped container is both on the stack and in skip_depth.
                    if stack.len() + skip_depth - 1 > MAX_NESTING {
                        if let Some(d) = cur.as_mut() {
                            d.too_deep = Some(Pos::of(&span));
                        }
                        break;
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => skip_depth -= 1,
                _ => {}
            }
            if skip_depth == 0 {
                stack.pop();
                finish_value(&mut stack);
            }
            continue;
        }
        match event {
            Event::DocumentStart(_) => {
                cur = Some(DocPositions {
                    start: Pos::of(&span),
                    ..DocPositions::default()
                });
                stack.clear();
            }
            Event::DocumentEnd => {
                if let Some(d) = cur.take() {
                    docs.push(d);
                }
            }
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = stack.last_mut()
                {
                    let text = match event {
                        Event::Scalar(text, ..) => text.into_owned(),
                        _ => String::from("*alias"),
                    };
                    *key = Some((text, Pos::of(&span)));
                    continue;
                }
                if let Some(d) = cur.as_mut() {
                    record(d, &stack, Pos::of(&span));
                }
                finish_value(&mut stack);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                let as_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                if as_key || stack.len() >= MAX_DEPTH {
                    stack.push(Frame::Skip);
                    skip_depth = 1;
                    continue;
                }
                let path = match cur.as_mut() {
                    Some(d) => record(d, &stack, Pos::of(&span)),
                    None => FieldPath::root(),
                };
                stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                finish_value(&mut stack);
            }
            _ => {}
        }
    }
    if let Some(d) = cur.take() {
        docs.push(d);
    }
    docs
}

/// Where the scanner gave up on nesting, if that is its error: its own limit
/// (255 open flow levels) is met before it hands out the events that would
/// pass [`MAX_NESTING`].
fn scanner_too_deep(e: &saphyr_parser::ScanError) -> Option<Pos> {
    (e.info() == "recursion limit exceeded").then(|| Pos {
        line: e.marker().line(),
        col: e.marker().col() + 1,
    })
}

/// Records a value at the current position of the stack; returns its path.
fn record(doc: &mut DocPositions, stack: &[Frame], value: Pos) -> FieldPath {
    let (path, key_pos) = match stack.last() {
        None => (FieldPath::root(), None),
        Some(Frame::Map {
            path,
            key: Some((k, kp)),
        }) => (path.key(k), Some(*kp)),
        Some(Frame::Seq { path, next }) => (path.index(*next), None),
        Some(_) => return FieldPath::root(),
    };
    if doc.entries.contains_key(&path) {
        doc.duplicates
            .push((path.clone(), key_pos.unwrap_or(value)));
    } else {
        doc.entries.insert(
            path.clone(),
            Entry {
                key: key_pos,
                value,
            },
        );
    }
    path
}

/// After a complete value: a mapping waits for its next key, a sequence
/// counts the item.
fn finish_value(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { next, .. }) => *next += 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_values_and_indices() {
        let src = "a: 1\nspec:\n  size: 10Gi\n  list:\n    - x\n    - {y: 2}\n---\nb: 2\n";
        let docs = index_documents(src);
        assert_eq!(docs.len(), 2);
        let d = &docs[0];
        assert_eq!(
            d.key(&FieldPath::parse("spec.size")),
            Pos { line: 3, col: 3 }
        );
        assert_eq!(
            d.value(&FieldPath::parse("spec.size")),
            Pos { line: 3, col: 9 }
        );
        assert_eq!(
            d.value(&FieldPath::parse("spec.list[1].y")),
            Pos { line: 6, col: 11 }
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(
            d.key(&FieldPath::parse("spec.nothing")),
            Pos { line: 2, col: 1 }
        );
        assert_eq!(docs[1].key(&FieldPath::parse("b")), Pos { line: 8, col: 1 });
    }

    #[test]
    fn finds_duplicate_keys() {
        let docs = index_documents("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            docs[0].first_duplicate().map(|(_, p)| *p),
            Some(Pos { line: 3, col: 1 })
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let docs = index_documents(&deep);
        assert!(docs.len() <= 1);
        assert!(docs.iter().all(|d| d.entries.len() <= MAX_DEPTH + 1));
    }

    #[test]
    fn the_stream_is_not_read_past_serde_yamls_nesting_limit() {
        let n = MAX_NESTING + 1;
        let src = format!("a: {}{}\n---\nb: 1\n", "[".repeat(n), "]".repeat(n));
        let docs = index_documents(&src);
        // The first document is cut where the nesting passes the limit, and
        // nothing after it is read: the second document is not indexed.
        assert_eq!(docs.len(), 1, "documents indexed");
        assert_eq!(
            docs[0].too_deep(),
            Some(Pos {
                line: 1,
                col: 4 + MAX_NESTING - 1
            })
        );
        let shallow = format!("a: {}{}\n---\nb: 1\n", "[".repeat(40), "]".repeat(40));
        let docs = index_documents(&shallow);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].too_deep(), None);
    }

    #[test]
    fn a_flow_deeper_than_the_scanner_allows_is_marked_too_deep() {
        let src = format!("a: {}", "[".repeat(1_000));
        let docs = index_documents(&src);
        assert_eq!(docs.len(), 1);
        let at = docs[0].too_deep().map(|p| p.line);
        assert_eq!(at, Some(1));
    }

    #[test]
    fn a_file_that_nests_deep_is_always_indexed_before_it_loads() {
        let n = MAX_NESTING + 1;
        let flow = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert!(may_nest_too_deep(&flow));
        let mut block = String::new();
        for i in 0..n {
            block.push_str(&" ".repeat(i));
            block.push('k');
            block.push_str(&i.to_string());
            block.push_str(":\n");
        }
        assert!(may_nest_too_deep(&block));
        assert!(index_documents(&block)[0].too_deep().is_some());
        let seqs = format!("{}x\n", "- ".repeat(n));
        assert!(may_nest_too_deep(&seqs));
        assert!(index_documents(&seqs)[0].too_deep().is_some());
        // An ordinary manifest needs no index to load.
        let plain = "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: a\nspec:\n  size: 1Gi\n  initiators: [a, b]\n";
        assert!(!may_nest_too_deep(plain));
    }

    #[test]
    fn lazy_positions_are_those_of_the_index() {
        let src = "a: 1\n---\n---\nb:\n  c: 2\n";
        let lazy = FilePositions::lazy(Arc::from(src));
        let eager = index_documents(src);
        for (i, d) in eager.iter().enumerate() {
            let l = lazy.doc(i).unwrap();
            assert_eq!(l.start(), d.start());
            assert_eq!(
                l.value(&FieldPath::parse("b.c")),
                d.value(&FieldPath::parse("b.c"))
            );
        }
        assert!(lazy.doc(eager.len()).is_none());
    }

    #[test]
    fn displays_paths() {
        let p = FieldPath::parse("spec.initiators[1]").key("a.b");
        assert_eq!(p.to_string(), "spec.initiators[1][\"a.b\"]");
    }
}
