//! No input makes it panic: property tests over every parser that sees outside input.
//!
//! Each property runs `PROPTEST_CASES` cases when that variable is set, 256 otherwise, prints how
//! many it ran (`cargo test --lib properties -- --nocapture` shows the counts), and fails when it
//! ran fewer, so `PROPTEST_CASES=0` fails every property instead of passing them all unchecked.
//! Each oracle is independent of the code it checks: what the generator put in, a definition
//! written another way (a bit count, a brute force), or a table written out here.
//! Failures are not persisted to disk: a panic found here becomes a named `#[test]` below.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

use crate::config::{Config, ConfigError, detection_from_vars, host_is_loopback};
use crate::detect::dns::address_in;
use crate::detect::echo::parse_echo;
use crate::detect::quorum::{Votes, distinct, settled};
use crate::detect::{ProviderKind, ProviderSpec};
use crate::emulator::dns::answer;
use crate::net::Family;
use crate::secret::Credentials;
use crate::sendsms::Whitelist;
use crate::sendsms::api::{ApiStatus, parse_response};
use crate::sendsms::whitelist::WhitelistEntry;
use crate::state::{StateFile, VerifiedIp};

// ---------------------------------------------------------------------------------------------
// Harness

const DEFAULT_CASES: u32 = 256;

/// `PROPTEST_CASES` when set (proptest reads it into its default config), else `DEFAULT_CASES`.
fn proptest_config() -> ProptestConfig {
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default().cases
    } else {
        DEFAULT_CASES
    };
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Runs one property and reports how many cases it ran; a failure (or a panic inside the
/// property, which proptest catches and shrinks) fails the test with the minimal input, and so
/// does a run of fewer cases than configured (`PROPTEST_CASES=0` included).
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u32 {
    let config = proptest_config();
    let wanted = config.cases;
    assert!(
        wanted > 0,
        "property {name}: PROPTEST_CASES={:?} asks for no case, and a property that runs no \
         case checks nothing; set it to 1 or more",
        std::env::var("PROPTEST_CASES").unwrap_or_default()
    );
    let mut runner = TestRunner::new(config);
    // Cases that held; the ones a `prop_assume!` rejected do not count.
    let cases = AtomicU32::new(0);
    let result = runner.run(&strategy, |value| {
        let held = property(value);
        if held.is_ok() {
            cases.fetch_add(1, Ordering::Relaxed);
        }
        held
    });
    if let Err(e) = result {
        panic!("property {name} failed: {e}");
    }
    let cases = cases.into_inner();
    println!("property {name}: {cases} cases");
    assert!(
        cases >= wanted,
        "property {name} ran {cases} cases, fewer than the {wanted} configured"
    );
    cases
}

// ---------------------------------------------------------------------------------------------
// Shared strategies

/// Any address, with the interesting corners weighted up: IPv4-mapped IPv6, short IPv6
/// (printed with `::`), loopback and unspecified.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        3 => any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        1 => any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
        1 => (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, a, b))),
        1 => prop::sample::select(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]),
    ]
}

/// Text of any shape, newlines and non-ASCII included.
fn junk_text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        prop::string::string_regex(&format!("(?s).{{0,{max}}}")).expect("a valid regex"),
        // Address-like junk: digits, hex, separators, brackets, slashes.
        prop::string::string_regex(&format!("[0-9a-fA-F:./,; \\[\\]%-]{{0,{max}}}"))
            .expect("a valid regex"),
    ]
    .boxed()
}

/// JSON scalars without floats (a float does not always survive a text round trip).
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        junk_text(24).prop_map(Value::String),
        any_ip().prop_map(|ip| Value::String(ip.to_string())),
        (any_ip(), 0u8..=130).prop_map(|(ip, p)| Value::String(format!("{ip}/{p}"))),
    ]
}

/// JSON of any shape, at most four containers deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["ip", "ipaddr", "id", "status", "details", "message"])
            .prop_map(str::to_owned),
        junk_text(12),
        any_ip().prop_map(|ip| ip.to_string()),
    ]
}

fn record_type() -> impl Strategy<Value = RecordType> {
    prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::TXT])
}

fn dns_class() -> impl Strategy<Value = DNSClass> {
    prop::sample::select(vec![DNSClass::IN, DNSClass::CH])
}

/// A DNS name of 1 to 4 lowercase labels, without the trailing dot.
fn dns_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5).prop_map(|l| l.join("."))
}

// ---------------------------------------------------------------------------------------------
// The API response parser and the whitelist

#[test]
fn api_response_arbitrary_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), any::<usize>()).prop_map(|(v, cut)| {
            // A truncated answer.
            let text = v.to_string().into_bytes();
            text[..cut % (text.len() + 1)].to_vec()
        }),
    ];
    check("api_response_arbitrary_bytes", bytes, |body| {
        let plain = parse_response(&body);
        // A byte-order mark and blanks around the body never change what it means.
        let mut padded = "\u{feff} \r\n".as_bytes().to_vec();
        padded.extend_from_slice(&body);
        padded.extend_from_slice(b"\n\t ");
        prop_assert_eq!(plain.clone().ok(), parse_response(&padded).ok());
        if let Err(e) = plain {
            let e = e.to_string();
            prop_assert!(e.contains(&format!("{} bytes", body.len())), "{}", e);
        }
        Ok(())
    });
}

/// What an answer object holds: a status of some JSON type and any other fields.
fn api_object() -> impl Strategy<Value = (Map<String, Value>, Option<Value>)> {
    let status = prop_oneof![
        4 => any::<i64>().prop_map(|n| Some(Value::from(n))),
        2 => prop::sample::select(vec![0i64, 1, 2, -1, -2, -4, -8, -16, -32, -64, -128, -256,
            -512, -1024, -2048, -4096, -8191, -8192])
            .prop_map(|n| Some(Value::from(n))),
        1 => ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(|n| Some(Value::from(n))),
        1 => json_leaf().prop_map(Some),
        1 => Just(None),
    ];
    (
        prop::collection::vec((json_key(), json_value()), 0..4),
        status,
    )
        .prop_map(|(fields, status)| {
            let mut map: Map<String, Value> = fields.into_iter().collect();
            map.remove("status");
            if let Some(status) = &status {
                map.insert("status".into(), status.clone());
            }
            (map, status)
        })
}

/// The status codes as the API documents them, written out here rather than read from
/// `ApiStatus`'s own table; -8192 is another spelling of -8191.
fn documented_status(code: i64) -> ApiStatus {
    match code {
        0 => ApiStatus::Ok,
        1 => ApiStatus::Queued,
        2 => ApiStatus::RequestKeyCreated,
        -1 => ApiStatus::NoAction,
        -2 => ApiStatus::NoSuchAction,
        -4 => ApiStatus::MissingParameter,
        -8 => ApiStatus::AuthenticationFailed,
        -16 => ApiStatus::InternalError,
        -32 => ApiStatus::RoutingError,
        -64 => ApiStatus::OutOfCredit,
        -128 => ApiStatus::InvalidRecord,
        -256 => ApiStatus::CouldNotSave,
        -512 => ApiStatus::DuplicateRecord,
        -4096 => ApiStatus::TooManyRequests,
        -8191 | -8192 => ApiStatus::Timeout,
        other => ApiStatus::Other(other),
    }
}

/// Every documented code, not only those the generator happens to draw: a code mistyped in
/// the table (-1 written as 1) reads as another status or as unknown.
#[test]
fn every_documented_status_code_reads_and_writes_as_documented() {
    let documented = [
        0, 1, 2, -1, -2, -4, -8, -16, -32, -64, -128, -256, -512, -4096, -8191, -8192,
    ];
    for code in documented {
        let status = ApiStatus::from_code(code);
        assert_eq!(status, documented_status(code), "{code}");
        assert!(!matches!(status, ApiStatus::Other(_)), "{code}");
        assert_eq!(status.code(), if code == -8192 { -8191 } else { code });
    }
}

#[test]
fn api_response_objects_parse_iff_status_is_an_integer() {
    check(
        "api_response_objects_parse_iff_status_is_an_integer",
        api_object(),
        |(map, status)| {
            let body = Value::Object(map.clone()).to_string();
            let parsed = parse_response(body.as_bytes());
            let Some(code) = status.as_ref().and_then(Value::as_i64) else {
                prop_assert!(parsed.is_err(), "accepted {}", body);
                return Ok(());
            };
            let answer = parsed.map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
            let expected = if code == -8192 { -8191 } else { code };
            prop_assert_eq!(answer.status.code(), expected);
            prop_assert_eq!(answer.status, documented_status(code));
            prop_assert_eq!(answer.status.is_error(), code < 0);
            // The API's message as it came: its text, nothing when absent, and any other JSON
            // written out so that it reads back as the same value.
            match map.get("message") {
                None | Some(Value::Null) => prop_assert_eq!(&answer.message, ""),
                Some(Value::String(text)) => prop_assert_eq!(&answer.message, text),
                Some(other) => {
                    let read: Value = serde_json::from_str(&answer.message)
                        .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", answer.message)))?;
                    prop_assert_eq!(&read, other);
                }
            }
            prop_assert_eq!(&answer.details, map.get("details").unwrap_or(&Value::Null));
            Ok(())
        },
    );
}

