//! Loading: files and directory trees into a [`ManifestSet`], collecting every
//! diagnostic on the way.
//!
//! A directory is walked recursively in sorted order; hidden entries are
//! skipped, `*.yaml`/`*.yml` files are read, symlinked directories are not
//! followed (no loops). Each file may hold many documents; empty ones are
//! ignored. A document that fails is reported and skipped; the others load.
//!
//! Bounded by design: files over [`MAX_FILE_BYTES`] are refused before they are
//! read, `serde_yaml` refuses alias bombs and deep nesting, and within one
//! document at most [`MAX_ERRORS_PER_DOC`] findings are collected.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_yaml::Value;

use super::diag::{Diagnostic, Severity, suggest};
use super::kinds::{
    API_VERSION, BackendSpec, BackupPolicySpec, ConsistencyGroupSpec, ImageSpec, Metadata,
    SchedulerPolicySpec, SnapshotSpec, VolumeSpec, VolumeTypeSpec,
};
use super::position::{
    DocPositions, FieldPath, FilePositions, MAX_NESTING, Pos, Seg, index_documents,
    may_nest_too_deep,
};
use super::{Doc, Kind, KindSpec, ManifestSet, Origin};

/// Largest manifest file read (bigger ones are refused: split them).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Findings collected per document before giving up on it.
pub const MAX_ERRORS_PER_DOC: usize = 32;
/// Directory depth walked below a `-f` directory.
const MAX_DIR_DEPTH: usize = 32;

/// What loading produced.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every document that parsed.
    pub set: ManifestSet,
    /// Every finding, in file and position order.
    pub diagnostics: Vec<Diagnostic>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Number of non-empty documents seen.
    pub documents: usize,
}

impl Loaded {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// Loads and validates every manifest under `paths` (files or directories).
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for p in paths {
        let shown: Arc<Path> = Arc::from(p.as_path());
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let before = files.len();
                if let Err(e) = walk(p, 0, &mut files) {
                    loaded.diagnostics.push(Diagnostic::file_error(&shown, e));
                } else if files.len() == before {
                    loaded.diagnostics.push(Diagnostic::file_error(
                        &shown,
                        "no manifests (*.yaml, *.yml) in this directory",
                    ));
                }
            }
            Ok(_) => files.push(p.clone()),
            Err(e) => loaded
                .diagnostics
                .push(Diagnostic::file_error(&shown, io_message(&e))),
        }
    }
    files.dedup();
    for part in load_files(&files) {
        absorb(&mut loaded, part);
    }
    loaded.files = files;
    finish(loaded)
}

/// Reads and parses `files` on one worker per core, each taking a run of
/// consecutive files (10,000 volumes are 1.5 MB of YAML: parsing is most of
/// a large site's `plan`). The parts come back in file order.
fn load_files(files: &[PathBuf]) -> Vec<Loaded> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(files.len());
    if workers <= 1 {
        let mut one = Loaded::default();
        for f in files {
            load_file(f, &mut one);
        }
        return vec![one];
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = files
            .chunks(files.len().div_ceil(workers))
            .map(|run| {
                s.spawn(move || {
                    let mut part = Loaded::default();
                    for f in run {
                        load_file(f, &mut part);
                    }
                    part
                })
            })
            .collect();
        parts
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Adds a later run of files' documents and findings to `into`, as if they
/// had been loaded after it: a name defined in both is reported at the
/// later document, as loading one file after another reports it.
fn absorb(into: &mut Loaded, from: Loaded) {
    into.diagnostics.extend(from.diagnostics);
    into.documents += from.documents;
    if into.set.is_empty() {
        into.set = from.set;
        return;
    }
    let ManifestSet {
        backends,
        volume_types,
        scheduler_policies,
        volumes,
        snapshots,
        backup_policies,
        consistency_groups,
        images,
    } = from.set;
    for d in backends.into_values() {
        insert(d, into);
    }
    for d in volume_types.into_values() {
        insert(d, into);
    }
    for d in scheduler_policies.into_values() {
        insert(d, into);
    }
    for d in volumes.into_values() {
        insert(d, into);
    }
    for d in snapshots.into_values() {
        insert(d, into);
    }
    for d in backup_policies.into_values() {
        insert(d, into);
    }
    for d in consistency_groups.into_values() {
        insert(d, into);
    }
    for d in images.into_values() {
        insert(d, into);
    }
}

/// Cross-document validation, then findings in file and position order.
fn finish(mut loaded: Loaded) -> Loaded {
    super::validate::validate(&loaded.set, &mut loaded.diagnostics);
    loaded
        .diagnostics
        .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    loaded.diagnostics.dedup();
    loaded
}

/// Loads and validates manifests from text, as if read from `file` (for
/// tools and tests that hold the text already).
pub fn load_source(file: &Path, src: &str) -> Loaded {
    let mut loaded = Loaded::default();
    let file: Arc<Path> = Arc::from(file);
    check_text(&file, src, &mut loaded);
    loaded.files.push(file.to_path_buf());
    finish(loaded)
}

fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot read: {e}"),
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if depth > MAX_DIR_DEPTH {
        return Err(format!(
            "directories nested deeper than {MAX_DIR_DEPTH} levels"
        ));
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_message(&e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            out.push(path);
        }
    }
    Ok(())
}

