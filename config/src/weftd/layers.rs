//! The `WEFTD_*` environment layer and the `--config` TOML layer, each turned into
//! `--name=value` arguments for the one clap definition.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;

use clap::Parser;

use super::{env_var_name, file_keys, parse_one, setting_names, single_line, Flags, SettingsError};

/// Settings a file may give as an array, one value per item (repeatable flags).
const REPEATABLE: [&str; 2] = ["iface", "iface-regex"];

/// The `WEFTD_*` layer, and the settings it sets (kebab-case names).
pub(super) fn env_layer(
    vars: &HashMap<OsString, OsString>,
) -> Result<(Flags, Vec<String>), SettingsError> {
    let mut args = vec![OsString::from("weftd")];
    let mut names = Vec::new();
    for name in setting_names() {
        let var = env_var_name(&name);
        let Some(value) = vars.get(&OsString::from(&var)) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let Some(value) = value.to_str() else {
            return Err(SettingsError::Env {
                var,
                value: value.to_string_lossy().into_owned(),
                reason: "is not valid UTF-8".to_owned(),
            });
        };
        // Parse alone first so an error names this variable, not a flag.
        parse_one(&name, value).map_err(|reason| SettingsError::Env {
            var: var.clone(),
            value: value.to_owned(),
            reason,
        })?;
        args.push(format!("--{name}={value}").into());
        names.push(name);
    }
    Ok((Flags::try_parse_from(args)?, names))
}

pub(super) fn file_layer(path: &Path, text: &str) -> Result<Flags, SettingsError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| SettingsError::Toml {
        path: path.to_owned(),
        message: toml_error_line(text, &e),
    })?;
    let names = file_keys();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut args = vec!["weftd".to_owned()];
    for (key, value) in &table {
        let line = locate_toml_key(text, key);
        if !known.contains(&key.as_str()) {
            let kebab = key.replace('_', "-").to_lowercase();
            let hint = if value.is_table() {
                " (a table; settings are top-level kebab-case keys)".to_owned()
            } else if key == "config" {
                " (the config file cannot name another config file)".to_owned()
            } else if known.contains(&kebab.as_str()) {
                format!(" (did you mean `{kebab}`? keys are kebab-case)")
            } else {
                String::new()
            };
            return Err(SettingsError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                line,
                hint,
            });
        }
        let bad = |reason: String| SettingsError::FileValue {
            path: path.to_owned(),
            key: key.clone(),
            value: value.to_string(),
            line,
            reason,
        };
        let text_value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if key == "etcd-endpoints" => {
                let mut urls = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => urls.push(s.clone()),
                        _ => return Err(bad("expected an array of URL strings".to_owned())),
                    }
                }
                urls.join(",")
            }
            toml::Value::Array(items) if REPEATABLE.contains(&key.as_str()) => {
                for item in items {
                    let toml::Value::String(item) = item else {
                        return Err(bad("expected an array of strings".to_owned()));
                    };
                    parse_one(key, item).map_err(bad)?;
                    args.push(format!("--{key}={item}"));
                }
                continue;
            }
            toml::Value::Table(_) => {
                return Err(bad(
                    "expected a value, found a table; settings are top-level keys".to_owned(),
                ))
            }
            _ => {
                return Err(bad(
                    "expected a string, a whole number or a boolean".to_owned()
                ))
            }
        };
        parse_one(key, &text_value).map_err(bad)?;
        args.push(format!("--{key}={text_value}"));
    }
    Ok(Flags::try_parse_from(args)?)
}

/// A TOML error on one line (the parser's own text quotes the source over several):
/// `line 2, column 9: string values must be quoted, expected literal string`.
fn toml_error_line(text: &str, error: &toml::de::Error) -> String {
    let message = single_line(error.message());
    let Some(span) = error.span() else {
        return message;
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    format!("line {line}, column {column}: {message}")
}

/// 1-based line of a top-level `key = ...` in TOML text.
fn locate_toml_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}
