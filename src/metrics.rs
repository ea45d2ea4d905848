//! Prometheus metrics, the one count of every event: `/metrics` encodes them, `/status` reads them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use crate::util::lock;

/// What `/metrics` answers with.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) action: &'static str,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FamilyLabels {
    pub(crate) family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    target: String,
    outcome: &'static str,
}

/// The coordination counters and gauge; clones share their values, so the coordinator counts
/// into the same cells the registry encodes.
#[derive(Clone, Default)]
pub(crate) struct CoordinationMetrics {
    pub(crate) store_up: Gauge,
    pub(crate) records_read: Counter,
    pub(crate) records_written: Counter,
    pub(crate) leases_taken: Counter,
    pub(crate) fallbacks: Counter,
}

/// Counters by action and outcome that also remember which label sets they have seen, so
/// `/status` can read them back (the family itself cannot be iterated).
#[derive(Clone, Default)]
pub(crate) struct CallCounters {
    family: Family<CallLabels, Counter>,
    seen: std::sync::Arc<Mutex<Vec<CallLabels>>>,
}

impl CallCounters {
    pub(crate) fn inc(&self, action: &'static str, outcome: &'static str) {
        let labels = CallLabels { action, outcome };
        self.family.get_or_create(&labels).inc();
        let mut seen = lock(&self.seen);
        if !seen.contains(&labels) {
            seen.push(labels);
        }
    }

    /// Every label set seen, with its count.
    pub(crate) fn read(&self) -> Vec<(CallLabels, u64)> {
        let seen = lock(&self.seen).clone();
        seen.into_iter()
            .map(|labels| {
                let count = self.family.get_or_create(&labels).get();
                (labels, count)
            })
            .collect()
    }
}

/// The gateway's part of `/status`: the same cells as its metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct GatewayStatus {
    pub(crate) listen: String,
    /// Calls by outcome (`forwarded`, `held_then_sent`, `refused`, `outcome_unknown`,
    /// `caller_refused`).
    pub(crate) calls: BTreeMap<&'static str, u64>,
    /// Calls by action, then outcome.
    pub(crate) calls_by_action: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Calls waiting in the gateway now.
    pub(crate) held_calls: i64,
    /// Calls that were held, and their hold time in all.
    pub(crate) holds: u64,
    pub(crate) hold_seconds_total: f64,
}

/// The event counters `/status` shows, read from the metrics themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counters {
    pub(crate) detections: u64,
    pub(crate) detection_failures: u64,
    pub(crate) ip_changes: u64,
    pub(crate) verifications: u64,
    pub(crate) verification_failures: u64,
    pub(crate) rechecks: u64,
    pub(crate) api_calls: u64,
}

/// Every metric of the process, registered once under the `sendsms_whitelister` prefix. The
/// handles are public so each part counts its own events; the registry holds clones that share
/// their values.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) ready: Gauge,
    pub(crate) ip_changes: Counter,
    pub(crate) detections: Counter,
    pub(crate) detection_failures: Counter,
    pub(crate) detection_seconds: Histogram,
    pub(crate) verifications: Counter,
    pub(crate) verification_failures: Counter,
    pub(crate) verification_seconds: Histogram,
    pub(crate) rechecks: Counter,
    api_calls: CallCounters,
    /// Gateway calls by action and outcome.
    pub(crate) gateway_calls: CallCounters,
    /// Gateway calls waiting now (for readiness, after a refusal, for the budget).
    pub(crate) gateway_held: Gauge,
    /// How long each held gateway call was held in all.
    gateway_hold_seconds: Histogram,
    /// The histogram's count and sum, which it does not give back, for `/status`.
    gateway_holds: Counter,
    gateway_hold_micros: Counter,
    pub(crate) whitelist_size: Gauge,
    last_success: Family<FamilyLabels, Gauge>,
    /// Seconds since each family's last verified round, set when the metrics are encoded.
    verified_age: Family<FamilyLabels, Gauge>,
    notify_deliveries: Family<DeliveryLabels, Counter>,
    notify_target_up: Family<TargetLabels, Gauge>,
    pub(crate) heartbeat_failures: Counter,
    /// Present only when coordination is on, so an alert on the store never fires without one.
    pub(crate) coordination: Option<CoordinationMetrics>,
}

