//! Data flows one way: each top-level module may import only modules listed
//! before it in [`LAYERS`]. This test reads the sources, so a new `use` that
//! reaches back up the chain (and with it an import cycle) fails here with
//! the file and the module it named.
use std::{fs, path::Path};

/// Lowest first: kernel -> source -> reading -> activity -> app -> actions
/// and HTTP; parsing last. `main.rs` (the crate root) wires them all.
const LAYERS: &[&str] = &[
    "clock",
    "lock",
    "cgroup",
    "coalesce",
    "duration",
    "malloc",
    "capabilities",
    "runtime",
    "serve",
    "source",
    "activity",
    "status",
    "app",
    "metrics",
    "config",
    "drain",
    "hooks",
    "http",
    "heartbeat",
    "proxy",
    "node",
    "cli",
];

/// The top-level modules `text` names through `crate::` paths, outside its
/// unit tests (tests may reach anywhere).
fn imports(text: &str) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let leading = |item: &str| -> String {
        item.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.push(leading(rest));
            continue;
        };
        // `crate::{a::X, b::{Y, Z}}`: the first name of each item at depth 0.
        let (mut depth, mut item) = (0, String::new());
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => found.push(leading(&std::mem::take(&mut item))),
                _ if depth == 0 => item.push(c),
                _ => {}
            }
        }
        found.push(leading(&item));
    }
    found.retain(|m| !m.is_empty());
    found
}

fn visit(dir: &Path, top: Option<&str>, out: &mut Vec<(String, String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let module = top.unwrap_or(name).to_string();
        if path.is_dir() {
            visit(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs") && !(top.is_none() && name == "main")
        {
            let text = fs::read_to_string(&path).expect("read source");
            for target in imports(&text) {
                out.push((path.display().to_string(), module.clone(), target));
            }
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = Vec::new();
    visit(&src, None, &mut edges);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for (file, from, to) in &edges {
        if from == to || from == "layers" {
            continue;
        }
        match (rank(from), rank(to)) {
            (Some(a), Some(b)) if b < a => {}
            (None, _) => wrong.push(format!("{file}: module `{from}` is not in LAYERS")),
            (_, None) => wrong.push(format!("{file}: imports `{to}`, which is not in LAYERS")),
            _ => wrong.push(format!(
                "{file}: `{from}` imports `{to}`, which comes after it"
            )),
        }
    }
    assert!(
        edges.len() > 20,
        "found only {} imports: the scan is broken",
        edges.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_scan_sees_single_and_grouped_imports() {
    let text = "use crate::{\n    app::App,\n    clock::{boottime_ns, nanos},\n    source::{self, Detail},\n};\nfn f() { crate::hooks::run(); }\n#[cfg(test)]\nmod tests { use crate::cli::Cli; }\n";
    let mut found = imports(text);
    found.sort();
    found.dedup();
    assert_eq!(found, ["app", "clock", "hooks", "source"]);
}