fn load_file(path: &Path, loaded: &mut Loaded) {
    let file: Arc<Path> = Arc::from(path);
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => {
            loaded
                .diagnostics
                .push(Diagnostic::file_error(&file, io_message(&e)));
            return;
        }
    };
    if size > MAX_FILE_BYTES {
        #[allow(clippy::cast_precision_loss)] // display only
        let mib = size as f64 / f64::from(1u32 << 20);
        loaded.diagnostics.push(Diagnostic::file_error(
            &file,
            format!(
                "file is {mib:.1} MiB; manifest files larger than {} MiB are refused (split it into several files)",
                MAX_FILE_BYTES >> 20
            ),
        ));
        return;
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            loaded
                .diagnostics
                .push(Diagnostic::file_error(&file, io_message(&e)));
            return;
        }
    };
    check_bytes(&file, bytes, loaded);
}

/// Loads and validates manifests from a file's bytes, as if read from
/// `file`: what reading a file does after its size check (the fuzz target's
/// entry point).
pub fn load_bytes(file: &Path, bytes: Vec<u8>) -> Loaded {
    let mut loaded = Loaded::default();
    let file: Arc<Path> = Arc::from(file);
    check_bytes(&file, bytes, &mut loaded);
    loaded.files.push(file.to_path_buf());
    finish(loaded)
}

/// Refuses bytes that are not UTF-8, then checks the text.
fn check_bytes(file: &Arc<Path>, bytes: Vec<u8>, loaded: &mut Loaded) {
    let src = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let pos = pos_of_byte(&String::from_utf8_lossy(&e.as_bytes()[..at]), at);
            loaded
                .diagnostics
                .push(located(file, pos, "the file is not valid UTF-8"));
            return;
        }
    };
    check_text(file, &src, loaded);
}

/// Refuses control characters, then parses.
fn check_text(file: &Arc<Path>, src: &str, loaded: &mut Loaded) {
    if let Some((at, c)) = src
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        loaded.diagnostics.push(located(
            file,
            pos_of_byte(src, at),
            format!(
                "control character U+{:04X} is not allowed in a manifest",
                u32::from(c)
            ),
        ));
        return;
    }
    parse_stream(file, src, loaded);
}

fn located(file: &Arc<Path>, pos: Pos, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        pos: Some(pos),
        ..Diagnostic::file_error(file, message)
    }
}

