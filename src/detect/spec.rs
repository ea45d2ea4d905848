//! Provider specs: what `SENDSMS_IP_PROVIDERS` names, who operates each one, and the built-in list.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hickory_proto::rr::{DNSClass, RecordType};
use url::Url;

use super::dns::DnsQuery;
use crate::net::Family;
use crate::secret::REDACTED;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProviderKind {
    /// An HTTP(S) echo service.
    Http(Url),
    /// A DNS whoami name on one named server.
    Dns(DnsQuery),
    /// A local interface's own address.
    Iface(String),
}

/// One configured source of "your address is ...", with the operator that runs it: a quorum
/// counts operators, not URLs, so two names of one company are one vote. `Debug` shows what
/// `Display` shows, never the URL's credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProviderSpec {
    pub(crate) kind: ProviderKind,
    pub(crate) operator: String,
    /// How it is shown in logs, errors, `/status` and `detect`: an HTTP provider's
    /// `user:password@` and query (which may hold a token) are never shown.
    shown: String,
}

impl ProviderSpec {
    pub(crate) const EXPECTED: &'static str = "comma-separated providers: https://HOST/PATH, \
         dns://SERVER[:PORT]/NAME?type=A|AAAA|TXT&class=IN|CH, or iface:NAME; \
         an optional #OPERATOR suffix names who runs it";

    /// The one family this provider can answer for, when its transport fixes it.
    pub(crate) fn family(&self) -> Option<Family> {
        match &self.kind {
            ProviderKind::Http(url) => match url.host() {
                Some(url::Host::Ipv4(_)) => Some(Family::V4),
                Some(url::Host::Ipv6(_)) => Some(Family::V6),
                _ => None,
            },
            ProviderKind::Dns(query) => Some(Family::of(query.server.ip())),
            ProviderKind::Iface(_) => None,
        }
    }
}

impl FromStr for ProviderSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (body, operator) = match text.split_once('#') {
            Some((body, op)) if !op.trim().is_empty() => {
                (body, Some(op.trim().to_ascii_lowercase()))
            }
            Some(_) => return Err("an empty #OPERATOR".into()),
            None => (text, None),
        };
        let (kind, derived) = if let Some(name) = body.strip_prefix("iface:") {
            if name.is_empty() || name.len() > 15 || !name.chars().all(|c| c.is_ascii_graphic()) {
                return Err("iface: needs an interface name such as eth0".into());
            }
            (
                ProviderKind::Iface(name.to_owned()),
                format!("iface:{name}"),
            )
        } else {
            let url = Url::parse(body).map_err(|e| e.to_string())?;
            match url.scheme() {
                "http" | "https" => {
                    let host = url.host_str().ok_or("a URL without a host")?.to_owned();
                    (ProviderKind::Http(url), registrable(&host))
                }
                "dns" => {
                    let query = parse_dns(&url)?;
                    let operator = registrable(query.name.trim_end_matches('.'));
                    (ProviderKind::Dns(query), operator)
                }
                other => return Err(format!("unsupported scheme {other:?}")),
            }
        };
        let mut shown = match &kind {
            ProviderKind::Http(url) => {
                let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
                if let Some(port) = url.port() {
                    shown.push_str(&format!(":{port}"));
                }
                shown.push_str(url.path());
                if url.query().is_some() {
                    shown.push_str(&format!("?{REDACTED}"));
                }
                shown
            }
            // A DNS query and an interface name are this tool's own syntax: no credentials.
            _ => body.to_owned(),
        };
        if let Some((_, op)) = text.split_once('#') {
            shown.push('#');
            shown.push_str(op);
        }
        Ok(ProviderSpec {
            kind,
            operator: operator.unwrap_or(derived),
            shown,
        })
    }
}

impl fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderSpec({})", self.shown)
    }
}

impl fmt::Display for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The distinct operators among `providers` that can answer for `family`, sorted: the most
/// votes a quorum of that family can ever count.
pub(crate) fn operators_serving(providers: &[ProviderSpec], family: Family) -> Vec<&str> {
    let mut operators: Vec<&str> = providers
        .iter()
        .filter(|p| p.family().is_none_or(|f| f == family))
        .map(|p| p.operator.as_str())
        .collect();
    operators.sort_unstable();
    operators.dedup();
    operators
}

/// The operator a host name most likely belongs to: its last two labels (an IP stays whole).
fn registrable(host: &str) -> String {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return host;
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    if labels.is_empty() {
        return host;
    }
    labels[labels.len().saturating_sub(2)..].join(".")
}

fn parse_dns(url: &Url) -> Result<DnsQuery, String> {
    // `dns` is not a special scheme, so the url crate keeps IPv4 hosts as text: parse them here.
    let host = url.host_str().ok_or("dns:// needs a server address")?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "the DNS server must be an IP address (a name would need DNS to find it)")?;
    let name = url.path().trim_start_matches('/');
    if name.is_empty() {
        return Err("dns:// needs a name to look up, as in dns://1.1.1.1/whoami.cloudflare".into());
    }
    let mut record = RecordType::A;
    let mut class = DNSClass::IN;
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), value.to_ascii_uppercase().as_str()) {
            ("type", "A") => record = RecordType::A,
            ("type", "AAAA") => record = RecordType::AAAA,
            ("type", "TXT") => record = RecordType::TXT,
            ("class", "IN") => class = DNSClass::IN,
            ("class", "CH") => class = DNSClass::CH,
            _ => {
                return Err(format!(
                    "unknown {key}={value}; expected type=A|AAAA|TXT and class=IN|CH"
                ));
            }
        }
    }
    Ok(DnsQuery {
        server: SocketAddr::new(ip, url.port().unwrap_or(53)),
        name: format!("{}.", name.trim_end_matches('.')),
        record,
        class,
    })
}

