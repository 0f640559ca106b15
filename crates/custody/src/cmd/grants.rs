//! `custody grants`: the grants that let runs go without asking again.

use std::process::ExitCode;

use custody_broker::protocol::{GrantInfo, Request};

use super::{Global, argv_words};
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct GrantsArgs {}

pub fn grants(g: &Global, _s: &mut SecretInput, _a: GrantsArgs) -> anyhow::Result<ExitCode> {
    let grants: Vec<GrantInfo> = access::require_broker()?
        .call_as(Request::Grants)
        .map_err(broker_err)?;
    if g.json {
        output::json(&grants)?;
    } else if grants.is_empty() {
        println!("No grants in force.");
    } else {
        for gr in &grants {
            println!(
                "{}  {}  until {}  uses left {}\n    {} (in {})",
                gr.grant_id,
                output::field(&gr.requester),
                gr.expires_at,
                gr.uses_left.map_or("∞".to_owned(), |n| n.to_string()),
                argv_words(&gr.argv),
                output::field(&gr.cwd)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
