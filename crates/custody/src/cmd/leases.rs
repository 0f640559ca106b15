//! `custody leases`: running leases and the credentials still being revoked.

use std::process::ExitCode;

use custody_broker::protocol::{LeaseListing, Request};

use super::{Global, argv_words};
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct LeasesArgs {}

pub fn leases(g: &Global, _s: &mut SecretInput, _a: LeasesArgs) -> anyhow::Result<ExitCode> {
    let listings: Vec<LeaseListing> = access::require_broker()?
        .call_as(Request::Leases)
        .map_err(broker_err)?;
    if g.json {
        output::json(&listings)?;
        return Ok(ExitCode::SUCCESS);
    }
    let credentials: Vec<_> = listings
        .iter()
        .flat_map(|l| l.credentials.iter().cloned())
        .collect();
    output::credentials(&credentials);
    if listings.is_empty() {
        println!("No running leases.");
    }
    // Ended leases are there for their credentials, listed above.
    for l in &listings {
        if let Some(r) = &l.running {
            println!(
                "{}  pid {}  until {}  {}\n    {}",
                l.lease_id,
                r.pid,
                r.deadline,
                output::field(&r.requester),
                argv_words(&r.argv)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
