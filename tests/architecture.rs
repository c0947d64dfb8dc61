//! Imports in `src/` run one way: a module uses only modules listed below it
//! in `docs/architecture.md` ("Module graph"). Reads every `crate::<module>`
//! path outside `#[cfg(test)]` code, so an import circle cannot come back
//! unnoticed. Runs in well under a second.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documented order, top to bottom: the `text` block after the marker.
fn documented_order() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let marker = "<!-- module order: top to bottom";
    let at = doc.find(marker).expect("the module order marker in docs/architecture.md");
    let block = &doc[at..];
    let start = block.find("```text\n").expect("a text block after the marker") + "```text\n".len();
    let end = block[start..].find("```").expect("the end of the block") + start;
    block[start..end].lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// The top-level module a file of `src/` belongs to (`src/registry/key.rs` → `registry`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every module named by a `crate::<name>` path in `code` (`use crate::{a, b}` included).
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // Not the tail of another path (`shmetrics::crate::` does not occur; `$crate::` in macros).
        if i > 0 && code.as_bytes()[i - 1] == b'$' {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found
}

/// The code of a file without its `#[cfg(test)]` modules and its comments.
fn non_test_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod ").or_else(|| text.find("#[cfg(test)]\npub(crate) mod ")) {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .map(|l| match l.find("//") {
            Some(c) => &l[..c],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn imports_run_down_the_documented_order() {
    let order = documented_order();
    let rank = |m: &str| order.iter().position(|o| o == m);
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(me) = rank(&module) else {
            wrong.push(format!("{}: module `{module}` is not in docs/architecture.md", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&non_test_code(&text)) {
            if used == module {
                continue;
            }
            match rank(&used) {
                None => wrong.push(format!("{}: uses `crate::{used}`, not in docs/architecture.md", file.display())),
                Some(them) if them < me => wrong.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is listed above it (imports must run down)",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "imports against docs/architecture.md:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_is_documented_once() {
    let order = documented_order();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let declared: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    let mut sorted_doc = order.clone();
    sorted_doc.sort();
    sorted_doc.dedup();
    assert_eq!(sorted_doc.len(), order.len(), "a module listed twice: {order:?}");
    let mut sorted_lib: Vec<String> = declared.iter().map(|s| s.to_string()).collect();
    sorted_lib.sort();
    assert_eq!(sorted_doc, sorted_lib, "docs/architecture.md and src/lib.rs list different modules");
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser itself: an upward path must be found, in either form.
    let code = "use crate::scrape::Render;\nuse crate::{layout, ffi};\nfn f() { crate::offload::live_jobs(); }";
    assert_eq!(crate_paths(code), ["scrape", "layout", "ffi", "offload"]);
    assert_eq!(crate_paths(&non_test_code("// crate::ffi\nuse crate::layout;")), ["layout"]);
}
