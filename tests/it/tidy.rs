//! Tidy: the layout rules of `src/`, checked on the source text (in the spirit of
//! rust-analyzer's tidy tests). Every `src/**/*.rs` file is read up to its first
//! `#[cfg(test)]` line (test modules may import anything), comments removed, and:
//!
//! - each `crate::X` path (also `crate::{X, ..}` groups, `$crate::X`, and `super::X`
//!   that leaves a top-level module) is an edge from the file's top-level module to
//!   `X`; every edge must be in [`ALLOWED`], and `runtime/candle` never reaches
//!   `crate::estimate`;
//! - the top-level modules (folders and files of `src/`) are exactly the keys of
//!   [`ALLOWED`], declared by `lib.rs`; the binary's own modules (`main.rs`, what it
//!   declares with `mod`) may name only each other through `crate::`;
//! - the edges seen form no cycle (computed, not implied by the table);
//! - `candle_core` / `candle_nn` are named only under `src/probe/`;
//! - file I/O (`std::fs`, `fs::`, `File::`, `OpenOptions`) only in [`FILE_IO`];
//! - network I/O (`ureq`, `std::net`, `TcpStream`) only in [`NETWORK`];
//! - `feature = "cuda"` only in [`CUDA_FEATURE`].
//!
//! Each rule counts what it checked, so none can pass on an empty or unread tree, and
//! `checker_reports_violations_in_a_fake_tree` runs the checker on a small in-memory
//! tree with one violation of each kind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::util::root;

/// Top-level module → the top-level modules it may import (directly).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("units", &["error"]),
    ("arch", &["units", "error"]),
    ("hf", &["arch", "units", "error"]),
    ("workload", &["arch", "units", "error"]),
    ("runtime", &["workload", "arch", "units", "error"]),
    (
        "estimate",
        &["runtime", "workload", "arch", "units", "error"],
    ),
    (
        "distributed",
        &["estimate", "runtime", "workload", "arch", "units", "error"],
    ),
    (
        "probe",
        &["runtime", "hf", "workload", "arch", "units", "error"],
    ),
    (
        "calibration",
        &[
            "probe", "estimate", "runtime", "workload", "arch", "units", "error",
        ],
    ),
    (
        "validate",
        &[
            "distributed",
            "estimate",
            "runtime",
            "workload",
            "hf",
            "arch",
            "units",
            "error",
        ],
    ),
    (
        "report",
        &[
            "validate",
            "calibration",
            "distributed",
            "estimate",
            "workload",
            "probe",
            "hf",
            "arch",
            "units",
            "error",
        ],
    ),
];

/// Files (paths under `src/`; a trailing `/` is a whole folder) that may do file I/O.
const FILE_IO: &[&str] = &[
    "hf/hub.rs",
    "hf/cache.rs",
    "hf/remote.rs",
    "hf/safetensors.rs",
    "probe/",
    "calibration/",
    "cli/",
    "main.rs",
];

/// The one file that opens network connections: the Hub client.
const NETWORK: &[&str] = &["hf/remote.rs"];

/// The files that name `feature = "cuda"` today: `probe/mod.rs` picks `cuda.rs` or
/// `cuda_stub.rs` with it, and nothing else names the feature.
const CUDA_FEATURE: &[&str] = &["probe/mod.rs"];

/// One source file: its path under `src/` (with `/`) and its text.
struct SrcFile {
    path: String,
    text: String,
}

/// Every `src/**/*.rs` file, sorted by path.
fn src_files() -> Vec<SrcFile> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<SrcFile>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(base).unwrap();
                let path = rel
                    .components()
                    .map(|c| c.as_os_str().to_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&p).unwrap();
                out.push(SrcFile { path, text });
            }
        }
    }
    let base = root().join("src");
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

// ---------------------------------------------------------------- lexing

/// The text up to (not including) its first `#[cfg(test)]` line.
fn before_tests(text: &str) -> &str {
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        end += line.len();
    }
    &text[..end]
}

