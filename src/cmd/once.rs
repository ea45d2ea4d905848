//! `once`: every configured family's egress IP whitelisted and verified, or the first failure.

use std::sync::Arc;

use super::{Error, Outcome};
use crate::config::Config;
use crate::detect::Detector;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::reconcile::{NOT_IP_LOCKED, Proof, Source};

/// The proofs, one per family. Coordinated, it takes a fleet member's fresh record, or the
/// lease, as `run` does (init containers of a fleet).
pub(crate) async fn prove(config: &Config) -> Result<Vec<Proof>, Error> {
    let metrics = Arc::new(Metrics::new(config.flow.coordination.mode.name()));
    let flow = Flow::new(&config.flow, metrics)?;
    let detector = Detector::new(&config.detection);
    let mut proofs = Vec::new();
    for &family in &config.detection.families {
        let detection = async {
            detector
                .detect(family)
                .await
                .map(|found| found.logged(family))
        };
        proofs.push(flow.ensure_detected(family, detection).await??);
    }
    Ok(proofs)
}

pub(crate) async fn run(config: &Config) -> Result<Outcome, Error> {
    let proofs = prove(config).await?;
    if proofs.iter().any(|p| p.source == Source::NotIpLocked) {
        tracing::warn!("{NOT_IP_LOCKED}");
    }
    for proof in proofs {
        say!("ok: {proof}");
    }
    Ok(Outcome::Success)
}
