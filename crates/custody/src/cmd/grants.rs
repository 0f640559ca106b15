//! `custody grants`, `custody leases`, `custody revoke`.

use std::process::ExitCode;

use anyhow::bail;
use custody_broker::protocol::{LeaseListing, Request, RevokeTarget};

use super::{Global, argv_line, argv_words};
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct GrantsArgs {}

#[derive(Debug, clap::Args)]
pub struct LeasesArgs {}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// A grant (g-…) or lease (l-…) id.
    id: Option<String>,
    /// Revoke every grant and kill every lease.
    #[arg(long, conflicts_with = "id")]
    all: bool,
}

pub fn grants(g: &Global, _s: &mut SecretInput, _a: GrantsArgs) -> anyhow::Result<ExitCode> {
    let v = access::require_broker()?
        .call(Request::Grants)
        .map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else if v.as_array().is_none_or(Vec::is_empty) {
        println!("No grants in force.");
    } else {
        for gr in v.as_array().into_iter().flatten() {
            println!(
                "{}  {}  until {}  uses left {}\n    {} (in {})",
                gr["grant_id"].as_str().unwrap_or_default(),
                output::field(gr["requester"].as_str().unwrap_or_default()),
                gr["expires_at"].as_str().unwrap_or_default(),
                gr["uses_left"]
                    .as_u64()
                    .map_or("∞".to_owned(), |n| n.to_string()),
                argv_line(&gr["argv"]),
                output::field(gr["cwd"].as_str().unwrap_or_default())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

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
    let v = access::require_broker()?
        .call(Request::Revoke(target))
        .map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else {
        let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
        println!(
            "Revoked {} grant(s); killed {} lease(s).",
            n("revoked_grants"),
            n("revoked_leases")
        );
    }
    Ok(ExitCode::SUCCESS)
}