#[test]
fn whitelist_from_any_details_is_canonical_and_deduplicated() {
    check(
        "whitelist_from_any_details_is_canonical_and_deduplicated",
        json_value(),
        |details| {
            let list = Whitelist::from_details(&details);
            for (i, entry) in list.0.iter().enumerate() {
                prop_assert!(!list.0[..i].contains(entry), "duplicate {}", entry);
                match entry {
                    WhitelistEntry::Address(ip) => {
                        prop_assert_eq!(*ip, ip.to_canonical());
                        prop_assert!(list.covers(*ip));
                    }
                    WhitelistEntry::Network { network, prefix } => {
                        prop_assert_eq!(*network, network.to_canonical());
                        let max = if network.is_ipv4() { 32 } else { 128 };
                        prop_assert!(*prefix <= max, "{}", entry);
                        prop_assert!(list.covers(*network));
                    }
                }
            }
            Ok(())
        },
    );
}

/// Every address or network written in `text`: each maximal run of the characters an address
/// or a network is written with, read by the standard library (an oracle for "is in the answer"
/// that knows nothing of the separators and quotes the whitelist parser handles).
fn entries_written_in(text: &str) -> Vec<WhitelistEntry> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '/')))
        .filter_map(|run| {
            if let Ok(ip) = run.parse::<IpAddr>() {
                return Some(WhitelistEntry::Address(ip.to_canonical()));
            }
            let (network, prefix) = run.split_once('/')?;
            let network = network.parse::<IpAddr>().ok()?.to_canonical();
            let prefix: u8 = prefix.parse().ok()?;
            let bits = if network.is_ipv4() { 32 } else { 128 };
            (prefix <= bits).then_some(WhitelistEntry::Network { network, prefix })
        })
        .collect()
}

/// Every string in `value`, object keys included, at any depth.
fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings_in(v, out);
        }),
        _ => {}
    }
}

/// Text with an address or a network glued to other characters, or standing alone.
fn address_in_text() -> impl Strategy<Value = Value> {
    let glue = "[0-9a-fA-F:./xg, \\[\\]\"'-]{0,3}";
    (glue, any_ip(), prop::option::of(0u8..=140), glue).prop_map(|(before, ip, prefix, after)| {
        let prefix = prefix.map(|p| format!("/{p}")).unwrap_or_default();
        Value::String(format!("{before}{ip}{prefix}{after}"))
    })
}

#[test]
fn whitelist_parsing_never_invents_an_address_that_is_not_in_the_answer() {
    let details = prop_oneof![
        json_value(),
        prop::collection::vec(address_in_text(), 0..6).prop_map(Value::Array),
        (json_key(), address_in_text()).prop_map(|(k, v)| json!({ k: v })),
    ];
    // Cases whose list was not empty, to show the property was not checked on empty lists only.
    let listed = AtomicU32::new(0);
    let cases = check(
        "whitelist_parsing_never_invents_an_address_that_is_not_in_the_answer",
        details,
        |details| {
            let mut written = Vec::new();
            let mut strings = Vec::new();
            strings_in(&details, &mut strings);
            for text in &strings {
                written.extend(entries_written_in(text));
            }
            let list = Whitelist::from_details(&details);
            if !list.0.is_empty() {
                listed.fetch_add(1, Ordering::Relaxed);
            }
            for entry in &list.0 {
                prop_assert!(
                    written.contains(entry),
                    "{} is not written in {}",
                    entry,
                    details
                );
            }
            Ok(())
        },
    );
    let listed = listed.into_inner();
    assert!(
        listed * 4 >= cases,
        "only {listed} of {cases} lists held an entry"
    );
}

/// How an address is written into the details.
#[derive(Clone, Debug)]
enum Spot {
    /// A string of its own in an array.
    Element,
    /// The value of an object field.
    FieldValue(String),
    /// An object key.
    Key,
    /// One piece of a separated string.
    InString {
        before: Vec<String>,
        after: Vec<String>,
        separator: &'static str,
    },
    /// Replacing whatever sits there.
    Scalar,
}

fn spot() -> impl Strategy<Value = Spot> {
    let word = "[g-z]{1,8}";
    prop_oneof![
        Just(Spot::Element),
        json_key().prop_map(Spot::FieldValue),
        Just(Spot::Key),
        (
            prop::collection::vec(word, 0..3),
            prop::collection::vec(word, 0..3),
            prop::sample::select(vec![",", ", ", " ", "\n", ";", "|", "\t", " ,\r\n"]),
        )
            .prop_map(|(before, after, separator)| Spot::InString {
                before,
                after,
                separator
            }),
        Just(Spot::Scalar),
    ]
}

/// Walks down `route` (at most 7 levels, so the address stays within the parser's depth
/// limit of 8) and writes the address, as `written`, there as `spot` says.
fn place(here: &mut Value, route: &[Index], depth: usize, written: &str, spot: &Spot) {
    if let Some((step, rest)) = route.split_first()
        && depth < 7
    {
        match &mut *here {
            Value::Array(items) if !items.is_empty() => {
                let i = step.index(items.len());
                return place(&mut items[i], rest, depth + 1, written, spot);
            }
            Value::Object(map) if !map.is_empty() => {
                let i = step.index(map.len());
                let child = map.values_mut().nth(i).expect("index within the map");
                return place(child, rest, depth + 1, written, spot);
            }
            _ => {}
        }
    }
    let text = Value::String(written.to_owned());
    match spot {
        Spot::Element => match here {
            Value::Array(items) => items.push(text),
            other => *other = Value::Array(vec![other.take(), text]),
        },
        Spot::FieldValue(key) => {
            if !here.is_object() {
                *here = json!({ "other": here.take() });
            }
            if let Value::Object(map) = here {
                map.insert(key.clone(), text);
            }
        }
        Spot::Key => {
            if !here.is_object() {
                *here = json!({ "other": here.take() });
            }
            if let Value::Object(map) = here {
                map.insert(
                    written.to_owned(),
                    json!({ "added": "2026-01-01", "id": 7 }),
                );
            }
        }
        Spot::InString {
            before,
            after,
            separator,
        } => {
            let mut pieces = before.clone();
            pieces.push(written.to_owned());
            pieces.extend(after.iter().cloned());
            *here = Value::String(pieces.join(separator));
        }
        Spot::Scalar => *here = text,
    }
}

