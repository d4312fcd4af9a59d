//! Delegation to an IPAM plugin per the spec: find `ipam.type` in `CNI_PATH`, run it
//! with the same environment (but our `CNI_COMMAND`) and the same config on stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError};

/// Find `plugin` in the colon-separated `cni_path`.
pub fn find_plugin(cni_path: &str, plugin: &str) -> Result<PathBuf, CniError> {
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH {cni_path:?}"),
            )
        })
}

/// Run IPAM plugin `plugin` for `command`; its parsed stdout (if any) on success, its
/// own error (code, msg, details) when it fails.
pub fn exec(
    cni_path: &str,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let path = find_plugin(cni_path, plugin)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!("running IPAM plugin {}: {e}", path.display()),
            )
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its stdin is reported by its status.
        let _ = input.write_all(stdin);
    }
    let output = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IPAM_PLUGIN,
            format!("waiting for IPAM plugin {}: {e}", path.display()),
        )
    })?;
    let parsed: Option<Value> = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&output.stdout).ok()
    };
    if !output.status.success() {
        let (c, msg, details) = match &parsed {
            Some(v) => (
                v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                v.get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            None => (
                code::IPAM_PLUGIN,
                String::from_utf8_lossy(&output.stdout).trim().to_string(),
                String::new(),
            ),
        };
        return Err(CniError::new(
            c,
            format!(
                "IPAM plugin {plugin} {command} failed ({}): {msg}",
                output.status
            ),
        )
        .with_details(details));
    }
    if parsed.is_none() && !output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            code::IPAM_PLUGIN,
            format!("IPAM plugin {plugin} {command} printed something that is not JSON"),
        ));
    }
    Ok(parsed)
}

/// Whether IPAM plugin `plugin` speaks spec version `version` (asked with VERSION). Used
/// before STATUS and GC, which plugins older than 1.1.0 do not know.
pub fn supports(cni_path: &str, plugin: &str, version: &str) -> Result<bool, CniError> {
    let out = exec(cni_path, plugin, "VERSION", br#"{"cniVersion":"0.4.0"}"#)?;
    Ok(out
        .as_ref()
        .and_then(|v| v.get("supportedVersions"))
        .and_then(Value::as_array)
        .is_some_and(|versions| versions.iter().any(|v| v.as_str() == Some(version))))
}
