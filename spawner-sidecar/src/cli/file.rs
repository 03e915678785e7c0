//! The config file as a layer of the command line: a TOML table whose keys
//! are a command's flag names with underscores. Its values become the
//! flags' defaults (so flags and environment variables still win) and go
//! through each flag's own value parser first, so a bad value fails the way
//! a bad flag does, naming the file and the key instead. Any command can be
//! layered this way: the daemon's flags, and the proxy's.
use std::path::Path;

use clap::error::ErrorKind;

/// Keys the file may not set: they are not settings (the proxy's `config`
/// is the file itself, or ynetd's YAML, given on the command line).
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

fn file_error(file: &Path, message: impl std::fmt::Display) -> clap::Error {
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("config file {}: {message}\n", file.display()),
    )
}

/// Runs `value` through `arg`'s own value parser, alone: the real flag may
/// carry an environment variable or relations to other flags.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let probe = clap::Command::new("config").no_binary_name(true).arg(
        clap::Arg::new("value")
            .long("value")
            .num_args(1)
            .value_parser(arg.get_value_parser().clone()),
    );
    // `--value=VALUE`: a value that starts with a dash (a command's own
    // flag, in the proxy's `command` list) is still a value.
    let error = match probe.try_get_matches_from([format!("--value={value}")]) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let why = std::error::Error::source(&error)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|p| p.get_name().to_string())
        .collect();
    let possible = if possible.is_empty() {
        String::new()
    } else {
        format!(" (possible values: {})", possible.join(", "))
    };
    Err(format!("invalid value `{value}`{why}{possible}"))
}

/// A TOML value as the strings a flag would take.
fn flag_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `command` with the file's values as defaults, each checked by the flag's
/// own value parser; and the keys the file set.
pub fn with_file_defaults(
    mut command: clap::Command,
    file: &Path,
) -> Result<(clap::Command, Vec<String>), clap::Error> {
    let text = std::fs::read_to_string(file).map_err(|e| file_error(file, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        // toml's Display runs to several lines with a caret; say it in one.
        let rendered = e.to_string();
        let place = rendered.lines().next().unwrap_or("TOML parse error");
        file_error(
            file,
            format!("{place}: {}", e.message().trim().replace('\n', "; ")),
        )
    })?;
    let mut keys = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && !NOT_IN_FILE.contains(&key.as_str()))
            .cloned()
            .ok_or_else(|| file_error(file, format!("unknown key `{key}`")))?;
        let values = flag_values(value).ok_or_else(|| {
            file_error(
                file,
                format!("key `{key}`: expected a string, number, boolean or a list of them"),
            )
        })?;
        // "8080,9090" in the file means what it means on the command line.
        let values: Vec<String> = match arg.get_value_delimiter() {
            Some(d) => values
                .iter()
                .flat_map(|v| v.split(d).map(str::to_string))
                .collect(),
            None => values,
        };
        // A repeatable flag (`--proxy`, the proxy's command) takes a list.
        let repeats = arg.get_value_delimiter().is_some()
            || matches!(arg.get_action(), clap::ArgAction::Append);
        if values.len() != 1 && !repeats {
            return Err(file_error(
                file,
                format!("key `{key}`: takes one value, not a list"),
            ));
        }
        for v in &values {
            check_value(&arg, v).map_err(|why| file_error(file, format!("key `{key}`: {why}")))?;
        }
        command = command.mut_arg(key.as_str(), |a| a.default_values(values.clone()));
        keys.push(key.clone());
    }
    Ok((command, keys))
}