#[test]
fn whitelist_finds_an_address_anywhere_in_the_details() {
    let strategy = (
        json_value(),
        any_ip(),
        prop::sample::select(vec!["{}", "\"{}\"", "[{}]", " {} ", "'{}'"]),
        spot(),
        prop::collection::vec(any::<Index>(), 0..8),
    );
    check(
        "whitelist_finds_an_address_anywhere_in_the_details",
        strategy,
        |(mut details, ip, decoration, spot, route)| {
            let written = decoration.replace("{}", &ip.to_string());
            place(&mut details, &route, 0, &written, &spot);
            let list = Whitelist::from_details(&details);
            prop_assert!(
                list.covers(ip),
                "{} not found in {} -> {}",
                ip,
                details,
                list
            );
            prop_assert!(
                list.0.contains(&WhitelistEntry::Address(ip.to_canonical())),
                "{} not listed as itself in {}",
                ip,
                list
            );
            // Through the whole parser too: the answer as the API would send it.
            let body = json!({ "status": 0, "message": "", "details": details }).to_string();
            let answer = parse_response(body.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
            prop_assert!(Whitelist::from_details(&answer.details).covers(ip));
            Ok(())
        },
    );
}

#[test]
fn ipv4_networks_cover_exactly_their_prefix() {
    // The address is the network with some of its low bits flipped, so both outcomes are common.
    let strategy = (any::<u32>(), 0u8..=32, any::<u32>(), 0u32..=32);
    check(
        "ipv4_networks_cover_exactly_their_prefix",
        strategy,
        |(net, prefix, flips, shift)| {
            let addr = net ^ flips.checked_shr(shift).unwrap_or(0);
            // In the network when the first `prefix` bits agree: no differing bit before them.
            let expected = (net ^ addr).leading_zeros() >= u32::from(prefix);
            let network = IpAddr::V4(Ipv4Addr::from(net));
            let ip = Ipv4Addr::from(addr);
            let entry = WhitelistEntry::Network { network, prefix };
            prop_assert_eq!(entry.covers(IpAddr::V4(ip)), expected);
            prop_assert_eq!(entry.covers(IpAddr::V6(ip.to_ipv6_mapped())), expected);
            prop_assert!(!entry.covers(IpAddr::V6(Ipv6Addr::from(u128::from(addr) << 64 | 1))));
            // The same network written as text in an answer.
            let list = Whitelist::from_details(&json!([format!("{network}/{prefix}")]));
            prop_assert_eq!(&list.0, &vec![entry]);
            prop_assert_eq!(list.covers(IpAddr::V4(ip)), expected);
            Ok(())
        },
    );
}

#[test]
fn ipv6_networks_cover_exactly_their_prefix() {
    let strategy = (any::<u128>(), 0u8..=128, any::<u128>(), 0u32..=128);
    check(
        "ipv6_networks_cover_exactly_their_prefix",
        strategy,
        |(net, prefix, flips, shift)| {
            let net_ip = Ipv6Addr::from(net);
            // A mapped network is an IPv4 network after canonicalization: tested above.
            prop_assume!(net_ip.to_ipv4_mapped().is_none());
            let addr = net ^ flips.checked_shr(shift).unwrap_or(0);
            let addr_ip = Ipv6Addr::from(addr);
            prop_assume!(addr_ip.to_ipv4_mapped().is_none());
            let expected = (net ^ addr).leading_zeros() >= u32::from(prefix);
            let entry = WhitelistEntry::Network {
                network: IpAddr::V6(net_ip),
                prefix,
            };
            prop_assert_eq!(entry.covers(IpAddr::V6(addr_ip)), expected);
            let list = Whitelist::from_details(&json!(format!("{net_ip}/{prefix}")));
            prop_assert_eq!(&list.0, &vec![entry]);
            prop_assert_eq!(list.covers(IpAddr::V6(addr_ip)), expected);
            Ok(())
        },
    );
}

#[test]
fn networks_with_an_impossible_prefix_are_not_listed() {
    let strategy = prop_oneof![
        (any::<u32>(), 33u16..=999).prop_map(|(n, p)| (IpAddr::V4(Ipv4Addr::from(n)), p)),
        (any::<u128>(), 129u16..=999).prop_map(|(n, p)| (IpAddr::V6(Ipv6Addr::from(n)), p)),
    ];
    check(
        "networks_with_an_impossible_prefix_are_not_listed",
        strategy,
        |(network, prefix)| {
            let list = Whitelist::from_details(&json!([format!("{network}/{prefix}")]));
            prop_assert!(list.0.is_empty(), "{}/{} gave {}", network, prefix, list);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The IP-echo body parser

/// A Cloudflare-trace-like body: `key=value` lines around one `ip=` line.
fn trace_body(ip_line: String) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(("[a-hj-z][a-z_]{0,8}", "[ -~]{0,20}"), 0..8),
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(move |(lines, at, crlf)| {
            let mut lines: Vec<String> =
                lines.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            let i = at.index(lines.len() + 1);
            lines.insert(i, ip_line.clone());
            let end = if crlf { "\r\n" } else { "\n" };
            lines.join(end) + end
        })
}

#[test]
fn echo_arbitrary_bytes() {
    let fragments = prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "ip=", "{", "}", "\"ip\"", ":", "\"", "\n", " ", "=", ",", "[", "]", "null",
            ])
            .prop_map(str::to_owned),
            any_ip().prop_map(|ip| ip.to_string()),
            junk_text(8),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat().into_bytes());
    let bytes = prop_oneof![prop::collection::vec(any::<u8>(), 0..256), fragments];
    check("echo_arbitrary_bytes", bytes, |body| {
        let plain = parse_echo(&body);
        if plain.is_ok() {
            prop_assert!(std::str::from_utf8(&body).is_ok());
        }
        // Surrounding blanks never change the verdict.
        let mut padded = b" \r\n\t".to_vec();
        padded.extend_from_slice(&body);
        padded.extend_from_slice(b"\n\n ");
        prop_assert_eq!(plain, parse_echo(&padded));
        Ok(())
    });
}

#[test]
fn echo_bodies_round_trip() {
    let strategy = any_ip().prop_flat_map(|ip| {
        let line = prop::sample::select(vec!["ip={}", "  ip={} ", "ip= {}"])
            .prop_map(move |f| f.replace("{}", &ip.to_string()));
        let extra = prop::collection::vec(("[a-hj-z][a-z]{0,6}", "[ -~]{0,12}"), 0..4);
        (
            Just(ip),
            line.prop_flat_map(trace_body),
            extra,
            prop::sample::select(vec!["", " ", "\n", "\r\n", "\t "]),
        )
    });
    check(
        "echo_bodies_round_trip",
        strategy,
        |(ip, trace, extra, blank)| {
            prop_assert_eq!(parse_echo(format!("{ip}\n").as_bytes()), Ok(ip));
            prop_assert_eq!(parse_echo(format!("{blank}{ip}{blank}").as_bytes()), Ok(ip));
            let mut object: Map<String, Value> = extra
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            object.insert("ip".into(), Value::String(ip.to_string()));
            prop_assert_eq!(
                parse_echo(json!({ "ip": ip.to_string() }).to_string().as_bytes()),
                Ok(ip)
            );
            prop_assert_eq!(
                parse_echo(Value::Object(object).to_string().as_bytes()),
                Ok(ip)
            );
            prop_assert_eq!(parse_echo(trace.as_bytes()), Ok(ip), "{:?}", trace);
            Ok(())
        },
    );
}

