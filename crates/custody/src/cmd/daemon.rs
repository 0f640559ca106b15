//! `custody daemon`: run the broker in the foreground (for systemd/launchd;
//! `custody unlock` starts it in the background when needed).

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use custody_broker::BrokerConfig;

use super::Global;
use crate::input::SecretInput;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Lock the vault after this long without a request.
    #[arg(long, default_value = "8h")]
    idle_lock: String,
    /// Time between SIGTERM and SIGKILL when a lease ends early.
    #[arg(long, default_value = "5s")]
    kill_grace: String,
}

pub fn run(_g: &Global, _s: &mut SecretInput, a: DaemonArgs) -> anyhow::Result<ExitCode> {
    let home = custody_core::paths::home_dir()
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")?;
    let mut cfg = BrokerConfig::new(home, custody_broker::paths::runtime_dir());
    cfg.idle_lock = custody_core::duration::parse(&a.idle_lock).ok_or_else(|| {
        anyhow!(
            "--idle-lock '{}' is not a duration like 30m or 8h",
            a.idle_lock
        )
    })?;
    cfg.kill_grace = custody_core::duration::parse(&a.kill_grace)
        .ok_or_else(|| anyhow!("--kill-grace '{}' is not a duration like 5s", a.kill_grace))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = custody_broker::daemon::bind(&cfg)?;
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
        custody_broker::daemon::run(cfg, listener, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
