//! ARCHITECTURE.md's invariants about the shape of the code, read from the sources:
//! no import circles between sibling modules (at the crate's top level, and among the
//! children of any module), and an IO-free core (`protocol`, `session`, `lifecycle`,
//! `handshake`) that imports nothing from the rest of the crate but itself and names no IO
//! (sockets, files, runtimes, system calls, the clock). Imports are
//! read from `crate::` and `super::` paths; a child's uses of its parent's items are its
//! own business and not an edge between siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path in the crate, e.g. `["server", "tasks"]`.
type ModulePath = Vec<String>;

/// Every module of the crate rooted at `src`, with its source.
fn modules(src: &Path) -> BTreeMap<ModulePath, String> {
    let mut modules = BTreeMap::new();
    let mut pending: Vec<PathBuf> = vec![src.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: ModulePath = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            modules.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
    modules
}

/// A module's own code: test code may reach anywhere, and comments link where they like.
fn own_code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or(source);
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a source names through `crate::` or `super::`, braces expanded.
fn named_paths(source: &str) -> Vec<(String, Vec<String>)> {
    let source = own_code(source);
    let source = source.as_str();
    let mut paths = Vec::new();
    for root in ["crate::", "super::"] {
        for (at, _) in source.match_indices(root) {
            let before = source[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &source[at + root.len()..];
            for path in expand(rest) {
                paths.push((root.trim_end_matches("::").to_owned(), path));
            }
        }
    }
    paths
}

/// `a::b::{c, d::e}` → [a::b::c, a::b::d::e] (the first path expression of `text`).
fn expand(text: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut ident = String::new();
    for (at, c) in text.char_indices() {
        match c {
            c if c.is_alphanumeric() || c == '_' => ident.push(c),
            ':' => {
                if !ident.is_empty() {
                    prefix.push(std::mem::take(&mut ident));
                }
            }
            '{' => {
                let inner = &text[at + 1..matching_brace(text, at)];
                return split_top_level(inner)
                    .into_iter()
                    .flat_map(|part| expand(part.trim()))
                    .map(|tail| prefix.iter().cloned().chain(tail).collect())
                    .collect();
            }
            _ => break,
        }
    }
    if !ident.is_empty() {
        prefix.push(ident);
    }
    vec![prefix]
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (at, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + at;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The module a path names: the longest known module its segments start with.
fn resolve(modules: &BTreeMap<ModulePath, String>, segments: &[String]) -> Option<ModulePath> {
    (1..=segments.len())
        .rev()
        .map(|len| segments[..len].to_vec())
        .find(|candidate| modules.contains_key(candidate))
}

/// Edges between siblings: for `from` naming `to`, the pair of children of their closest
/// common ancestor on each side (none when one contains the other).
fn sibling_edge(from: &ModulePath, to: &ModulePath) -> Option<(ModulePath, ModulePath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    (common < from.len() && common < to.len()).then(|| (from[..=common].to_vec(), to[..=common].to_vec()))
}

/// Every module's imports, resolved to modules of the crate.
fn imports(modules: &BTreeMap<ModulePath, String>) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let mut graph: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (module, source) in modules {
        for (root, path) in named_paths(source) {
            let absolute: Vec<String> = match root.as_str() {
                "crate" => path,
                _ => module[..module.len().saturating_sub(1)]
                    .iter()
                    .cloned()
                    .chain(path)
                    .collect(),
            };
            if let Some(target) = resolve(modules, &absolute)
                && &target != module
            {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

/// A cycle in `edges`, if any.
fn find_cycle(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Option<Vec<ModulePath>> {
    fn visit(
        node: &ModulePath,
        edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        stack: &mut Vec<ModulePath>,
        done: &mut BTreeSet<ModulePath>,
    ) -> Option<Vec<ModulePath>> {
        if let Some(at) = stack.iter().position(|seen| seen == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

fn crate_modules() -> BTreeMap<ModulePath, String> {
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_import_circles_between_sibling_modules() {
    let modules = crate_modules();
    assert!(modules.contains_key(&vec!["server".to_owned(), "tasks".to_owned()]));
    let mut siblings: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (from, targets) in imports(&modules) {
        for to in targets {
            if let Some((a, b)) = sibling_edge(&from, &to) {
                siblings.entry(a).or_default().insert(b);
            }
        }
    }
    assert!(
        siblings.contains_key(&vec!["compare".to_owned()]),
        "the reader sees the top-level edges: {siblings:?}"
    );
    if let Some(cycle) = find_cycle(&siblings) {
        let cycle: Vec<String> = cycle.iter().map(|module| module.join("::")).collect();
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

/// The core: the modules that do no IO, have no clock of their own, and import nothing of
/// the crate but each other. Each must exist (a renamed module would pass vacuously).
const CORE: [&str; 5] = ["protocol", "session", "lifecycle", "handshake", "deflate"];

/// What IO looks like in Rust source: the standard library's IO modules, the runtimes and
/// system interfaces, sockets and files by their types, their reads and writes, and the
/// clock. Matched as whole words in the module's own code (tests and comments aside).
const IO_NAMES: [&str; 22] = [
    "std::net",
    "std::fs",
    "std::io",
    "std::os",
    "std::process",
    "std::thread",
    "tokio",
    "mio",
    "libc",
    "socket2",
    "hyper",
    "axum",
    "rustls",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "File",
    "read_exact",
    "write_all",
    "try_read",
    "try_write",
    "Instant::now",
];

/// The IO names a module's own code uses.
fn io_names_in(source: &str) -> Vec<&'static str> {
    let code = own_code(source);
    IO_NAMES
        .into_iter()
        .filter(|name| {
            code.match_indices(name).any(|(at, _)| {
                let before = code[..at].chars().last();
                let after = code[at + name.len()..].chars().next();
                let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !word(before) && !word(after)
            })
        })
        .collect()
}

#[test]
fn the_io_free_core_imports_only_itself() {
    let modules = crate_modules();
    for core in CORE {
        assert!(
            modules.contains_key(&vec![core.to_owned()]),
            "the core module {core} is missing: update CORE (and ARCHITECTURE.md) if it moved"
        );
    }
    for (module, targets) in imports(&modules) {
        if !CORE.contains(&module[0].as_str()) {
            continue;
        }
        for target in targets {
            assert!(
                CORE.contains(&target[0].as_str()),
                "{} imports {}: the core does no IO and knows nothing of the server around it",
                module.join("::"),
                target.join("::")
            );
        }
    }
}

#[test]
fn the_core_does_no_io() {
    let modules = crate_modules();
    for (module, source) in &modules {
        if !module.first().is_some_and(|top| CORE.contains(&top.as_str())) {
            continue;
        }
        let found = io_names_in(source);
        assert!(
            found.is_empty(),
            "{} uses {found:?}: the core takes bytes and time from its callers and does no IO",
            module.join("::")
        );
    }
}

#[test]
fn a_planted_io_import_is_found() {
    let planted = [
        "use std::net::TcpStream;",
        "use tokio::io::AsyncReadExt;",
        "fn f() { let _ = std::fs::read(\"x\"); }",
        "fn f(s: &mut S) { s.write_all(b\"x\"); }",
        "fn f() -> std::time::Instant { std::time::Instant::now() }",
        "fn f() { unsafe { libc::close(0) }; }",
    ];
    for source in planted {
        assert!(!io_names_in(source).is_empty(), "not found in {source:?}");
    }
    // Words that only contain an IO name, comments and tests are not IO.
    let clean = "use crate::lifecycle::Flow; // a TcpStream comment\nfn tokio_free() {}\nfn filed() {}\n#[cfg(test)]\nmod tests { use std::net::TcpStream; }";
    assert_eq!(io_names_in(clean), Vec::<&str>::new());
}

#[test]
fn no_child_imports_its_parent() {
    // A parent module is its children's table of contents and entry point: what its
    // children share lives in a child of its own, so the way through the house runs one
    // way (a child's `super::sibling` is fine; `super::Item` of the parent is not).
    let modules = crate_modules();
    let mut found = Vec::new();
    for (module, targets) in imports(&modules) {
        for target in targets {
            if !target.is_empty() && module.len() > target.len() && module.starts_with(&target) {
                found.push(format!("{} -> {}", module.join("::"), target.join("::")));
            }
        }
    }
    assert!(found.is_empty(), "children importing their parent: {found:?}");
}

#[test]
fn the_reader_finds_a_circle_and_an_import() {
    // The checks above must be able to fail: a made-up crate with a circle and a core
    // module that imports the server.
    let mut modules = BTreeMap::new();
    let module = |path: &str| path.split("::").map(str::to_owned).collect::<ModulePath>();
    modules.insert(module("a"), "use crate::b::{x, y::{Z}};".to_owned());
    modules.insert(
        module("b"),
        "use super::a; // links to crate::session are no import".to_owned(),
    );
    modules.insert(module("b::y"), String::new());
    modules.insert(module("session"), "fn f() { crate::server::run(); }".to_owned());
    modules.insert(module("server"), String::new());
    let graph = imports(&modules);
    assert_eq!(graph[&module("a")], [module("b"), module("b::y")].into());
    assert_eq!(graph[&module("session")], [module("server")].into());
    assert_eq!(graph[&module("b")], [module("a")].into());
    let mut siblings: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets {
            if let Some((a, b)) = sibling_edge(&from, &to) {
                siblings.entry(a).or_default().insert(b);
            }
        }
    }
    assert!(find_cycle(&siblings).is_some());
}
