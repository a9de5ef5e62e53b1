//! The crate's module graph: no import cycle among top-level modules.
//!
//! Reads every `src/**/*.rs`, maps each file to its top-level module
//! (`src/plan/render.rs` → `plan`), and collects the top-level modules it
//! names: `crate::X` anywhere outside comment lines, and `super::X` in a
//! top-level module's own file (`src/X.rs`, `src/X/mod.rs`), where `super` is
//! the crate. An edge `A → B` means A uses B; a cycle fails the test with
//! the modules on it and, for each edge, a line that makes it, so the
//! back-edge to remove is named. Test code counts too: a test that needs a
//! module upstream of its own is a sign that something lives in the wrong
//! place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `A → {B → an example "file:line" making the edge}`.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // Top-level modules: src/X.rs and src/X/.
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?;
            let name = first.strip_suffix(".rs").unwrap_or(first);
            (name != "lib" && name != "main").then(|| name.to_owned())
        })
        .collect();
    let mut g = Graph::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let from = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if !modules.contains(&from) {
            continue;
        }
        let top_file = rel.components().count() == 1 || rel.ends_with("mod.rs");
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let mut targets = Vec::new();
            for (i, _) in code.match_indices("crate::") {
                targets.push(ident(&code[i + "crate::".len()..]).to_owned());
            }
            if top_file {
                for (i, _) in code.match_indices("super::") {
                    targets.push(ident(&code[i + "super::".len()..]).to_owned());
                }
            }
            for to in targets {
                if to != from && modules.contains(&to) {
                    g.entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| format!("{}:{}", f.display(), n + 1));
                }
            }
        }
    }
    g
}

/// A cycle of `g`, if any, as the modules on it in order.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        m: &str,
        state: &mut BTreeMap<String, State>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_owned(), State::Open);
        path.push(m.to_owned());
        for to in g.get(m).into_iter().flat_map(BTreeMap::keys) {
            match state.get(to).copied().unwrap_or(State::New) {
                State::Open => {
                    let start = path.iter().position(|p| p == to).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                State::New => {
                    if let Some(c) = visit(g, to, state, path) {
                        return Some(c);
                    }
                }
                State::Done => {}
            }
        }
        path.pop();
        state.insert(m.to_owned(), State::Done);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m).copied().unwrap_or(State::New) == State::New {
            if let Some(c) = visit(g, m, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(
        g.values().map(BTreeMap::len).sum::<usize>() > 20,
        "the parser found too few edges to mean anything: {g:?}"
    );
    if let Some(cycle) = find_cycle(&g) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {}   ({})", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import cycle among top-level modules: {}\n{}",
            cycle.join(" -> "),
            edges.join("\n")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), String::new());
    }
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn leaf_modules_use_nothing_of_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    for leaf in ["model", "blockio"] {
        assert_eq!(g.get(leaf), None, "{leaf} must stay a leaf");
    }
}
