//! `custody lock`: forget the vault key, kill running leases.

use std::process::ExitCode;

use custody_broker::protocol::Request;
use serde_json::json;

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct LockArgs {}

pub fn lock(g: &Global, _s: &mut SecretInput, _a: LockArgs) -> anyhow::Result<ExitCode> {
    let Some(mut client) = access::broker()? else {
        if g.json {
            output::json(&json!({"locked": true, "running": false}))?;
        } else {
            println!("The broker is not running: nothing is unlocked.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let v = client.call(Request::Lock).map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else {
        println!(
            "Locked; {} running lease(s) killed.",
            v["leases_killed"].as_u64().unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
