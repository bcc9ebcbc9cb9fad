//! Import cycles between modules, found by reading the sources.
//!
//! Within a crate, the modules that share a parent must depend on each other one way only: a
//! module may use its parent and its children freely, but if `a` uses `b` (or anything under
//! `b`), nothing under `b` may use `a`. The check reads every `crate::`, `super::` and `self::`
//! path of a crate (imports and paths in code, test modules included; comments and strings are
//! skipped), maps each to the deepest module it names, lifts each dependency to the two
//! siblings it crosses between, and reports every cycle among siblings with the lines that
//! make it. It is text-based, not a compiler: enough for paths as rustfmt writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module, as its path from the crate root (`[]` is the root).
type ModPath = Vec<String>;

/// One use of another module: where it is written, and what it names.
#[derive(Debug, Clone)]
struct Use {
    from: ModPath,
    to: ModPath,
    /// `file:line` of the path.
    at: String,
}

/// The modules of one crate and the paths each one writes.
#[derive(Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    uses: Vec<Use>,
}

/// Every cycle among sibling modules of the crate rooted at `root` (`src/lib.rs`,
/// `src/main.rs`), each as a readable paragraph; empty when there is none.
pub fn cycles(root: &Path) -> std::io::Result<Vec<String>> {
    let mut krate = Crate::default();
    let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
    read_module(&mut krate, Vec::new(), root, &dir)?;
    Ok(krate.cycles())
}

/// The crate roots of every member of the workspace at `workspace`.
pub fn crate_roots(workspace: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    for entry in std::fs::read_dir(workspace)? {
        let src = entry?.path().join("src");
        for root in ["lib.rs", "main.rs"] {
            let file = src.join(root);
            if file.is_file() {
                roots.push(file);
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for bin in bins {
                let bin = bin?.path();
                if bin.extension().is_some_and(|e| e == "rs") {
                    roots.push(bin);
                }
            }
        }
    }
    roots.sort();
    Ok(roots)
}

/// Reads the module `path` from `file`; its children's files are under `dir`.
fn read_module(krate: &mut Crate, path: ModPath, file: &Path, dir: &Path) -> std::io::Result<()> {
    let text = blank_comments_and_strings(&std::fs::read_to_string(file)?);
    let shown = file.display().to_string();
    read_text(krate, path, &text, 0, text.len(), &shown, dir)
}

/// Reads the module `path` whose body is `text[start..end]`: its paths, its inline modules,
/// and its children in their own files.
fn read_text(
    krate: &mut Crate,
    path: ModPath,
    text: &str,
    start: usize,
    end: usize,
    file: &str,
    dir: &Path,
) -> std::io::Result<()> {
    krate.modules.insert(path.clone());
    let mut i = start;
    // Inline module bodies are read as their own modules, not as this one's text.
    let mut skip_to = start;
    let bytes = text.as_bytes();
    while i < end {
        if i < skip_to {
            i = skip_to;
            continue;
        }
        if starts_word(bytes, i) && text[i..end].starts_with("mod ") {
            let rest = &text[i + 4..end];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = rest[name.len()..].trim_start();
            if !name.is_empty() {
                let mut child = path.clone();
                child.push(name.clone());
                if after.starts_with(';') {
                    let (child_file, child_dir) = child_location(dir, &name);
                    read_module(krate, child, &child_file, &child_dir)?;
                } else if after.starts_with('{') {
                    let open = end - after.len();
                    let close = matching_brace(bytes, open).unwrap_or(end);
                    read_text(krate, child, text, open + 1, close, file, &dir.join(&name))?;
                    skip_to = close + 1;
                    continue;
                }
            }
        }
        for prefix in ["crate::", "super::", "self::"] {
            if starts_word(bytes, i) && text[i..end].starts_with(prefix) {
                let line = text[..i].matches('\n').count() + 1;
                let (trees, used) = use_trees(&text[i..end]);
                for tree in trees {
                    if let Some(to) = resolve(&path, &tree) {
                        krate.uses.push(Use {
                            from: path.clone(),
                            to,
                            at: format!("{file}:{line}"),
                        });
                    }
                }
                i += used.max(1) - 1;
                break;
            }
        }
        i += 1;
    }
    Ok(())
}

/// Where `mod name;` declared in a module whose children live in `dir` is read from, and
/// where its own children live.
fn child_location(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let flat = dir.join(format!("{name}.rs"));
    if flat.is_file() {
        (flat, dir.join(name))
    } else {
        (dir.join(name).join("mod.rs"), dir.join(name))
    }
}

fn starts_word(bytes: &[u8], i: usize) -> bool {
    i == 0
        || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':')
}

