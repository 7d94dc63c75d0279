//! Coverage of the shaders: every `@compute` entry point in `shaders/*.wgsl` is named by some
//! file of the kernel tests, so a new entry cannot land without a test that names it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The `@compute` entry points of a WGSL source: the name of the first `fn` after each
/// `@compute` attribute, line comments skipped. Returns the names and the attribute count.
fn entry_points(wgsl: &str) -> (Vec<String>, usize) {
    let code: String = wgsl
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let attributes: Vec<&str> = code.split("@compute").skip(1).collect();
    let names = attributes
        .iter()
        .filter_map(|after| {
            let rest = &after[after.find("fn ")? + 3..];
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    (names, attributes.len())
}

/// Whether `text` holds `name` as a whole identifier (not inside a longer one, as
/// `conv2d_forward` is inside `conv2d_forward_tex`).
fn names(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_compute_entry_point_is_named_by_a_kernel_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut entries = BTreeSet::new();
    for entry in fs::read_dir(root.join("shaders")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let (found, attributes) = entry_points(&fs::read_to_string(&path).unwrap());
            assert_eq!(
                found.len(),
                attributes,
                "{}: an @compute attribute without a function name after it",
                path.display()
            );
            entries.extend(found);
        }
    }
    assert!(
        !entries.is_empty(),
        "no @compute entry point found in shaders/"
    );
    // A mention in this file would be no test of the entry.
    let tests: String = rust_files(&root.join("kernels_tests"))
        .into_iter()
        .filter(|f| !f.ends_with("kernels_tests/coverage.rs"))
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    let unnamed: Vec<&String> = entries.iter().filter(|e| !names(&tests, e)).collect();
    assert!(
        unnamed.is_empty(),
        "{} of {} @compute entry points are named by no file under kernels_tests/: {unnamed:?}",
        unnamed.len(),
        entries.len()
    );
}

#[test]
fn entry_points_and_names_are_whole_identifiers() {
    let wgsl = "// @compute fn commented_out() {}\n@compute @workgroup_size(64)\nfn a_b(x: u32) {}\n\
                fn helper() {}\n@compute @workgroup_size(8, 8) fn a_b_tex() {}";
    assert_eq!(
        entry_points(wgsl),
        (vec!["a_b".to_string(), "a_b_tex".to_string()], 2)
    );
    assert!(names("runs a_b.", "a_b"));
    assert!(!names("runs a_b_tex and xa_b", "a_b"));
}