impl Metrics {
    /// `coordination_mode` names the store in use (`file`, `redis`), or None without one.
    pub(crate) fn new(coordination_mode: Option<&'static str>) -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("sendsms_whitelister"),
            ready: Gauge::default(),
            ip_changes: Counter::default(),
            detections: Counter::default(),
            detection_failures: Counter::default(),
            detection_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            verifications: Counter::default(),
            verification_failures: Counter::default(),
            verification_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            rechecks: Counter::default(),
            api_calls: CallCounters::default(),
            gateway_calls: CallCounters::default(),
            gateway_held: Gauge::default(),
            gateway_hold_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            gateway_holds: Counter::default(),
            gateway_hold_micros: Counter::default(),
            whitelist_size: Gauge::default(),
            last_success: Family::default(),
            verified_age: Family::default(),
            notify_deliveries: Family::default(),
            notify_target_up: Family::default(),
            heartbeat_failures: Counter::default(),
            coordination: coordination_mode.map(|_| CoordinationMetrics::default()),
        };
        metrics.register(coordination_mode);
        metrics
    }

    fn register(&mut self, coordination_mode: Option<&'static str>) {
        let registry = &mut self.registry;
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("SENDSMS_WHITELISTER_COMMIT"),
                target: env!("SENDSMS_WHITELISTER_TARGET"),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version, the commit and the target it was built for",
            build,
        );
        registry.register(
            "ready",
            "1 when every egress IP is whitelisted and verified",
            self.ready.clone(),
        );
        for (name, help, counter) in [
            ("ip_changes", "Egress IP changes seen", &self.ip_changes),
            ("detections", "Detection rounds", &self.detections),
            (
                "detection_failures",
                "Detection rounds without a quorum",
                &self.detection_failures,
            ),
            (
                "verifications",
                "Egress IPs proven whitelisted (by this member or a fleet record)",
                &self.verifications,
            ),
            (
                "verification_failures",
                "Whitelist-and-verify rounds that failed",
                &self.verification_failures,
            ),
            (
                "rechecks",
                "Forced rounds run (POST /recheck, or a gateway call the API refused)",
                &self.rechecks,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "api_calls",
            "sendSMS API calls by action and outcome",
            self.api_calls.family.clone(),
        );
        registry.register(
            "gateway_calls",
            "Calls the gateway answered, by action and outcome (forwarded, held_then_sent, refused, outcome_unknown, caller_refused)",
            self.gateway_calls.family.clone(),
        );
        registry.register(
            "gateway_held_calls",
            "Gateway calls held now, waiting for a verified address or the API budget",
            self.gateway_held.clone(),
        );
        registry.register_with_unit(
            "gateway_hold_duration",
            "How long a held gateway call was held in all",
            Unit::Seconds,
            self.gateway_hold_seconds.clone(),
        );
        registry.register_with_unit(
            "detection_duration",
            "Time to settle the egress IP",
            Unit::Seconds,
            self.detection_seconds.clone(),
        );
        registry.register_with_unit(
            "verification_duration",
            "Time from a detected change to a verified whitelist entry",
            Unit::Seconds,
            self.verification_seconds.clone(),
        );
        registry.register(
            "whitelist_size",
            "Entries on the key's whitelist as last seen",
            self.whitelist_size.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful verification per family",
            self.last_success.clone(),
        );
        registry.register_with_unit(
            "verified_age",
            "Time since the last verified round per family",
            Unit::Seconds,
            self.verified_age.clone(),
        );
        registry.register(
            "notify_deliveries",
            "Notifications by target (scheme and host only) and outcome: delivered, failed, dropped",
            self.notify_deliveries.clone(),
        );
        registry.register(
            "notify_target_up",
            "1 while the notification target accepts events; 0 after one failed every attempt",
            self.notify_target_up.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Heartbeat pings that were not accepted",
            self.heartbeat_failures.clone(),
        );
        let (Some(mode), Some(coordination)) = (coordination_mode, &self.coordination) else {
            return;
        };
        let modes = Family::<ModeLabels, Gauge>::default();
        modes.get_or_create(&ModeLabels { mode }).set(1);
        registry.register(
            "coordination_mode",
            "1 for the SENDSMS_COORDINATION mode in use (file or redis)",
            modes,
        );
        registry.register(
            "coordination_store_up",
            "1 while the coordination store answers; 0 while this member acts alone",
            coordination.store_up.clone(),
        );
        for (name, help, counter) in [
            (
                "coordination_records_read",
                "Fresh verified records of other members that made this one ready without an API call",
                &coordination.records_read,
            ),
            (
                "coordination_records_written",
                "Verified records this member shared with the fleet",
                &coordination.records_written,
            ),
            (
                "coordination_leases",
                "Whitelist leases this member took",
                &coordination.leases_taken,
            ),
            (
                "coordination_fallbacks",
                "Times this member whitelisted alone because the store failed",
                &coordination.fallbacks,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }

    /// A family was verified at `unix_seconds` (by this member or a fleet record).
    pub(crate) fn verified(&self, family: &'static str, unix_seconds: u64) {
        self.last_success
            .get_or_create(&FamilyLabels { family })
            .set(i64::try_from(unix_seconds).unwrap_or(i64::MAX));
    }

    /// Counts one notification to `target` by how it ended.
    pub(crate) fn count_notification(&self, target: &str, outcome: &'static str) {
        self.notify_deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Whether `target` accepts events.
    pub(crate) fn notify_target_up(&self, target: &str, up: bool) {
        self.notify_target_up
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts one sendSMS call by its action and how it ended.
    pub(crate) fn count_api_call(&self, action: &'static str, outcome: &'static str) {
        self.api_calls.inc(action, outcome);
    }

    /// One gateway call was held this long in all.
    pub(crate) fn observe_hold(&self, held: std::time::Duration) {
        self.gateway_hold_seconds.observe(held.as_secs_f64());
        self.gateway_holds.inc();
        self.gateway_hold_micros
            .inc_by(u64::try_from(held.as_micros()).unwrap_or(u64::MAX));
    }

    /// The gateway's part of `/status`, from the same cells `/metrics` encodes.
    pub(crate) fn gateway_status(&self, listen: SocketAddr) -> GatewayStatus {
        let mut status = GatewayStatus {
            listen: listen.to_string(),
            held_calls: self.gateway_held.get(),
            holds: self.gateway_holds.get(),
            hold_seconds_total: self.gateway_hold_micros.get() as f64 / 1e6,
            ..GatewayStatus::default()
        };
        for (labels, count) in self.gateway_calls.read() {
            *status.calls.entry(labels.outcome).or_default() += count;
            *status
                .calls_by_action
                .entry(labels.action)
                .or_default()
                .entry(labels.outcome)
                .or_default() += count;
        }
        status
    }

    /// The counters `/status` shows, from the same cells `/metrics` encodes.
    pub(crate) fn counters(&self) -> Counters {
        let api_calls = self.api_calls.read().iter().map(|(_, count)| count).sum();
        Counters {
            detections: self.detections.get(),
            detection_failures: self.detection_failures.get(),
            ip_changes: self.ip_changes.get(),
            verifications: self.verifications.get(),
            verification_failures: self.verification_failures.get(),
            rechecks: self.rechecks.get(),
            api_calls,
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let now = i64::try_from(crate::util::clock::unix_now_ms() / 1000).unwrap_or(i64::MAX);
        for family in ["ipv4", "ipv6"] {
            let labels = FamilyLabels { family };
            // Only families verified at least once have an age; reading creates no series.
            let at = self.last_success.get(&labels).map(|g| g.get());
            if let Some(at) = at {
                self.verified_age
                    .get_or_create(&labels)
                    .set(now.saturating_sub(at).max(0));
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters_are_the_metrics() {
        let metrics = Metrics::new(None);
        metrics.count_api_call("token_list_ips", "success");
        metrics.count_api_call("token_list_ips", "success");
        metrics.count_api_call("token_add_ip", "auth_refused");
        metrics.ip_changes.inc();
        let counters = metrics.counters();
        assert_eq!((counters.api_calls, counters.ip_changes), (3, 1));
        let text = metrics.encode();
        assert!(
            text.contains(
                "sendsms_whitelister_api_calls_total{action=\"token_list_ips\",outcome=\"success\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn coordination_metrics_exist_only_with_coordination() {
        let alone = Metrics::new(None).encode();
        assert!(!alone.contains("coordination"), "{alone}");
        let fleet = Metrics::new(Some("redis"));
        fleet
            .coordination
            .as_ref()
            .expect("coordination metrics")
            .store_up
            .set(1);
        let text = fleet.encode();
        assert!(
            text.contains("sendsms_whitelister_coordination_mode{mode=\"redis\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sendsms_whitelister_coordination_store_up 1"),
            "{text}"
        );
    }

    /// The metric names a registry exports: from the `# TYPE` lines, with a counter's `_total`
    /// (OpenMetrics names the family without it).
    fn exported(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| {
                let mut words = rest.split_whitespace();
                let (name, kind) = (words.next()?, words.next()?);
                Some(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                })
            })
            .collect()
    }

    #[test]
    fn the_charts_metric_list_is_what_metrics_exports() {
        let list = include_str!("../helm/metrics.txt");
        let mut always = std::collections::BTreeSet::new();
        let mut coordinated = std::collections::BTreeSet::new();
        for line in list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, _kind, _labels, when] = words[..] else {
                panic!("helm/metrics.txt: NAME TYPE LABELS WHEN expected: {line}");
            };
            match when {
                "always" => always.insert(name.to_owned()),
                "coordination" => coordinated.insert(name.to_owned()),
                other => panic!("helm/metrics.txt: unknown WHEN {other}: {line}"),
            };
        }
        // A labelled family shows in the text once it has a series: give each one.
        let populated = |metrics: Metrics| {
            metrics.count_api_call("token_list_ips", "success");
            metrics.gateway_calls.inc("message_send", "forwarded");
            metrics.count_notification("https://hooks.example.net", "delivered");
            metrics.notify_target_up("https://hooks.example.net", true);
            metrics.verified("ipv4", 1);
            metrics.encode()
        };
        assert_eq!(
            exported(&populated(Metrics::new(None))),
            always,
            "helm/metrics.txt (WHEN always) against /metrics without coordination"
        );
        let with_store = exported(&populated(Metrics::new(Some("file"))));
        let expected: std::collections::BTreeSet<String> =
            always.union(&coordinated).cloned().collect();
        assert_eq!(with_store, expected, "with coordination");
    }
}