fn matching_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The paths a path or use tree at the start of `text` spells, expanded (`crate::{a, b::c}`
/// is `crate::a` and `crate::b::c`), and how many bytes it took.
fn use_trees(text: &str) -> (Vec<Vec<String>>, usize) {
    let mut out = Vec::new();
    let used = tree(text, Vec::new(), &mut out);
    (out, used)
}

fn tree(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut segments = prefix;
    let mut i = 0;
    let bytes = text.as_bytes();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return i + 1;
                }
                i += tree(&text[i..], segments.clone(), out);
            }
        }
        let word: String = text[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if word.is_empty() {
            break;
        }
        segments.push(word.clone());
        i += word.len();
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    out.push(segments);
    i
}

/// The deepest module a path written in module `from` names (`None` for a path that leaves
/// the crate, e.g. `super` at the root).
fn resolve(from: &ModPath, segments: &[String]) -> Option<ModPath> {
    let mut at: ModPath = from.clone();
    let mut rest = segments;
    while let Some((first, tail)) = rest.split_first() {
        match first.as_str() {
            "crate" => at.clear(),
            "super" => {
                at.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = tail;
    }
    // Any further segment may name a child module; whether it does is known once the whole
    // crate is read, so keep them and trim in `Crate::cycles`.
    at.extend(rest.iter().cloned());
    Some(at)
}

impl Crate {
    /// The longest prefix of `path` that is a module.
    fn module_of(&self, path: &[String]) -> ModPath {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.modules.contains(p))
            .unwrap_or_default()
    }

    fn cycles(&self) -> Vec<String> {
        // Parent → (sibling → sibling → the uses that make the edge).
        type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;
        let mut graphs: BTreeMap<ModPath, Edges> = BTreeMap::new();
        for u in &self.uses {
            let to = self.module_of(&u.to);
            let common = u.from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            // A use of an ancestor or of a descendant is free.
            if common == u.from.len() || common == to.len() {
                continue;
            }
            let parent = u.from[..common].to_vec();
            graphs
                .entry(parent)
                .or_default()
                .entry(u.from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_default()
                .insert(format!(
                    "{} uses {} ({})",
                    u.from.join("::"),
                    to.join("::"),
                    u.at
                ));
        }
        let mut found = Vec::new();
        for (parent, edges) in &graphs {
            for component in strongly_connected(edges) {
                let members: BTreeSet<&String> = component.iter().collect();
                let mut why = Vec::new();
                for (from, tos) in edges {
                    for (to, uses) in tos {
                        if members.contains(from) && members.contains(to) {
                            why.extend(uses.iter().map(|u| format!("  {u}")));
                        }
                    }
                }
                let scope = if parent.is_empty() {
                    "the crate root".to_string()
                } else {
                    parent.join("::")
                };
                found.push(format!(
                    "cycle among the children of {scope}: {}\n{}",
                    component.join(", "),
                    why.join("\n")
                ));
            }
        }
        found
    }
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn strongly_connected(
    edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
) -> Vec<Vec<String>> {
    struct Search<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let nexts: Vec<&'a str> = self
                .edges
                .get(v)
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            for w in nexts {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut search = Search {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.out
}

/// `text` with every comment and string or char literal replaced by spaces (newlines kept, so
/// line numbers stay right).
fn blank_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#') | Some('"')) && raw_prefix(&chars, i) {
            // A raw string: r"...", r#"..."# (or br#"..."#).
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            let close: Vec<char> = close.chars().collect();
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.extend(std::iter::repeat_n(' ', close.len().min(chars.len() - i)));
            i += close.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            // `'x'`, or an escape (`'\n'`, `'\''`, `'\u{..}'`) closed by the next quote.
            let end = if chars[i + 1] == '\\' {
                (i + 3..chars.len())
                    .find(|&k| chars[k] == '\'')
                    .unwrap_or(chars.len() - 1)
            } else {
                i + 2
            };
            out.extend(std::iter::repeat_n(' ', end + 1 - i));
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Whether the `r` at `i` starts a raw string prefix (`r`, `br`, `cr`), not an identifier.
fn raw_prefix(chars: &[char], i: usize) -> bool {
    !ident_before(chars, i) || (matches!(chars[i - 1], 'b' | 'c') && !ident_before(chars, i - 1))
}

/// Whether the `'` at `i` opens a char literal (`'a'`, `'\n'`, `'\''`) rather than a lifetime.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    matches!(
        (chars.get(i + 1), chars.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
    }

    #[test]
    fn a_cycle_between_siblings_is_found_with_its_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &[
                ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
                ("src/a.rs", "use crate::b::Thing;\n"),
                // Through a child of b, and in a grouped import.
                ("src/b/mod.rs", "mod inner;\npub struct Thing;\n"),
                ("src/b/inner.rs", "use crate::{a, c::X};\n"),
                ("src/c.rs", "pub struct X;\n"),
            ],
        );
        let found = cycles(&dir.path().join("src/lib.rs")).expect("read");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a, b"), "{}", found[0]);
        assert!(found[0].contains("a.rs:1"), "{}", found[0]);
        assert!(found[0].contains("inner.rs:1"), "{}", found[0]);
        assert!(
            !found[0].contains("c.rs"),
            "c is used, not in the cycle: {}",
            found[0]
        );
    }

    #[test]
    fn parents_children_comments_and_strings_are_not_cycles() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &[
                ("src/lib.rs", "mod a;\nmod b;\n"),
                (
                    "src/a.rs",
                    "mod child;\nuse child::X;\npub fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::b::Y;\n}\n",
                ),
                ("src/a/child.rs", "use super::f;\npub struct X;\n"),
                (
                    "src/b.rs",
                    "//! See [`crate::a`].\npub struct Y;\nconst S: &str = \"crate::a::f\";\nconst R: &str = r#\"crate::a\"#;\nfn g<'a>(x: &'a str) -> char { '{' }\n",
                ),
            ],
        );
        let found = cycles(&dir.path().join("src/lib.rs")).expect("read");
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_test_module_counts_as_its_files_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &[
                ("src/lib.rs", "mod a;\nmod b;\n"),
                ("src/a.rs", "use crate::b::Y;\n"),
                (
                    "src/b.rs",
                    "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::super::a;\n}\n",
                ),
            ],
        );
        let found = cycles(&dir.path().join("src/lib.rs")).expect("read");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("b::tests uses a"), "{}", found[0]);
    }

    /// The rule itself, on every crate of this workspace.
    #[test]
    fn no_module_of_the_workspace_is_in_an_import_cycle() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let roots = crate_roots(workspace).expect("read the workspace");
        assert!(
            roots.iter().any(|r| r.ends_with("coordinator/src/lib.rs")),
            "{roots:?}"
        );
        let mut found = Vec::new();
        for root in &roots {
            for cycle in cycles(root).expect("read the crate") {
                found.push(format!("{}: {cycle}", root.display()));
            }
        }
        assert!(found.is_empty(), "{}", found.join("\n\n"));
    }
}
