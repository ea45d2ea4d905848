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
        _ if segments[0] == 0x3fff && segments[1] & 0xf000 == 0 => {
            "documentation range (3fff::/20)"
        }
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

    /// Each special range at both of its ends with the exact reason (a range caught by a later,
    /// wider rule would still be refused, but for the wrong reason), and the public addresses
    /// just outside it.
    const V4: &[(&str, Option<&str>)] = &[
        ("0.0.0.0", Some("unspecified")),
        ("0.0.0.1", Some("this network (0.0.0.0/8)")),
        ("0.255.255.255", Some("this network (0.0.0.0/8)")),
        ("1.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", Some("private (RFC 1918)")),
        ("10.255.255.255", Some("private (RFC 1918)")),
        ("11.0.0.0", None),
        ("8.64.0.1", None),
        ("99.64.0.1", None),
        ("100.0.0.1", None),
        ("100.63.255.255", None),
        (
            "100.64.0.0",
            Some("shared address space (CGNAT, 100.64.0.0/10)"),
        ),
        (
            "100.127.255.255",
            Some("shared address space (CGNAT, 100.64.0.0/10)"),
        ),
        ("100.128.0.0", None),
        ("101.64.0.1", None),
        ("126.255.255.255", None),
        ("127.0.0.0", Some("loopback")),
        ("127.255.255.255", Some("loopback")),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("169.254.0.0", Some("link-local")),
        ("169.254.255.255", Some("link-local")),
        ("169.255.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.0", Some("private (RFC 1918)")),
        ("172.31.255.255", Some("private (RFC 1918)")),
        ("172.32.0.0", None),
        ("191.255.255.255", None),
        (
            "192.0.0.0",
            Some("IETF protocol assignments (192.0.0.0/24)"),
        ),
        (
            "192.0.0.255",
            Some("IETF protocol assignments (192.0.0.0/24)"),
        ),
        ("192.0.1.0", None),
        ("192.0.2.0", Some("documentation range")),
        ("192.0.2.255", Some("documentation range")),
        ("192.0.3.0", None),
        ("192.1.0.0", None),
        ("193.0.0.0", None),
        ("8.0.0.1", None),
        ("192.8.0.1", None),
        ("192.167.255.255", None),
        ("192.168.0.0", Some("private (RFC 1918)")),
        ("192.168.255.255", Some("private (RFC 1918)")),
        ("192.169.0.0", None),
        ("198.17.255.255", None),
        ("198.18.0.0", Some("benchmarking range (198.18.0.0/15)")),
        ("198.19.255.255", Some("benchmarking range (198.18.0.0/15)")),
        ("198.20.0.0", None),
        ("8.18.0.1", None),
        ("8.19.0.1", None),
        ("199.18.0.1", None),
        ("198.51.100.0", Some("documentation range")),
        ("198.51.100.255", Some("documentation range")),
        ("203.0.113.0", Some("documentation range")),
        ("203.0.113.255", Some("documentation range")),
        ("223.255.255.255", None),
        ("224.0.0.0", Some("multicast")),
        ("239.255.255.255", Some("multicast")),
        ("240.0.0.0", Some("reserved (240.0.0.0/4)")),
        ("255.255.255.254", Some("reserved (240.0.0.0/4)")),
        ("255.255.255.255", Some("broadcast")),
    ];

    const V6: &[(&str, Option<&str>)] = &[
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::2", Some("not global unicast (outside 2000::/3)")),
        ("::ffff:8.8.8.8", Some("IPv4-mapped IPv6")),
        ("ff00::", Some("multicast")),
        ("ff02::1", Some("multicast")),
        ("fbff:ffff::", Some("not global unicast (outside 2000::/3)")),
        ("fc00::", Some("unique local (fc00::/7)")),
        ("fdff:ffff::1", Some("unique local (fc00::/7)")),
        ("fe00::", Some("not global unicast (outside 2000::/3)")),
        ("fe80::", Some("link-local")),
        ("febf:ffff::1", Some("link-local")),
        ("fec0::", Some("not global unicast (outside 2000::/3)")),
        ("1fff:ffff::", Some("not global unicast (outside 2000::/3)")),
        ("2000::", None),
        ("2001::", Some("IETF special purpose (2001::/23)")),
        ("2001:1ff:ffff::", Some("IETF special purpose (2001::/23)")),
        ("2001:200::", None),
        ("2001:1::", Some("IETF special purpose (2001::/23)")),
        ("2001:2::", Some("benchmarking range (2001:2::/48)")),
        ("2001:2:0:ffff::", Some("benchmarking range (2001:2::/48)")),
        ("2001:2:1::", Some("IETF special purpose (2001::/23)")),
        ("2001:3::", Some("IETF special purpose (2001::/23)")),
        ("2002:2::", None),
        ("2001:db7::", None),
        ("2001:db8::", Some("documentation range (2001:db8::/32)")),
        (
            "2001:db8:ffff::1",
            Some("documentation range (2001:db8::/32)"),
        ),
        ("2001:db9::", None),
        ("2002:db8::", None),
        ("2a00:1450:4001::1", None),
        ("2606:4700::1111", None),
        ("3ffe::1", None),
        ("3fff::", Some("documentation range (3fff::/20)")),
        ("3fff:fff:ffff::", Some("documentation range (3fff::/20)")),
        ("3fff:1000::", None),
        ("4000::", Some("not global unicast (outside 2000::/3)")),
        ("64:ff9a::1", Some("not global unicast (outside 2000::/3)")),
        ("64:ff9b::1.2.3.4", Some("NAT64 translation prefix")),
        ("64:ff9b:1::1", Some("NAT64 translation prefix")),
        ("65:ff9b::1", Some("not global unicast (outside 2000::/3)")),
        ("2064:ff9b::1", None),
    ];

    #[test]
    fn each_range_is_refused_for_its_own_reason_up_to_its_edges() {
        for (text, reason) in V4.iter().chain(V6) {
            let ip: IpAddr = text.parse().expect("a valid address");
            assert_eq!(non_public_reason(ip), *reason, "{text}");
        }
    }

    #[test]
    fn families() {
        for (ip, family, name) in [
            (IpAddr::from([8, 8, 8, 8]), Family::V4, "ipv4"),
            (
                IpAddr::from([0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111]),
                Family::V6,
                "ipv6",
            ),
        ] {
            assert_eq!(Family::of(ip), family);
            assert_eq!(
                (family.as_str(), family.to_string()),
                (name, name.to_owned())
            );
            let unspecified = family.unspecified();
            assert!(unspecified.is_unspecified() && Family::of(unspecified) == family);
        }
    }
}