/// 1-based line and column of byte offset `at` in `src`.
fn pos_of_byte(src: &str, at: usize) -> Pos {
    let before = &src[..at.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos { line, col }
}

fn parse_stream(file: &Arc<Path>, src: &str, loaded: &mut Loaded) {
    let text: Arc<str> = Arc::from(src);
    let positions = if may_nest_too_deep(src) {
        let docs = index_documents(src);
        // serde_yaml reads a whole document's events before its recursion
        // limit applies, and its scanner slows with every open flow level
        // (seconds for a 20 KB line of `[`): a document nested past that
        // limit is refused here, with serde_yaml's words, before serde_yaml
        // sees the file.
        if let Some(at) = docs.iter().find_map(DocPositions::too_deep) {
            loaded.diagnostics.push(located(
                file,
                at,
                format!(
                    "YAML syntax: recursion limit exceeded (nested deeper than {MAX_NESTING} levels)"
                ),
            ));
            return;
        }
        FilePositions::indexed(text, docs)
    } else {
        FilePositions::lazy(text)
    };
    let positions = Arc::new(positions);
    let none = DocPositions::default();
    for (i, de) in serde_yaml::Deserializer::from_str(src).enumerate() {
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // After a syntax error serde_yaml's stream cannot go on (it would
                // repeat the error forever); nothing later in the file is read.
                let pos = positions.doc(i).unwrap_or(&none);
                loaded.diagnostics.push(yaml_error(file, pos, &e));
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        loaded.documents += 1;
        let origin = Origin::new(Arc::clone(file), Arc::clone(&positions), i);
        load_document(value, &origin, loaded);
    }
}

fn yaml_error(file: &Arc<Path>, pos: &DocPositions, e: &serde_yaml::Error) -> Diagnostic {
    let mut message = e.to_string();
    // serde_yaml appends " at line N column M" (and nested context); the
    // position goes in front instead.
    if let Some(i) = message.find(" at line ") {
        let tail = &message[i..];
        let context = tail.find(", ").map(|j| &tail[j..]).unwrap_or_default();
        message = format!("{}{context}", &message[..i]);
    }
    if let Some(i) = message.find("duplicate entry with key ") {
        let key = &message[i + "duplicate entry with key ".len()..];
        let at = pos.first_duplicate().map_or(pos.start(), |(_, p)| *p);
        return located(
            file,
            at,
            format!("duplicate key {key}: a key appears once per mapping"),
        );
    }
    let at = e.location().map_or_else(
        || pos.start(),
        |l| Pos {
            line: l.line(),
            col: l.column(),
        },
    );
    located(file, at, format!("YAML syntax: {message}"))
}

/// Builds a diagnostic for one document.
struct DocCtx<'a> {
    origin: &'a Origin,
    object: String,
}

impl DocCtx<'_> {
    fn error(&self, field: FieldPath, at_key: bool, message: impl Into<String>) -> Diagnostic {
        let pos = if at_key {
            self.origin.key_pos(&field)
        } else {
            self.origin.value_pos(&field)
        };
        Diagnostic {
            severity: Severity::Error,
            file: Arc::clone(&self.origin.file),
            pos: Some(pos),
            object: Some(self.object.clone()),
            field: Some(field),
            message: message.into(),
        }
    }
}

fn load_document(value: Value, origin: &Origin, loaded: &mut Loaded) {
    let Value::Mapping(map) = &value else {
        let ctx = DocCtx {
            origin,
            object: String::new(),
        };
        let mut d = ctx.error(
            FieldPath::root(),
            true,
            format!(
                "a manifest is a mapping with apiVersion, kind, metadata and spec; this document is {}",
                describe_value(&value)
            ),
        );
        d.object = None;
        loaded.diagnostics.push(d);
        return;
    };
    let kind_value = map.get("kind");
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let kind_text = kind_value.and_then(Value::as_str);
    let name = name.map(|n| {
        if n.parse::<super::values::Name>().is_ok() {
            n.to_owned()
        } else {
            super::values::shown(n)
        }
    });
    let object = match (kind_text.filter(|k| Kind::parse(k).is_some()), name) {
        (Some(k), Some(n)) => format!("{k}/{n}"),
        (Some(k), None) => k.to_owned(),
        (None, Some(n)) => format!("?/{n}"),
        (None, None) => "?".to_owned(),
    };
    let ctx = DocCtx { origin, object };
    match map.get("apiVersion") {
        None => loaded.diagnostics.push(ctx.error(
            FieldPath::root(),
            true,
            format!("missing field `apiVersion` (write apiVersion: {API_VERSION})"),
        )),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => loaded.diagnostics.push(ctx.error(
            FieldPath::parse("apiVersion"),
            false,
            format!(
                "unsupported apiVersion {}; this cinderblock reads {API_VERSION}",
                short_value(other)
            ),
        )),
    }
    let kind = match kind_value {
        None => {
            loaded.diagnostics.push(ctx.error(
                FieldPath::root(),
                true,
                format!("missing field `kind` (one of {})", kind_list()),
            ));
            return;
        }
        Some(v) => {
            if let Some(k) = v.as_str().and_then(Kind::parse) {
                k
            } else {
                let hint = v
                    .as_str()
                    .and_then(|s| suggest(s, Kind::ALL.iter().map(|k| k.as_str())))
                    .map(|s| format!("did you mean {s}? "))
                    .unwrap_or_default();
                loaded.diagnostics.push(ctx.error(
                    FieldPath::parse("kind"),
                    false,
                    format!(
                        "unknown kind {}; {hint}kinds are {}",
                        short_value(v),
                        kind_list()
                    ),
                ));
                return;
            }
        }
    };
    match kind {
        Kind::Backend => typed::<BackendSpec>(value, &ctx, loaded),
        Kind::VolumeType => typed::<VolumeTypeSpec>(value, &ctx, loaded),
        Kind::SchedulerPolicy => typed::<SchedulerPolicySpec>(value, &ctx, loaded),
        Kind::Volume => typed::<VolumeSpec>(value, &ctx, loaded),
        Kind::Snapshot => typed::<SnapshotSpec>(value, &ctx, loaded),
        Kind::BackupPolicy => typed::<BackupPolicySpec>(value, &ctx, loaded),
        Kind::ConsistencyGroup => typed::<ConsistencyGroupSpec>(value, &ctx, loaded),
        Kind::Image => typed::<ImageSpec>(value, &ctx, loaded),
    }
}

