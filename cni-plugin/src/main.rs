//! `weft`, the CNI plugin of the weft overlay: CNI 1.1.0 ADD, DEL, CHECK,
//! VERSION, STATUS and GC for configs of cniVersion 0.3.0 to 1.1.0.
//!
//! The runtime passes the operation in `CNI_*` environment variables and the network
//! config on stdin; the result (or the spec's error object) goes to stdout.

mod delegate;
mod error;
mod ipam;
mod k8s;
mod netns;
mod ops;
mod result;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value};
use weft_config::cni::{
    validate_ifname, version_at_least, CniNetConf, LATEST_VERSION, SUPPORTED_VERSIONS,
};

use crate::error::{code, CniError};
use crate::ops::{CniEnv, Invocation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

fn parse_command(s: &str) -> Option<Command> {
    Some(match s {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "STATUS" => Command::Status,
        "GC" => Command::Gc,
        _ => return None,
    })
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required_env(name: &str, command: &str) -> Result<String, CniError> {
    env_var(name).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("{name} is required for {command} but is not set"),
        )
    })
}

/// The spec's rule for container IDs: alphanumerics, '-', '_' and '.'.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} has characters other than letters, digits, '-', '_' and '.'"),
        ))
    }
}

fn read_env(command: Command, name: &str) -> Result<CniEnv, CniError> {
    let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let (container_id, ifname) = if needs_attachment {
        let id = required_env("CNI_CONTAINERID", name)?;
        validate_container_id(&id)?;
        let ifname = required_env("CNI_IFNAME", name)?;
        validate_ifname("CNI_IFNAME", &ifname)
            .map_err(|e| CniError::new(code::INVALID_ENV, e.to_string()))?;
        (id, ifname)
    } else {
        (String::new(), String::new())
    };
    let netns = match command {
        Command::Add | Command::Check => Some(PathBuf::from(required_env("CNI_NETNS", name)?)),
        // DEL must work with an empty or vanished namespace.
        _ => env_var("CNI_NETNS").map(PathBuf::from),
    };
    let cni_path = if needs_attachment {
        required_env("CNI_PATH", name)?
    } else {
        env_var("CNI_PATH").unwrap_or_default()
    };
    // Only ADD records the pod; DEL must work whatever CNI_ARGS holds.
    let pod = match command {
        Command::Add => k8s::PodRef::from_cni_args(&env_var("CNI_ARGS").unwrap_or_default())?,
        _ => None,
    };
    Ok(CniEnv {
        container_id,
        netns,
        ifname,
        cni_path,
        pod,
    })
}

/// VERSION's answer, in the version asked for when weft supports it.
fn version_reply(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Run one operation; `Some(output)` to print on success.
fn run(command_name: &str, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = parse_command(command_name).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_COMMAND {command_name:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
            ),
        )
    })?;
    // VERSION needs no valid config: a runtime probes with just {"cniVersion": ..}.
    if command == Command::Version {
        return Ok(Some(version_reply(stdin)));
    }
    let conf = CniNetConf::parse(stdin)?;
    let needed = match command {
        Command::Check => Some("0.4.0"),
        Command::Status | Command::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = needed {
        if !version_at_least(&conf.cni_version, min) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} does not allow {command_name} (it needs {min} or later)",
                    conf.cni_version
                ),
            ));
        }
    }
    let env = read_env(command, command_name)?;
    let version = conf.cni_version.clone();
    let inv = Invocation { env, conf, stdin };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::io("starting the async runtime", e))?;
    runtime.block_on(async {
        match command {
            Command::Add => ops::add(&inv).await.map(|r| Some(r.render(&version))),
            Command::Del => ops::del(&inv).await.map(|()| None),
            Command::Check => ops::check(&inv).await.map(|()| None),
            Command::Gc => ops::gc(&inv).await.map(|()| None),
            Command::Status => ops::status(&inv).map(|()| None),
            Command::Version => Ok(Some(version_reply(stdin))),
        }
    })
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let outcome = if command.is_empty() {
        eprintln!(
            "weft {}: CNI plugin (spec {}); run by a container runtime with CNI_COMMAND set",
            env!("CARGO_PKG_VERSION"),
            SUPPORTED_VERSIONS.join(", ")
        );
        Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))
    } else if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        Err(CniError::io("reading the network config from stdin", e))
    } else {
        run(&command, &stdin)
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let version = serde_json::from_slice::<Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| LATEST_VERSION.to_string());
            let _ = writeln!(out, "{}", err.to_json(&version));
            eprintln!("weft: {command}: {err}");
            ExitCode::FAILURE
        }
    }
}
