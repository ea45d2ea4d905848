//! The layout in src/lib.rs is the layout on disk: every dependency points down its layers, none in a circle.
//!
//! The layers and their modules are read from the layout doc at the top of src/lib.rs
//! (`//! - layer:` then `//!   - \`module\`: purpose`); the dependencies from each module's
//! `crate::` paths outside its `#[cfg(test)]` module, as ../shared/tools/module-deps reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Test-only code may reach anywhere; nothing in the product may reach it.
const TEST_ONLY: &str = "testing";

/// Modules only these may use: the emulator is a tool of the commands, not of the product.
const RESTRICTED: &[(&str, &[&str])] = &[("emulator", &["cli", "cmd"])];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// (layer index, layer name) of every module the layout doc of src/lib.rs lists.
fn layout() -> BTreeMap<String, (usize, String)> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let mut layers = BTreeMap::new();
    let mut layer: Option<(usize, String)> = None;
    let mut index = 0;
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        if let Some(name) = line.strip_prefix(" - ").and_then(|l| l.strip_suffix(':')) {
            index += 1;
            layer = Some((index, name.trim().to_owned()));
        } else if let Some(entry) = line.strip_prefix("   - `") {
            let module = entry.split('`').next().expect("a module name");
            let here = layer.clone().expect("a module listed before any layer");
            assert!(
                layers.insert(module.to_owned(), here).is_none(),
                "{module} is listed twice in the layout doc"
            );
        }
    }
    layers
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// The top-level module a file belongs to; None for lib.rs and main.rs.
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).expect("under src");
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?.to_owned();
    if parts.next().is_some() {
        return Some(first);
    }
    let stem = first.strip_suffix(".rs")?;
    (!matches!(stem, "lib" | "main")).then(|| stem.to_owned())
}

/// The crate modules a source text uses, outside its trailing test module and its comments.
fn uses(text: &str) -> BTreeSet<String> {
    let product = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    let code: String = product
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("//") || t.starts_with("/*") || t.starts_with('*'))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let preceded = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if preceded {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

/// Module -> the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files(&src()) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        let used = uses(&text);
        let entry = edges.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|u| *u != module));
    }
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for used in edges.values_mut() {
        used.retain(|u| modules.contains(u));
    }
    edges
}

/// A circle through `start`, if any, found by depth-first search.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn every_module_is_in_the_layout_doc_and_depends_only_downwards() {
    let layers = layout();
    let edges = graph();
    let on_disk: BTreeSet<&String> = edges.keys().filter(|m| *m != TEST_ONLY).collect();
    let documented: BTreeSet<&String> = layers.keys().collect();
    assert_eq!(
        on_disk, documented,
        "the layout doc in src/lib.rs must list exactly the modules in src/"
    );
    let mut wrong = Vec::new();
    for (module, used) in &edges {
        if module == TEST_ONLY {
            continue;
        }
        let (mine, my_layer) = &layers[module];
        for dependency in used {
            if dependency == TEST_ONLY {
                wrong.push(format!("{module} uses the test-only module {TEST_ONLY}"));
                continue;
            }
            let (theirs, their_layer) = &layers[dependency];
            if theirs > mine {
                wrong.push(format!(
                    "{module} ({my_layer}) uses {dependency} ({their_layer}), a layer above it"
                ));
            }
        }
    }
    for (restricted, allowed) in RESTRICTED {
        for (module, used) in &edges {
            if used.contains(*restricted)
                && !allowed.contains(&module.as_str())
                && module != TEST_ONLY
            {
                wrong.push(format!("{module} uses {restricted}; only {allowed:?} may"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn there_is_no_circle_among_modules() {
    let edges = graph();
    if let Some(circle) = circle(&edges) {
        panic!("a circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_checker_sees_paths_groups_and_circles() {
    let text = "use crate::a::B;\nuse crate::{c, d::E};\n// crate::commented\nfn f() { $crate::macro_path(); crate::g::h(); }\n#[cfg(test)]\nmod tests { use crate::t; }\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g"]);
    let mut edges = BTreeMap::new();
    edges.insert("x".to_owned(), BTreeSet::from(["y".to_owned()]));
    edges.insert("y".to_owned(), BTreeSet::from(["z".to_owned()]));
    edges.insert("z".to_owned(), BTreeSet::new());
    assert_eq!(circle(&edges), None);
    edges.get_mut("z").expect("z").insert("x".to_owned());
    assert_eq!(
        circle(&edges).expect("a circle"),
        ["x", "y", "z", "x"].map(String::from)
    );
}