fn kind_list() -> String {
    Kind::ALL.map(Kind::as_str).join(", ")
}

fn describe_value(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn short_value(v: &Value) -> String {
    match v {
        Value::String(s) => super::values::shown(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => describe_value(other).to_owned(),
    }
}

/// The document envelope; `apiVersion` and `kind` were checked already.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: Option<IgnoredAny>,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: Metadata,
    spec: Option<S>,
}

/// Deserializes one document as kind `S`, collecting every field error: after
/// each error the offending field is removed and deserialization retried, so
/// one run reports all the mistakes in a document, not just the first.
fn typed<S: KindSpec>(mut value: Value, ctx: &DocCtx<'_>, loaded: &mut Loaded) {
    let mut removed: Vec<FieldPath> = Vec::new();
    // Sequence items removed so far (in original numbering), to map the
    // indices of later errors back to what the user wrote.
    let mut removed_items: Vec<(FieldPath, usize)> = Vec::new();
    let mut errors = 0usize;
    let mut had_error = false;
    loop {
        let result: Result<Envelope<S>, _> = serde_path_to_error::deserialize(&value);
        let err = match result {
            Ok(env) => {
                // After errors, what remains (the bad fields removed) still
                // goes into the set, so cross-document checks can report
                // their findings too instead of false "is not defined" ones.
                // Not when list items were removed: their indices would be
                // off by the removed ones in those findings.
                if had_error && !removed_items.is_empty() {
                    return;
                }
                let spec = match env.spec {
                    Some(s) => s,
                    None => match S::deserialize(Value::Mapping(serde_yaml::Mapping::new())) {
                        Ok(s) => s,
                        Err(_) if had_error => return,
                        Err(_) => {
                            loaded.diagnostics.push(ctx.error(
                                FieldPath::root(),
                                true,
                                "missing field `spec`",
                            ));
                            return;
                        }
                    },
                };
                insert(
                    Doc {
                        meta: env.metadata,
                        spec,
                        origin: ctx.origin.clone(),
                    },
                    loaded,
                );
                return;
            }
            Err(e) => e,
        };
        had_error = true;
        let current = to_field_path(err.path());
        let path = original_path(&current, &removed_items);
        let raw = err.inner().to_string();
        let missing = raw
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'));
        // A field we removed ourselves is not "missing" to the user: drop its
        // parent too and look for further errors elsewhere.
        let self_inflicted = missing.is_some_and(|f| removed.contains(&path.key(f)));
        if !self_inflicted {
            let at_key = missing.is_some() || raw.starts_with("unknown field");
            loaded
                .diagnostics
                .push(ctx.error(path.clone(), at_key, improve_message(&raw)));
            errors += 1;
        }
        if errors >= MAX_ERRORS_PER_DOC || path.is_root() {
            return;
        }
        if !remove(&mut value, &current) {
            return;
        }
        if let Some((Seg::Index(i), parent)) = path.0.split_last() {
            removed_items.push((FieldPath(parent.to_vec()), *i));
        }
        removed.push(path);
    }
}

/// Maps a path in the edited value back to the user's numbering.
fn original_path(current: &FieldPath, removed_items: &[(FieldPath, usize)]) -> FieldPath {
    let mut out = FieldPath::root();
    for seg in &current.0 {
        match seg {
            Seg::Index(j) => {
                let mut gone: Vec<usize> = removed_items
                    .iter()
                    .filter(|(p, _)| *p == out)
                    .map(|(_, i)| *i)
                    .collect();
                gone.sort_unstable();
                let mut orig = *j;
                for g in gone {
                    if g <= orig {
                        orig += 1;
                    }
                }
                out = out.index(orig);
            }
            Seg::Key(k) => out = out.key(k),
        }
    }
    out
}

fn insert<S: KindSpec>(doc: Doc<S>, loaded: &mut Loaded) {
    let slot = S::slot(&mut loaded.set);
    if let Some(first) = slot.get(doc.name()) {
        let field = FieldPath::parse("metadata.name");
        loaded.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: Arc::clone(&doc.origin.file),
            pos: Some(doc.origin.value_pos(&field)),
            object: Some(format!("{}/{}", S::KIND, doc.name())),
            field: Some(field),
            message: format!(
                "duplicate {} name {:?}; it is already defined at {}",
                S::KIND,
                doc.name().as_str(),
                first.origin.describe()
            ),
        });
        return;
    }
    slot.insert(doc.name().clone(), doc);
}

