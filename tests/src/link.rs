//! veth pairs and bridges inside namespaces. Links are created directly in their
//! namespaces (never in the root one) and deleted on Drop; deleting a namespace removes
//! its links too, so a Drop that finds the link gone is fine.

use crate::netns::Netns;

/// Checks an interface name against the kernel's limit (IFNAMSIZ - 1).
pub fn check_ifname(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', ':']),
        "invalid interface name {name:?} (1..=15 characters, no '/', ' ' or ':')"
    );
    Ok(())
}

/// One end of a link: the namespace it lives in, its name, and an optional address.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub ns: &'a Netns,
    pub ifname: &'a str,
    /// `a.b.c.d/len`, added to the interface if given.
    pub addr: Option<&'a str>,
}

impl<'a> End<'a> {
    pub fn new(ns: &'a Netns, ifname: &'a str) -> End<'a> {
        End {
            ns,
            ifname,
            addr: None,
        }
    }

    pub fn with_addr(ns: &'a Netns, ifname: &'a str, addr: &'a str) -> End<'a> {
        End {
            ns,
            ifname,
            addr: Some(addr),
        }
    }
}

/// A veth pair between two namespaces (or within one); both ends are up. Deleting one
/// end deletes the pair, so Drop deletes end A.
#[derive(Debug)]
pub struct Veth {
    ns_a: String,
    if_a: String,
    owned: bool,
}

impl Veth {
    /// Creates `a.ifname` in `a.ns` paired with `b.ifname` in `b.ns`, adds the
    /// addresses, sets `mtu` on both ends if given, and brings both up.
    pub fn create(a: End<'_>, b: End<'_>, mtu: Option<u32>) -> anyhow::Result<Veth> {
        check_ifname(a.ifname)?;
        check_ifname(b.ifname)?;
        a.ns.ip(&[
            "link",
            "add",
            a.ifname,
            "type",
            "veth",
            "peer",
            "name",
            b.ifname,
            "netns",
            b.ns.name(),
        ])?;
        let veth = Veth {
            ns_a: a.ns.name().to_owned(),
            if_a: a.ifname.to_owned(),
            owned: true,
        };
        for end in [a, b] {
            if let Some(mtu) = mtu {
                end.ns
                    .ip(&["link", "set", end.ifname, "mtu", &mtu.to_string()])?;
            }
            if let Some(addr) = end.addr {
                end.ns.ip(&["addr", "add", addr, "dev", end.ifname])?;
            }
            end.ns.ip(&["link", "set", end.ifname, "up"])?;
        }
        Ok(veth)
    }

    /// Keeps the pair after Drop (it goes away with its namespace).
    pub fn detach(mut self) {
        self.owned = false;
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if self.owned {
            // The namespace may already be gone, taking the pair with it.
            let _ = Netns::existing(&self.ns_a).ip(&["link", "del", &self.if_a]);
        }
    }
}

/// A Linux bridge in a namespace, up, with an optional address.
#[derive(Debug)]
pub struct Bridge {
    ns: String,
    name: String,
    owned: bool,
}

impl Bridge {
    pub fn create(ns: &Netns, name: &str, addr: Option<&str>) -> anyhow::Result<Bridge> {
        check_ifname(name)?;
        ns.ip(&["link", "add", name, "type", "bridge"])?;
        let bridge = Bridge {
            ns: ns.name().to_owned(),
            name: name.to_owned(),
            owned: true,
        };
        if let Some(addr) = addr {
            ns.ip(&["addr", "add", addr, "dev", name])?;
        }
        ns.ip(&["link", "set", name, "up"])?;
        Ok(bridge)
    }

    /// A handle on an existing bridge that Drop does not delete.
    pub fn existing(ns: &Netns, name: &str) -> Bridge {
        Bridge {
            ns: ns.name().to_owned(),
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enslaves `ifname` (in the same namespace) to the bridge and brings it up.
    pub fn attach(&self, ifname: &str) -> anyhow::Result<()> {
        let ns = Netns::existing(&self.ns);
        ns.ip(&["link", "set", ifname, "master", &self.name])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Keeps the bridge after Drop (it goes away with its namespace).
    pub fn detach(mut self) {
        self.owned = false;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.owned {
            let _ = Netns::existing(&self.ns).ip(&["link", "del", &self.name]);
        }
    }
}

/// MAC address of `ifname` in `ns` (from `/sys` via `ip -j link`).
pub fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<String> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no MAC address for {ifname} in {}", ns.name()))
}

/// Whether `ifname` exists in `ns`.
pub fn exists(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", "dev", ifname]).is_ok()
}
