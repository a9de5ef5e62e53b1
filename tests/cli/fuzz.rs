//! Property test: mutated and random YAML never panics the loader.

use std::path::Path;

use proptest::prelude::*;

const SEED: &str = include_str!("../../examples/full-site/volumes.yaml");

fn mutate(base: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for &(at, op, c) in edits {
        if chars.is_empty() {
            chars.push(c);
            continue;
        }
        let i = at % chars.len();
        match op % 4 {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(i, c),
            2 => chars[i] = c,
            _ => {
                // Duplicate a slice: repeated keys, documents, indentation.
                let end = (i + 40).min(chars.len());
                let piece: Vec<char> = chars[i..end].to_vec();
                chars.splice(i..i, piece);
            }
        }
    }
    chars.into_iter().collect()
}

fn yamlish() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        ':', '-', ' ', '\n', '\t', '[', ']', '{', '}', '&', '*', '!', '|', '>', '"', '\'', '#',
        '%', '@', '`', ',', '?', 'a', 'Z', '0', '9', '.', '/', '\\', '~', '\0', 'é', '\u{1b}',
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), yamlish()), 1..12)) {
        let text = mutate(SEED, &edits);
        let loaded = cinderblock::manifest::load_source(Path::new("fuzz.yaml"), &text);
        for d in &loaded.diagnostics {
            prop_assert!(!d.message.is_empty());
        }
    }

    #[test]
    fn random_yaml_never_panics(text in prop::collection::vec(yamlish(), 0..400).prop_map(|v| v.into_iter().collect::<String>())) {
        let _ = cinderblock::manifest::load_source(Path::new("fuzz.yaml"), &text);
    }
}
