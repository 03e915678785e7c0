//! The reference docs held to the real binary. Every flag, environment
//! variable and default that `--help` shows (for the daemon and for each
//! subcommand, found from `--help` itself) has its row in the docs' flag
//! tables, and every row names something `--help` shows; the config file's
//! documented keys are the daemon's flags and the binary accepts that file;
//! `--help` states the ranges the binary enforces; and every relative link
//! in the README and `docs/` resolves, anchors included; every `--flag`
//! they name is a flag of the binary.
//!
//! A flag table is a markdown table whose header is
//! `| flag | environment | default | meaning |`, under a heading whose first
//! code span is the command (`` ## `spawner-sidecar wait-idle` ``). A new
//! subcommand fails `flag_tables_match_help_both_ways` until it has one.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
};

use test_support::binary;

const PROGRAM: &str = "spawner-sidecar";
const TABLE_HEADER: [&str; 4] = ["flag", "environment", "default", "meaning"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README and every file under `docs/`, as (path relative to the root, text).
fn doc_files() -> Vec<(String, String)> {
    let root = repo_root();
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(root.join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

/// Runs the binary with the daemon's variables removed: `--help` prints a
/// variable's current value, and the test's own environment is not the CLI.
fn run(args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SPAWNER_SIDECAR_") {
            command.env_remove(key);
        }
    }
    let out = command.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One flag as `--help` shows it or as a table row states it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flag {
    /// What `--help` prints first: `-c, --connect <URI>`, `--all-ports`.
    spec: String,
    env: Option<String>,
    default: Option<String>,
    /// Values `--help` lists for the flag (empty for free-form values).
    possible: Vec<String>,
    /// The table's meaning cell, or `--help`'s description.
    text: String,
    /// Where a table row is (`docs/cli.md:21`); empty for `--help`.
    place: String,
}

/// A command's `--help`: its flags and its subcommands' names.
struct Help {
    flags: Vec<Flag>,
    subcommands: Vec<String>,
}

/// Parses clap's `--help`, short layout (one line per flag) or long
/// (description, `[env: …]` and `[default: …]` on lines of their own).
fn parse_help(text: &str) -> Help {
    let mut flags: Vec<Flag> = Vec::new();
    let mut subcommands = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            continue;
        }
        if !line.starts_with(' ') {
            section = "";
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        let (head, rest) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
        match section {
            "Commands" if indent < 8 && head != "help" => {
                subcommands.push(head.to_string());
            }
            "Options" | "Arguments"
                if indent < 8 && (trimmed.starts_with('-') || trimmed.starts_with('<')) =>
            {
                flags.push(Flag {
                    spec: head.to_string(),
                    env: None,
                    default: None,
                    possible: Vec::new(),
                    text: rest.trim().to_string(),
                    place: String::new(),
                });
            }
            "Options" | "Arguments" => {
                if let Some(flag) = flags.last_mut() {
                    flag.text.push(' ');
                    flag.text.push_str(trimmed);
                    // Long layout: `- auto: The best source …` under
                    // `Possible values:`.
                    let listing = flag.text.contains("Possible values:");
                    if let Some(value) = trimmed.strip_prefix("- ").filter(|_| listing) {
                        let name = value.split(':').next().unwrap().trim();
                        flag.possible.push(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    for flag in &mut flags {
        flag.env = bracket(&flag.text, "[env: ").map(|v| v.split('=').next().unwrap().to_string());
        flag.default = bracket(&flag.text, "[default: ");
        if let Some(list) = bracket(&flag.text, "[possible values: ") {
            flag.possible = list.split(", ").map(str::to_string).collect();
        }
    }
    Help { flags, subcommands }
}

/// The text between `open` and the next `]`.
fn bracket(text: &str, open: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

/// Every command's `--help`, keyed by the command line that prints it
/// (`spawner-sidecar`, `spawner-sidecar wait-idle`), subcommands found from
/// the `Commands:` section, at any depth.
fn help_of_every_command() -> BTreeMap<String, Help> {
    let mut all = BTreeMap::new();
    let mut queue = vec![Vec::<String>::new()];
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{PROGRAM} {} failed: {err}", args.join(" "));
        let help = parse_help(&out);
        assert!(
            !help.flags.is_empty(),
            "no flags parsed from `{PROGRAM} {}`; has clap's layout changed?\n{out}",
            args.join(" ")
        );
        for sub in &help.subcommands {
            let mut next = path.clone();
            next.push(sub.clone());
            queue.push(next);
        }
        let name = std::iter::once(PROGRAM.to_string())
            .chain(path)
            .collect::<Vec<_>>()
            .join(" ");
        all.insert(name, help);
    }
    all
}

/// Splits a table row into its cells; `\|` stays inside a cell.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push(chars.next().unwrap());
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The first code span of `text`.
fn code_span(text: &str) -> Option<String> {
    let start = text.find('`')? + 1;
    let end = text[start..].find('`')? + start;
    Some(text[start..end].to_string())
}

/// Every flag table in `files`, keyed by its command. Tables without a
/// command heading, or a second table for one command, are errors.
fn flag_tables(files: &[(String, String)]) -> Result<BTreeMap<String, Vec<Flag>>, Vec<String>> {
    let mut tables: BTreeMap<String, (String, Vec<Flag>)> = BTreeMap::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        let mut heading = String::new();
        let mut fenced = false;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if line.starts_with("```") {
                fenced = !fenced;
            }
            if !fenced && line.starts_with('#') {
                heading = line.to_string();
            }
            let header = cells(line);
            if fenced || !line.starts_with('|') || header != TABLE_HEADER {
                i += 1;
                continue;
            }
            let place = format!("{file}:{}", i + 1);
            let command = code_span(&heading).filter(|c| c.split(' ').next() == Some(PROGRAM));
            let Some(command) = command else {
                errors.push(format!(
                    "{place}: flag table under heading {heading:?}, which does not name a command \
                     in a code span (e.g. ## `{PROGRAM} wait-idle`)"
                ));
                i += 1;
                continue;
            };
            let mut rows = Vec::new();
            i += 2; // header and separator
            while i < lines.len() && lines[i].starts_with('|') {
                let c = cells(lines[i]);
                if c.len() < 4 {
                    errors.push(format!(
                        "{file}:{}: row with {} cells, not 4",
                        i + 1,
                        c.len()
                    ));
                } else {
                    let code = |cell: &str| code_span(cell).filter(|s| !s.is_empty());
                    rows.push(Flag {
                        spec: c[0].replace('`', ""),
                        env: code(&c[1]),
                        default: code(&c[2]),
                        possible: Vec::new(),
                        text: c[3..].join("|"),
                        place: format!("{file}:{}", i + 1),
                    });
                }
                i += 1;
            }
            if let Some((first, _)) = tables.get(&command) {
                errors.push(format!(
                    "{place}: a second flag table for `{command}` (the first is at {first}); \
                     one table per command"
                ));
            } else {
                tables.insert(command, (place, rows));
            }
        }
    }
    if errors.is_empty() {
        Ok(tables.into_iter().map(|(k, (_, rows))| (k, rows)).collect())
    } else {
        Err(errors)
    }
}

/// What differs between `--help` and the docs' tables, one line each.
fn mismatches(help: &BTreeMap<String, Help>, docs: &BTreeMap<String, Vec<Flag>>) -> Vec<String> {
    let mut out = Vec::new();
    for command in help.keys().filter(|c| !docs.contains_key(*c)) {
        out.push(format!(
            "`{command}` has no flag table in README.md or docs/ (a table under ## `{command}`)"
        ));
    }
    for (command, rows) in docs.iter().filter(|(c, _)| !help.contains_key(*c)) {
        let place = rows.first().map_or("", |r| r.place.as_str());
        out.push(format!(
            "{place}: flag table for `{command}`, which is not a command of the binary"
        ));
    }
    for (command, help) in help {
        let Some(rows) = docs.get(command) else {
            continue;
        };
        for flag in &help.flags {
            let Some(row) = rows.iter().find(|r| r.spec == flag.spec) else {
                out.push(format!(
                    "`{command} --help` shows `{}`, which has no row in the `{command}` table",
                    flag.spec
                ));
                continue;
            };
            if row.env != flag.env {
                out.push(format!(
                    "{}: `{command}` `{}`: the table says environment {:?}, --help says {:?}",
                    row.place, flag.spec, row.env, flag.env
                ));
            }
            if row.default != flag.default {
                out.push(format!(
                    "{}: `{command}` `{}`: the table says default {:?}, --help says {:?} \
                     (a default --help does not print is written without a code span)",
                    row.place, flag.spec, row.default, flag.default
                ));
            }
            for value in &flag.possible {
                if !row.text.contains(&format!("`{value}`")) {
                    out.push(format!(
                        "{}: `{command}` `{}`: --help lists the value `{value}`, the meaning \
                         cell does not",
                        row.place, flag.spec
                    ));
                }
            }
        }
        for row in rows {
            if !help.flags.iter().any(|f| f.spec == row.spec) {
                out.push(format!(
                    "{}: the `{command}` table has `{}`, which `{command} --help` does not show",
                    row.place, row.spec
                ));
            }
        }
    }
    out
}

#[test]
fn flag_tables_match_help_both_ways() {
    let help = help_of_every_command();
    assert!(
        help.len() >= 3,
        "expected the daemon and at least wait-idle and heartbeat, found {:?}",
        help.keys().collect::<Vec<_>>()
    );
    let docs = flag_tables(&doc_files()).unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
    let problems = mismatches(&help, &docs);
    assert!(
        problems.is_empty(),
        "the docs' flag tables and --help differ:\n  {}",
        problems.join("\n  ")
    );
    let rows: usize = docs.values().map(Vec::len).sum();
    println!(
        "{} commands, {rows} flags: docs and --help agree",
        docs.len()
    );
}

/// The comparison itself: a missing row, a fake row and a wrong default are
/// each reported, naming the flag.
#[test]
fn a_missing_or_fake_row_is_named() {
    let help = help_of_every_command();
    let mut docs = flag_tables(&doc_files()).unwrap();
    let daemon = docs.get_mut(PROGRAM).unwrap();
    let removed = daemon.remove(0);
    let mut fake = removed.clone();
    fake.spec = "--no-such-flag <X>".into();
    daemon.push(fake);
    let heartbeat = docs.get_mut(&format!("{PROGRAM} heartbeat")).unwrap();
    let changed = heartbeat.iter_mut().find(|r| r.default.is_some()).unwrap();
    changed.default = Some("not-the-default".into());
    let changed = changed.spec.clone();
    let problems = mismatches(&help, &docs).join("\n");
    for expected in [&removed.spec, "--no-such-flag <X>", &changed] {
        assert!(
            problems.contains(expected),
            "not reported: {expected}\n{problems}"
        );
    }
}

/// Long flags the docs name that belong to other tools: `cargo xtask bench`;
/// cargo's, podman's and a Dockerfile's in docs/deploy.md (how the image is
/// built and run), and kubernetes-validate's.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    // kubectl, in the proxy's start and stop command example.
    "--replicas",
    "--quick",
    "--only",
    "--compare",
    "--release",
    "--target",
    "--cap-drop",
    "--cap-add",
    "--security-opt",
    "--strict",
    // A Dockerfile's `COPY --from`, putting the proxy into an application's
    // image (docs/deploy.md).
    "--from",
];

/// Every `--flag` token in `text` (not the middle of a word like `a--b`).
fn long_flags(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        for (at, _) in line.match_indices("--") {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let starts_word = bytes.get(at + 2).is_some_and(u8::is_ascii_lowercase);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-') || !starts_word {
                continue;
            }
            let name: String = line[at..]
                .chars()
                .enumerate()
                .take_while(|(i, c)| *i < 2 || c.is_ascii_alphanumeric() || *c == '-')
                .map(|(_, c)| c)
                .collect();
            out.push((number + 1, name.trim_end_matches('-').to_string()));
        }
    }
    out
}

/// Prose, examples and YAML name flags too: a renamed flag must not live on
/// there.
#[test]
fn every_flag_the_docs_name_is_a_flag_of_the_binary() {
    let help = help_of_every_command();
    let known: BTreeSet<String> = help
        .values()
        .flat_map(|h| &h.flags)
        .filter_map(|f| f.spec.split([' ', ',']).find(|w| w.starts_with("--")))
        // `--auto-start[=<BOOL>]`: a flag whose value is optional.
        .map(|w| w.split('[').next().unwrap_or(w).to_string())
        .chain(OTHER_TOOLS_FLAGS.iter().map(|f| f.to_string()))
        .collect();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (file, text) in doc_files() {
        for (line, flag) in long_flags(&text) {
            seen += 1;
            if !known.contains(&flag) {
                unknown.push(format!("{file}:{line}: {flag}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the docs name flags that no command's --help shows:\n  {}",
        unknown.join("\n  ")
    );
    assert!(
        seen > 50,
        "only {seen} flags found in the docs: is the scan broken?"
    );
}

/// The `toml` block under `## Every key` in docs/config.md.
fn documented_config() -> String {
    config_block("## Every key")
}

/// The first `toml` block after `heading` in docs/config.md.
fn config_block(heading: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("docs/config.md")).unwrap();
    let section = text
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/config.md: {heading}"));
    let block = section.split("```toml\n").nth(1).expect("a ```toml block");
    block.split("```").next().unwrap().to_string()
}

#[test]
fn config_keys_are_the_daemons_flags_and_the_binary_takes_the_example() {
    let help = help_of_every_command();
    let flags: BTreeSet<String> = help[PROGRAM]
        .flags
        .iter()
        .filter_map(|f| f.spec.split(' ').find_map(|w| w.strip_prefix("--")))
        .map(|name| name.trim_end_matches(',').replace('-', "_"))
        .filter(|k| !["config", "help", "version"].contains(&k.as_str()))
        .collect();
    let example = documented_config();
    let keys: BTreeSet<String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim().to_string())
        .collect();
    let undocumented: Vec<_> = flags.difference(&keys).collect();
    let unknown: Vec<_> = keys.difference(&flags).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/config.md `## Every key`: flags without a key there: {undocumented:?}; \
         keys that are no flag: {unknown:?}"
    );

    // A busy serve port stops the daemon right after parsing: exit 1 and
    // "cannot listen" prove every key and value of the file was accepted.
    let file = std::env::temp_dir().join(format!("docs-config-{}.toml", std::process::id()));
    std::fs::write(&file, &example).unwrap();
    let (busy, port) = busy_port();
    let (code, _, err) = run(&[
        "--config",
        file.to_str().unwrap(),
        "--serve-port",
        &port,
        "--source",
        "proc",
    ]);
    std::fs::remove_file(&file).unwrap();
    drop(busy);
    assert!(
        code == 1 && err.contains("cannot listen"),
        "the documented config file was refused (exit {code}): {err}"
    );
}

#[test]
fn the_proxys_config_keys_are_its_flags_and_the_binary_takes_the_example() {
    let help = help_of_every_command();
    let flags: BTreeSet<String> = help[&format!("{PROGRAM} proxy")]
        .flags
        .iter()
        .filter_map(|f| f.spec.split([' ', '[']).find_map(|w| w.strip_prefix("--")))
        .map(|name| name.trim_end_matches(',').replace('-', "_"))
        .filter(|k| !["config", "help"].contains(&k.as_str()))
        .chain(["command".to_string()])
        .collect();
    let example = config_block("## The proxy's keys");
    // Commented keys count: a command and a start command exclude each other.
    let keys: BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter(|l| {
            l.split('=').next().is_some_and(|k| {
                let k = k.trim();
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            }) && l.contains(" = ")
        })
        .map(|l| l.split('=').next().unwrap().trim().to_string())
        .collect();
    let undocumented: Vec<_> = flags.difference(&keys).collect();
    let unknown: Vec<_> = keys.difference(&flags).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/config.md `## The proxy's keys`: flags without a key there: {undocumented:?}; \
         keys that are no flag: {unknown:?}"
    );

    // A busy listen address stops the proxy after parsing and checking
    // every service: "in use" proves the file was accepted.
    let file = std::env::temp_dir().join(format!("docs-proxy-{}.toml", std::process::id()));
    std::fs::write(&file, &example).unwrap();
    let (busy, port) = busy_port();
    let (code, _, err) = run(&[
        "proxy",
        "-config",
        file.to_str().unwrap(),
        "-proxy",
        &format!("0.0.0.0:{port} 127.0.0.1:1"),
    ]);
    std::fs::remove_file(&file).unwrap();
    drop(busy);
    assert!(
        code == 2 && err.contains("in use"),
        "the documented proxy config file was refused (exit {code}): {err}"
    );
}

fn busy_port() -> (TcpListener, String) {
    let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    (busy, port)
}

/// Runs the daemon with `args` and a busy serve port: Ok once parsing
/// accepted them (the bind failed), Err with clap's message if refused.
fn accepts(args: &[&str]) -> Result<(), String> {
    let (_busy, port) = busy_port();
    let mut all = vec!["--serve-port", &port, "--source", "proc"];
    all.extend_from_slice(args);
    let (code, _, err) = run(&all);
    match code {
        1 if err.contains("cannot listen") => Ok(()),
        2 if err.starts_with("error:") && !err.contains("panicked") => Err(err),
        _ => panic!("{args:?}: neither accepted nor refused cleanly (exit {code}): {err}"),
    }
}

#[test]
fn help_states_the_ranges_the_binary_enforces() {
    let help = help_of_every_command();
    let text = |spec: &str| {
        let flag = help[PROGRAM]
            .flags
            .iter()
            .find(|f| f.spec.starts_with(spec));
        flag.unwrap_or_else(|| panic!("{spec} not in --help"))
            .text
            .clone()
    };
    for (flag, low, high) in [
        ("--refresh-rate-seconds", 1, 86_400),
        ("--max-tracked-connections", 1, 1_048_576),
        ("--monitor-port", 1, 65_535),
    ] {
        let stated = format!("{low}-{high}");
        assert!(
            text(flag).contains(&stated),
            "{flag}: --help does not state {stated}: {}",
            text(flag)
        );
        for bad in [low - 1, high + 1] {
            let err = accepts(&[flag, &bad.to_string()]).expect_err(&format!("{flag} {bad}"));
            assert!(
                err.contains(flag),
                "{flag} {bad}: error does not name the flag: {err}"
            );
        }
        for good in [low, high] {
            accepts(&[flag, &good.to_string()]).unwrap_or_else(|e| panic!("{flag} {good}: {e}"));
        }
    }

    let ignore = text("--ignore-peer");
    assert!(
        ignore.contains("at most 256") && ignore.contains("commas"),
        "--ignore-peer: --help does not state the limit and the comma form: {ignore}"
    );
    let peers = |n: u32| {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(",")
    };
    accepts(&["--ignore-peer", &peers(256)]).unwrap_or_else(|e| panic!("256 peers: {e}"));
    let err = accepts(&["--ignore-peer", &peers(257)]).expect_err("257 peers accepted");
    assert!(
        err.contains("--ignore-peer") && err.contains("256"),
        "{err}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks), with
/// GitHub's `-1`, `-2` suffixes for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// Relative link targets in `text` outside code: `[text](target)`.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        // Drop inline code, whose brackets are not links.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push((number + 1, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, text) in doc_files() {
        let dir = Path::new(&file).parent().unwrap().to_path_buf();
        for (line, target) in links(&text) {
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let target_file = if path.is_empty() {
                root.join(&file)
            } else {
                root.join(&dir).join(path)
            };
            if !target_file.exists() {
                broken.push(format!("{file}:{line}: {target}: no such file"));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            let Ok(target_text) = std::fs::read_to_string(&target_file) else {
                broken.push(format!(
                    "{file}:{line}: {target}: anchor into a non-text file"
                ));
                continue;
            };
            if !anchors(&target_text).contains(anchor) {
                broken.push(format!(
                    "{file}:{line}: {target}: no heading with anchor #{anchor}"
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
    assert!(
        checked > 20,
        "only {checked} links found: is the link parser broken?"
    );
}

#[test]
fn help_parser_reads_both_clap_layouts() {
    let short = "Usage: x [OPTIONS]\n\nOptions:\n  -c, --connect <URI>   Where [env: A_B=] [default: 1s]\n      --flag            On [env: C=x]\n  -h, --help            Print help\n";
    let help = parse_help(short);
    let specs: Vec<&str> = help.flags.iter().map(|f| f.spec.as_str()).collect();
    assert_eq!(specs, ["-c, --connect <URI>", "--flag", "-h, --help"]);
    assert_eq!(help.flags[0].env.as_deref(), Some("A_B"));
    assert_eq!(help.flags[0].default.as_deref(), Some("1s"));
    assert_eq!(help.flags[1].env.as_deref(), Some("C"));
    assert_eq!(help.flags[1].default, None);

    let long = "About\n\nUsage: x [OPTIONS]\n       x <COMMAND>\n\nCommands:\n  sub   Does\n  help  Print\n\nOptions:\n      --source <SOURCE>\n          Where\n\n          Possible values:\n          - auto:  Best\n          - proc:  Slow\n          \n          [env: S=]\n          [default: auto]\n\n  -V, --version\n          Print version\n";
    let help = parse_help(long);
    assert_eq!(help.subcommands, ["sub"]);
    assert_eq!(help.flags.len(), 2);
    assert_eq!(help.flags[0].spec, "--source <SOURCE>");
    assert_eq!(help.flags[0].possible, ["auto", "proc"]);
    assert_eq!(help.flags[0].env.as_deref(), Some("S"));
    assert_eq!(help.flags[0].default.as_deref(), Some("auto"));
    assert_eq!(help.flags[1].spec, "-V, --version");
}
