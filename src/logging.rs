//! Logging set-up: where logs go (standard error), in which format, filtered by `RUST_LOG`.

use tracing_subscriber::filter::Targets;

/// `SENDSMS_LOG_FORMAT`; unset means JSON when standard output is not a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Json,
    Text,
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

/// Installs the process's subscriber; a second call (the demo runs commands in-process) keeps
/// the first one.
pub(crate) fn init(format: Option<LogFormat>, default_level: &str) {
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
