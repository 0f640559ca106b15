//! How a command reaches the vault. Until the broker daemon exists, commands
//! open the vault file directly with the passphrase; this is the one place
//! that does it, so the broker can take it over.

use std::path::PathBuf;

use anyhow::Context;
use custody_core::paths;
use custody_core::vault::Vault;

use crate::cmd::Global;
use crate::input::{self, SecretInput};

/// The vault file this invocation uses.
pub fn vault_path() -> anyhow::Result<PathBuf> {
    paths::home_dir()
        .map(|h| h.join(paths::VAULT_FILE))
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")
}

/// Opens and unlocks the vault, asking for the passphrase on the terminal or
/// reading it from the first line of stdin (`--passphrase-stdin`).
pub fn open_vault(global: &Global, secrets: &mut SecretInput) -> anyhow::Result<Vault> {
    let path = vault_path()?;
    if !path.exists() {
        // Say so before asking for a passphrase that cannot help.
        return Err(custody_core::vault::VaultError::NotFound { path }.into());
    }
    let passphrase = read_passphrase(global, secrets)?;
    Ok(Vault::unlock(&path, &passphrase)?)
}

/// The current passphrase, from stdin or the terminal.
pub fn read_passphrase(
    global: &Global,
    secrets: &mut SecretInput,
) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    if global.passphrase_stdin {
        secrets.line("passphrase")
    } else {
        input::prompt_hidden("Vault passphrase: ", "--passphrase-stdin")
    }
}
