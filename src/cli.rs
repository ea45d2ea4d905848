//! Command line: subcommands, logging set-up, and the documented exit codes.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::filter::Targets;

use crate::config::{Config, ConfigError, DetectionConfig, LogFormat, utf8_env};
use crate::coord::{CoordinationMetrics, Coordinator, FleetBudget, Proof, StoreError};
use crate::detect::{DetectError, Detection, Detector, Family};
use crate::emulator::{self, Fault, KeyKind, ListFormat, Settings};
use crate::reconcile::{CheckReport, ReconcileError, Reconciler};
use crate::sendsms::{CallObserver, Client, ClientBuildError};

/// The exit codes the README documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    NotUsable = 1,
    Config = 2,
    Detection = 3,
    BootstrapRefused = 4,
    NotVerified = 5,
}

/// A command's failure: what to print and which exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            exit: Exit::Config,
            message: format!("configuration: {e}"),
        }
    }
}

impl From<ClientBuildError> for Failure {
    fn from(e: ClientBuildError) -> Self {
        Failure {
            exit: Exit::Config,
            message: e.to_string(),
        }
    }
}

impl From<DetectError> for Failure {
    fn from(e: DetectError) -> Self {
        Failure {
            exit: Exit::Detection,
            message: e.to_string(),
        }
    }
}

/// Only building the store can fail before anything runs: an unusable `SENDSMS_COORDINATION`.
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            exit: Exit::Config,
            message: format!("SENDSMS_COORDINATION: {e}"),
        }
    }
}

impl From<ReconcileError> for Failure {
    fn from(e: ReconcileError) -> Self {
        let exit = match e {
            ReconcileError::BootstrapRefused { .. } => Exit::BootstrapRefused,
            ReconcileError::NotVerified { .. }
            | ReconcileError::ApiUnavailable { .. }
            | ReconcileError::PeerBusy { .. } => Exit::NotVerified,
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "sendsms-whitelister",
    version,
    about = "Keeps a sendSMS.ro API key's IP whitelist in step with this host's egress IP."
)]
struct Cli {
    /// What to do; `run` when omitted, as the container image runs it.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The sidecar: follow the egress IP, keep it whitelisted and verified, serve status (default).
    Run,
    /// Exit 0 when the local sidecar's /readyz answers 200 (a HEALTHCHECK for images without curl).
    Health {
        /// The readiness URL; defaults to SENDSMS_HEALTH_URL, else /readyz on SENDSMS_LISTEN's port.
        #[arg(long, env = "SENDSMS_HEALTH_URL")]
        url: Option<String>,
    },
    /// One pass: detect the egress IP, whitelist it through the bootstrap path if needed, verify it.
    Once,
    /// Read-only: is the egress IP whitelisted and does the key work from here? Exit 0 or 1.
    Check,
    /// Read-only, no credentials: the egress address per family, and which operators agreed.
    Detect,
    /// The whole flow against an in-process emulator, with no account and no network.
    Demo,
    /// Serve the offline sendSMS API emulator.
    Emulator(Box<EmulatorArgs>),
}

#[derive(Args, Debug)]
struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Also serve a UDP DNS whoami here (A, AAAA and TXT answers holding the querier's address).
    #[arg(long, value_name = "ADDR")]
    dns_listen: Option<SocketAddr>,
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
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("expected a probability from 0 to 1, such as 0.3".into()),
    }
}

impl EmulatorArgs {
    /// Keys in command-line order, interleaving the two flags, so state reports match the order given.
    fn settings(self, matches: &ArgMatches) -> Settings {
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
        }
    }
}

/// The `RUST_LOG` filter: a bare level (`info`) and `target=level` directives, comma-separated,
/// as `EnvFilter` reads them but without span and field filters (a static filter keeps the
/// regex engine out of the binary). Unset or empty: `default_level`; invalid: `default_level`
/// too, and the second value says so.
fn log_filter(value: Option<&str>, default_level: &str) -> (Targets, bool) {
    // Directives, trimmed; none at all (unset, empty, only commas) means the default.
    let directives = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let fallback = || {
        directives(default_level)
            .join(",")
            .parse()
            .unwrap_or_default()
    };
    match value.map(directives).filter(|d| !d.is_empty()) {
        None => (fallback(), false),
        Some(given) => match given.join(",").parse() {
            Ok(filter) => (filter, false),
            Err(_) => (fallback(), true),
        },
    }
}

