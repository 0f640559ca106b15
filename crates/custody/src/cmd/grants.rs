//! `custody grants`: the grants that let runs go without asking again.

use std::process::ExitCode;

use custody_broker::protocol::Request;

use super::{Global, argv_line};
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct GrantsArgs {}

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
