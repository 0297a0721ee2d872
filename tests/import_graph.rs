//! The import graph of `src/` has no cycle and no arrow that runs up the
//! layer order `src/lib.rs` documents.
//!
//! Each file of the library is a node. An edge runs from a file to every
//! module its paths name: `crate::…` anywhere, `super::…` and `self::…` in
//! top-level `use` items, and a child module's name used as a path root.
//! A path through a module's `pub use` re-export ends at the file that
//! defines the item, so `crate::runtime::Engine` points at
//! `runtime/engine.rs`, not at `runtime/mod.rs`, and the re-export itself
//! is no arrow; nor is an arrow from a folder's `mod.rs` down to its own
//! files (it composes them). Two checks then run:
//! - no cycle among files (a folder's `mod.rs` counts as a file);
//! - an arrow between two top-level modules never points to a higher layer
//!   of the list between the `layers:` markers in `src/lib.rs`, and every
//!   top-level module is in that list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path from the crate root, e.g. `["runtime", "engine"]`.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Rust source without comments, strings and char literals, as tokens.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && raw_string_start(&chars, i)
        {
            i = skip_raw_string(&chars, i);
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 1);
        } else if c == 'b' && next == Some('r') && raw_string_start(&chars, i + 1) {
            i = skip_raw_string(&chars, i + 1);
        } else if c == '"' {
            i = skip_string(&chars, i);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

fn raw_string_start(chars: &[char], at: usize) -> bool {
    let mut j = at + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

fn skip_raw_string(chars: &[char], at: usize) -> usize {
    let mut j = at + 1;
    let mut hashes = 0;
    while chars[j] == '#' {
        hashes += 1;
        j += 1;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}

fn skip_string(chars: &[char], at: usize) -> usize {
    let mut j = at + 1;
    while j < chars.len() && chars[j] != '"' {
        if chars[j] == '\\' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// One path a file names, and whether it is a `pub use` (a re-export).
struct Named {
    segments: Vec<String>,
    alias: Option<String>,
    reexport: bool,
}

/// Reads a use tree (or an expression path) starting at `tokens[at]`,
/// appending every leaf path below `prefix`; returns the index after it.
fn use_tree(
    tokens: &[Token],
    mut at: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(at) {
            Some(Token::Punct('{')) => {
                at += 1;
                loop {
                    match tokens.get(at) {
                        Some(Token::Punct('}')) => return at + 1,
                        Some(Token::Punct(',')) => at += 1,
                        None => return at,
                        _ => at = use_tree(tokens, at, &path, out),
                    }
                }
            }
            Some(Token::Punct('*')) => {
                out.push((path, None));
                return at + 1;
            }
            Some(Token::Ident(name))
                if name == "self"
                    && !path.is_empty()
                    && at > 0
                    && tokens[at - 1] != Token::PathSep =>
            {
                out.push((path, None));
                return at + 1;
            }
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                at += 1;
                if tokens.get(at) == Some(&Token::PathSep) {
                    at += 1;
                    continue;
                }
                let mut alias = None;
                if tokens.get(at) == Some(&Token::Ident("as".into())) {
                    if let Some(Token::Ident(name)) = tokens.get(at + 1) {
                        alias = Some(name.clone());
                    }
                    at += 2;
                }
                out.push((path, alias));
                return at;
            }
            _ => {
                if !path.is_empty() {
                    out.push((path, None));
                }
                return at;
            }
        }
    }
}

/// Every path a file names that may lead to another module of the crate.
fn named_paths(source: &str, children: &BTreeSet<String>) -> Vec<Named> {
    let tokens = tokens(source);
    let mut named = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let after_sep = i > 0 && tokens[i - 1] == Token::PathSep;
        match &tokens[i] {
            Token::Ident(word) if word == "use" => {
                let reexport = i > 0
                    && (tokens[i - 1] == Token::Ident("pub".into())
                        || (tokens[i - 1] == Token::Punct(')')
                            && i >= 4
                            && tokens[i - 4] == Token::Ident("pub".into())));
                let mut leaves = Vec::new();
                i = use_tree(&tokens, i + 1, &[], &mut leaves);
                named.extend(leaves.into_iter().map(|(segments, alias)| Named {
                    segments,
                    alias,
                    reexport,
                }));
            }
            Token::Ident(word)
                if !after_sep
                    && tokens.get(i + 1) == Some(&Token::PathSep)
                    && (word == "crate"
                        || word == "super"
                        || word == "self"
                        || children.contains(word)) =>
            {
                let mut leaves = Vec::new();
                i = use_tree(&tokens, i, &[], &mut leaves);
                named.extend(leaves.into_iter().map(|(segments, alias)| Named {
                    segments,
                    alias,
                    reexport: false,
                }));
            }
            _ => i += 1,
        }
    }
    named
}

struct Crate {
    /// Module path → its file, relative to `src/`.
    files: BTreeMap<ModPath, PathBuf>,
    /// Module path → the paths its file names.
    named: BTreeMap<ModPath, Vec<Named>>,
}

fn module_path(relative: &Path) -> ModPath {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn collect(dir: &Path, src: &Path, files: &mut BTreeMap<ModPath, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, src, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src).unwrap().to_path_buf();
            if relative != Path::new("main.rs") {
                files.insert(module_path(&relative), relative);
            }
        }
    }
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut files = BTreeMap::new();
        collect(src, src, &mut files);
        let mut named = BTreeMap::new();
        for (module, file) in &files {
            let children: BTreeSet<String> = files
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .map(|m| m.last().unwrap().clone())
                .collect();
            let source = std::fs::read_to_string(src.join(file)).unwrap();
            named.insert(module.clone(), named_paths(&source, &children));
        }
        Crate { files, named }
    }

    /// The absolute form of `segments` as written in `module`, or `None`
    /// when it names something outside the crate.
    fn absolute(&self, module: &ModPath, segments: &[String]) -> Option<Vec<String>> {
        let mut base = module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                let mut child = module.clone();
                child.push(first.to_string());
                if !self.files.contains_key(&child) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file module an absolute path ends in, following re-exports.
    fn resolve(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let split = (0..=path.len())
            .rev()
            .find(|&n| self.files.contains_key(&path[..n]))?;
        let module = path[..split].to_vec();
        if depth < 8
            && let Some(item) = path.get(split)
        {
            for named in &self.named[&module] {
                let exported = named.alias.as_ref().or(named.segments.last());
                if named.reexport && exported == Some(item) {
                    let target = self.absolute(&module, &named.segments)?;
                    let mut target = target;
                    target.extend(path[split + 1..].iter().cloned());
                    return self.resolve(&target, depth + 1).or(Some(module));
                }
            }
        }
        Some(module)
    }

    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (module, named) in &self.named {
            let out = edges.entry(module.clone()).or_default();
            // A re-export is the module's public face, not a use: paths
            // through it end at the defining file.
            for path in named.iter().filter(|path| !path.reexport) {
                let target = self
                    .absolute(module, &path.segments)
                    .and_then(|absolute| self.resolve(&absolute, 0));
                // A folder's `mod.rs` composes its own files (`node::run`
                // calls its phases): that arrow runs down, so it is no
                // arrow of the graph; its files' arrows back up to the
                // items `mod.rs` defines are.
                if let Some(target) = target
                    && !target.starts_with(module)
                    && !target.is_empty()
                {
                    out.insert(target);
                }
            }
        }
        edges
    }
}

