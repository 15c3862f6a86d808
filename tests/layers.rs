//! The crate's layers: a module may use the modules of lower layers, and
//! those of its own layer as long as no cycle arises; never a higher one.
//! Read from the `crate::…` paths of `src/**/*.rs` (comments and literals
//! skipped; the binaries in `src/bin` and `main.rs` sit above everything).
//! The README's architecture section draws the same picture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; each line one layer of top-level modules.
const LAYERS: &[&[&str]] = &[
    // The `tshs` command line.
    &["cli"],
    // The processes: the mount (and its FUSE adapter), the HTTP space
    // server, the maintenance tasks.
    &["mount", "fuse", "space_server", "tasks"],
    // The filesystem core.
    &["fs"],
    // Import of on-disk trees: the tree walker and the scanner.
    &["import"],
    // The Admin Node.
    &["cluster"],
    // The Storage Nodes.
    &["shard"],
    // Stores and the database access beneath them; space placement.
    &["object_store", "disk_tier", "db", "placement"],
    // Leaves.
    &["config", "clock", "metrics", "logging", "protocol"],
];

/// A use of module `to` by module `from` at `place` (file:line).
#[derive(Debug)]
struct Edge {
    from: String,
    to: String,
    place: String,
}

#[test]
fn no_module_uses_a_higher_layer_or_closes_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
        .collect();
    let mut modules = BTreeSet::new();
    let mut edges = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        modules.insert(module.clone());
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, to) in crate_paths(&text) {
            if to != module {
                edges.push(Edge {
                    from: module.clone(),
                    to,
                    place: format!("src/{}:{line}", rel.display()),
                });
            }
        }
    }
    let mut problems = Vec::new();
    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            problems.push(format!("module `{m}` is in no layer: add it to LAYERS"));
        }
    }
    for m in layer_of.keys() {
        if !modules.contains(*m) {
            problems.push(format!("LAYERS names `{m}`, which is no module"));
        }
    }
    for e in &edges {
        if !modules.contains(&e.to) {
            problems.push(format!("{}: `crate::{}` is no module", e.place, e.to));
            continue;
        }
        let (Some(from), Some(to)) = (layer_of.get(e.from.as_str()), layer_of.get(e.to.as_str()))
        else {
            continue; // a module in no layer: reported above
        };
        if to < from {
            problems.push(format!(
                "{}: `{}` uses the higher layer's `{}`",
                e.place, e.from, e.to
            ));
        }
    }
    for cycle in cycles(&edges) {
        let places: Vec<&str> = edges
            .iter()
            .filter(|e| cycle.contains(&e.from) && cycle.contains(&e.to))
            .map(|e| e.place.as_str())
            .collect();
        problems.push(format!(
            "import cycle among {}: {}",
            cycle.join(", "),
            places.join(", ")
        ));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The top-level module of a file under `src/` (`None`: the crate root or
/// a binary).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The top-level modules named by `crate::x` and `crate::{x, y::z}` paths
/// in Rust source, with their line; comments, strings and chars skipped.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code = code_only(text);
    let chars: Vec<char> = code.chars().collect();
    let line_at = |i: usize| 1 + chars[..i].iter().filter(|c| **c == '\n').count();
    let ident_at = |mut i: usize| {
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        (chars[start..i].iter().collect::<String>(), i)
    };
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let (word, end) = ident_at(i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        i = end;
        if !boundary || word != "crate" {
            continue;
        }
        let j = skip_ws(end);
        if !code[char_offset(&code, j)..].starts_with("::") {
            continue;
        }
        let j = skip_ws(j + 2);
        if chars.get(j) == Some(&'{') {
            // A group: the first name of each item at depth 1.
            let (mut k, mut depth, mut item_start) = (j + 1, 1, true);
            while k < chars.len() && depth > 0 {
                match chars[k] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 1 => {
                        let (name, e) = ident_at(k);
                        if !name.is_empty() && name != "self" {
                            out.push((line_at(k), name));
                        }
                        item_start = false;
                        k = e.max(k + 1);
                        continue;
                    }
                    _ => {}
                }
                k += 1;
            }
            i = k;
        } else {
            let (name, _) = ident_at(j);
            if !name.is_empty() {
                out.push((line_at(j), name));
            }
        }
    }
    out
}

fn char_offset(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(b, _)| b)
}

/// The source with comments, string and char literals blanked out (line
/// breaks kept, so line numbers stay).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                let two = (c[i], c.get(i + 1).copied());
                if two == ('/', Some('*')) || two == ('*', Some('/')) {
                    depth += if two.0 == '/' { 1 } else { -1 };
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !is_ident(c[i - 1]) || c[i - 1] == 'b')
            && matches!(next, Some('"' | '#'))
        {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for ch in &c[i..j.min(c.len())] {
                blank(&mut out, *ch);
            }
            i = j;
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{…}'), else a lifetime.
            let end = if next == Some('\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    for ch in &c[i..=e] {
                        blank(&mut out, *ch);
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c[i]);
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The strongly connected groups of more than one module (Tarjan).
fn cycles(edges: &[Edge]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
        graph.entry(&e.to).or_default();
    }
    struct Tarjan<'a> {
        graph: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for &w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v, l);
                } else if self.stack.contains(&w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().position(|x| *x == v).unwrap();
                let group: Vec<String> = self.stack.drain(at..).map(String::from).collect();
                if group.len() > 1 {
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn paths_are_read_from_code_only() {
    let text = r##"
use crate::a::B;
use crate::{b, c::{D, e}, self};
// crate::commented
/* crate::blocked /* nested crate::x */ */
let s = "crate::quoted \" crate::escaped";
let r = r#"crate::raw "# ;
let ch = '"'; let l: &'static str = x::<crate::f::G>();
pub(crate) fn g() {}
"##;
    let found: Vec<String> = crate_paths(text).into_iter().map(|p| p.1).collect();
    assert_eq!(found, ["a", "b", "c", "f"]);
    let cyclic = [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")].map(|(f, t)| Edge {
        from: f.into(),
        to: t.into(),
        place: String::new(),
    });
    assert_eq!(cycles(&cyclic), [["x", "y", "z"]]);
}
