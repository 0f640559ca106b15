//! `custody revoke`: end a grant or a lease, or all of them.

use std::process::ExitCode;

use anyhow::bail;
use custody_broker::protocol::{Request, RevokeTarget, Revoked};

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// A grant (g-…) or lease (l-…) id.
    id: Option<String>,
    /// Revoke every grant and kill every lease.
    #[arg(long, conflicts_with = "id")]
    all: bool,
}

pub fn revoke(g: &Global, _s: &mut SecretInput, a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let target = match (a.all, a.id) {
        (true, _) => RevokeTarget::All,
        (false, Some(id)) if id.starts_with("g-") => RevokeTarget::Grant(id),
        (false, Some(id)) if id.starts_with("l-") => RevokeTarget::Lease(id),
        (false, Some(id)) => bail!(
            "'{id}' is neither a grant (g-…) nor a lease (l-…): see `custody grants` and `custody leases`"
        ),
        (false, None) => bail!("name a grant or lease id, or pass --all"),
    };
    let r: Revoked = access::require_broker()?
        .call_as(Request::Revoke(target))
        .map_err(broker_err)?;
    if g.json {
        output::json(&r)?;
    } else {
        println!(
            "Revoked {} grant(s); killed {} lease(s).",
            r.revoked_grants.len(),
            r.revoked_leases.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