fn show(module: &ModPath) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

/// Every cycle's files (strongly connected components of more than one file).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative enough for a crate's few hundred files.
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a ModPath) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        state.on_stack.insert(node);
        let targets = state.edges.get(node).into_iter().flatten();
        for target in targets {
            let target = state
                .edges
                .get_key_value(target)
                .map(|(k, _)| k)
                .unwrap_or(target);
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[target].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.index[target].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            loop {
                let member = state.stack.pop().unwrap();
                state.on_stack.remove(member);
                component.push(show(member));
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.found
}

/// The layer of each top-level module, from the list in `src/lib.rs`:
/// lines `//! N. name: module, module` between `layers:` markers; 1 is lowest.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let mut inside = false;
    for line in lib.lines() {
        let line = line.trim_start_matches("//!").trim();
        if line.starts_with("<!-- layers:") {
            inside = !line.contains("end");
            continue;
        }
        if !inside {
            continue;
        }
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue;
        };
        let modules = rest.split_once(':').map_or(rest, |(_, m)| m);
        for module in modules.split(',') {
            let module = module.trim().trim_matches('`').trim_end_matches('.');
            if !module.is_empty() {
                layers.insert(module.to_string(), number);
            }
        }
    }
    layers
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_file_of_src_is_in_an_import_cycle() {
    let krate = Crate::read(&src());
    let found = cycles(&krate.edges());
    assert!(found.is_empty(), "import cycles in src/: {found:#?}");
}

