//! `custody init`: create the vault.

use std::process::ExitCode;

use anyhow::Context;
use custody_core::crypto::KdfParams;
use custody_core::secret::{Passphrase, Pin};
use custody_core::vault::{MIN_PIN_LEN, Vault};
use serde_json::json;

use super::Global;
use crate::access;
use crate::input::{self, SecretInput};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Read the approval PIN from the next line of stdin.
    #[arg(long)]
    pin_stdin: bool,
    /// Use deliberately weak key derivation (tests and throwaway demo vaults
    /// only: a copied vault file becomes cheap to brute-force).
    #[arg(long)]
    insecure_fast_kdf: bool,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: InitArgs) -> anyhow::Result<ExitCode> {
    let path = access::vault_path()?;
    if path.exists() {
        return Err(custody_core::vault::VaultError::AlreadyExists { path }.into());
    }
    let passphrase = if g.passphrase_stdin {
        secrets.passphrase()?
    } else {
        Passphrase::new(input::prompt_new(
            "New vault passphrase: ",
            "Repeat the passphrase: ",
            "--passphrase-stdin",
            input::check_new_passphrase,
        )?)
    };
    input::check_new_passphrase(passphrase.expose())?;
    let pin = if a.pin_stdin {
        secrets.pin()?
    } else {
        Pin::new(input::prompt_new(
            &format!(
                "Approval PIN (at least {MIN_PIN_LEN} characters, asked for every approval): "
            ),
            "Repeat the PIN: ",
            "--pin-stdin",
            input::check_new_pin,
        )?)
    };
    input::check_new_pin(pin.expose())?;
    let params = if a.insecure_fast_kdf {
        KdfParams::INSECURE_FAST
    } else {
        KdfParams::DEFAULT
    };
    let vault = Vault::create(&path, passphrase.expose(), pin.expose(), params)
        .with_context(|| format!("creating the vault at {}", path.display()))?;
    if g.json {
        crate::output::json(&json!({
            "vault": vault.path(),
            "vault_id": vault.id_hex(),
            "kdf": params,
        }))?;
    } else {
        println!("Created vault {}", vault.path().display());
        println!(
            "Next: `custody unlock` (starts the broker), then `custody env create NAME` and `custody set NAME VAR`."
        );
    }
    Ok(ExitCode::SUCCESS)
}
