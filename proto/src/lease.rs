//! flannel's subnet lease record, as stored in etcd at `<prefix>/subnets/<key>`.
//!
//! The key names the subnet (`10.244.1.0-24`, flannel's `MakeSubnetKey`; a dual-stack
//! flanneld appends `&<ipv6>-<len>`); the value is the JSON of flannel's `LeaseAttrs`:
//!
//! ```json
//! {"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",
//!  "BackendData":{"VNI":1,"VtepMAC":"02:42:c0:00:02:01"}}
//! ```
//!
//! Field names, their order and `null`/omitted conventions follow flannel's Go structs
//! (`LeaseAttrs` with `omitempty` on the backend fields), so flanneld and weftd can read
//! each other's leases.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A lease record or one of its parts could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("subnet key {key:?} is not of the form <ipv4>-<prefix length> (e.g. 10.244.1.0-24)")]
    BadKey { key: String },
    #[error("lease JSON is invalid: {0}")]
    BadJson(String),
    #[error("BackendData of a {backend} lease is invalid: {reason}")]
    BadBackendData {
        backend: &'static str,
        reason: String,
    },
    #[error("MAC address {0:?} is not six colon-separated hex bytes")]
    BadMac(String),
}

/// A 48-bit MAC address, printed and parsed as `aa:bb:cc:dd:ee:ff` (Go's
/// `net.HardwareAddr` form, which flannel uses for `VtepMAC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = LeaseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || LeaseError::BadMac(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// flannel's `LeaseAttrs`: the value stored under a subnet key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes `null` here when IPv6 is off; it is always present in its output.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
}

/// flannel's `vxlanLeaseAttrs`: the `BackendData` of a `vxlan` lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanBackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

