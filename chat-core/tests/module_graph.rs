//! The modules of chat-core import one another without cycles (a DAG), so each can be read,
//! tested and changed knowing only the modules below it.
//!
//! The check reads `chat-core/src/**/*.rs`, takes every `crate::<module>` path outside
//! comments (`use crate::a::B;`, `use crate::{a::B, b};`, `crate::a::f()` in code) as an
//! edge from the file's top-level module to `<module>`, and fails on a cycle, printing it.
//! `lib.rs` (the crate root, which declares and re-exports every module) is not a node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module name -> the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The source without `//` comments (doc comments included) and `/* */` blocks. String
/// literals are kept as they are: none of them holds `crate::` followed by a module name
/// that would add a false edge, and the test below would show it if one did.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of a `{...}` group starting right after `{`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                at_item_start = false;
            }
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if c.is_whitespace() => {}
            _ if at_item_start && depth == 0 => {
                let head = ident_at(&s[i..]);
                if !head.is_empty() {
                    heads.push(head.to_string());
                }
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Modules named after `crate::` in `code`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `chat_core::` or `my_crate::`
        }
        let after = code[i + "crate::".len()..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            out.extend(group_heads(group));
        } else {
            let head = ident_at(after);
            if !head.is_empty() {
                out.insert(head.to_string());
            }
        }
    }
    out
}

fn collect(dir: &Path, module: Option<&str>, graph: &mut Graph) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read chat-core/src")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name")
            .to_string();
        if path.is_dir() {
            collect(&path, Some(module.unwrap_or(&stem)), graph);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        if module.is_none() && stem == "lib" {
            continue;
        }
        let owner = module.unwrap_or(&stem).to_string();
        let src = std::fs::read_to_string(&path).expect("read source file");
        let edges = graph.entry(owner.clone()).or_default();
        edges.extend(
            imports(&strip_comments(&src))
                .into_iter()
                .filter(|m| *m != owner),
        );
    }
}

fn module_graph() -> Graph {
    let mut graph = Graph::new();
    collect(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        None,
        &mut graph,
    );
    graph
}

/// A cycle of `graph`, as the list of modules along it (first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {m} -> {}", deps.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn chat_core_modules_form_a_dag() {
    let graph = module_graph();
    assert!(
        graph.contains_key("domain") && graph.contains_key("protocol"),
        "the scan found no modules:\n{}",
        show(&graph)
    );
    for (module, deps) in &graph {
        for dep in deps {
            assert!(
                graph.contains_key(dep),
                "`{module}` imports `crate::{dep}`, which is not a module of chat-core"
            );
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "chat-core modules import each other in a cycle: {}\nimport graph:\n{}",
            cycle.join(" -> "),
            show(&graph)
        );
    }
}

#[test]
fn the_domain_knows_nothing_of_the_wire() {
    let graph = module_graph();
    let domain = &graph["domain"];
    for layer in ["protocol", "wire", "codec"] {
        assert!(
            !domain.contains(layer),
            "domain imports {layer}:\n{}",
            show(&graph)
        );
    }
    let model = &graph["model"];
    for layer in ["protocol", "wire", "codec", "domain"] {
        assert!(
            !model.contains(layer),
            "model imports {layer}:\n{}",
            show(&graph)
        );
    }
}

#[test]
fn the_scanner_sees_every_form_of_import() {
    let code = strip_comments(
        "use crate::a::X;\nuse crate::{b::Y, c, d::{e, f}};\n// use crate::commented;\n\
         /* crate::blocked */ fn g() { crate::h::call(); chat_core::i::J; }\n",
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "h"]);
    let mut cyclic = Graph::new();
    cyclic.insert("x".into(), ["y".to_string()].into());
    cyclic.insert("y".into(), ["x".to_string()].into());
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["x".to_string(), "y".into(), "x".into()])
    );
}