/// Two views of Rust source, each the same number of lines as the input: `code`
/// without comments, and `bare` without comments and without the contents of string
/// and char literals (so that a message mentioning `crate::x` is not an import).
struct Views {
    code: String,
    bare: String,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn views(src: &str) -> Views {
    let s: Vec<char> = src.chars().collect();
    let (mut code, mut bare) = (String::new(), String::new());
    // `c` goes to both views; a blanked char becomes a space (newlines stay)
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        // a literal may start here: not inside an identifier, except after a `b`
        // prefix (b"..", b'.', br"..")
        let lit_ok =
            i == 0 || !is_ident(s[i - 1]) || (s[i - 1] == 'b' && (i < 2 || !is_ident(s[i - 2])));
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                code.push(' ');
                bare.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    code.push_str("  ");
                    bare.push_str("  ");
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    code.push_str("  ");
                    bare.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    code.push(blank(s[i]));
                    bare.push(blank(s[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && lit_ok && matches!(next, Some('"') | Some('#')) && {
            let mut j = i + 1;
            while j < s.len() && s[j] == '#' {
                j += 1;
            }
            j < s.len() && s[j] == '"'
        } {
            // raw string r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while s[j] == '#' {
                hashes += 1;
                j += 1;
            }
            for &ch in &s[i..=j] {
                code.push(ch);
                bare.push(ch);
            }
            i = j + 1;
            loop {
                if i >= s.len() {
                    break;
                }
                if s[i] == '"' && (0..hashes).all(|k| s.get(i + 1 + k) == Some(&'#')) {
                    for &ch in &s[i..=i + hashes] {
                        code.push(ch);
                        bare.push(ch);
                    }
                    i += 1 + hashes;
                    break;
                }
                code.push(s[i]);
                bare.push(blank(s[i]));
                i += 1;
            }
        } else if c == '"' {
            code.push('"');
            bare.push('"');
            i += 1;
            while i < s.len() && s[i] != '"' {
                if s[i] == '\\' && i + 1 < s.len() {
                    code.push(s[i]);
                    bare.push(' ');
                    i += 1;
                }
                code.push(s[i]);
                bare.push(blank(s[i]));
                i += 1;
            }
            if i < s.len() {
                code.push('"');
                bare.push('"');
                i += 1;
            }
        } else if c == '\'' && lit_ok {
            // a char literal ('x', '\n', '\u{1F600}') or a lifetime ('a)
            let len = if next == Some('\\') {
                (i + 3..s.len()).find(|&j| s[j] == '\'').map(|j| j - i + 1)
            } else if s.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(n) => {
                    for (k, &ch) in s[i..i + n].iter().enumerate() {
                        code.push(ch);
                        bare.push(if k == 0 || k == n - 1 { ch } else { blank(ch) });
                    }
                    i += n;
                }
                None => {
                    code.push(c);
                    bare.push(c);
                    i += 1;
                }
            }
        } else {
            code.push(c);
            bare.push(c);
            i += 1;
        }
    }
    Views { code, bare }
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Byte offsets where `needle` starts at an identifier boundary (the char before is
/// not part of an identifier).
fn find_token(text: &str, needle: &str) -> Vec<usize> {
    text.match_indices(needle)
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == ':')
        })
        .map(|(at, _)| at)
        .collect()
}

