//! flannel's `subnet.env` (read by the CNI plugin, written by weftd).
//!
//! INTERFACE: `SubnetEnv::parse(&str)`, `SubnetEnv::render()`, `SubnetEnv::read(path)`,
//! `SubnetEnv::write_atomic(path)` (temp file + rename).
//!
//! The format is what flanneld writes (`KEY=VALUE` lines, `FLANNEL_IPMASQ` as Go's
//! `true`/`false`). Reading is strict about the four keys weft needs (each present
//! exactly once, each valid) and tolerant of everything else flanneld may write
//! (`FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`, ...), blank lines and `#` comments.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::Ipv4Net;

/// ```text
/// FLANNEL_NETWORK=10.244.0.0/16
/// FLANNEL_SUBNET=10.244.1.1/24
/// FLANNEL_MTU=1450
/// FLANNEL_IPMASQ=false
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    /// The node's subnet with the gateway (`.1`) as its address, e.g. 10.244.1.1/24.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}

const NETWORK: &str = "FLANNEL_NETWORK";
const SUBNET: &str = "FLANNEL_SUBNET";
const MTU: &str = "FLANNEL_MTU";
const IPMASQ: &str = "FLANNEL_IPMASQ";

/// Why a subnet.env could not be read, parsed or written. `origin` is the file's path,
/// or `subnet.env` when parsing a string.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{origin} line {line}: {problem}")]
    Invalid {
        origin: String,
        line: usize,
        problem: String,
    },
    #[error("{origin}: {key} is missing; a subnet.env needs FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ (is weftd or flanneld running and done starting?)")]
    Missing { origin: String, key: &'static str },
    #[error("{origin}: FLANNEL_SUBNET {subnet} is not inside FLANNEL_NETWORK {network}")]
    SubnetOutsideNetwork {
        origin: String,
        subnet: Ipv4Net,
        network: Ipv4Net,
    },
}

impl SubnetEnv {
    /// Parses flannel's subnet.env text.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        parse_from(text, "subnet.env")
    }

    /// Renders the file exactly as flanneld does (four lines, newline-terminated).
    pub fn render(&self) -> String {
        format!(
            "{NETWORK}={}\n{SUBNET}={}\n{MTU}={}\n{IPMASQ}={}\n",
            self.network, self.subnet, self.mtu, self.ipmasq
        )
    }

    /// Reads and parses the file at `path`; errors name the file and the line.
    pub fn read(path: impl AsRef<Path>) -> Result<SubnetEnv, SubnetEnvError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| SubnetEnvError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_from(&text, &path.display().to_string())
    }

    /// Writes the file so that a reader sees either the old or the new content, never a
    /// partial one: a temporary file in the same directory, fsync, rename over `path`,
    /// fsync of the directory. Creates the parent directory if needed.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<(), SubnetEnvError> {
        let path = path.as_ref();
        let fail = |source| SubnetEnvError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path names a directory, not a file",
            ))
        })?;
        fs::create_dir_all(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                // create_dir_all's EEXIST: something on the way is a file.
                fail(io::Error::new(
                    e.kind(),
                    format!(
                        "{} (or a parent) exists and is not a directory",
                        dir.display()
                    ),
                ))
            } else {
                fail(e)
            }
        })?;

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(temp_name);

        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)?;
            // Persist the rename itself; the file's data was synced above.
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            // Best effort: the write already failed and that error is what matters.
            let _ = fs::remove_file(&temp);
        }
        result.map_err(fail)
    }

    /// The bridge gateway: the address part of `FLANNEL_SUBNET` (e.g. 10.244.1.1).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// The node's subnet without host bits (e.g. 10.244.1.0/24).
    pub fn subnet_network(&self) -> Ipv4Net {
        self.subnet.trunc()
    }
}

fn parse_from(text: &str, origin: &str) -> Result<SubnetEnv, SubnetEnvError> {
    let mut network = None;
    let mut subnet = None;
    let mut mtu = None;
    let mut ipmasq = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let bad = |problem: String| SubnetEnvError::Invalid {
            origin: origin.to_owned(),
            line,
            problem,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(bad(format!(
                "expected KEY=VALUE, got {:?}",
                truncate(trimmed)
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        let slot_taken = |seen: bool| {
            if seen {
                Err(bad(format!("{key} appears twice")))
            } else {
                Ok(())
            }
        };
        match key {
            NETWORK => {
                slot_taken(network.is_some())?;
                let net: Ipv4Net = value.parse().map_err(|_| {
                    bad(format!(
                        "{NETWORK} {value:?} is not an IPv4 network such as 10.244.0.0/16"
                    ))
                })?;
                network = Some(net);
            }
            SUBNET => {
                slot_taken(subnet.is_some())?;
                let net: Ipv4Net = value.parse().map_err(|_| {
                    bad(format!(
                        "{SUBNET} {value:?} is not an IPv4 address with prefix length such as 10.244.1.1/24"
                    ))
                })?;
                subnet = Some(net);
            }
            MTU => {
                slot_taken(mtu.is_some())?;
                let value_mtu = value
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| {
                        bad(format!(
                            "{MTU} {value:?} is not an MTU: expected a whole number from 68 to 65535"
                        ))
                    })?;
                mtu = Some(value_mtu);
            }
            IPMASQ => {
                slot_taken(ipmasq.is_some())?;
                ipmasq = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(format!("{IPMASQ} {value:?} must be true or false"))),
                });
            }
            // Other keys flanneld writes (FLANNEL_IPV6_*) or a user added: not ours.
            _ => {}
        }
    }
    let missing = |key| SubnetEnvError::Missing {
        origin: origin.to_owned(),
        key,
    };
    let network = network.ok_or_else(|| missing(NETWORK))?;
    let subnet = subnet.ok_or_else(|| missing(SUBNET))?;
    let mtu = mtu.ok_or_else(|| missing(MTU))?;
    let ipmasq = ipmasq.ok_or_else(|| missing(IPMASQ))?;
    if subnet.prefix_len() < network.prefix_len() || !network.contains(&subnet.addr()) {
        return Err(SubnetEnvError::SubnetOutsideNetwork {
            origin: origin.to_owned(),
            subnet,
            network,
        });
    }
    Ok(SubnetEnv {
        network,
        subnet,
        mtu,
        ipmasq,
    })
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        s.chars().take(57).collect::<String>() + "..."
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn parses_and_renders_flannels_format() {
        let env = SubnetEnv::parse(SAMPLE).unwrap();
        assert_eq!(env.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(env.subnet, "10.244.1.1/24".parse().unwrap());
        assert_eq!(env.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(env.subnet_network(), "10.244.1.0/24".parse().unwrap());
        assert_eq!(env.mtu, 1450);
        assert!(!env.ipmasq);
        assert_eq!(env.render(), SAMPLE);
    }
}