/// Every arrow from a module to one of a higher layer, and every top-level
/// module the layers leave out.
fn upward_arrows(krate: &Crate, layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut found: Vec<String> = krate
        .files
        .keys()
        .filter(|m| m.len() == 1 && !layers.contains_key(&m[0]))
        .map(|m| format!("{} is in no layer", m[0]))
        .collect();
    for (from, targets) in krate.edges() {
        let Some(from_top) = from.first() else {
            continue;
        };
        for to in targets {
            let (Some(&from_layer), Some(&to_layer)) = (layers.get(from_top), layers.get(&to[0]))
            else {
                continue;
            };
            if to[0] != *from_top && to_layer > from_layer {
                found.push(format!(
                    "{} (layer {from_layer}) -> {} (layer {to_layer})",
                    show(&from),
                    show(&to)
                ));
            }
        }
    }
    found
}

#[test]
fn no_arrow_between_top_level_modules_runs_up_the_layers_of_lib_rs() {
    let src = src();
    let krate = Crate::read(&src);
    let layers = layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let upward = upward_arrows(&krate, &layers);
    assert!(
        upward.is_empty(),
        "arrows up the layers of src/lib.rs: {upward:#?}"
    );
}

/// The checker itself finds a cycle and an upward arrow in a crate that has
/// them, so its passing on `src/` means something.
#[test]
fn the_checker_finds_a_planted_cycle_and_an_upward_arrow() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("low")).unwrap();
    std::fs::write(
        root.join("lib.rs"),
        "//! <!-- layers: -->\n//! 1. base: low\n//! 2. top: high, top\n//! <!-- layers: end -->\npub mod high;\npub mod low;\npub mod top;\n",
    )
    .unwrap();
    std::fs::write(root.join("top.rs"), "use crate::low::Thing;\n").unwrap();
    std::fs::write(root.join("high.rs"), "pub fn go() {}\n").unwrap();
    std::fs::write(
        root.join("low/mod.rs"),
        "mod a;\nmod b;\npub use a::Thing;\n",
    )
    .unwrap();
    // a -> b -> a through a re-export and a relative `super` path, plus
    // a string and a comment that must not count.
    std::fs::write(
        root.join("low/a.rs"),
        "use super::b::Other;\npub struct Thing;\nconst S: &str = \"crate::high::X\"; // crate::high\n",
    )
    .unwrap();
    std::fs::write(
        root.join("low/b.rs"),
        "pub struct Other(crate::low::Thing);\nfn f() { let _ = crate::high::go(); }\n",
    )
    .unwrap();
    let krate = Crate::read(root);
    let edges = krate.edges();
    let a = vec!["low".to_string(), "a".to_string()];
    let b = vec!["low".to_string(), "b".to_string()];
    assert_eq!(edges[&vec!["top".to_string()]], BTreeSet::from([a.clone()]));
    assert_eq!(edges[&a], BTreeSet::from([b.clone()]));
    assert_eq!(
        edges[&b],
        BTreeSet::from([a.clone(), vec!["high".to_string()]])
    );
    assert_eq!(
        cycles(&edges),
        vec![vec!["low::a".to_string(), "low::b".to_string()]]
    );
    let layers = layers(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
    assert_eq!(
        layers,
        BTreeMap::from([
            ("low".to_string(), 1),
            ("high".to_string(), 2),
            ("top".to_string(), 2)
        ])
    );
    assert_eq!(
        upward_arrows(&krate, &layers),
        vec!["low::b (layer 1) -> high (layer 2)".to_string()]
    );
}
