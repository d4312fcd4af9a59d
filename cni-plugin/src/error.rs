//! The CNI spec's error result: `{"cniVersion","code","msg","details"}` on stdout and a
//! non-zero exit status.

use serde_json::{json, Value};

/// Error codes: 1–99 are the spec's, 100+ are weft's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// CHECK found the attachment differs from what ADD set up.
    pub const CHECK_MISMATCH: u32 = 100;
    /// Every address of the node's pod subnet is taken.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// `CNI_IFNAME` already exists in the pod namespace.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// A netlink request failed.
    pub const NETLINK: u32 = 103;
    /// The delegated IPAM plugin could not be run or answered garbage.
    pub const IPAM_PLUGIN: u32 = 104;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> CniError {
        CniError::new(code::IO_FAILURE, format!("{what}: {err}"))
    }

    pub fn netlink(what: impl std::fmt::Display, err: impl std::fmt::Display) -> CniError {
        CniError::new(code::NETLINK, format!("{what}: {err}"))
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<weft_config::cni::CniConfigError> for CniError {
    fn from(e: weft_config::cni::CniConfigError) -> CniError {
        CniError::new(e.code(), e.to_string())
    }
}

impl From<weft_netlink::Error> for CniError {
    fn from(e: weft_netlink::Error) -> CniError {
        // No socket at all is an I/O failure, as the spec's codes go; a request the
        // kernel refused is weft's NETLINK.
        let code = match e {
            weft_netlink::Error::Netns { .. } | weft_netlink::Error::Connect(_) => code::IO_FAILURE,
            _ => code::NETLINK,
        };
        CniError::new(code, e.to_string())
    }
}
