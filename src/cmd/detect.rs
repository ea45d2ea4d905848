//! `detect`: read-only, no credentials; the egress address per family and which operators agreed.

use super::{Error, Outcome};
use crate::config::{detection_from_vars, utf8_env};
use crate::detect::Detector;
use crate::logging;

pub(crate) async fn run() -> Result<Outcome, Error> {
    let settings = detection_from_vars(utf8_env())?;
    logging::init(None, "warn");
    let detector = Detector::new(&settings);
    for &family in &settings.families {
        let found = detector.detect(family).await?;
        say!(
            "{family} {} (agreed: {}; {} ms)",
            found.ip,
            found.operators.join(", "),
            found.elapsed.as_millis()
        );
    }
    Ok(Outcome::Success)
}