fn to_field_path(p: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    FieldPath(
        p.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Removes the value at `path`; false when there is nothing to remove.
fn remove(value: &mut Value, path: &FieldPath) -> bool {
    let Some((last, parents)) = path.0.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// Shortens serde's messages and adds "did you mean".
fn improve_message(raw: &str) -> String {
    for prefix in ["unknown field `", "unknown variant `"] {
        let Some(rest) = raw.strip_prefix(prefix) else {
            continue;
        };
        let Some((word, tail)) = rest.split_once('`') else {
            continue;
        };
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let what = if prefix.contains("field") {
            "field"
        } else {
            "value"
        };
        if expected.is_empty() {
            return format!("unknown {what} `{word}`; no fields are allowed here");
        }
        if let Some(s) = suggest(word, expected.iter().copied()) {
            return format!("unknown {what} `{word}`; did you mean `{s}`?");
        }
        let list = expected
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return format!("unknown {what} `{word}`; expected one of {list}");
    }
    raw.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_suggest_fields() {
        assert_eq!(
            improve_message("unknown field `sise`, expected one of `size`, `volumeType`"),
            "unknown field `sise`; did you mean `size`?"
        );
        assert_eq!(
            improve_message("unknown variant `Keep`, expected `Retain` or `Delete`"),
            "unknown value `Keep`; expected one of `Retain`, `Delete`"
        );
    }

    #[test]
    fn a_tree_loaded_on_several_workers_keeps_the_first_definition_and_reports_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let vol = |name: &str| {
            format!(
                "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n  size: 1Gi\n"
            )
        };
        // Eight files, so every worker count up to eight splits them
        // differently; db is defined in the first, fifth and last.
        for i in 0..8 {
            let name = if matches!(i, 0 | 4 | 7) {
                "db".to_owned()
            } else {
                format!("v{i}")
            };
            fs::write(dir.path().join(format!("{i}.yaml")), vol(&name)).unwrap();
        }
        let loaded = load_paths(&[dir.path().to_owned()]);
        assert_eq!(loaded.documents, 8);
        assert_eq!(loaded.set.volumes.len(), 6);
        assert!(loaded.set.volumes["db"].origin.file.ends_with("0.yaml"));
        let dups: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.message.starts_with("duplicate Volume name"))
            .map(|d| d.file.display().to_string())
            .collect();
        assert_eq!(dups.len(), 2, "{:?}", loaded.diagnostics);
        assert!(
            dups[0].ends_with("4.yaml") && dups[1].ends_with("7.yaml"),
            "{dups:?}"
        );
    }

    #[test]
    fn byte_positions() {
        assert_eq!(pos_of_byte("ab\ncd", 4), Pos { line: 2, col: 2 });
    }
}
