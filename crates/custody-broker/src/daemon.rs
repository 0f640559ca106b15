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

/// Runs the broker until `shutdown` completes: hardens the process, reaps
/// leftovers, serves, and on the way out ends every lease.
pub async fn run(
    cfg: BrokerConfig,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut weak = crate::sys::harden_process();
    if cfg.contain && !crate::contain::enable() {
        weak.push("lease containment (child subreaper)");
    }
    for w in weak {
        eprintln!("custody daemon: warning: could not apply protection: {w}");
    }
    let broker: Arc<Broker> = Broker::new(cfg);
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
    let sock = broker.cfg.runtime_dir.join(SOCKET_FILE);
    let res = crate::server::serve(listener, broker, shutdown).await;
    ticker.abort();
    // Only remove the socket if it is still ours (a second broker may have
    // replaced a socket it found dead).
    let _ = std::fs::remove_file(&sock);
    res
}
