//! Address families and address rules: which family an address is, and which addresses are public.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family; each is detected, whitelisted and proven over its own transport.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The unspecified address of this family: binding to it pins the transport to the family.
    pub(crate) fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::from([0u8; 4]),
            Family::V6 => IpAddr::from([0u16; 8]),
        }
    }

    /// The name used in configuration, logs, `/status` and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an address is not a public egress address, or None when it is one: only global unicast
/// may be whitelisted, unless non-public ones are allowed.
pub(crate) fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if ip.is_link_local() => "link-local",
        _ if a == 100 && (64..128).contains(&b) => "shared address space (CGNAT, 100.64.0.0/10)",
        _ if ip.is_documentation() => "documentation range",
        _ if a == 198 && (b == 18 || b == 19) => "benchmarking range (198.18.0.0/15)",
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        _ if a >= 240 => "reserved (240.0.0.0/4)",
        _ if a == 0 => "this network (0.0.0.0/8)",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.to_ipv4_mapped().is_some() => "IPv4-mapped IPv6",
        _ if ip.is_multicast() => "multicast",
        _ if segments[0] & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        _ if segments[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if segments[0] == 0x2001 && segments[1] == 0x0db8 => {
            "documentation range (2001:db8::/32)"
        }
        _ if segments[0] & 0xfff0 == 0x3ff0 => "documentation range (3fff::/20)",
        _ if segments[0] == 0x2001 && segments[1] == 0x0002 && segments[2] == 0 => {
            "benchmarking range (2001:2::/48)"
        }
        _ if segments[0] == 0x2001 && segments[1] < 0x0200 => "IETF special purpose (2001::/23)",
        _ if segments[0] == 0x0064 && segments[1] == 0xff9b => "NAT64 translation prefix",
        _ if segments[0] & 0xe000 != 0x2000 => "not global unicast (outside 2000::/3)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_every_special_range() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:8.8.8.8",
            "ff02::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "64:ff9b::1.2.3.4",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(non_public_reason(ip).is_some(), "{text} must be rejected");
        }
    }

    #[test]
    fn accepts_global_unicast() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "2a00:1450:4001::1",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(non_public_reason(ip), None, "{text} must be accepted");
        }
    }
}
