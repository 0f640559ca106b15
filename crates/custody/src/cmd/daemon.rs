//! `custody daemon`: run the broker in the foreground (for systemd/launchd;
//! `custody unlock` starts it in the background when needed).

use std::process::ExitCode;

use anyhow::Context;
use custody_broker::BrokerConfig;

use super::Global;
use crate::input::SecretInput;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Lock the vault after this long without a request.
    #[arg(long, default_value = "8h", value_parser = super::duration_arg)]
    idle_lock: super::DurationArg,
    /// Time between SIGTERM and SIGKILL when a lease ends early.
    #[arg(long, default_value = "5s", value_parser = super::duration_arg)]
    kill_grace: super::DurationArg,
    /// Read the passphrase from the first line of stdin, unlock before
    /// serving, report `ok` (or `error CODE MESSAGE`) on one line of
    /// stdout, then take over the socket path. This is how `custody unlock`
    /// starts a broker: the passphrase goes only to a process it started
    /// itself, never to whatever listens on the socket.
    #[arg(long)]
    unlock_stdin: bool,
}

pub fn run(_g: &Global, secrets: &mut SecretInput, a: DaemonArgs) -> anyhow::Result<ExitCode> {
    let passphrase = if a.unlock_stdin {
        Some(secrets.passphrase()?)
    } else {
        None
    };
    let home = custody_core::paths::home_dir()
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")?;
    let mut cfg = BrokerConfig::new(home, custody_broker::paths::runtime_dir());
    cfg.idle_lock = a.idle_lock.value;
    cfg.kill_grace = a.kill_grace.value;
    cfg.proxy = custody_broker::broker::ProxySettings::from_env().map_err(anyhow::Error::msg)?;
    if !cfg.proxy.resolve.is_empty() || !cfg.proxy.extra_roots.is_empty() {
        eprintln!(
            "custody daemon: leases' proxies use {} name override(s) and {} extra root(s) from CUSTODY_PROXY_*",
            cfg.proxy.resolve.len(),
            cfg.proxy.extra_roots.len()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (broker, listener) = match passphrase {
            None => {
                let listener = custody_broker::daemon::bind(&cfg)?;
                (custody_broker::daemon::start(cfg.clone()), listener)
            }
            Some(passphrase) => {
                let broker = custody_broker::daemon::start(cfg.clone());
                let unlocked = broker.unlock(passphrase).await;
                let listener = match &unlocked {
                    Ok(_) => custody_broker::daemon::bind_replacing(&cfg).map_err(|e| {
                        custody_broker::protocol::WireError::new("internal", e.to_string())
                    }),
                    Err(e) => Err(custody_broker::protocol::WireError::new(
                        e.code(),
                        e.to_string(),
                    )),
                };
                report_unlock(&listener, unlocked.as_ref().ok());
                match listener {
                    Ok(l) => (broker, l),
                    Err(_) => return anyhow::Ok(ExitCode::from(2)),
                }
            }
        };
        eprintln!(
            "custody daemon: serving {} (pid {})",
            cfg.runtime_dir
                .join(custody_broker::paths::SOCKET_FILE)
                .display(),
            std::process::id()
        );
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        custody_broker::daemon::serve(broker, listener, shutdown).await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Tells the `custody unlock` that started this daemon how the unlock went
/// (one line on stdout), then lets go of stdout.
fn report_unlock(
    bound: &Result<tokio::net::UnixListener, custody_broker::protocol::WireError>,
    unlocked: Option<&custody_broker::protocol::Unlocked>,
) {
    use std::io::Write;
    let line = match (bound, unlocked) {
        (Ok(_), Some(v)) => serde_json::json!({"ok": v}),
        (Err(e), _) => serde_json::json!({"error": {"code": e.code, "message": e.message}}),
        (Ok(_), None) => {
            serde_json::json!({"error": {"code": "internal", "message": "unlock failed"}})
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    // The pipe to `custody unlock` closes; nothing more goes there.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        use std::os::fd::AsFd;
        let _ = rustix::stdio::dup2_stdout(null.as_fd());
    }
}
