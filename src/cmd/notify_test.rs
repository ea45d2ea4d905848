//! `notify-test`: one test event to every notification target; exit 0 only if all accepted it.

use super::{Error, Outcome};
use crate::config::{notify_from_vars, utf8_env};
use crate::{logging, notify};

pub(crate) async fn run() -> Result<Outcome, Error> {
    let settings = notify_from_vars(utf8_env())?;
    logging::init(None, "warn");
    if settings.targets.is_empty() {
        return Err(Error::NotReady(
            "no notification target: set SENDSMS_NOTIFY_URLS (or SENDSMS_NOTIFY_URLS_FILE)".into(),
        ));
    }
    let mut outcome = Outcome::Success;
    for (target, result) in notify::test_all(&settings).await {
        match result {
            Ok(()) => say!("{target}: accepted"),
            Err(why) => {
                say!("{target}: not accepted ({why})");
                outcome = Outcome::NotUsable;
            }
        }
    }
    Ok(outcome)
}
