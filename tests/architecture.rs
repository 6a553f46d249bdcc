//! The shape of the code, checked: the layers of `src/` import only downwards, and no
//! crate has an import circle between its files. ARCHITECTURE.md explains the layers; this
//! test keeps it true.
//!
//! A file's imports are the module paths its code (not its comments, not its tests) names:
//! `crate::a::b`, `super::x`, `self::x`, and in a `mod.rs` or `lib.rs` its own children by
//! bare name (`pub use child::Item`). A `mod` declaration is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, lowest first: each may import only those before it.
const LAYERS: &[&[&str]] = &[
    // Foundations: no knowledge of training, models or files.
    &["dtype", "fault", "shim", "progress", "metrics", "schedule", "serde_exact", "device", "logging"],
    // Features, each owning its config section.
    &["memory", "data", "model", "checkpoint", "optim", "distributed"],
    // Composing the sections.
    &["config"],
    // The training step, and the seed guide's helpers over it.
    &["training", "guide"],
    // One run, start to finish; then what reads runs.
    &["run", "report"],
    // The command line.
    &["cli", "app"],
];

type Module = Vec<String>;

/// Every `.rs` file under `root` by module path (`a/b.rs` and `a/b/mod.rs` are `a::b`;
/// `lib.rs` is the root, `[]`).
fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files
        .into_iter()
        .filter(|f| !f.starts_with(root.join("bin")) && f.file_name().unwrap() != "main.rs")
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts, f)
        })
        .collect()
}

/// The code of a file that counts: its tests (from the first `#[cfg(test)]`) and comment
/// lines left out.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every path `code` names: those of its `use` trees expanded (`use a::{b, c::d}` names
/// `a::b` and `a::c::d`), and the `::`-separated identifier runs elsewhere.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` trees, each up to its `;`; what lies between them is scanned for inline paths.
    while let Some(at) = find_use(rest) {
        inline_paths(&rest[..at], &mut out);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        let tokens = tokens(&rest[at + 3..end]);
        use_tree(&tokens, &mut 0, Vec::new(), &mut out);
        rest = &rest[(end + 1).min(rest.len())..];
    }
    inline_paths(rest, &mut out);
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Where the next `use` keyword starts.
fn find_use(code: &str) -> Option<usize> {
    let b = code.as_bytes();
    code.match_indices("use")
        .map(|(i, _)| i)
        .find(|&i| (i == 0 || !is_ident(b[i - 1])) && b.get(i + 3).is_some_and(|c| c.is_ascii_whitespace()))
}

/// Identifiers and the punctuation of a use tree (`::`, `{`, `}`, `,`, `*`).
fn tokens(tree: &str) -> Vec<&str> {
    let b = tree.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push(&tree[s..i]);
        } else if tree[i..].starts_with("::") {
            out.push("::");
            i += 2;
        } else {
            if matches!(b[i], b'{' | b'}' | b',' | b'*') {
                out.push(&tree[i..=i]);
            }
            i += 1;
        }
    }
    out
}

