//! `custody unset ENV VAR`: remove a variable.

use std::process::ExitCode;

use serde_json::json;

use super::{Global, env_name, var_name};
use crate::access;
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct UnsetArgs {
    /// The environment.
    env: String,
    /// The variable.
    var: String,
    /// Read the approval PIN from a line of stdin (after the passphrase
    /// line with `--passphrase-stdin`; before a value read from stdin).
    #[arg(long)]
    pin_stdin: bool,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: UnsetArgs) -> anyhow::Result<ExitCode> {
    let env = env_name(&a.env)?;
    let var = var_name(&a.var)?;
    let mut vault = access::open_to_change(g, secrets, a.pin_stdin)?;
    vault.unset_variable(&env, &var)?;
    if g.json {
        output::json(&json!({ "environment": env.as_str(), "removed": var.as_str() }))?;
    } else {
        println!("Removed {env}/{var}");
    }
    Ok(ExitCode::SUCCESS)
}
