//! `emulator`: serve the offline sendSMS API stand-in until it stops.

use clap::ArgMatches;

use super::{Error, Outcome};
use crate::emulator::{self, args::Args};
use crate::logging;

pub(crate) async fn run(args: Args, matches: &ArgMatches) -> Result<Outcome, Error> {
    logging::init(None, "info");
    let (listen, dns_listen) = (args.listen, args.dns_listen);
    let running = emulator::start(listen, dns_listen, args.settings(matches))
        .await
        .map_err(|source| Error::Bind {
            what: match dns_listen {
                Some(dns) => format!("--listen {listen} / --dns-listen {dns}"),
                None => format!("--listen {listen}"),
            },
            source,
        })?;
    say!("listening on http://{}", running.addr);
    if let Some(dns) = running.dns_addr {
        say!("dns listening on udp://{dns}");
    }
    running.wait().await.map_err(|source| Error::Startup {
        what: "the emulator stopped",
        source,
    })?;
    Ok(Outcome::Success)
}
