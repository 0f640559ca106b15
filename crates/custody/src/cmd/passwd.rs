//! `custody passwd`: change the vault passphrase.

use std::process::ExitCode;

use serde_json::json;

use super::Global;
use crate::access;
use crate::input::{self, SecretInput};

#[derive(Debug, clap::Args)]
pub struct PasswdArgs {}

pub fn run(g: &Global, secrets: &mut SecretInput, _a: PasswdArgs) -> anyhow::Result<ExitCode> {
    let mut vault = access::open_vault_asking(g, secrets, "Current passphrase: ")?;
    // With --passphrase-stdin: line 1 is the current passphrase, line 2 the new one.
    let new = if g.passphrase_stdin {
        secrets.line("new passphrase")?
    } else {
        input::prompt_new(
            "New vault passphrase: ",
            "Repeat the new passphrase: ",
            "--passphrase-stdin",
            input::check_new_passphrase,
        )?
    };
    input::check_new_passphrase(&new)?;
    let params = vault.kdf_params()?;
    vault.change_passphrase(&new, params)?;
    if g.json {
        crate::output::json(&json!({ "changed": true }))?;
    } else {
        println!("Passphrase changed (the vault key and every value are unchanged).");
    }
    Ok(ExitCode::SUCCESS)
}