/// Parses one use tree from `t[*i..]` under `prefix`, adding each leaf path to `out`.
fn use_tree(t: &[&str], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    while *i < t.len() {
        match t[*i] {
            "{" => {
                *i += 1;
                while *i < t.len() && t[*i] != "}" {
                    use_tree(t, i, prefix.clone(), out);
                    if *i < t.len() && t[*i] == "," {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "::" | "*" => *i += 1,
            "," | "}" => break,
            "as" => *i += 2,
            "self" if !prefix.is_empty() => *i += 1,
            ident => {
                prefix.push(ident.to_string());
                *i += 1;
            }
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// The `::`-separated identifier runs of code outside `use` trees.
fn inline_paths(code: &str, out: &mut Vec<Vec<String>>) {
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !(is_ident(b[i]) && (i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':'))) {
            i += 1;
            continue;
        }
        let mut parts = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < b.len() && is_ident(b[j]) {
                j += 1;
            }
            parts.push(code[s..j].to_string());
            if code[j..].starts_with("::") && b.get(j + 2).is_some_and(|&c| is_ident(c)) {
                j += 2;
            } else {
                break;
            }
        }
        if parts.len() > 1 {
            out.push(parts);
        }
        i = j.max(i + 1);
    }
}

/// Which modules each module imports (itself left out).
fn imports(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(root);
    let mut edges = BTreeMap::new();
    for (me, file) in &mods {
        let is_dir_module = matches!(file.file_name().unwrap().to_str(), Some("mod.rs" | "lib.rs"));
        let mut to = BTreeSet::new();
        for path in paths(&code(file)) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let (mut base, rest): (Module, &[&str]) = match path[0] {
                "crate" => (Vec::new(), &path[1..]),
                "self" => (me.clone(), &path[1..]),
                "super" => {
                    let supers = path.iter().take_while(|p| **p == "super").count();
                    let base = me[..me.len().saturating_sub(supers)].to_vec();
                    (base, &path[supers..])
                }
                child if is_dir_module && mods.contains_key(&[me.clone(), vec![child.to_string()]].concat()) => {
                    (me.clone(), &path[..])
                }
                _ => continue,
            };
            base.extend(rest.iter().map(|s| s.to_string()));
            // The longest prefix that is a module: `crate::a::b::Item` imports `a::b`.
            if let Some(target) = (1..=base.len()).rev().map(|k| base[..k].to_vec()).find(|m| mods.contains_key(m)) {
                if &target != me {
                    to.insert(target);
                }
            }
        }
        edges.insert(me.clone(), to);
    }
    edges
}

/// Every import circle between files, each as the modules on it.
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    // Modules that reach themselves, grouped by the set they reach each other through.
    let reach = |from: &Module| -> BTreeSet<Module> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Module> = edges.get(from).into_iter().flatten().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(edges.get(m).into_iter().flatten());
            }
        }
        seen
    };
    let reached: BTreeMap<&Module, BTreeSet<Module>> = edges.keys().map(|m| (m, reach(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reached {
        if r.contains(*m) {
            let circle: Vec<String> =
                r.iter().filter(|o| reached[o].contains(*m)).map(|o| format!("`{}`", o.join("::"))).collect();
            found.insert(circle);
        }
    }
    found.into_iter().collect()
}

fn crate_root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let mut all = Vec::new();
    for root in ["src", "crates/tckpt/src", "crates/train-ckpt/src"] {
        for circle in circles(&imports(&crate_root(root))) {
            all.push(format!("{root}: {}", circle.join(" <-> ")));
        }
    }
    assert!(
        all.is_empty(),
        "import circles (break each by moving what both need into a file of its own):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_layers_of_src_import_only_downwards() {
    let rank: BTreeMap<&str, usize> = LAYERS.iter().flat_map(|l| l.iter()).enumerate().map(|(i, m)| (*m, i)).collect();
    let edges = imports(&crate_root("src"));
    let mut wrong = Vec::new();
    for (from, to) in &edges {
        let Some(a) = from.first() else { continue };
        let ra = *rank
            .get(a.as_str())
            .unwrap_or_else(|| panic!("`{a}` is in no layer: add it to LAYERS and ARCHITECTURE.md"));
        for b in to.iter().filter_map(|m| m.first()).filter(|b| *b != a) {
            if rank[b.as_str()] > ra {
                wrong.push(format!("{} imports `{b}`, which sits above `{a}`", from.join("::")));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports that run back up the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_import_reader_sees_every_form_of_import() {
    let code = "pub use crate::a::b::{C, d::{self, E as F}};\nuse super::super::e::G;\nlet x = self::g::h();\n\
                child::run(); pub(crate) use super::{i, j};\nstd::mem::take(x);";
    let found: Vec<String> = paths(code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b::C",
            "crate::a::b::d",
            "crate::a::b::d::E",
            "super::super::e::G",
            "self::g::h",
            "child::run",
            "super::i",
            "super::j",
            "std::mem::take"
        ]
    );
}
