//! The emulator's own command-line arguments, turned into its settings.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{ArgMatches, Args as ClapArgs};

use super::{Fault, KeyKind, ListFormat, Settings};

/// The emulator's command line: everything it models is a flag.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub(crate) listen: SocketAddr,
    /// Also serve a UDP DNS whoami here (A, AAAA and TXT answers holding the querier's address).
    #[arg(long, value_name = "ADDR")]
    pub(crate) dns_listen: Option<SocketAddr>,
    /// The account's user name.
    #[arg(long, default_value = "demo")]
    username: String,
    /// The account's password (token actions need an API key instead).
    #[arg(long, default_value = "demo-account-password")]
    password: String,
    /// An IP-locked API key (repeatable).
    #[arg(long = "default-key", value_name = "SECRET")]
    default_keys: Vec<String>,
    /// An API key that works from anywhere (repeatable).
    #[arg(long = "cloud-key", value_name = "SECRET")]
    cloud_keys: Vec<String>,
    /// An address pre-whitelisted on every default key (repeatable).
    #[arg(long = "allow", value_name = "IP")]
    allow: Vec<IpAddr>,
    /// Added delay before each answer (API, /ip echo, DNS whoami), in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency: u64,
    /// An added IP takes effect only after this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    propagation_delay: u64,
    /// Status answered when token_add_ip names a listed IP.
    #[arg(long, default_value_t = -512, allow_negative_numbers = true, value_name = "N")]
    duplicate_status: i64,
    /// Unbilled requests per window per account; 0 turns the limit off.
    #[arg(long, default_value_t = 10, value_name = "N")]
    rate_limit: u32,
    /// Status answered when the rate limit is hit.
    #[arg(long, default_value_t = -4096, allow_negative_numbers = true, value_name = "N")]
    rate_limit_status: i64,
    /// Length of the rate-limit window, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    rate_window: u64,
    /// Chance (0 to 1) of a transient fault per API request: HTTP 502 or a dropped connection.
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = parse_probability)]
    fail_rate: f64,
    /// What a request hit by --fail-rate gets.
    #[arg(long, value_enum, default_value_t = Fault::Mixed)]
    fault: Fault,
    /// Answer every API request as rate-limited for this long after start, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    rate_limited_for: u64,
    /// Shape of token_list_ips details.
    #[arg(long, value_enum, default_value_t = ListFormat::Strings)]
    list_format: ListFormat,
    /// Record every accepted send, then drop its connection without an answer.
    #[arg(long)]
    drop_after_send: bool,
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("expected a probability from 0 to 1, such as 0.3".into()),
    }
}

impl Args {
    /// Keys in command-line order, interleaving the two flags, so state reports match the order given.
    pub(crate) fn settings(self, matches: &ArgMatches) -> Settings {
        let indices = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(Iterator::collect)
                .unwrap_or_default()
        };
        let mut keys: Vec<(usize, KeyKind, String)> = indices("default_keys")
            .into_iter()
            .zip(self.default_keys)
            .map(|(i, k)| (i, KeyKind::Default, k))
            .chain(
                indices("cloud_keys")
                    .into_iter()
                    .zip(self.cloud_keys)
                    .map(|(i, k)| (i, KeyKind::Cloud, k)),
            )
            .collect();
        keys.sort_by_key(|(i, _, _)| *i);
        Settings {
            username: self.username,
            password: self.password,
            keys: keys.into_iter().map(|(_, kind, key)| (kind, key)).collect(),
            allow: self.allow,
            latency: Duration::from_millis(self.latency),
            propagation_delay: Duration::from_millis(self.propagation_delay),
            duplicate_status: self.duplicate_status,
            rate_limit: self.rate_limit,
            rate_limit_status: self.rate_limit_status,
            rate_window: Duration::from_millis(self.rate_window.max(1)),
            fail_rate: self.fail_rate,
            fault: self.fault,
            rate_limited_for: Duration::from_millis(self.rate_limited_for),
            list_format: self.list_format,
            drop_after_send: self.drop_after_send,
        }
    }
}