fn init_logging(format: Option<LogFormat>, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, invalid) = log_filter(rust_log.as_deref(), default_level);
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => !std::io::stdout().is_terminal(),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (the demo runs commands in-process) keeps the first subscriber.
    let first = if json {
        registry
            .with(layer.json().flatten_event(true))
            .try_init()
            .is_ok()
    } else {
        registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
            .is_ok()
    };
    if first && invalid {
        tracing::warn!(
            default = default_level,
            "RUST_LOG is not a valid filter; using the default"
        );
    }
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: the async runtime cannot start: {e}");
            return ExitCode::from(Exit::NotVerified as u8);
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                let config = load_config("info")?;
                crate::sidecar::run_until_signal(config).await
            }
            Command::Health { url } => health(url).await,
            Command::Once => {
                let config = load_config("info")?;
                let reports = once(&config).await?;
                for report in reports {
                    println!("ok: {report}");
                }
                Ok(Exit::Success)
            }
            Command::Check => {
                let config = load_config("warn")?;
                let reports = check(&config).await?;
                Ok(print_check(&reports))
            }
            Command::Detect => {
                let detection = DetectionConfig::from_vars(utf8_env())?;
                init_logging(None, "warn");
                let detector = Detector::new(&detection);
                for family in &detection.families {
                    let found = detector.detect(*family).await?;
                    println!(
                        "{family} {} (agreed: {}; {} ms)",
                        found.ip,
                        found.operators.join(", "),
                        found.elapsed.as_millis()
                    );
                }
                Ok(Exit::Success)
            }
            Command::Demo => {
                init_logging(None, "warn");
                crate::demo::run().await
            }
            Command::Emulator(args) => {
                init_logging(None, "info");
                let sub = matches
                    .subcommand_matches("emulator")
                    .cloned()
                    .unwrap_or_default();
                let (listen, dns_listen) = (args.listen, args.dns_listen);
                let running = emulator::start(listen, dns_listen, args.settings(&sub))
                    .await
                    .map_err(|e| Failure {
                        exit: Exit::Config,
                        message: format!("--listen {listen} / --dns-listen {dns_listen:?}: {e}"),
                    })?;
                println!("listening on http://{}", running.addr);
                if let Some(dns) = running.dns_addr {
                    println!("dns listening on udp://{dns}");
                }
                running.wait().await.map_err(|e| Failure {
                    exit: Exit::NotVerified,
                    message: format!("the emulator stopped: {e}"),
                })?;
                Ok(Exit::Success)
            }
        }
    });
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit as u8)
        }
    }
}

/// The configuration, then logging as it asks; a plain-http API URL on another host is
/// allowed only by an explicit override, and then said loudly on every start.
fn load_config(default_level: &str) -> Result<Config, Failure> {
    let config = Config::from_env()?;
    init_logging(config.log_format, default_level);
    if config.api_url.scheme() == "http" && !crate::config::host_is_loopback(&config.api_url) {
        tracing::warn!(
            host = config.api_url.host_str().unwrap_or(""),
            "SENDSMS_ALLOW_INSECURE_API_URL is set: the API key travels in clear text"
        );
    }
    Ok(config)
}

/// The direct and bootstrap clients for one configuration.
pub fn reconciler(
    config: &Config,
    observer: Option<Arc<dyn CallObserver>>,
) -> Result<Reconciler, Failure> {
    let observed = |client: Client| match &observer {
        Some(observer) => client.with_observer(Arc::clone(observer)),
        None => client,
    };
    let direct = |family| {
        Client::direct(
            config.api_url.clone(),
            config.credentials.clone(),
            config.request_timeout,
            family,
        )
        .map(observed)
    };
    let direct = [direct(Family::V4)?, direct(Family::V6)?];
    let bootstrap = observed(Client::bootstrap(
        config.api_url.clone(),
        config.credentials.clone(),
        config.request_timeout,
        &config.bootstrap,
    )?);
    Ok(Reconciler::new(
        direct,
        bootstrap,
        config.bootstrap.is_direct(),
        config.verify_timeout,
    ))
}

fn log_detected(family: Family, found: &Detection) {
    tracing::info!(ip = %found.ip, %family, operators = ?found.operators, elapsed = ?found.elapsed, "egress address detected");
}

async fn detect_all(config: &Config) -> Result<Vec<IpAddr>, Failure> {
    let detector = Detector::new(&config.detection);
    let mut ips = Vec::new();
    for family in &config.detection.families {
        let found = detector.detect(*family).await?;
        log_detected(*family, &found);
        ips.push(found.ip);
    }
    Ok(ips)
}

