//! Prometheus metrics: readiness, IP changes, API calls by action and outcome, durations, whitelist size.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::coord::CoordinationMetrics;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub action: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub ready: Gauge,
    pub ip_changes: Counter,
    pub api_calls: Family<CallLabels, Counter>,
    pub detection_failures: Counter,
    pub detection_seconds: Histogram,
    pub verification_seconds: Histogram,
    pub whitelist_size: Gauge,
    pub last_success: Family<FamilyLabels, Gauge>,
    pub coordination_mode: Family<ModeLabels, Gauge>,
    pub coordination: CoordinationMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Registry::with_prefix("sendsms_whitelister"),
            ready: Gauge::default(),
            ip_changes: Counter::default(),
            api_calls: Family::default(),
            detection_failures: Counter::default(),
            detection_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            verification_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            whitelist_size: Gauge::default(),
            last_success: Family::default(),
            coordination_mode: Family::default(),
            coordination: CoordinationMetrics::default(),
        };
        metrics.registered()
    }
}

impl Metrics {
    /// Every metric goes into the registry as a clone: they share their values.
    fn registered(mut self) -> Self {
        let registry = &mut self.registry;
        registry.register(
            "ready",
            "1 when every egress IP is whitelisted and verified",
            self.ready.clone(),
        );
        registry.register(
            "ip_changes",
            "Egress IP changes seen",
            self.ip_changes.clone(),
        );
        registry.register(
            "api_calls",
            "sendSMS API calls by action and outcome",
            self.api_calls.clone(),
        );
        registry.register(
            "detection_failures",
            "Detection rounds without a quorum",
            self.detection_failures.clone(),
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
        registry.register(
            "coordination_mode",
            "1 for the SENDSMS_COORDINATION mode in use (none, file or redis)",
            self.coordination_mode.clone(),
        );
        let coordination = &self.coordination;
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
        self
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