impl LeaseAttrs {
    /// The record of a VXLAN node, as flanneld's vxlan backend writes it.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> Self {
        let data = VxlanBackendData { vni, vtep_mac };
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".to_owned(),
            // Serializing a struct of an integer and a string cannot fail.
            backend_data: serde_json::to_value(data).ok(),
            backend_v6_data: None,
        }
    }

    /// The record of an IPIP node, as flanneld's ipip backend writes it (no BackendData).
    pub fn ipip(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "ipip".to_owned(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Decodes a lease value as stored in etcd.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LeaseError> {
        serde_json::from_slice(bytes).map_err(|e| LeaseError::BadJson(e.to_string()))
    }

    /// Encodes the lease value in flannel's field order.
    pub fn to_json(&self) -> String {
        // A struct of addresses, strings and JSON values always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The VXLAN parameters of a `vxlan` lease.
    pub fn vxlan_data(&self) -> Result<VxlanBackendData, LeaseError> {
        let bad = |reason: String| LeaseError::BadBackendData {
            backend: "vxlan",
            reason,
        };
        let data = self
            .backend_data
            .as_ref()
            .ok_or_else(|| bad("missing".to_owned()))?;
        VxlanBackendData::deserialize(data).map_err(|e| bad(e.to_string()))
    }
}

/// The key suffix flannel uses for a subnet: `10.244.1.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses a subnet key (the last path element of `<prefix>/subnets/<key>`). A dual-stack
/// key's IPv6 part (`&fd00::-64`) is ignored. The address must be the subnet's network
/// address, as flannel writes it.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Net, LeaseError> {
    let bad = || LeaseError::BadKey {
        key: key.to_owned(),
    };
    let v4 = key.split('&').next().unwrap_or(key);
    let (addr, len) = v4.rsplit_once('-').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let net = Ipv4Net::new(addr, len).map_err(|_| bad())?;
    if net.network() != addr {
        return Err(bad());
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value flanneld's vxlan backend stores: Go's encoding of `LeaseAttrs` and
    /// `vxlanLeaseAttrs` (field order, `null` PublicIPv6, lower-case MAC).
    const FLANNEL_VXLAN: &str = r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:3e:1a:9b:0c:d2"}}"#;

    #[test]
    fn parses_flannel_vxlan_record() {
        let attrs = LeaseAttrs::from_json(FLANNEL_VXLAN.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(attrs.backend_type, "vxlan");
        let data = attrs.vxlan_data().unwrap();
        assert_eq!(data.vni, 1);
        assert_eq!(data.vtep_mac, MacAddr([0xf6, 0x3e, 0x1a, 0x9b, 0x0c, 0xd2]));
    }

    #[test]
    fn own_record_is_byte_identical_to_flannels() {
        let mac = "f6:3e:1a:9b:0c:d2".parse().unwrap();
        let ours = LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 7), 1, mac).to_json();
        assert_eq!(ours, FLANNEL_VXLAN);
    }

    #[test]
    fn ipip_record_has_no_backend_data() {
        let json = LeaseAttrs::ipip(Ipv4Addr::new(192, 0, 2, 9)).to_json();
        assert_eq!(
            json,
            r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"ipip"}"#
        );
        let back = LeaseAttrs::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.backend_type, "ipip");
    }

    #[test]
    fn dual_stack_record_keeps_public_ipv6_and_v6_backend_data() {
        let json = r#"{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:3e:1a:9b:0c:d2"},"BackendV6Data":{"VNI":1,"VtepMAC":"f6:3e:1a:9b:0c:d3"}}"#;
        let attrs = LeaseAttrs::from_json(json.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, Some("2001:db8::7".parse().unwrap()));
        assert!(attrs.backend_v6_data.is_some());
        assert_eq!(attrs.to_json(), json, "re-written unchanged");
    }

    #[test]
    fn tolerates_missing_optional_fields_and_extra_ones() {
        let attrs = LeaseAttrs::from_json(br#"{"PublicIP":"192.0.2.3","Future":true}"#).unwrap();
        assert_eq!(attrs.backend_type, "");
        assert!(attrs.vxlan_data().is_err());
    }

    #[test]
    fn rejects_bad_records_with_reason() {
        let err = LeaseAttrs::from_json(br#"{"PublicIP":"not-an-ip"}"#).unwrap_err();
        assert!(matches!(err, LeaseError::BadJson(_)));
        let attrs = LeaseAttrs::from_json(
            br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#,
        )
        .unwrap();
        let err = attrs.vxlan_data().unwrap_err().to_string();
        assert!(err.contains("zz"), "{err}");
    }

    #[test]
    fn subnet_keys_round_trip() {
        let net: Ipv4Net = "10.244.17.0/24".parse().unwrap();
        assert_eq!(subnet_key(net), "10.244.17.0-24");
        assert_eq!(parse_subnet_key("10.244.17.0-24").unwrap(), net);
        assert_eq!(parse_subnet_key("10.244.17.0-24&fd00:1::-64").unwrap(), net);
        for bad in [
            "10.244.17.0",
            "10.244.17.1-24",
            "10.244.17.0-33",
            "x-24",
            "",
        ] {
            assert!(parse_subnet_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac: MacAddr = "02:00:5e:10:00:ff".parse().unwrap();
        assert_eq!(mac.to_string(), "02:00:5e:10:00:ff");
        for bad in [
            "02:00:5e:10:00",
            "02:00:5e:10:00:ff:01",
            "2:00:5e:10:00:ff",
            "gg:00:5e:10:00:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(attrs) = LeaseAttrs::from_json(&bytes) {
                let _ = attrs.vxlan_data();
            }
            let _ = parse_subnet_key(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn vxlan_record_round_trips(ip in proptest::num::u32::ANY, vni in 0u32..(1 << 24), mac in proptest::array::uniform6(proptest::num::u8::ANY)) {
            let attrs = LeaseAttrs::vxlan(Ipv4Addr::from(ip), vni, MacAddr(mac));
            let back = LeaseAttrs::from_json(attrs.to_json().as_bytes()).unwrap();
            proptest::prop_assert_eq!(back.vxlan_data().unwrap(), VxlanBackendData { vni, vtep_mac: MacAddr(mac) });
            proptest::prop_assert_eq!(back, attrs);
        }
    }
}
