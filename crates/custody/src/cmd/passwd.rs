//! `custody passwd`: change the vault passphrase.

use std::process::ExitCode;

use custody_core::secret::Passphrase;
use serde_json::json;

use custody_core::audit::{AuditEvent, VaultAction};
use custody_core::vault::VaultError;
use custody_core::vault::audited;

use super::Global;
use crate::access;
use crate::input::{self, SecretInput};

#[derive(Debug, clap::Args)]
pub struct PasswdArgs {}

pub fn run(g: &Global, secrets: &mut SecretInput, _a: PasswdArgs) -> anyhow::Result<ExitCode> {
    let mut vault = access::open_vault_asking(g, secrets, "Current passphrase: ")?;
    // Recorded like every vault change (G6); before asking for the new one.
    let mut chain = access::open_audit(&vault)?;
    // With --passphrase-stdin: line 1 is the current passphrase, line 2 the new one.
    let new = if g.passphrase_stdin {
        Passphrase::new(secrets.line("new passphrase")?)
    } else {
        Passphrase::new(input::prompt_new(
            "New vault passphrase: ",
            "Repeat the new passphrase: ",
            "--passphrase-stdin",
            input::check_new_passphrase,
        )?)
    };
    input::check_new_passphrase(new.expose())?;
    let params = vault.kdf_params()?;
    let event = AuditEvent::VaultChange {
        action: VaultAction::ChangePassphrase,
        environment: String::new(),
        variable: None,
        by: Some(access::DIRECT_BY.to_owned()),
    };
    let reason = |e: &VaultError| custody_broker::error::vault_code(e).to_owned();
    audited::change(&mut vault, &mut chain, event, reason, |v| {
        v.change_passphrase(new.expose(), params)
    })
    .map_err(|e| match e {
        audited::ChangeError::Refused { error, .. } => anyhow::Error::from(error),
        audited::ChangeError::Audit(e) => {
            anyhow::anyhow!("the audit log cannot be written ({e}); the passphrase is unchanged")
        }
        audited::ChangeError::Head(e) => e.into(),
    })?;
    if g.json {
        crate::output::json(&json!({ "changed": true }))?;
    } else {
        println!("Passphrase changed (the vault key and every value are unchanged).");
    }
    Ok(ExitCode::SUCCESS)
}