/// The identifier at the start of `s` (after spaces).
fn ident_at(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first identifier of each item of the `{...}` group at the start of `s` (after
/// spaces), e.g. `{arch::X, error::{A, B}}` → [arch, error].
fn group_heads(s: &str) -> Vec<&str> {
    let s = s.trim_start();
    let Some(body) = s.strip_prefix('{') else {
        return Vec::new();
    };
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (k, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && is_ident(c) => {
                heads.push(ident_at(&body[k..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

// ---------------------------------------------------------------- the checker

/// Which crate a file belongs to, and its top-level module there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// `lib.rs`: the library's root.
    LibRoot,
    /// `main.rs`: the binary's root.
    BinRoot,
    /// A top-level module of the library.
    Lib(String),
    /// A module of the binary (declared by `main.rs`).
    Bin(String),
}

/// One `crate::` (or `super::`) path that names a top-level module.
#[derive(Debug, Clone)]
struct Edge {
    file: String,
    line: usize,
    from: Owner,
    to: String,
}

/// What the checker saw and what it found wrong.
#[derive(Debug, Default)]
struct Report {
    files: usize,
    /// Every `crate::X` / `super::`-to-top path seen, inside a module or across.
    paths: usize,
    /// The paths from one library top-level module to another.
    lib_edges: Vec<Edge>,
    /// The binary's files (`main.rs` and its modules).
    bin_files: usize,
    /// `crate::X` paths in the binary's files.
    bin_paths: usize,
    /// Files under `runtime/candle/` checked for `crate::estimate`.
    runtime_candle_files: usize,
    /// Occurrences of `candle_core` / `candle_nn` (all under `probe/` when clean).
    candle_mentions: usize,
    /// File-I/O tokens seen (all in `FILE_IO` when clean).
    file_io_mentions: usize,
    network_mentions: usize,
    /// Files naming `feature = "cuda"`.
    cuda_feature_files: BTreeSet<String>,
    /// The top-level modules of the library found in the tree.
    lib_modules: BTreeSet<String>,
    /// The binary's modules (`mod X;` in `main.rs`).
    bin_modules: BTreeSet<String>,
    violations: Vec<String>,
}

fn allowed(from: &str) -> Option<&'static [&'static str]> {
    ALLOWED.iter().find(|(m, _)| *m == from).map(|(_, a)| *a)
}

/// The module path of a file (`probe/cuda.rs` → [probe, cuda], `probe/mod.rs` →
/// [probe], `lib.rs` → []).
fn module_path(path: &str) -> Vec<&str> {
    let no_ext = path.strip_suffix(".rs").unwrap_or(path);
    let mut parts: Vec<&str> = no_ext.split('/').collect();
    if matches!(parts.last(), Some(&"mod") | Some(&"lib") | Some(&"main")) {
        parts.pop();
    }
    parts
}

/// The cycles of the graph `edges` (each as its path, first node repeated at the end).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn dfs(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                0 => dfs(m, edges, state, stack, out),
                1 => {
                    let at = stack.iter().position(|x| x == m).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    out.push(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut out = Vec::new();
    let nodes: BTreeSet<&String> = edges.keys().chain(edges.values().flatten()).collect();
    for n in nodes {
        if !state.contains_key(n.as_str()) {
            dfs(n, edges, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

/// The graph of the edges seen between library top-level modules.
fn graph(edges: &[Edge]) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in edges {
        if let Owner::Lib(from) = &e.from {
            g.entry(from.clone()).or_default().insert(e.to.clone());
        }
    }
    g
}

fn under(path: &str, rule: &str) -> bool {
    if rule.ends_with('/') {
        path.starts_with(rule)
    } else {
        path == rule
    }
}

fn check(files: &[SrcFile]) -> Report {
    let mut r = Report::default();
    // the binary's modules: `mod X;` in main.rs
    if let Some(main) = files.iter().find(|f| f.path == "main.rs") {
        let v = views(before_tests(&main.text));
        for line in v.bare.lines() {
            let t = line.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("mod ") {
                r.bin_modules.insert(ident_at(rest).to_string());
            }
        }
    }
    for f in files {
        let parts = module_path(&f.path);
        let owner = match parts.first() {
            None if f.path == "lib.rs" => Owner::LibRoot,
            None => Owner::BinRoot,
            Some(top) if r.bin_modules.contains(*top) => Owner::Bin(top.to_string()),
            Some(top) => {
                r.lib_modules.insert(top.to_string());
                Owner::Lib(top.to_string())
            }
        };
        r.files += 1;
        if matches!(owner, Owner::BinRoot | Owner::Bin(_)) {
            r.bin_files += 1;
        }
        let checked = before_tests(&f.text);
        let v = views(checked);
        if [&v.code, &v.bare]
            .iter()
            .any(|x| x.matches('\n').count() != checked.matches('\n').count())
        {
            r.violations
                .push(format!("src/{}: tidy's lexer lost lines", f.path));
        }

        // ---- crate:: paths
        let mut targets: Vec<(usize, String)> = Vec::new();
        // (`$crate::` in macros too: `$` is not an identifier char)
        for at in find_token(&v.bare, "crate::") {
            let rest = &v.bare[at + "crate::".len()..];
            let heads = if rest.trim_start().starts_with('{') {
                group_heads(rest)
            } else {
                vec![ident_at(rest)]
            };
            for h in heads {
                if !h.is_empty() && h != "self" {
                    targets.push((line_of(&v.bare, at), h.to_string()));
                }
            }
        }
        // super:: chains that climb out of a top-level module
        for at in find_token(&v.bare, "super::") {
            let mut rest = &v.bare[at..];
            let mut ups = 0;
            while let Some(x) = rest.strip_prefix("super::") {
                ups += 1;
                rest = x.trim_start();
            }
            if ups == parts.len() && !parts.is_empty() {
                // at the crate root: `rest` names a top-level module (past it is a
                // compile error)
                let heads = if rest.starts_with('{') {
                    group_heads(rest)
                } else {
                    vec![ident_at(rest)]
                };
                for h in heads {
                    targets.push((line_of(&v.bare, at), h.to_string()));
                }
            }
        }
        for (line, to) in targets {
            r.paths += 1;
            match &owner {
                Owner::LibRoot => {}
                Owner::BinRoot | Owner::Bin(_) => {
                    r.bin_paths += 1;
                    if !r.bin_modules.contains(&to) {
                        r.violations.push(format!(
                            "src/{}:{line}: `crate::{to}` in the binary: its crate:: has only {:?} (the library is `llm_mem::`)",
                            f.path, r.bin_modules
                        ));
                    }
                }
                Owner::Lib(from) => {
                    if *from == to {
                        continue;
                    }
                    let edge = Edge {
                        file: f.path.clone(),
                        line,
                        from: owner.clone(),
                        to: to.clone(),
                    };
                    match allowed(from) {
                        Some(ok) if ok.contains(&to.as_str()) => {}
                        Some(ok) => r.violations.push(format!(
                            "src/{}:{line}: {from} → {to} (`crate::{to}`) is not allowed; {from} may import: {}",
                            f.path,
                            if ok.is_empty() { "nothing".to_string() } else { ok.join(", ") }
                        )),
                        None => r.violations.push(format!(
                            "src/{}:{line}: {from} → {to}: top-level module {from} has no rule in tidy::ALLOWED",
                            f.path
                        )),
                    }
                    if f.path.starts_with("runtime/candle/") && to == "estimate" {
                        r.violations.push(format!(
                            "src/{}:{line}: runtime/candle → estimate (`crate::estimate`): the candle runtime never imports the estimator",
                            f.path
                        ));
                    }
                    r.lib_edges.push(edge);
                }
            }
        }
        if f.path.starts_with("runtime/candle/") {
            r.runtime_candle_files += 1;
        }

        // ---- candle crates, outside comments
        for krate in ["candle_core", "candle_nn"] {
            for at in find_token(&v.code, krate) {
                r.candle_mentions += 1;
                if !f.path.starts_with("probe/") {
                    r.violations.push(format!(
                        "src/{}:{}: `{krate}` named outside src/probe/",
                        f.path,
                        line_of(&v.code, at)
                    ));
                }
            }
        }

        // ---- file I/O, in code (not in strings or comments)
        let mut io: Vec<(usize, &str)> = Vec::new();
        for tok in ["std::fs", "fs::", "File::", "OpenOptions"] {
            for at in find_token(&v.bare, tok) {
                io.push((at, tok));
            }
        }
        // `use std::{fs, ..}`
        for at in find_token(&v.bare, "std::") {
            let rest = &v.bare[at + "std::".len()..];
            if group_heads(rest).contains(&"fs") {
                io.push((at, "std::{fs}"));
            }
        }
        for (at, tok) in io {
            r.file_io_mentions += 1;
            if !FILE_IO.iter().any(|rule| under(&f.path, rule)) {
                r.violations.push(format!(
                    "src/{}:{}: file I/O (`{tok}`) outside {FILE_IO:?}",
                    f.path,
                    line_of(&v.bare, at)
                ));
            }
        }

        // ---- network I/O, in code
        for tok in [
            "ureq::",
            "std::net",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
        ] {
            for at in find_token(&v.bare, tok) {
                r.network_mentions += 1;
                if !NETWORK.iter().any(|rule| under(&f.path, rule)) {
                    r.violations.push(format!(
                        "src/{}:{}: network I/O (`{tok}`) outside {NETWORK:?}",
                        f.path,
                        line_of(&v.bare, at)
                    ));
                }
            }
        }

        // ---- feature = "cuda" (in attributes and cfg!: strings kept)
        let squeezed: String = v.code.chars().filter(|c| !c.is_whitespace()).collect();
        if squeezed.contains("feature=\"cuda\"") {
            r.cuda_feature_files.insert(f.path.clone());
        }
    }
    for p in &r.cuda_feature_files {
        if !CUDA_FEATURE.contains(&p.as_str()) {
            r.violations.push(format!(
                "src/{p}: names `feature = \"cuda\"`; only {CUDA_FEATURE:?} may"
            ));
        }
    }
    for c in cycles(&graph(&r.lib_edges)) {
        r.violations.push(format!(
            "cycle between top-level modules: {}",
            c.join(" → ")
        ));
    }
    r
}

/// The real tree, checked once per test.
fn real() -> Report {
    check(&src_files())
}

fn assert_clean(r: &Report, what: &str, keep: impl Fn(&str) -> bool) {
    let bad: Vec<&String> = r.violations.iter().filter(|v| keep(v)).collect();
    assert!(bad.is_empty(), "{what}:\n{}", {
        let lines: Vec<&str> = bad.iter().map(|s| s.as_str()).collect();
        lines.join("\n")
    });
}

// ---------------------------------------------------------------- the rules on src/

#[test]
fn layer_rules_hold() {
    let r = real();
    eprintln!(
        "tidy: {} files ({} of the binary), {} crate:: paths, {} cross-module edges, {} in the binary; graph {:?}",
        r.files,
        r.bin_files,
        r.paths,
        r.lib_edges.len(),
        r.bin_paths,
        graph(&r.lib_edges)
    );
    assert!(r.files > 40, "{} files scanned", r.files);
    assert!(r.paths > 100, "{} crate:: paths seen", r.paths);
    assert!(r.lib_edges.len() > 50, "{} edges", r.lib_edges.len());
    assert!(r.bin_files >= 3, "{} files of the binary", r.bin_files);
    assert!(r.runtime_candle_files >= 2, "{}", r.runtime_candle_files);
    // every rule of the table is exercised by at least one edge, except error's
    // (it imports nothing)
    let from: BTreeSet<String> = r
        .lib_edges
        .iter()
        .filter_map(|e| match &e.from {
            Owner::Lib(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    for (m, _) in ALLOWED.iter().filter(|(m, _)| *m != "error") {
        assert!(from.contains(*m), "no edge from {m}: is it read?");
    }
    assert_clean(&r, "forbidden imports", |v| {
        v.contains(" → ") && !v.starts_with("cycle") || v.contains("in the binary")
    });
}

#[test]
fn top_level_modules_match_the_rules() {
    let r = real();
    let rules: BTreeSet<String> = ALLOWED.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        r.lib_modules, rules,
        "src/ folders and files vs tidy::ALLOWED"
    );
    for (m, deps) in ALLOWED {
        for d in *deps {
            assert!(rules.contains(*d), "{m} → {d}: {d} has no rule");
        }
    }
    assert!(
        cycles(
            &ALLOWED
                .iter()
                .map(|(m, d)| (m.to_string(), d.iter().map(|x| x.to_string()).collect()))
                .collect()
        )
        .is_empty(),
        "the table itself has a cycle"
    );
    // lib.rs declares exactly these
    let lib = src_files()
        .into_iter()
        .find(|f| f.path == "lib.rs")
        .unwrap();
    let declared: BTreeSet<String> = views(&lib.text)
        .bare
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|rest| ident_at(rest).to_string())
        .collect();
    assert_eq!(declared, rules, "pub mod in lib.rs vs tidy::ALLOWED");
    assert_eq!(
        r.bin_modules,
        BTreeSet::from(["cli".to_string()]),
        "the binary's modules"
    );
}

#[test]
fn no_cycles_between_top_level_modules() {
    let r = real();
    let g = graph(&r.lib_edges);
    assert!(g.len() >= 10, "{} modules with edges", g.len());
    assert_eq!(cycles(&g), Vec::<Vec<String>>::new());
}

#[test]
fn candle_is_named_only_in_probe() {
    let r = real();
    eprintln!(
        "tidy: {} mentions of candle_core/candle_nn",
        r.candle_mentions
    );
    assert!(
        r.candle_mentions >= 5,
        "{} mentions seen",
        r.candle_mentions
    );
    assert_clean(&r, "candle outside src/probe/", |v| {
        v.contains("named outside src/probe/")
    });
}

#[test]
fn file_io_only_at_the_edges() {
    let r = real();
    eprintln!("tidy: {} file-I/O tokens", r.file_io_mentions);
    assert!(
        r.file_io_mentions >= 10,
        "{} I/O tokens seen",
        r.file_io_mentions
    );
    assert_clean(&r, "file I/O outside the edges", |v| v.contains("file I/O"));
}

#[test]
fn network_only_in_the_hub_client() {
    let r = real();
    eprintln!("tidy: {} network tokens", r.network_mentions);
    assert!(
        r.network_mentions >= 3,
        "{} network tokens seen: is src/hf/remote.rs read?",
        r.network_mentions
    );
    assert_clean(&r, "network I/O outside the Hub client", |v| {
        v.contains("network I/O")
    });
}

#[test]
fn cuda_feature_named_only_in_probe_mod() {
    let r = real();
    let want: BTreeSet<String> = CUDA_FEATURE.iter().map(|s| s.to_string()).collect();
    assert_eq!(r.cuda_feature_files, want);
}

#[test]
fn the_whole_tree_is_clean() {
    let r = real();
    assert_clean(&r, "tidy", |_| true);
}

// ---------------------------------------------------------------- the checker itself

#[test]
fn checker_reports_violations_in_a_fake_tree() {
    let file = |path: &str, text: &str| SrcFile {
        path: path.into(),
        text: text.into(),
    };
    let files = vec![
        file("lib.rs", "pub mod arch;\npub mod units;\n"),
        file("main.rs", "mod cli;\nuse llm_mem::arch;\n"),
        file("cli/mod.rs", "use crate::cli::x;\nuse crate::arch::Y;\n"),
        file(
            "units/mod.rs",
            "//! uses `crate::estimate` in a comment only\n\
             use crate::error::Result;\n\
             fn f() { let _ = \"crate::report in a string\"; }\n\
             use crate::estimate::Estimate;\n\
             #[cfg(test)]\n\
             mod tests { use crate::report::x; use std::fs; }\n",
        ),
        // a cycle arch ⇄ hf, and a grouped import of a forbidden module
        file("arch/mod.rs", "use crate::{units::X, hf::{A, B}};\n"),
        file("hf/mod.rs", "use super::arch::ModelSpec;\n"),
        file("hf/config.rs", "use super::x; use crate::arch::Y;\n"),
        file(
            "runtime/candle/tape.rs",
            "// candle_core in a comment is fine\nuse candle_core::Tensor;\nuse crate::estimate::Estimate;\n",
        ),
        file("estimate/io.rs", "fn f() { std::fs::read(\"x\"); let _ = File::open(\"y\"); }\n"),
        file("workload/x.rs", "use std::{fs, io};\n#[cfg(feature = \"cuda\")]\nfn g() {}\n"),
        file("probe/mod.rs", "#[cfg(feature = \"cuda\")]\nuse candle_core::Device;\nfn h() { std::fs::write(\"a\", \"b\"); }\n"),
        file("hf/hub.rs", "fn r() { std::fs::read_to_string(\"p\"); }\n"),
        file("hf/remote.rs", "fn n() { let _ = ureq::get(\"u\"); }\n"),
        file(
            "report/web.rs",
            "use std::net::TcpListener;\nfn s() { let _ = TcpListener::bind(\"x\"); }\n",
        ),
    ];
    let r = check(&files);
    let has = |needle: &str| r.violations.iter().any(|v| v.contains(needle));
    let expect = [
        "src/units/mod.rs:4: units → estimate (`crate::estimate`) is not allowed; units may import: error",
        "src/arch/mod.rs:1: arch → hf (`crate::hf`) is not allowed",
        "cycle between top-level modules: arch → hf → arch",
        "src/runtime/candle/tape.rs:3: runtime/candle → estimate",
        "src/runtime/candle/tape.rs:3: runtime → estimate",
        "src/runtime/candle/tape.rs:2: `candle_core` named outside src/probe/",
        "src/estimate/io.rs:1: file I/O (`std::fs`)",
        "src/estimate/io.rs:1: file I/O (`File::`)",
        "src/workload/x.rs:1: file I/O (`std::{fs}`)",
        "src/workload/x.rs: names `feature = \"cuda\"`",
        "src/cli/mod.rs:2: `crate::arch` in the binary",
        "src/report/web.rs:1: network I/O (`std::net`)",
        "src/report/web.rs:2: network I/O (`TcpListener`)",
    ];
    for e in expect {
        assert!(has(e), "not reported: {e}\nreported:\n{:#?}", r.violations);
    }
    // hf → arch is an allowed edge in the table, so only the cycle names it; what is
    // allowed, in comments or strings, in test modules, or in the allowed files is
    // not reported
    let not_expected = [
        "units → error",
        "units → report",
        "src/hf/config.rs",
        "src/hf/hub.rs",
        "src/hf/remote.rs",
        "src/probe/mod.rs",
        "src/lib.rs",
        "src/main.rs",
        "src/cli/mod.rs:1",
        "src/runtime/candle/tape.rs:1",
    ];
    for n in not_expected {
        assert!(!has(n), "wrongly reported: {n}\n{:#?}", r.violations);
    }
    assert_eq!(r.violations.len(), expect.len(), "{:#?}", r.violations);
    assert_eq!((r.files, r.bin_files, r.bin_paths), (files.len(), 2, 2));
    // `super::arch` from hf/mod.rs is the edge hf → arch (it closes the cycle)
    assert!(r
        .lib_edges
        .iter()
        .any(|e| e.file == "hf/mod.rs" && e.line == 1 && e.to == "arch"));
    // char and byte literals do not open strings: b'"' and '\'' leave the rest as code
    let v = views("let q = b'\"'; let e = '\\''; use crate::hf::X; // crate::report\n");
    assert_eq!(find_token(&v.bare, "crate::").len(), 1, "{}", v.bare);
    assert_eq!(v.bare.len(), v.code.len());
}
