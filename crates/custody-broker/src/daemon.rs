//! `custody daemon`: bind the socket, reap, serve until told to stop.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::broker::{Broker, BrokerConfig};
use crate::paths::{SOCKET_FILE, ensure_private_dir};

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another broker already serves this runtime directory.
    #[error("a custody broker is already running on {0}")]
    AlreadyRunning(String),
    /// The runtime directory or socket could not be set up.
    #[error("cannot set up {path}: {source}")]
    Io {
        /// What.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the broker socket (0600 in a 0700 directory). A stale socket left
/// by a dead broker is replaced; a live one is an error.
pub fn bind(cfg: &BrokerConfig) -> Result<UnixListener, DaemonError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| DaemonError::Io { path, source }
    };
    ensure_private_dir(&cfg.runtime_dir).map_err(io(&cfg.runtime_dir))?;
    let sock = cfg.runtime_dir.join(SOCKET_FILE);
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Err(DaemonError::AlreadyRunning(sock.display().to_string()));
        }
        std::fs::remove_file(&sock).map_err(io(&sock))?;
    }
    let listener = UnixListener::bind(&sock).map_err(io(&sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(io(&sock))?;
    Ok(listener)
}

/// Binds the socket in place of whatever is at its path: a live broker
/// (locked: the human's `custody unlock` starts a fresh, unlocked one
/// rather than send a passphrase to a socket it cannot verify) or another
/// process that took the path. The new socket is bound under a temporary
/// name in the private runtime directory and renamed over the path, so the
/// path always names a listening socket. A broker whose path is taken over
/// exits (see [`serve`]).
pub fn bind_replacing(cfg: &BrokerConfig) -> Result<UnixListener, DaemonError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| DaemonError::Io { path, source }
    };
    ensure_private_dir(&cfg.runtime_dir).map_err(io(&cfg.runtime_dir))?;
    let sock = cfg.runtime_dir.join(SOCKET_FILE);
    let tmp = cfg
        .runtime_dir
        .join(format!(".{SOCKET_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &sock).map_err(io(&sock))?;
    Ok(listener)
}

/// Hardens this process and makes the broker (the lease reaper runs here).
pub fn start(cfg: BrokerConfig) -> Arc<Broker> {
    let mut weak = crate::sys::harden_process();
    if cfg.contain && !crate::contain::enable() {
        weak.push("lease containment (child subreaper)");
    }
    for w in weak {
        eprintln!("custody daemon: warning: could not apply protection: {w}");
    }
    Broker::new(cfg)
}

/// Runs the broker until `shutdown` completes: hardens the process, reaps
/// leftovers, serves, and on the way out ends every lease.
pub async fn run(
    cfg: BrokerConfig,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(start(cfg), listener, shutdown).await
}

/// The identity (device, inode) of the socket file at `path`.
fn socket_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Serves `listener` until `shutdown` completes, or, while locked, the
/// socket's path stops naming it (a newer broker took the path: this one
/// holds nothing and nobody reaches it any more, so it exits).
pub async fn serve(
    broker: Arc<Broker>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let sock = broker.cfg.runtime_dir.join(SOCKET_FILE);
    let ours = socket_id(&sock);
    let lost = {
        let sock = sock.clone();
        let b = broker.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if ours.is_some() && socket_id(&sock) != ours && b.is_locked() {
                    eprintln!(
                        "custody daemon: {} no longer names this broker's socket: exiting",
                        sock.display()
                    );
                    return;
                }
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = lost => {}
        }
    };
    let ticker = {
        let b = broker.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                b.tick().await;
                let _ = tokio::task::spawn_blocking(crate::contain::sweep_if_dirty).await;
            }
        })
    };
    let res = crate::server::serve(listener, broker, shutdown).await;
    ticker.abort();
    // Only remove the socket if it is still ours (a newer broker may have
    // taken the path).
    if ours.is_some() && socket_id(&sock) == ours {
        let _ = std::fs::remove_file(&sock);
    }
    res
}
