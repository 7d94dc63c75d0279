//! The library's layers, held against its imports: every `crate::<module>` a source file
//! names must be in its own layer or one below (docs/ARCHITECTURE.md, "The layers"), and
//! the imports inside a layer must be the few the table names — so no import runs upward
//! and no two top-level modules import each other. The binary (`src/main.rs`, `src/cli/`)
//! is the top layer and may use everything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top; a module may use the modules of lower layers.
const LAYERS: &[&[&str]] = &[
    &["error", "vocab", "files"],
    &["gpu", "cpu", "data"],
    &["ops"],
    &["autograd"],
    &["nn", "optim"],
    &["model"],
    &["eval", "checkpoint"],
    &["train"],
    &["settings", "report", "runs", "sweep", "gallery", "export"],
    &["serve"],
];

/// The imports allowed inside a layer: (importer, imported).
const WITHIN_A_LAYER: &[(&str, &str)] = &[
    ("vocab", "error"),
    ("files", "error"),
    ("runs", "settings"),
    ("runs", "report"),
    ("sweep", "settings"),
    ("sweep", "runs"),
    ("gallery", "runs"),
    ("export", "runs"),
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source names as `crate::X` (in paths and in `use crate::{X, …}`
/// groups), comments left out.
fn imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    found.insert(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The top-level module of a file under `src/`, None for the binary's files.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    let module = first.trim_end_matches(".rs");
    (!matches!(module, "main" | "cli" | "lib")).then(|| module.to_string())
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let own = layer_of(&module);
        for imported in imports(&std::fs::read_to_string(file).unwrap()) {
            if imported == module {
                continue;
            }
            let theirs = layer_of(&imported);
            let allowed =
                theirs < own || (theirs == own && WITHIN_A_LAYER.contains(&(&*module, &*imported)));
            if !allowed {
                wrong.push(format!(
                    "{} ({module}, layer {}) imports {imported} (layer {})",
                    file.strip_prefix(&src).unwrap().display(),
                    own + 1,
                    theirs + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_import_scan_reads_paths_and_groups_and_skips_comments() {
    let found = imports(
        "use crate::gpu::{Gpu, Tensor};\nuse crate::{error::Result, vocab};\n\
         // crate::train is only mentioned\nfn f() { crate::ops::pack::rows4(); }",
    );
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["error", "gpu", "ops", "vocab"]);
}