#[test]
fn echo_bodies_with_two_addresses_are_rejected() {
    let strategy = (any_ip(), any_ip())
        .prop_filter("two different addresses", |(a, b)| a != b)
        .prop_flat_map(|(a, b)| {
            let two_lines = format!("ip={a}\nip={b}");
            (Just(a), Just(b), trace_body(two_lines))
        });
    check(
        "echo_bodies_with_two_addresses_are_rejected",
        strategy,
        |(a, b, trace)| {
            for body in [
                format!("{a}\n{b}\n"),
                format!("{a} {b}"),
                format!("{a},{b}"),
                format!("{a}\r\n{b}"),
                trace,
            ] {
                let parsed = parse_echo(body.as_bytes());
                prop_assert!(parsed.is_err(), "{:?} gave {:?}", body, parsed);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// DNS answers: the whoami emulator and the answer reader

/// A question as the detector sends it.
#[derive(Clone, Debug)]
struct Question {
    id: u16,
    name: String,
    record: RecordType,
    class: DNSClass,
    recursion_desired: bool,
}

fn question() -> impl Strategy<Value = Question> {
    (
        any::<u16>(),
        dns_name(),
        record_type(),
        dns_class(),
        any::<bool>(),
    )
        .prop_map(|(id, name, record, class, recursion_desired)| Question {
            id,
            name: format!("{name}."),
            record,
            class,
            recursion_desired,
        })
}

fn query_wire(q: &Question) -> Vec<u8> {
    let name = Name::from_ascii(&q.name).expect("generated names are valid");
    let mut query = Query::query(name, q.record);
    query.set_query_class(q.class);
    let mut message = Message::new(q.id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = q.recursion_desired;
    message.add_query(query);
    message.to_vec().expect("a query encodes")
}

fn any_peer() -> impl Strategy<Value = SocketAddr> {
    (any_ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

#[test]
fn dns_whoami_answers_with_the_peer_address() {
    check(
        "dns_whoami_answers_with_the_peer_address",
        (question(), any_peer()),
        |(q, peer)| {
            let reply = answer(&query_wire(&q), peer)
                .ok_or_else(|| TestCaseError::fail("no answer to a well-formed question"))?;
            let message = Message::from_vec(&reply)
                .map_err(|e| TestCaseError::fail(format!("the answer does not decode: {e}")))?;
            prop_assert_eq!(message.metadata.id, q.id);
            prop_assert_eq!(message.metadata.message_type, MessageType::Response);
            prop_assert_eq!(message.metadata.recursion_desired, q.recursion_desired);
            prop_assert_eq!(message.queries.len(), 1);
            prop_assert_eq!(message.queries[0].query_type, q.record);
            prop_assert_eq!(message.queries[0].query_class, q.class);
            let ip = peer.ip().to_canonical();
            let fits = match q.record {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                _ => true,
            };
            let found = address_in(&message.answers, q.record);
            if fits {
                prop_assert_eq!(found, Ok(ip));
                prop_assert!(message.answers.iter().all(|r| r.dns_class == q.class));
            } else {
                prop_assert!(found.is_err(), "{:?}", found);
                prop_assert!(message.answers.is_empty());
            }
            // A question of another type never reads as an address.
            for other in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
                if other != q.record {
                    prop_assert!(address_in(&message.answers, other).is_err());
                }
            }
            Ok(())
        },
    );
}

#[test]
fn dns_arbitrary_datagrams() {
    // Random bytes, and well-formed questions with bytes overwritten and the end cut off.
    let mutated = (
        question(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(q, edits, cut)| {
            let mut wire = query_wire(&q);
            for (at, byte) in edits {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            if let Some(cut) = cut {
                wire.truncate(cut.index(wire.len() + 1));
            }
            wire
        });
    let strategy = (
        prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated],
        any_peer(),
    );
    check("dns_arbitrary_datagrams", strategy, |(datagram, peer)| {
        let request = Message::from_vec(&datagram);
        if let Ok(request) = &request {
            // Whatever a server answers, the reader only ever returns an address it holds.
            for record in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
                if let Ok(ip) = address_in(&request.answers, record) {
                    let held = request.answers.iter().any(|r| match (&r.data, record) {
                        (RData::A(a), RecordType::A) => IpAddr::V4(a.0) == ip,
                        (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0) == ip,
                        (RData::TXT(t), RecordType::TXT) => {
                            let text = String::from_utf8_lossy(&t.txt_data.concat()).into_owned();
                            entries_written_in(&text)
                                .contains(&WhitelistEntry::Address(ip.to_canonical()))
                        }
                        _ => false,
                    });
                    prop_assert!(held, "{} is in no answer record", ip);
                }
            }
        }
        if let Some(reply) = answer(&datagram, peer) {
            let request = request
                .map_err(|e| TestCaseError::fail(format!("answered what does not decode: {e}")))?;
            prop_assert_eq!(request.metadata.message_type, MessageType::Query);
            let reply = Message::from_vec(&reply)
                .map_err(|e| TestCaseError::fail(format!("the answer does not decode: {e}")))?;
            prop_assert_eq!(reply.metadata.id, request.metadata.id);
            prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
            prop_assert!(reply.answers.len() <= 1);
        }
        Ok(())
    });
}

/// One answer record as a server might send it.
#[derive(Clone, Debug)]
enum Answer {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// An address as TXT, maybe quoted and padded, split over character strings.
    TxtAddress {
        ip: IpAddr,
        quoted: bool,
        split: Index,
    },
    /// Text that is not an address, such as Google's `edns0-client-subnet 192.0.2.0/24`.
    TxtOther(String),
}

fn answer_record() -> impl Strategy<Value = Answer> {
    prop_oneof![
        any::<u32>().prop_map(|n| Answer::A(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| Answer::Aaaa(Ipv6Addr::from(n))),
        (any_ip(), any::<bool>(), any::<Index>())
            .prop_map(|(ip, quoted, split)| { Answer::TxtAddress { ip, quoted, split } }),
        "x[ -~]{0,30}".prop_map(Answer::TxtOther),
        Just(Answer::TxtOther("edns0-client-subnet 192.0.2.0/24".into())),
    ]
}

impl Answer {
    fn record(&self, name: &Name) -> Record {
        let data = match self {
            Answer::A(ip) => RData::A(A(*ip)),
            Answer::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Answer::TxtAddress { ip, quoted, split } => {
                let text = if *quoted {
                    format!(" \"{ip}\" ")
                } else {
                    ip.to_string()
                };
                let at = split.index(text.len() + 1);
                RData::TXT(TXT::new(vec![text[..at].to_owned(), text[at..].to_owned()]))
            }
            Answer::TxtOther(text) => RData::TXT(TXT::new(vec![text.clone()])),
        };
        Record::from_rdata(name.clone(), 0, data)
    }

    fn address_for(&self, record: RecordType) -> Option<IpAddr> {
        match (self, record) {
            (Answer::A(ip), RecordType::A) => Some(IpAddr::V4(*ip)),
            (Answer::Aaaa(ip), RecordType::AAAA) => Some(IpAddr::V6(*ip)),
            (Answer::TxtAddress { ip, .. }, RecordType::TXT) => Some(*ip),
            _ => None,
        }
    }
}

#[test]
fn dns_answer_holds_exactly_one_address_or_is_refused() {
    let strategy = (prop::collection::vec(answer_record(), 0..5), record_type());
    check(
        "dns_answer_holds_exactly_one_address_or_is_refused",
        strategy,
        |(answers, record)| {
            let name = Name::from_ascii("whoami.test.").expect("a valid name");
            let records: Vec<Record> = answers.iter().map(|a| a.record(&name)).collect();
            let held: BTreeSet<IpAddr> = answers
                .iter()
                .filter_map(|a| a.address_for(record))
                .collect();
            let found = address_in(&records, record);
            match held.len() {
                1 => prop_assert_eq!(found, Ok(*held.iter().next().expect("one address"))),
                _ => prop_assert!(found.is_err(), "{:?} from {:?}", found, held),
            }
            // The same records after a trip over the wire.
            let mut message = Message::new(1, MessageType::Response, OpCode::Query);
            for r in records {
                message.add_answer(r);
            }
            let wire = message
                .to_vec()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let decoded =
                Message::from_vec(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                address_in(&decoded.answers, record),
                address_in(&message.answers, record)
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Provider specs

#[test]
fn provider_spec_arbitrary_strings() {
    let text = prop_oneof![
        junk_text(60),
        (
            prop::sample::select(vec![
                "dns://", "https://", "http://", "iface:", "DNS://", " dns://["
            ]),
            junk_text(40),
            prop::option::of(junk_text(10)),
        )
            .prop_map(|(scheme, rest, op)| match op {
                Some(op) => format!("{scheme}{rest}#{op}"),
                None => format!("{scheme}{rest}"),
            }),
        // Plausible pieces in any combination, so that a good share parses.
        (
            prop::sample::select(vec!["dns://", "https://", "HTTP://", "http://", "Dns://"]),
            prop_oneof![
                dns_name(),
                any_ip().prop_map(|ip| match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                }),
                "[A-Za-z0-9.-]{0,12}",
                junk_text(6),
            ],
            prop::option::of(any::<u16>()),
            "(/[A-Za-z0-9._~-]{0,8}){0,3}",
            prop::sample::select(vec!["", "?type=TXT", "?type=aaaa&class=ch", "?x=1", "?"]),
            prop::option::of(prop_oneof!["[A-Za-z0-9. _-]{0,10}", junk_text(6)]),
        )
            .prop_map(|(scheme, host, port, path, query, op)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let op = op.map(|op| format!("#{op}")).unwrap_or_default();
                format!("{scheme}{host}{port}{path}{query}{op}")
            }),
        ("[ -~]{0,18}", prop::option::of("[A-Za-z. ]{0,8}")).prop_map(|(name, op)| match op {
            Some(op) => format!("iface:{name}#{op}"),
            None => format!("iface:{name}"),
        }),
    ];
    let specs = AtomicU32::new(0);
    let cases = check("provider_spec_arbitrary_strings", text, |text| {
        let parsed = text.parse::<ProviderSpec>();
        // Blanks around a spec never change what it means.
        prop_assert_eq!(&format!(" \t{text}\n ").parse::<ProviderSpec>(), &parsed);
        let Ok(spec) = parsed else {
            return Ok(());
        };
        specs.fetch_add(1, Ordering::Relaxed);
        let trimmed = text.trim();
        let (body, named) = match trimmed.split_once('#') {
            Some((body, named)) => (body, Some(named)),
            None => (trimmed, None),
        };
        // The operator is the one named after `#`, in lower case; without one, the domain of
        // the provider's host (or its name, for DNS): its last two labels, or its address.
        let domain = match &spec.kind {
            ProviderKind::Iface(name) => {
                prop_assert_eq!(body.strip_prefix("iface:"), Some(name.as_str()));
                format!("iface:{name}")
            }
            ProviderKind::Http(url) => {
                let scheme = body.get(..8).unwrap_or(body).to_ascii_lowercase();
                prop_assert!(
                    scheme.starts_with("http://") || scheme.starts_with("https://"),
                    "{:?} is not HTTP",
                    text
                );
                let host = url.host_str().unwrap_or_default();
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            }
            ProviderKind::Dns(query) => {
                prop_assert_eq!(
                    body.get(..6).map(str::to_ascii_lowercase),
                    Some("dns://".into())
                );
                prop_assert_eq!(spec.family(), Some(Family::of(query.server.ip())));
                prop_assert!(query.name.ends_with('.'));
                prop_assert!(
                    [RecordType::A, RecordType::AAAA, RecordType::TXT].contains(&query.record)
                );
                query.name.trim_end_matches('.').to_owned()
            }
        };
        match named {
            Some(named) => prop_assert_eq!(&spec.operator, &named.trim().to_ascii_lowercase()),
            None if matches!(spec.kind, ProviderKind::Iface(_)) => {
                prop_assert_eq!(&spec.operator, &domain)
            }
            None if domain.parse::<IpAddr>().is_ok() => {
                prop_assert_eq!(&spec.operator, &domain.to_ascii_lowercase())
            }
            None => {
                let domain = domain.to_ascii_lowercase();
                let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
                let operator: Vec<&str> = spec.operator.split('.').collect();
                prop_assert!(
                    labels.ends_with(&operator) && operator.len() == labels.len().min(2)
                        || labels.is_empty() && spec.operator == domain,
                    "{:?}: operator {:?} is not the domain of {:?}",
                    text,
                    spec.operator,
                    domain
                );
            }
        }
        match &spec.kind {
            // Shown without credentials or query, which may hold a token.
            ProviderKind::Http(url) => {
                let shown = spec.to_string();
                let head = shown.split('#').next().unwrap_or_default();
                let authority = head.split("://").nth(1).unwrap_or_default();
                let authority = authority.split('/').next().unwrap_or_default();
                prop_assert!(!authority.contains('@'), "{}", shown);
                prop_assert!(
                    url.query().is_some() == head.ends_with("?[REDACTED]"),
                    "{}",
                    shown
                );
            }
            // Shown as written, and what is shown reads back as the same provider.
            _ => prop_assert_eq!(spec.to_string().parse::<ProviderSpec>(), Ok(spec.clone())),
        }
        Ok(())
    });
    let specs = specs.into_inner();
    assert!(
        specs * 10 >= cases,
        "only {specs} of {cases} strings were specs"
    );
}

#[derive(Clone, Debug)]
struct DnsSpec {
    ip: IpAddr,
    port: Option<u16>,
    name: String,
    trailing_dot: bool,
    record: Option<(&'static str, RecordType)>,
    class: Option<(&'static str, DNSClass)>,
    class_first: bool,
    operator: Option<String>,
    blank: &'static str,
}

impl DnsSpec {
    fn text(&self) -> String {
        let host = match self.ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let dot = if self.trailing_dot { "." } else { "" };
        let mut params: Vec<String> = Vec::new();
        if let Some((t, _)) = self.record {
            params.push(format!("type={t}"));
        }
        if let Some((c, _)) = self.class {
            params.push(format!("class={c}"));
        }
        if self.class_first {
            params.reverse();
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        let operator = self
            .operator
            .as_ref()
            .map(|o| format!("#{o}"))
            .unwrap_or_default();
        let blank = self.blank;
        format!(
            "{blank}dns://{host}{port}/{}{dot}{query}{operator}{blank}",
            self.name
        )
    }
}

#[test]
fn provider_spec_dns_round_trip() {
    let strategy = (
        any_ip(),
        prop::option::of(any::<u16>()),
        dns_name(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            ("A", RecordType::A),
            ("a", RecordType::A),
            ("AAAA", RecordType::AAAA),
            ("aaaa", RecordType::AAAA),
            ("TXT", RecordType::TXT),
            ("Txt", RecordType::TXT),
        ])),
        prop::option::of(prop::sample::select(vec![
            ("IN", DNSClass::IN),
            ("in", DNSClass::IN),
            ("CH", DNSClass::CH),
            ("ch", DNSClass::CH),
        ])),
        any::<bool>(),
        prop::option::of("[a-zA-Z0-9][a-zA-Z0-9._-]{0,15}"),
        prop::sample::select(vec!["", " ", "\t"]),
    )
        .prop_map(
            |(ip, port, name, trailing_dot, record, class, class_first, operator, blank)| DnsSpec {
                ip,
                port,
                name,
                trailing_dot,
                record,
                class,
                class_first,
                operator,
                blank,
            },
        );
    check("provider_spec_dns_round_trip", strategy, |spec| {
        let text = spec.text();
        let parsed: ProviderSpec = text
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let ProviderKind::Dns(query) = &parsed.kind else {
            return Err(TestCaseError::fail(format!(
                "{text:?} is not DNS: {parsed:?}"
            )));
        };
        prop_assert_eq!(
            query.server,
            SocketAddr::new(spec.ip, spec.port.unwrap_or(53))
        );
        prop_assert_eq!(parsed.family(), Some(Family::of(spec.ip)));
        prop_assert_eq!(&query.name, &format!("{}.", spec.name));
        prop_assert_eq!(query.record, spec.record.map_or(RecordType::A, |(_, r)| r));
        prop_assert_eq!(query.class, spec.class.map_or(DNSClass::IN, |(_, c)| c));
        let operator = match &spec.operator {
            Some(op) => op.to_ascii_lowercase(),
            // The last two labels of the name, or the whole name when it reads as an address.
            None if spec.name.parse::<IpAddr>().is_ok() => spec.name.clone(),
            None => {
                let labels: Vec<&str> = spec.name.split('.').collect();
                labels[labels.len().saturating_sub(2)..].join(".")
            }
        };
        prop_assert_eq!(&parsed.operator, &operator);
        prop_assert_eq!(parsed.to_string(), text.trim());
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The quorum decision and detection

/// Votes as detection collects them: a few addresses, each with distinct operators.
fn votes() -> impl Strategy<Value = Votes> {
    let ips = (0u8..5).prop_map(|n| IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)));
    let operators = prop::collection::btree_set(0u8..6, 0..6).prop_map(|set| {
        set.into_iter()
            .map(|o| format!("op{o}"))
            .collect::<Vec<_>>()
    });
    prop::collection::btree_map(ips, operators, 0..5)
}

/// The decision by its definition, tried on every address: the one with at least `quorum`
/// operators behind it and more than any other address has.
fn brute_force_decision(votes: &Votes, quorum: usize) -> Option<IpAddr> {
    let winners: Vec<IpAddr> = votes
        .iter()
        .filter(|(ip, ops)| {
            ops.len() >= quorum
                && votes
                    .iter()
                    .all(|(other, theirs)| other == *ip || theirs.len() < ops.len())
        })
        .map(|(ip, _)| *ip)
        .collect();
    assert!(winners.len() <= 1, "two addresses cannot both lead");
    winners.first().copied()
}

#[test]
fn the_quorum_decision_equals_a_brute_force_oracle() {
    let decided = AtomicU32::new(0);
    let cases = check(
        "the_quorum_decision_equals_a_brute_force_oracle",
        (votes(), 1usize..=5),
        |(votes, quorum)| {
            let expected = brute_force_decision(&votes, quorum);
            prop_assert_eq!(
                settled(&votes, quorum),
                expected,
                "{:?} quorum {}",
                votes,
                quorum
            );
            if expected.is_some() {
                decided.fetch_add(1, Ordering::Relaxed);
            }
            let everyone = votes.values().flatten().map(String::as_str);
            let unique: BTreeSet<&str> = everyone.clone().collect();
            prop_assert_eq!(distinct(everyone), unique.len());
            Ok(())
        },
    );
    let decided = decided.into_inner();
    assert!(
        decided * 5 >= cases && decided * 5 <= cases * 4,
        "{decided} of {cases} settled: both outcomes must be common"
    );
}

/// An address a provider may answer, with what detection must make of it for each family,
/// written out by hand: its canonical form, and whether it is public.
const ANSWERS: &[(&str, &str, bool)] = &[
    ("8.8.8.8", "8.8.8.8", true),
    ("1.1.1.1", "1.1.1.1", true),
    ("::ffff:8.8.8.8", "8.8.8.8", true),
    ("10.0.0.1", "10.0.0.1", false),
    ("2606:4700::1111", "2606:4700::1111", true),
    ("2a00:1450:4001::1", "2a00:1450:4001::1", true),
    ("fd00::1", "fd00::1", false),
];

/// One provider: its operator, its answer (an index into `ANSWERS`, or a failure), and its
/// place in the order of arrival.
#[derive(Clone, Debug)]
struct Asked {
    operator: u8,
    answer: Option<usize>,
}

/// A provider that answers after a delay of its own, under tokio's paused clock.
struct Delayed {
    after: Duration,
    answer: Result<IpAddr, crate::detect::ProviderError>,
}

impl crate::detect::IpSource for Delayed {
    fn lookup(&self, _family: Family) -> crate::detect::LookupFuture<'_> {
        Box::pin(async move {
            tokio::time::sleep(self.after).await;
            self.answer.clone()
        })
    }
}

#[test]
fn detection_settles_on_the_first_quorum_in_the_order_of_arrival() {
    let asked = prop::collection::vec(
        (0u8..4, prop::option::weighted(0.85, 0..ANSWERS.len()))
            .prop_map(|(operator, answer)| Asked { operator, answer }),
        1..8,
    );
    let strategy = (
        asked,
        1usize..=3,
        prop::sample::select(vec![Family::V4, Family::V6]),
        any::<bool>(),
    );
    let settled_cases = AtomicU32::new(0);
    let cases = check(
        "detection_settles_on_the_first_quorum_in_the_order_of_arrival",
        strategy,
        |(asked, quorum, family, allow_non_public)| {
            // The oracle: replay the answers in order, counting each operator once per
            // accepted address, until the brute-force decision names one.
            let mut votes = Votes::new();
            let mut expected = None;
            for provider in &asked {
                let Some(index) = provider.answer else {
                    continue;
                };
                let (_, canonical, public) = ANSWERS[index];
                let ip: IpAddr = canonical.parse().expect("a valid address");
                if Family::of(ip) != family || !(public || allow_non_public) {
                    continue;
                }
                let voters = votes.entry(ip).or_default();
                let operator = format!("op{}", provider.operator);
                if !voters.contains(&operator) {
                    voters.push(operator);
                }
                if let Some(ip) = brute_force_decision(&votes, quorum) {
                    expected = Some((ip, votes[&ip].clone()));
                    break;
                }
            }
            let settings = crate::detect::Settings {
                providers: Vec::new(),
                quorum,
                families: vec![family],
                allow_non_public,
                timeout: Duration::from_secs(5),
            };
            let sources = asked.iter().enumerate().map(|(i, provider)| {
                let spec = format!("https://p{i}.example.net/ip#op{}", provider.operator)
                    .parse()
                    .expect("a valid spec");
                let answer = match provider.answer {
                    Some(index) => Ok(ANSWERS[index].0.parse().expect("a valid address")),
                    None => Err(crate::detect::ProviderError::Failed("down".into())),
                };
                let after = Duration::from_millis(10 * (i as u64 + 1));
                let source: std::sync::Arc<dyn crate::detect::IpSource> =
                    std::sync::Arc::new(Delayed { after, answer });
                (spec, source)
            });
            let detector = crate::detect::Detector::with_sources(&settings, sources);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let found = runtime.block_on(detector.detect(family));
            match (found, expected) {
                (Ok(found), Some((ip, operators))) => {
                    settled_cases.fetch_add(1, Ordering::Relaxed);
                    prop_assert_eq!(found.ip, ip);
                    prop_assert_eq!(found.operators, operators);
                }
                (Err(e), None) => prop_assert_eq!(e.answers.len(), asked.len()),
                (found, expected) => {
                    return Err(TestCaseError::fail(format!(
                        "{asked:?} quorum {quorum} {family}: found {:?}, expected {expected:?}",
                        found.map(|f| f.ip)
                    )));
                }
            }
            Ok(())
        },
    );
    let settled_cases = settled_cases.into_inner();
    assert!(
        settled_cases * 5 >= cases && settled_cases * 5 <= cases * 4,
        "{settled_cases} of {cases} settled: both outcomes must be common"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Every variable the configuration reads, without its prefix, read from the code itself
/// (`config::variables`), so a new variable is covered here as soon as it exists.
fn variables() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        crate::config::variables()
            .into_iter()
            .map(|name| {
                let short = name.trim_start_matches("SENDSMS_").to_owned();
                &*Box::leak(short.into_boxed_str())
            })
            .collect()
    })
}

const DURATIONS: &[&str] = &[
    "VERIFY_TIMEOUT",
    "REQUEST_TIMEOUT",
    "POLL_INTERVAL",
    "REVERIFY_INTERVAL",
    "RECHECK_MIN_INTERVAL",
    "COORDINATION_LEASE",
    "GATEWAY_HOLD",
];

/// One variable's value: text, or (for `*_FILE`) a file to create with this content.
#[derive(Clone, Debug)]
enum Setting {
    Text(String),
    File(String),
    MissingFile,
}

/// Values a person might write for `var`: `(valid, invalid)`.
fn plausible(var: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let booleans = (
        vec!["true", "false", "1", "0", "yes", "off", "TRUE", " on "],
        vec!["maybe", "2", "enabled"],
    );
    let durations = (
        vec!["10s", "5m", "1h30m", "250ms", "2 days", "1ns", "365days"],
        vec![
            "0s",
            "90",
            "soon",
            "366 days",
            "500000000000y",
            "18446744073709551615s",
        ],
    );
    match var {
        "USERNAME" => (vec!["alice", "bob@example.com", " carol "], vec![]),
        "API_KEY" | "PASSWORD" => (vec!["k3y", " padded-key "], vec![]),
        "API_URL" => (
            vec![
                "https://api.sendsms.ro/json",
                "https://hub.sendsms.ro/json",
                "http://127.0.0.1:8089/json",
                "http://localhost/json",
                "http://[::1]:80/json",
            ],
            vec![
                "http://api.example.net/json",
                "ftp://api.example.net/json",
                "https://api.example.net/json?debug=1",
                "https://user@api.example.net/json",
                "api.sendsms.ro/json",
            ],
        ),
        "ALLOW_INSECURE_API_URL" | "ALLOW_NON_PUBLIC_IPS" | "RECHECK_ALLOW_REMOTE" => booleans,
        "BOOTSTRAP_PROXY" => (
            vec![
                "http://bastion:3128",
                "socks5h://127.0.0.1:1080",
                "https://[::1]:3129",
            ],
            vec!["ftp://bastion", "bastion:3128", "http://"],
        ),
        "BOOTSTRAP_BIND" => (
            vec!["10.0.0.5", "::1", " 192.0.2.1 "],
            vec!["eth0", "10.0.0.256"],
        ),
        "IP_PROVIDERS" => (
            vec![
                "http://127.0.0.1:1/ip",
                "https://api.ipify.org#ipify, dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH",
                "iface:eth0,iface:eth1#lan",
                "dns://[::1]:5353/whoami.test?type=AAAA#me",
            ],
            vec![",", "dns://1.1.1.1/", "https://x#", "gopher://x"],
        ),
        "IP_QUORUM" => (
            vec!["1", "2", "16", " 3 "],
            vec!["17", "0", "-1", "99999999999"],
        ),
        "API_BUDGET" => (vec!["1", "8", "600"], vec!["601", "0", "-5", "4294967296"]),
        "IP_FAMILIES" => (
            vec!["ipv4", "ipv6", "ipv4,ipv6", "v4, 6, IPv4"],
            vec![",", "ipv5"],
        ),
        "STATE_FILE" => (vec!["/var/lib/sendsms/state.json", "state.json"], vec![]),
        "LISTEN" => (
            vec!["0.0.0.0:9797", "[::1]:0"],
            vec!["127.0.0.1", "localhost:80", ":9797"],
        ),
        "LOG_FORMAT" => (vec!["json", "TEXT"], vec!["xml"]),
        "NOTIFY_URLS" => (
            vec![
                "https://hooks.slack.com/services/T0/B0/x",
                "json+https://example.net/hook, discord+https://discord.com/api/webhooks/1/x",
            ],
            vec!["ftp://example.net", ",", "slack+", "https://"],
        ),
        "NOTIFY_EVENTS" => (
            vec![
                "ip_changed",
                "not_ready_for=10m,recovered",
                "WHITELISTED, not_ready_for",
            ],
            vec!["ip_changed=5m", "everything", ",", "not_ready_for=soon"],
        ),
        "HEARTBEAT_URL" => (
            vec![
                "https://hc-ping.com/uuid",
                "http://kuma:3001/api/push/abc?status=up",
            ],
            vec!["hc-ping.com/uuid", "gopher://x"],
        ),
        "COORDINATION" => (
            vec![
                "none",
                "file:/var/lib/fleet",
                "redis://cache:6379/0",
                "rediss://cache/1",
            ],
            vec![
                "file:fleet",
                "memcached://host",
                "redis:///0",
                "redis://host/cache",
            ],
        ),
        "GATEWAY_LISTEN" => (
            vec!["127.0.0.1:9798", "[::]:9798", "0.0.0.0:0"],
            vec!["9798", "localhost:9798", "127.0.0.1"],
        ),
        "GATEWAY_TOKEN" => (
            vec![
                "0123456789abcdef0123456789abcdef",
                " padded-token-of-length-32chars ",
            ],
            vec!["short", "fifteen-chars15"],
        ),
        "GATEWAY_MAX_HELD" => (vec!["1", "1000", "100000"], vec!["0", "100001", "-1"]),
        d if DURATIONS.contains(&d) => durations,
        other => panic!("no plausible values for SENDSMS_{other}: add them to `plausible`"),
    }
}

fn setting(var: &'static str) -> BoxedStrategy<Setting> {
    if var.ends_with("_FILE") && var != "STATE_FILE" {
        return prop_oneof![
            3 => junk_text(24).prop_map(Setting::File),
            1 => Just(Setting::MissingFile),
        ]
        .boxed();
    }
    let (valid, mut invalid) = plausible(var);
    if invalid.is_empty() {
        invalid.clone_from(&valid);
    }
    prop_oneof![
        6 => prop::sample::select(valid).prop_map(|v| Setting::Text(v.to_owned())),
        1 => prop::sample::select(invalid).prop_map(|v| Setting::Text(v.to_owned())),
        1 => junk_text(30).prop_map(Setting::Text),
    ]
    .boxed()
}

/// Where the case hides its secret.
#[derive(Clone, Debug)]
enum SecretAt {
    ApiKey,
    Password,
    ApiKeyFile,
    PasswordFile,
    ProxyPassword {
        scheme: &'static str,
        host: &'static str,
    },
    ApiUrlPassword,
    /// A webhook's token, in its path.
    NotifyUrl,
    /// A heartbeat's token, in its path.
    HeartbeatUrl,
}

#[derive(Clone, Debug)]
struct EnvCase {
    settings: Vec<(&'static str, Option<Setting>)>,
    secret: String,
    at: SecretAt,
}

fn env_case() -> impl Strategy<Value = EnvCase> {
    let settings: Vec<_> = variables()
        .iter()
        .map(|&var| {
            // The user name is usually there and a second key source rarely, so that a good
            // share of cases is a valid configuration.
            let presence = match var {
                "USERNAME" => 0.9,
                "USERNAME_FILE" | "API_KEY" | "PASSWORD" | "API_KEY_FILE" | "PASSWORD_FILE" => 0.05,
                _ => 0.25,
            };
            (Just(var), prop::option::weighted(presence, setting(var)))
        })
        .collect();
    let at = prop_oneof![
        Just(SecretAt::ApiKey),
        Just(SecretAt::Password),
        Just(SecretAt::ApiKeyFile),
        Just(SecretAt::PasswordFile),
        (
            prop::sample::select(vec!["http", "https", "socks5", "socks5h", "ftp", "http:"]),
            prop::sample::select(vec!["bastion:3128", "10.0.0.1", "[::1]:1080", "", ":3128"]),
        )
            .prop_map(|(scheme, host)| SecretAt::ProxyPassword { scheme, host }),
        Just(SecretAt::ApiUrlPassword),
        Just(SecretAt::NotifyUrl),
        Just(SecretAt::HeartbeatUrl),
    ];
    (settings, "[A-Za-z0-9]{16,24}", at).prop_map(|(settings, secret, at)| EnvCase {
        settings,
        secret,
        at,
    })
}

impl EnvCase {
    /// The environment, with `*_FILE` variables pointing at files created in `dir`.
    fn vars(&self, dir: &Path) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let file = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).expect("the temp dir is writable");
            path.display().to_string()
        };
        for (var, setting) in &self.settings {
            let value = match setting {
                None => continue,
                Some(Setting::Text(text)) => text.clone(),
                Some(Setting::File(content)) => file(var, content),
                Some(Setting::MissingFile) => dir.join("missing").display().to_string(),
            };
            vars.insert(format!("SENDSMS_{var}"), value);
        }
        let secret = &self.secret;
        let (var, value) = match &self.at {
            SecretAt::ApiKey => ("API_KEY", format!(" {secret}\n")),
            SecretAt::Password => ("PASSWORD", secret.clone()),
            SecretAt::ApiKeyFile => ("API_KEY_FILE", file("key", &format!("{secret}\n"))),
            SecretAt::PasswordFile => ("PASSWORD_FILE", file("password", secret)),
            SecretAt::ProxyPassword { scheme, host } => (
                "BOOTSTRAP_PROXY",
                format!("{scheme}://proxyuser:{secret}@{host}"),
            ),
            SecretAt::NotifyUrl => (
                "NOTIFY_URLS",
                format!("https://hooks.slack.com/services/{secret}, ftp://x/{secret}"),
            ),
            SecretAt::HeartbeatUrl => ("HEARTBEAT_URL", format!("hc-ping.com/{secret}")),
            SecretAt::ApiUrlPassword => (
                "API_URL",
                format!("https://user:{secret}@api.sendsms.ro/json"),
            ),
        };
        vars.insert(format!("SENDSMS_{var}"), value);
        // Variables of other programs are ignored, whatever they hold.
        vars.insert("HOME".into(), format!("/home/{secret}"));
        vars.into_iter().collect()
    }

    /// The text `var` is set to, when it is set as text.
    fn text(&self, var: &str) -> Option<&str> {
        self.settings.iter().find_map(|(v, s)| match s {
            Some(Setting::Text(text)) if *v == var => Some(text.as_str()),
            _ => None,
        })
    }
}

/// The error names its culprit: a variable the environment sets, or a required one it lacks;
/// and it never holds the secret.
fn error_is_safe(
    e: &ConfigError,
    vars: &[(String, String)],
    secret: &str,
) -> Result<(), TestCaseError> {
    let text = e.to_string();
    let named: Vec<&str> = text
        .match_indices("SENDSMS_")
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    let value = |name: &str| vars.iter().find(|(var, _)| var == name).map(|(_, v)| v);
    let culprit = match e {
        // Required: unset, or set to blanks only.
        ConfigError::Missing { var, .. } => {
            named.contains(&var.as_str()) && value(var).is_none_or(|v| v.trim().is_empty())
        }
        _ => named.iter().any(|name| value(name).is_some()),
    };
    prop_assert!(culprit, "names no variable that is set: {}", text);
    prop_assert!(!text.contains(secret), "the secret leaked: {}", text);
    let debug = format!("{e:?}");
    prop_assert!(!debug.contains(secret), "the secret leaked: {}", debug);
    Ok(())
}

/// Counts of (valid, invalid) configurations, to show both outcomes were exercised.
static CONFIG_OUTCOMES: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

#[test]
fn config_never_panics_names_the_culprit_and_never_leaks_a_secret() {
    let cases = check(
        "config_never_panics_names_the_culprit_and_never_leaks_a_secret",
        env_case(),
        |case| {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let vars = case.vars(dir.path());
            let secret = case.secret.as_str();
            let config = match Config::from_vars(vars.clone()) {
                Err(e) => {
                    CONFIG_OUTCOMES[1].fetch_add(1, Ordering::Relaxed);
                    return error_is_safe(&e, &vars, secret);
                }
                Ok(config) => config,
            };
            CONFIG_OUTCOMES[0].fetch_add(1, Ordering::Relaxed);
            let debug = format!("{config:?}");
            prop_assert!(!debug.contains(secret), "the secret leaked: {}", debug);
            prop_assert!(!config.flow.api.bootstrap.to_string().contains(secret));
            use secrecy::ExposeSecret;
            let key = config.flow.credentials.api_key.expose_secret();
            match case.at {
                SecretAt::ApiKey
                | SecretAt::Password
                | SecretAt::ApiKeyFile
                | SecretAt::PasswordFile => {
                    prop_assert_eq!(key, secret, "the key is the secret, trimmed")
                }
                SecretAt::ProxyPassword { .. } => {
                    let proxy = config
                        .flow
                        .api
                        .bootstrap
                        .proxy
                        .as_ref()
                        .map(|p| p.expose().to_owned());
                    prop_assert!(proxy.is_some_and(|p| p.contains(secret)));
                }
                SecretAt::ApiUrlPassword => {
                    return Err(TestCaseError::fail(
                        "an API URL with a password was accepted",
                    ));
                }
                SecretAt::NotifyUrl | SecretAt::HeartbeatUrl => {
                    return Err(TestCaseError::fail(
                        "an unusable webhook or heartbeat URL was accepted",
                    ));
                }
            }
            // The key only ever travels over TLS, unless to loopback or by explicit override.
            let url = &config.flow.api.url;
            let insecure_allowed = case
                .text("ALLOW_INSECURE_API_URL")
                .map(|v| v.trim().to_ascii_lowercase())
                .is_some_and(|v| ["true", "1", "yes", "on"].contains(&v.as_str()));
            prop_assert!(
                url.scheme() == "https"
                    || (url.scheme() == "http" && (host_is_loopback(url) || insecure_allowed)),
                "{}",
                url
            );
            prop_assert!(
                url.username().is_empty() && url.password().is_none() && url.query().is_none()
            );
            // Every duration is usable: it can be doubled and added to a deadline.
            for d in [
                config.flow.verify_timeout,
                config.flow.api.request_timeout,
                config.sidecar.poll_interval,
                config.sidecar.reverify_interval,
                config.sidecar.recheck_min_interval,
                config.flow.coordination.lease,
                config.detection.timeout,
            ] {
                prop_assert!(!d.is_zero());
                prop_assert!(d <= Duration::from_secs(366 * 24 * 3600), "{:?}", d);
                prop_assert!(std::time::Instant::now().checked_add(d * 4).is_some());
            }
            prop_assert!((1..=600).contains(&config.flow.api_budget));
            Ok(())
        },
    );
    let [valid, invalid] = &CONFIG_OUTCOMES;
    let (valid, invalid) = (
        valid.load(Ordering::Relaxed),
        invalid.load(Ordering::Relaxed),
    );
    println!("config outcomes: {valid} valid, {invalid} rejected");
    if cases >= 64 {
        assert!(
            valid > 0 && invalid > 0,
            "{valid} valid, {invalid} rejected"
        );
    }
}

#[test]
fn detection_config_never_panics_and_stays_in_range() {
    check(
        "detection_config_never_panics_and_stays_in_range",
        env_case(),
        |case| {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let vars = case.vars(dir.path());
            match detection_from_vars(vars.clone()) {
                Err(e) => error_is_safe(&e, &vars, &case.secret),
                Ok(detection) => {
                    prop_assert!((1..=16).contains(&detection.quorum));
                    prop_assert!(!detection.providers.is_empty());
                    prop_assert!(!detection.families.is_empty());
                    let mut families = detection.families.clone();
                    families.dedup();
                    prop_assert_eq!(families.len(), detection.families.len());
                    prop_assert!(!detection.timeout.is_zero());
                    let debug = format!("{detection:?}");
                    prop_assert!(
                        !debug.contains(&case.secret),
                        "the secret leaked: {}",
                        debug
                    );
                    Ok(())
                }
            }
        },
    );
}

/// Found by `config_never_panics_names_the_culprit_and_never_leaks_a_secret`: humantime reads
/// `500000000000y` as about 1.6e19 s and `Config::from_vars` accepted it, so `run` panicked at
/// start-up: `SENDSMS_VERIFY_TIMEOUT` with "overflow when multiplying duration by scalar"
/// (`verify_timeout * 2` in src/sidecar.rs), `SENDSMS_POLL_INTERVAL` with "cannot convert float
/// seconds to Duration" (`poll_interval.mul_f64(1.2)`), and the others later, where a deadline
/// is an `Instant` plus the duration. Every duration is now at most 365 days.
#[test]
fn regression_huge_duration_is_refused_not_a_later_overflow() {
    let config = |var: &str, value: &str| {
        Config::from_vars(
            [
                ("SENDSMS_USERNAME", "alice"),
                ("SENDSMS_API_KEY", "k3y"),
                (&format!("SENDSMS_{var}"), value),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    for var in DURATIONS {
        for value in ["500000000000y", "18446744073709551615s", "366 days"] {
            let e = config(var, value).expect_err("a duration above 365 days is refused");
            assert!(e.to_string().contains(&format!("SENDSMS_{var}")), "{e}");
        }
        config(var, "365days").expect("365 days is the longest duration accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// The state file

fn verified_ip() -> impl Strategy<Value = VerifiedIp> {
    (
        prop::sample::select(vec![Family::V4, Family::V6]),
        any_ip(),
        // Proofs from the past: one from the future is dropped on load (`state::tests`).
        0..=1_700_000_000u64,
    )
        .prop_map(|(family, ip, verified_at)| VerifiedIp {
            family,
            ip,
            verified_at,
        })
}

fn owner() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof!["[a-z]{1,8}", junk_text(12)],
        prop_oneof![
            Just("https://api.sendsms.ro/json".to_owned()),
            junk_text(20)
        ],
    )
}

/// The account `user` with a fixed key: the state file's owner is the account, key and URL.
fn account(user: &str) -> Credentials {
    Credentials {
        username: user.to_owned(),
        api_key: secrecy::SecretString::from("k3y".to_owned()),
    }
}

#[test]
fn state_file_save_then_load_round_trips() {
    let strategy = (owner(), prop::collection::vec(verified_ip(), 0..8));
    check(
        "state_file_save_then_load_round_trips",
        strategy,
        |((user, url), verified)| {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let file = StateFile::new(dir.path().join("state.json"), &account(&user), &url);
            file.save(&verified)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(file.load(), verified.clone());
            // Another account never reads it.
            let other = StateFile::new(
                dir.path().join("state.json"),
                &account(&format!("{user}x")),
                &url,
            );
            prop_assert!(other.load().is_empty());
            // No temporary file is left behind.
            let entries = std::fs::read_dir(dir.path())
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .count();
            prop_assert_eq!(entries, 1);
            Ok(())
        },
    );
}

/// What `StateFile::load` should give for `bytes`, judged independently: the `verified` list
/// of a JSON object whose `format` and `owner` are those of the `saved` document.
fn reference_load(bytes: &[u8], saved: &[u8]) -> Vec<VerifiedIp> {
    let (Ok(Value::Object(doc)), Ok(Value::Object(ours))) = (
        serde_json::from_slice::<Value>(bytes),
        serde_json::from_slice::<Value>(saved),
    ) else {
        return Vec::new();
    };
    let same = |field: &str| doc.get(field).is_some() && doc.get(field) == ours.get(field);
    if !(same("format") && same("owner")) {
        return Vec::new();
    }
    doc.get("verified")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// What happens to a good state file before it is read back.
#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Unknown fields are tolerated.
    ExtraField(String),
    OtherOwner(String),
    OtherFormat(String),
    DropField(&'static str),
    BadAddress(String),
    Truncate(Index),
    Overwrite(Vec<(Index, u8)>),
    Random(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        "[a-z]{1,8}".prop_map(Damage::ExtraField),
        junk_text(16).prop_map(Damage::OtherOwner),
        junk_text(16).prop_map(Damage::OtherFormat),
        prop::sample::select(vec!["format", "owner", "verified"]).prop_map(Damage::DropField),
        junk_text(16).prop_map(Damage::BadAddress),
        any::<Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<Index>(), any::<u8>()), 1..4).prop_map(Damage::Overwrite),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Damage::Random),
    ]
}

#[test]
fn state_file_load_accepts_only_an_intact_document_of_its_owner() {
    let strategy = (
        owner(),
        prop::collection::vec(verified_ip(), 1..5),
        damage(),
    );
    check(
        "state_file_load_accepts_only_an_intact_document_of_its_owner",
        strategy,
        |((user, url), verified, damage)| {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let path = dir.path().join("state.json");
            let file = StateFile::new(path.clone(), &account(&user), &url);
            file.save(&verified)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let saved = std::fs::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut doc: Value =
                serde_json::from_slice(&saved).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let fields = doc
                .as_object_mut()
                .ok_or_else(|| TestCaseError::fail("the state file is not an object"))?;
            let mut bytes: Option<Vec<u8>> = None;
            // Whether the damaged file must still load the saved list.
            let mut intact = true;
            match &damage {
                Damage::None => {}
                Damage::ExtraField(name) => {
                    if !["format", "owner", "verified"].contains(&name.as_str()) {
                        fields.insert(name.clone(), json!({ "anything": [1, 2] }));
                    }
                }
                Damage::OtherOwner(owner) => {
                    intact = fields.get("owner") == Some(&Value::String(owner.clone()));
                    fields.insert("owner".into(), Value::String(owner.clone()));
                }
                Damage::OtherFormat(format) => {
                    intact = fields.get("format") == Some(&Value::String(format.clone()));
                    fields.insert("format".into(), Value::String(format.clone()));
                }
                Damage::DropField(name) => {
                    fields.remove(*name);
                    intact = false;
                }
                Damage::BadAddress(text) => {
                    fields["verified"][0]["ip"] = Value::String(text.clone());
                }
                Damage::Truncate(at) => {
                    let cut = at.index(saved.len());
                    // Trailing blanks are all that may go without harm.
                    intact = saved[cut..].iter().all(u8::is_ascii_whitespace);
                    bytes = Some(saved[..cut].to_vec());
                }
                Damage::Overwrite(edits) => {
                    intact = false;
                    let mut damaged = saved.clone();
                    for (at, byte) in edits {
                        let i = at.index(damaged.len());
                        damaged[i] = *byte;
                    }
                    bytes = Some(damaged);
                }
                Damage::Random(random) => {
                    intact = false;
                    bytes = Some(random.clone());
                }
            }
            let bytes = bytes.unwrap_or_else(|| doc.to_string().into_bytes());
            std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let loaded = file.load();
            // Read exactly as the bytes now stand, never partly.
            prop_assert_eq!(&loaded, &reference_load(&bytes, &saved));
            match damage {
                Damage::None | Damage::ExtraField(_) => prop_assert_eq!(&loaded, &verified),
                Damage::Overwrite(_) | Damage::BadAddress(_) => {}
                _ if intact => prop_assert_eq!(&loaded, &verified),
                _ => prop_assert!(loaded.is_empty(), "{:?} loaded {:?}", damage, loaded),
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Text from outside: redaction and printing

#[test]
fn redacted_text_never_holds_the_secret_and_printable_text_is_one_line() {
    let cases = (junk_text(80), junk_text(80), "[A-Za-z0-9+/=_.~-]{4,40}");
    check("redact_and_printable", cases, |(before, after, key)| {
        for text in [
            format!("{before}{key}{after}"),
            format!(
                "{before}{}{after}",
                url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
            ),
        ] {
            let redacted = crate::secret::redact(&text, &[&key]);
            // A short key may be spelled inside the marker itself ("ACT" in "[REDACTED]").
            let leaked = redacted
                .split(crate::secret::REDACTED)
                .any(|piece| piece.contains(&key));
            prop_assert!(!leaked, "{:?} -> {:?}", text, redacted);
            let shown = crate::secret::printable(&redacted);
            prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
            // At most 128 characters of the text, each escape at most 10 (`\u{10ffff}`).
            prop_assert!(shown.chars().count() <= 128 * 10 + 1);
        }
        Ok(())
    });
}
