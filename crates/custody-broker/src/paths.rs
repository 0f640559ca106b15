//! The runtime directory: socket and per-lease ephemeral files.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Socket file name inside the runtime directory.
pub const SOCKET_FILE: &str = "broker.sock";

/// `$CUSTODY_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/custody`, else
/// `/tmp/custody-$UID`. Computable from the uid alone, so a client started
/// with a cleared environment (Codex starts MCP servers that way) still finds
/// the broker.
pub fn runtime_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTODY_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("custody");
    }
    PathBuf::from(format!(
        "/tmp/custody-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// The broker socket's path.
pub fn socket_path() -> PathBuf {
    runtime_dir().join(SOCKET_FILE)
}

/// Creates (or checks) a private directory: ours, mode 0700. A directory
/// owned by someone else (e.g. planted in /tmp) is refused, never used.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != rustix::process::getuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} belongs to another user; refusing to use it",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