/// `once`: every egress IP whitelisted and verified, or the first failure. Coordinated, it
/// takes a fleet member's fresh record, or the lease, as `run` does (init containers of a fleet).
pub async fn once(config: &Config) -> Result<Vec<Proof>, Failure> {
    let coordinator = Coordinator::from_config(config, CoordinationMetrics::default())?;
    let observer = coordinator.as_ref().map(|c| {
        let budget: Arc<dyn CallObserver> = Arc::new(FleetBudget {
            coordinator: Arc::clone(c),
            per_minute: config.api_budget,
        });
        budget
    });
    let reconciler = reconciler(config, observer)?;
    let detector = Detector::new(&config.detection);
    let mut proofs = Vec::new();
    for &family in &config.detection.families {
        let detection = async {
            let found = detector.detect(family).await?;
            log_detected(family, &found);
            Ok::<_, DetectError>(found.ip)
        };
        let proof = match &coordinator {
            Some(coordinator) => {
                let ip = detection.await?;
                coordinator.ensure(ip, &reconciler, 0).await?
            }
            None => Proof::Own(reconciler.ensure_detected(family, detection).await??),
        };
        proofs.push(proof);
    }
    Ok(proofs)
}

/// `check`: read-only.
pub async fn check(config: &Config) -> Result<Vec<CheckReport>, Failure> {
    let reconciler = reconciler(config, None)?;
    let mut reports = Vec::new();
    for ip in detect_all(config).await? {
        reports.push(reconciler.check(ip).await?);
    }
    Ok(reports)
}

pub fn print_check(reports: &[CheckReport]) -> Exit {
    let mut exit = Exit::Success;
    for report in reports {
        println!("egress IP: {}", report.ip);
        match (&report.whitelist, &report.refusal) {
            (Some(whitelist), _) => {
                println!("key works from this host: yes");
                println!(
                    "listed: {}",
                    if whitelist.covers(report.ip) {
                        "yes"
                    } else {
                        "no"
                    }
                );
                println!("whitelist: {whitelist}");
            }
            (None, refusal) => {
                println!(
                    "key works from this host: no ({})",
                    refusal.as_deref().unwrap_or("refused")
                );
                println!("listed: no");
                println!("whitelist: unknown (the key is refused from here, so it cannot read it)");
            }
        }
        if !report.usable() {
            exit = Exit::NotUsable;
        }
    }
    exit
}

/// `health`: for Docker's HEALTHCHECK in an image that has no shell and no curl.
async fn health(url: Option<String>) -> Result<Exit, Failure> {
    let url = match url {
        Some(url) => url,
        None => {
            let listen = crate::config::parse_listen(std::env::var("SENDSMS_LISTEN").ok())?;
            // The sidecar listens on all addresses by default; ask it on loopback.
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
                ip => ip,
            };
            format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
        }
    };
    let not_ready = |message: String| Failure {
        exit: Exit::NotUsable,
        message,
    };
    let client = crate::http::client_builder(Duration::from_secs(3), None)
        .build()
        .map_err(|e| not_ready(crate::http::describe(e)))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| not_ready(format!("{url}: {}", crate::http::describe(e))))?;
    let status = response.status();
    let body = crate::http::read_capped(response, 4096)
        .await
        .unwrap_or_default();
    let reason = String::from_utf8_lossy(&body).trim().to_owned();
    if status.is_success() {
        println!("{reason}");
        Ok(Exit::Success)
    } else {
        Err(not_ready(format!(
            "not ready (HTTP {}): {reason}",
            status.as_u16()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn rust_log_levels_and_targets() {
        let (f, invalid) = log_filter(Some("warn"), "info");
        assert!(!invalid);
        assert!(f.would_enable("sendsms_whitelister::sidecar", &Level::WARN));
        assert!(!f.would_enable("sendsms_whitelister::sidecar", &Level::INFO));

        let (f, invalid) = log_filter(Some("error, sendsms_whitelister=debug"), "info");
        assert!(!invalid);
        assert!(f.would_enable("sendsms_whitelister::detect", &Level::DEBUG));
        assert!(!f.would_enable("hyper_util::client", &Level::WARN));
        assert!(f.would_enable("hyper_util::client", &Level::ERROR));

        // Only a target: nothing else is logged, as with EnvFilter.
        let (f, _) = log_filter(Some("sendsms_whitelister=info"), "info");
        assert!(!f.would_enable("reqwest::connect", &Level::ERROR));
        assert!(f.would_enable("sendsms_whitelister", &Level::INFO));
    }

    #[test]
    fn rust_log_unset_empty_or_invalid_falls_back() {
        for (value, invalid) in [
            (None, false),
            (Some(""), false),
            (Some(" , "), false),
            (Some("loud"), false), // a bare word is a target, as in EnvFilter
            (Some("x=loud"), true),
            (Some("a=b=c"), true),
        ] {
            let (f, flagged) = log_filter(value, "warn");
            assert_eq!(flagged, invalid, "{value:?}");
            if value != Some("loud") {
                assert!(
                    f.would_enable("sendsms_whitelister", &Level::WARN),
                    "{value:?}"
                );
                assert!(
                    !f.would_enable("sendsms_whitelister", &Level::INFO),
                    "{value:?}"
                );
            }
        }
    }
}
