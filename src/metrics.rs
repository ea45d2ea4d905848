//! Prometheus metrics, the one count of every event: `/metrics` encodes them, `/status` reads them.

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
    api_calls: Family<CallLabels, Counter>,
    /// The label sets `api_calls` has seen, so `/status` can add them up.
    api_call_labels: Mutex<Vec<CallLabels>>,
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
            api_calls: Family::default(),
            api_call_labels: Mutex::new(Vec::new()),
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
            ("rechecks", "POST /recheck rounds run", &self.rechecks),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "api_calls",
            "sendSMS API calls by action and outcome",
            self.api_calls.clone(),
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
        let labels = CallLabels { action, outcome };
        self.api_calls.get_or_create(&labels).inc();
        let mut seen = lock(&self.api_call_labels);
        if !seen.contains(&labels) {
            seen.push(labels);
        }
    }

    /// The counters `/status` shows, from the same cells `/metrics` encodes.
    pub(crate) fn counters(&self) -> Counters {
        let api_calls = lock(&self.api_call_labels)
            .iter()
            .map(|labels| self.api_calls.get_or_create(labels).get())
            .sum();
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
}
