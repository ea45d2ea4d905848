//! `check`: read-only; is this host's egress IP whitelisted, and does the key work from here?

use std::sync::Arc;

use super::{Error, Outcome};
use crate::config::Config;
use crate::detect::Detector;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::reconcile::{CheckReport, NOT_IP_LOCKED};

/// One report per family; nothing is ever written.
pub(crate) async fn inspect(config: &Config) -> Result<Vec<CheckReport>, Error> {
    let metrics = Arc::new(Metrics::new(None));
    let flow = Flow::new(&config.flow, metrics)?;
    let detector = Detector::new(&config.detection);
    let mut reports = Vec::new();
    for &family in &config.detection.families {
        let ip = detector.detect(family).await?.logged(family);
        reports.push(flow.check(ip).await?);
    }
    Ok(reports)
}

pub(crate) async fn run(config: &Config) -> Result<Outcome, Error> {
    let reports = inspect(config).await?;
    Ok(print(&reports))
}

fn print(reports: &[CheckReport]) -> Outcome {
    let mut outcome = Outcome::Success;
    for report in reports {
        say!("egress IP: {}", report.ip);
        match (&report.whitelist, &report.refusal) {
            (Some(whitelist), _) => {
                say!("key works from this host: yes");
                say!(
                    "listed: {}",
                    if whitelist.covers(report.ip) {
                        "yes"
                    } else {
                        "no"
                    }
                );
                say!("whitelist: {whitelist}");
                if report.not_ip_locked() {
                    say!("not IP-locked: {NOT_IP_LOCKED}");
                }
            }
            (None, refusal) => {
                say!(
                    "key works from this host: no ({})",
                    refusal.as_deref().unwrap_or("refused")
                );
                say!("listed: no");
                say!("whitelist: unknown (the key is refused from here, so it cannot read it)");
            }
        }
        if !report.usable() {
            outcome = Outcome::NotUsable;
        }
    }
    outcome
}
