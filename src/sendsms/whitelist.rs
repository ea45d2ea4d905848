//! The key's whitelist as `token_list_ips` reports it, read defensively from any shape.

use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

/// One entry of a whitelist as the API reported it; unknown shapes are kept as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum WhitelistEntry {
    Address(IpAddr),
    Network { network: IpAddr, prefix: u8 },
}

impl WhitelistEntry {
    fn parse(token: &str) -> Option<Self> {
        let token = token
            .trim()
            .trim_matches(|c| c == '"' || c == '\'' || c == '[' || c == ']');
        if let Ok(ip) = token.parse::<IpAddr>() {
            return Some(Self::Address(ip.to_canonical()));
        }
        let (addr, prefix) = token.split_once('/')?;
        let network = addr.parse::<IpAddr>().ok()?.to_canonical();
        let prefix: u8 = prefix.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self::Network { network, prefix })
    }

    pub(crate) fn covers(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match *self {
            Self::Address(listed) => listed == ip,
            Self::Network { network, prefix } => match (network, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX
                        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
                        .unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX
                        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
                        .unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            },
        }
    }
}

impl fmt::Display for WhitelistEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(ip) => write!(f, "{ip}"),
            Self::Network { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

/// The key's whitelist as `token_list_ips` reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub(crate) struct Whitelist(pub(crate) Vec<WhitelistEntry>);

impl Whitelist {
    /// The shape of `details` is not published: an array of strings, an array of objects, an
    /// object keyed or valued by address, or one separated string. Every string anywhere in it
    /// (keys included) is split on separators and each piece that is an address or a network
    /// counts, so any of those shapes yields the same list.
    pub(crate) fn from_details(details: &Value) -> Self {
        fn walk(value: &Value, depth: usize, out: &mut Entries) {
            // Nesting deeper than any plausible answer is ignored rather than recursed into.
            if depth > 8 {
                return;
            }
            match value {
                Value::String(s) => tokens(s, out),
                Value::Array(items) => items.iter().for_each(|v| walk(v, depth + 1, out)),
                Value::Object(map) => map.iter().for_each(|(k, v)| {
                    tokens(k, out);
                    walk(v, depth + 1, out);
                }),
                _ => {}
            }
        }
        /// Entries in the order first seen, deduplicated through a set: a scan of the list
        /// for each entry made 22,500 entries cost 0.65 s of the runtime's only thread.
        struct Entries {
            list: Vec<WhitelistEntry>,
            seen: std::collections::HashSet<WhitelistEntry>,
        }
        fn tokens(text: &str, out: &mut Entries) {
            for piece in text.split(|c: char| c == ',' || c == ';' || c == '|' || c.is_whitespace())
            {
                if let Some(entry) = WhitelistEntry::parse(piece)
                    && out.seen.insert(entry.clone())
                {
                    out.list.push(entry);
                }
            }
        }
        let mut entries = Entries {
            list: Vec::new(),
            seen: std::collections::HashSet::new(),
        };
        walk(details, 0, &mut entries);
        Whitelist(entries.list)
    }

    pub(crate) fn covers(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|entry| entry.covers(ip))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Whitelist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(empty)");
        }
        for (i, entry) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whitelist_accepts_every_details_shape() {
        let want = [
            WhitelistEntry::Address("203.0.113.7".parse().unwrap()),
            WhitelistEntry::Address("2001:db8::1".parse().unwrap()),
        ];
        for details in [
            json!(["203.0.113.7", "2001:db8::1"]),
            json!([{"ip": "203.0.113.7", "id": 1}, {"ipaddr": "2001:db8::1"}]),
            json!({"203.0.113.7": "added 2026-01-01", "2001:db8::1": true}),
            json!({"ips": ["203.0.113.7", "2001:db8::1"]}),
            json!("203.0.113.7, 2001:db8::1"),
            json!("203.0.113.7\n2001:db8::1"),
        ] {
            // Object keys come back sorted, so compare as sets.
            let got = Whitelist::from_details(&details).0;
            assert!(
                got.len() == want.len() && want.iter().all(|w| got.contains(w)),
                "{details}: {got:?}"
            );
        }
        assert!(Whitelist::from_details(&json!(null)).0.is_empty());
        assert!(Whitelist::from_details(&json!("none yet")).0.is_empty());
    }

    #[test]
    fn every_separator_and_decoration_is_read_and_nothing_else() {
        let list = Whitelist::from_details(&json!(
            "1.1.1.1,2.2.2.2;3.3.3.3|4.4.4.4\t5.5.5.5 \"6.6.6.6\" '7.7.7.7' [2001:db8::7] \
             not-an-ip 8.8.8.8/33 ::/129 9.9.9.0/24 1.1.1.1"
        ));
        assert_eq!(
            list.to_string(),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4, 5.5.5.5, 6.6.6.6, 7.7.7.7, 2001:db8::7, 9.9.9.0/24"
        );
        assert_eq!(list.len(), 9, "the repeated 1.1.1.1 counts once");
        assert_eq!(Whitelist::default().to_string(), "(empty)");
        assert_eq!(Whitelist::default().len(), 0);
    }

    #[test]
    fn nesting_is_read_eight_levels_deep_and_no_deeper() {
        let nested = |levels: usize| {
            let mut value = json!("203.0.113.7");
            for level in 0..levels {
                value = if level % 2 == 0 {
                    json!([value])
                } else {
                    json!({ "ips": value })
                };
            }
            value
        };
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        for levels in 0..=8 {
            assert!(
                Whitelist::from_details(&nested(levels)).covers(ip),
                "{levels}"
            );
        }
        assert!(Whitelist::from_details(&nested(9)).0.is_empty());
        assert!(Whitelist::from_details(&nested(10)).0.is_empty());
    }

    #[test]
    fn a_huge_whitelist_parses_in_linear_time() {
        let many: Vec<String> = (0..22_500u32)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect();
        let started = std::time::Instant::now();
        let list = Whitelist::from_details(&json!(many));
        assert_eq!(list.len(), 22_500);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn networks_cover_their_members() {
        let list = Whitelist::from_details(&json!(["198.51.100.0/24", "::ffff:192.0.2.1"]));
        assert!(list.covers("198.51.100.77".parse().unwrap()));
        assert!(!list.covers("198.51.101.1".parse().unwrap()));
        assert!(
            list.covers("192.0.2.1".parse().unwrap()),
            "mapped addresses compare canonically"
        );
    }
}
