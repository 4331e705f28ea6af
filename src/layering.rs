//! The module layering, checked from the source (test only): no import
//! cycle among top-level modules, and every "Must not import:" line in a
//! module's `//!` header is true.
//!
//! An edge `a -> b` is any `crate::b` path in a non-comment line of a file
//! under `src/a` (or `src/a.rs`), `use` lines and inline paths alike, test
//! code included: a cycle through tests is still a cycle. Full-line comments
//! (doc links) do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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

/// The code lines of a file: full-line comments dropped.
fn code(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every `<prefix><ident>` in `text` (`crate::store::x` gives `store`).
fn paths_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Top-level module name of a file under `src/` (None for lib.rs, main.rs).
fn top_module(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

fn all_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
}

/// Module -> the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = all_files();
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for f in &files {
        let Some(from) = top_module(f) else { continue };
        let text = code(&std::fs::read_to_string(f).unwrap());
        for to in paths_after(&text, "crate::") {
            if to != from && tops.contains(&to) {
                g.get_mut(&from).unwrap().insert(to);
            }
        }
    }
    g
}

/// A cycle through `start`, if any (depth-first).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, m, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

/// The names in a file's "Must not import:" line (parenthesised remarks and
/// everything after the first full stop left out).
fn must_not_import(text: &str) -> Option<Vec<String>> {
    let header: String =
        text.lines().take_while(|l| l.starts_with("//!")).map(|l| l.trim_start_matches("//!").trim()).collect::<Vec<_>>().join(" ");
    let after = &header[header.find("Must not import:")? + "Must not import:".len()..];
    let mut flat = String::new();
    let mut depth = 0usize;
    for c in after.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => break,
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    Some(flat.split(',').filter_map(|s| s.split_whitespace().next().map(str::to_owned)).collect())
}

/// The files a header in `file` speaks for: itself, and for `x/mod.rs` or
/// `x.rs` beside a directory `x/`, every file in that directory.
fn governed(file: &Path) -> Vec<PathBuf> {
    let dir = if file.file_name().is_some_and(|n| n == "mod.rs") {
        file.parent().map(Path::to_path_buf)
    } else {
        Some(file.with_extension("")).filter(|d| d.is_dir())
    };
    let mut out = vec![file.to_path_buf()];
    if let Some(d) = dir {
        rust_files(&d, &mut out);
    }
    out
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let g = graph();
    assert!(g.contains_key("store") && g["lease"].contains("store"), "the scan found no modules: {g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle among top-level modules: {}", c.join(" -> "));
    }
}

#[test]
fn must_not_import_lines_hold() {
    let tops: BTreeSet<String> = all_files().iter().filter_map(|f| top_module(f)).collect();
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in all_files() {
        let Some(banned) = must_not_import(&std::fs::read_to_string(&file).unwrap()) else { continue };
        assert!(!banned.is_empty(), "{}: empty Must not import line", file.display());
        let own = top_module(&file);
        for f in governed(&file) {
            let text = code(&std::fs::read_to_string(&f).unwrap());
            let internal = paths_after(&text, "crate::");
            for b in &banned {
                let hit = if tops.contains(b) {
                    own.as_ref() != Some(b) && internal.contains(b)
                } else {
                    // An external crate (sqlx, axum, cedar_policy, ...).
                    !paths_after(&text, &format!("{b}::")).is_empty()
                        || paths_after(&text, "use ").contains(b.as_str())
                };
                if hit {
                    broken.push(format!("{} imports `{b}` ({} says it must not)", f.display(), file.display()));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} rules checked");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_checker_sees_cycles_and_comments() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(cycle(&g), Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned(), "a".to_owned()]));
    assert_eq!(paths_after(&code("// crate::x\nuse crate::y::Z;\nlet a = mycrate::w;"), "crate::"), BTreeSet::from(["y".to_owned()]));
    assert_eq!(
        must_not_import("//! Must not import: http (wire, types), store,\n//! sqlx. Later: x.\nuse a;"),
        Some(vec!["http".to_owned(), "store".to_owned(), "sqlx".to_owned()])
    );
}
