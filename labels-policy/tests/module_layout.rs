//! The library's modules import one way: each only modules listed before it
//! in `LAYOUT` (the order of the pipeline, documented in src/lib.rs), so
//! there is no import circle. Read from the sources: every `crate::` path
//! outside comments, and no `super::` outside a `mod tests`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::path::Path;

/// (module path, file under src/), in the order a module may import from.
const LAYOUT: &[(&str, &str)] = &[
    ("model", "model.rs"),
    ("datapath_abi", "datapath_abi.rs"),
    ("http", "http.rs"),
    ("syntax::prefix", "syntax/prefix.rs"),
    ("syntax::labels", "syntax/labels.rs"),
    ("syntax::cilium", "syntax/cilium.rs"),
    ("syntax", "syntax/mod.rs"),
    ("identity", "identity.rs"),
    ("compile::policy_keys", "compile/policy_keys.rs"),
    ("compile::selector_index", "compile/selector_index.rs"),
    ("compile::http_table", "compile/http_table.rs"),
    ("compile", "compile/mod.rs"),
    ("decision", "decision.rs"),
    ("http_decision", "http_decision.rs"),
    ("attribution", "attribution.rs"),
    ("query", "query.rs"),
    ("testing", "testing.rs"),
];

/// The module of `LAYOUT` a `crate::` path names: the longest listed module
/// that is a whole-segment prefix of the path.
fn module_of(path: &str) -> Option<usize> {
    LAYOUT
        .iter()
        .enumerate()
        .filter(|(_, (module, _))| {
            path == *module
                || path
                    .strip_prefix(module)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .max_by_key(|(_, (module, _))| module.len())
        .map(|(i, _)| i)
}

/// Every `crate::a::b` path in a line of code.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + "crate::".len()..];
        let path: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(path.trim_end_matches(':').to_string());
        rest = tail;
    }
    out
}

fn sources() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).unwrap().to_string_lossy();
                out.push(rel.replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_source_file_has_a_place_in_the_layout() {
    let listed: Vec<&str> = LAYOUT.iter().map(|(_, file)| *file).collect();
    for file in sources() {
        assert!(
            file == "lib.rs" || listed.contains(&file.as_str()),
            "src/{file} is not in LAYOUT: place it in the order (and in the module list of src/lib.rs)"
        );
    }
}

#[test]
fn modules_import_only_earlier_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (index, (module, file)) in LAYOUT.iter().enumerate() {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let mut in_tests = false;
        for (n, line) in text.lines().enumerate() {
            let at = format!("src/{file}:{}", n + 1);
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.starts_with("mod tests") {
                in_tests = true;
            }
            if code.contains("crate::{") {
                problems.push(format!(
                    "{at}: write one `use crate::<module>::...` per module so this test can read it"
                ));
            }
            if code.contains("super::") && !in_tests {
                problems.push(format!(
                    "{at}: `super::` in {module}: name the module by its crate path (a child must not import its parent)"
                ));
            }
            for path in crate_paths(code) {
                match module_of(&path) {
                    None => problems.push(format!(
                        "{at}: crate::{path} names no module of LAYOUT"
                    )),
                    Some(target) if target >= index => problems.push(format!(
                        "{at}: {module} imports crate::{path}, which comes at or after it in the layout"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_finds_paths() {
    assert_eq!(
        crate_paths("use crate::syntax::prefix::parse_prefix; x(crate::model::Peer::Any)"),
        vec!["syntax::prefix::parse_prefix", "model::Peer::Any"]
    );
    assert_eq!(module_of("syntax::prefix::parse_prefix"), Some(3));
    assert_eq!(module_of("syntax::parse_prefix"), Some(6));
    assert_eq!(module_of("compiled"), None);
}
