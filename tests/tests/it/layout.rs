//! The shape of `node/src`: its rooms import one way, and no files import each other in a
//! circle. Reads the `crate::` paths of every source file as text (what `use` brings in and
//! what is named in place) and fails on an import that climbs back up or crosses between
//! rooms that must not know each other.
//!
//! The rooms, and what each may import (besides itself):
//!
//! | room | may import |
//! |---|---|
//! | `local` | nothing |
//! | `trust` | `local` |
//! | `manager` | `local`, `trust` |
//! | `worker` | `local`, `trust` |
//! | `http` | `local`, `trust`, `manager` |
//! | `start` | every room below the CLI |
//! | `dev` | `local`, `start`, `worker` |
//! | `cli` | `local`, `trust`, `start`, `dev` |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src")
}

fn allowed(room: &str) -> &'static [&'static str] {
    match room {
        "local" => &[],
        "trust" => &["local"],
        "manager" | "worker" => &["local", "trust"],
        "http" => &["local", "trust", "manager"],
        "start" => &["local", "trust", "manager", "worker", "http"],
        "dev" => &["local", "start", "worker"],
        "cli" => &["local", "trust", "start", "dev"],
        "lib" | "main" => &["cli", "dev", "http", "local", "manager", "start", "trust", "worker"],
        other => panic!("node/src/{other} is a room this test does not know: add it to the table"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read node/src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` module (tests may reach anywhere).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Every `crate::a::b...` path in `code`, with `crate::x::{a, b::c}` groups expanded one level.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |s: &str| -> (String, usize) {
        let n = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
        (s[..n].to_string(), n)
    };
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before_ok =
                at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
            let mut s = &rest[at + "crate::".len()..];
            let mut path = Vec::new();
            loop {
                let (id, n) = ident(s);
                if id.is_empty() {
                    break;
                }
                path.push(id);
                s = &s[n..];
                match s.strip_prefix("::") {
                    Some(next) => s = next,
                    None => break,
                }
            }
            if before_ok {
                if let Some(group) = s.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    for item in group[..end].split(',') {
                        let mut p = path.clone();
                        p.extend(
                            item.trim()
                                .split("::")
                                .map(str::trim)
                                .filter(|x| !x.is_empty() && *x != "self")
                                .map(String::from),
                        );
                        out.push(p);
                    }
                } else if !path.is_empty() {
                    out.push(path);
                }
            }
            rest = &rest[at + "crate::".len()..];
        }
    }
    out
}

/// The file a `crate::` path lands in: the longest prefix that names a module file.
fn module_file(path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let base = path[..n].iter().fold(src(), |p, s| p.join(s));
        [base.with_extension("rs"), base.join("mod.rs")].into_iter().find(|p| p.is_file())
    })
}

fn room_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under node/src");
    let first = rel.components().next().expect("component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn rooms_import_one_way_and_files_form_no_circle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let from = room_of(f);
        for path in crate_paths(non_test_code(&text)) {
            let Some(target) = module_file(&path) else { continue };
            let to = room_of(&target);
            if to != from && !allowed(&from).contains(&to.as_str()) {
                wrong.push(format!(
                    "{} imports crate::{}",
                    f.strip_prefix(src()).expect("rel").display(),
                    path.join("::")
                ));
            }
            // A room's `mod.rs` declares its files; a file naming the room's own shared type
            // there is the room's spine, not a circle.
            let declares =
                target.file_name().is_some_and(|n| n == "mod.rs") && f.starts_with(target.parent().expect("dir"));
            if &target != f && !declares {
                edges.entry(f.clone()).or_default().insert(target);
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layout of node/src:\n{}", wrong.join("\n"));

    // Depth-first search for a back edge among files.
    fn visit(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(f.clone(), 1);
        stack.push(f.clone());
        for t in edges.get(f).into_iter().flatten() {
            match state.get(t).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|x| x == t).unwrap_or(0);
                    return Some(stack[from..].to_vec());
                }
                0 => {
                    if let Some(c) = visit(t, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(f.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for f in edges.keys() {
        if state.get(f).copied().unwrap_or(0) == 0 {
            if let Some(circle) = visit(f, &edges, &mut state, &mut Vec::new()) {
                let names: Vec<String> =
                    circle.iter().map(|p| p.strip_prefix(src()).expect("rel").display().to_string()).collect();
                panic!("files of node/src import each other in a circle: {}", names.join(" -> "));
            }
        }
    }
}

#[test]
fn no_file_holds_more_than_about_400_lines_of_code() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut big = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let code = non_test_code(&text).lines().filter(|l| !l.trim().is_empty() && !l.trim().starts_with("//")).count();
        if code > 400 {
            big.push(format!("{}: {code} lines", f.display()));
        }
    }
    assert!(big.is_empty(), "files that hold more than one idea:\n{}", big.join("\n"));
}
