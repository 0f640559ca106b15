//! Where custody keeps things: `$CUSTODY_HOME` for the vault and policy,
//! `$CUSTODY_RUNTIME_DIR` for the socket and ephemeral files.

use std::path::PathBuf;

/// File name of the vault inside the home directory.
pub const VAULT_FILE: &str = "vault.db";

/// The data directory: `$CUSTODY_HOME`, else `$XDG_DATA_HOME/custody`, else
/// `$HOME/.local/share/custody`. `None` when none of these is set.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(p) = non_empty_env("CUSTODY_HOME") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = non_empty_env("XDG_DATA_HOME") {
        return Some(PathBuf::from(p).join("custody"));
    }
    non_empty_env("HOME").map(|h| PathBuf::from(h).join(".local/share/custody"))
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}