/// The built-in public providers (the README lists them): seven operators, HTTPS and DNS,
/// IPv4 and IPv6.
pub(crate) const DEFAULT_PROVIDERS: &[&str] = &[
    "https://api.ipify.org#ipify",
    "https://api6.ipify.org#ipify",
    "https://ipv4.icanhazip.com#cloudflare",
    "https://ipv6.icanhazip.com#cloudflare",
    "https://checkip.amazonaws.com#amazon",
    "https://v4.ident.me#ident.me",
    "https://v6.ident.me#ident.me",
    "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH#cloudflare",
    "dns://[2606:4700:4700::1111]/whoami.cloudflare?type=TXT&class=CH#cloudflare",
    "dns://208.67.222.222/myip.opendns.com?type=A#opendns",
    "dns://[2620:119:35::35]/myip.opendns.com?type=AAAA#opendns",
    "dns://216.239.32.10/o-o.myaddr.l.google.com?type=TXT#google",
    "dns://[2001:4860:4802:32::a]/o-o.myaddr.l.google.com?type=TXT#google",
    "dns://193.108.88.1/whoami.akamai.net?type=A#akamai",
];

pub(crate) fn default_providers() -> Vec<ProviderSpec> {
    DEFAULT_PROVIDERS
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_specs() {
        let dns: ProviderSpec = "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH#cloudflare"
            .parse()
            .expect("dns");
        let ProviderKind::Dns(query) = &dns.kind else {
            panic!("{dns:?}")
        };
        assert_eq!(query.server, "1.1.1.1:53".parse().expect("addr"));
        assert_eq!((query.record, query.class), (RecordType::TXT, DNSClass::CH));
        assert_eq!(dns.operator, "cloudflare");
        assert_eq!(dns.family(), Some(Family::V4));

        let v6: ProviderSpec = "dns://[2620:119:35::35]:5353/myip.opendns.com?type=AAAA"
            .parse()
            .expect("v6");
        let ProviderKind::Dns(query) = &v6.kind else {
            panic!("{v6:?}")
        };
        assert_eq!(
            query.server,
            "[2620:119:35::35]:5353".parse().expect("addr")
        );
        assert_eq!(v6.operator, "opendns.com");
        assert_eq!(v6.family(), Some(Family::V6));

        let http: ProviderSpec = "https://api.ipify.org".parse().expect("http");
        assert_eq!((http.operator.as_str(), http.family()), ("ipify.org", None));
        let secret: ProviderSpec = "https://u:pw-secret@echo.example:8443/ip?token=t0k3n#echo"
            .parse()
            .expect("http with credentials");
        assert_eq!(
            secret.to_string(),
            "https://echo.example:8443/ip?[REDACTED]#echo"
        );
        let iface: ProviderSpec = "iface:eth0".parse().expect("iface");
        assert_eq!(iface.kind, ProviderKind::Iface("eth0".into()));

        for bad in [
            "ftp://x",
            "dns://resolver.example/whoami",
            "dns://1.1.1.1/",
            "dns://1.1.1.1/x?type=MX",
            "iface:",
            "https://x#",
            "nonsense",
        ] {
            assert!(bad.parse::<ProviderSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_built_in_providers_span_seven_operators_over_https_and_dns() {
        let all = default_providers();
        assert_eq!(
            all.len(),
            DEFAULT_PROVIDERS.len(),
            "every built-in spec parses"
        );
        let operators: Vec<&str> = {
            let mut ops: Vec<&str> = all.iter().map(|p| p.operator.as_str()).collect();
            ops.sort_unstable();
            ops.dedup();
            ops
        };
        assert_eq!(
            operators,
            [
                "akamai",
                "amazon",
                "cloudflare",
                "google",
                "ident.me",
                "ipify",
                "opendns"
            ]
        );
        for family in [Family::V4, Family::V6] {
            // Each transport alone is enough for the default quorum of two, so forged DNS
            // answers alone never settle an address: the HTTPS providers (TLS) still disagree.
            for https in [true, false] {
                let of_kind: Vec<ProviderSpec> = all
                    .iter()
                    .filter(|p| matches!(p.kind, ProviderKind::Http(_)) == https)
                    .cloned()
                    .collect();
                let ops = operators_serving(&of_kind, family);
                assert!(ops.len() >= 3, "{family}, https {https}: {ops:?}");
            }
        }
        assert!(
            all.iter().all(|p| match &p.kind {
                ProviderKind::Http(url) => url.scheme() == "https",
                ProviderKind::Dns(_) => true,
                ProviderKind::Iface(_) => false,
            }),
            "HTTP providers are all HTTPS"
        );
        assert_eq!(operators_serving(&all, Family::V4).len(), 7);
        assert_eq!(
            operators_serving(&all, Family::V6).len(),
            6,
            "akamai has no IPv6 server"
        );
    }
}
