//! `custody unlock`: start an unlocked broker (or say it already is).

use std::process::{ExitCode, Stdio};

use anyhow::Context;
use custody_core::secret::Passphrase;
use serde_json::{Value, json};

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {}

/// Opens the daemon's log for appending without following a symlink: one
/// planted at its name (the runtime directory is the user's, so an agent
/// can write there) is removed, never written through.
fn open_daemon_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    };
    match open() {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Starts `custody daemon --unlock-stdin` in the background (its own
/// process group, no terminal) and hands it the passphrase through a pipe:
/// the passphrase goes only to a process this command started itself, never
/// to whatever listens on the socket (an agent can put a process there). The
/// new broker unlocks, then takes over the socket path; a locked broker that
/// had it exits. Returns the broker's unlock answer.
fn start_unlocked_daemon(passphrase: &[u8]) -> anyhow::Result<Value> {
    use std::io::{BufRead, Write};
    let exe = std::env::current_exe().context("finding the custody binary")?;
    let runtime = custody_broker::paths::runtime_dir();
    custody_broker::paths::ensure_private_dir(&runtime)
        .with_context(|| format!("preparing {}", runtime.display()))?;
    let log = open_daemon_log(&runtime.join("daemon.log")).context("opening the daemon log")?;
    use std::os::unix::process::CommandExt;
    let mut daemon = std::process::Command::new(exe);
    // The broker holds the key and every value for as long as it runs: no
    // loader variable of the environment we were started in goes with it.
    // This counts most for the statically linked build (`scripts/install`):
    // no loader runs in it, but its glibc still follows `LD_LIBRARY_PATH`
    // (and `GCONV_PATH`) to the modules it loads for some host lookups (the
    // proxy's destinations). In a dynamically linked build a preloaded library
    // has already run in this command, which read the passphrase.
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("LD_") || upper == "GCONV_PATH" {
            daemon.env_remove(&name);
        }
    }
    let mut child = daemon
        .args(["daemon", "--unlock-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting `custody daemon`")?;
    {
        let mut stdin = child.stdin.take().context("the daemon's stdin")?;
        stdin.write_all(passphrase)?;
        stdin.write_all(b"\n")?;
    }
    let stdout = child.stdout.take().context("the daemon's stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).map_err(|_| {
        anyhow::anyhow!(
            "the broker did not start; see {}",
            runtime.join("daemon.log").display()
        )
    })?;
    if let Some(e) = answer.get("error") {
        let _ = child.wait();
        return Err(broker_err(custody_broker::ClientError::Broker(
            custody_broker::protocol::WireError::new(
                e["code"].as_str().unwrap_or("internal"),
                e["message"].as_str().unwrap_or("unlock failed"),
            ),
        )));
    }
    // The daemon runs on in its own process group; it is not waited for.
    drop(child);
    Ok(answer["ok"].clone())
}

pub fn unlock(g: &Global, secrets: &mut SecretInput, _a: UnlockArgs) -> anyhow::Result<ExitCode> {
    let vault = access::vault_path()?;
    if !vault.exists() {
        return Err(custody_core::vault::VaultError::NotFound { path: vault }.into());
    }
    // A broker that says it is unlocked gets nothing (and the passphrase is
    // not even asked for); any other (a locked one, or a process posing as
    // one) is replaced by a broker we start.
    let already = access::broker()?
        .and_then(|mut c| c.status().ok())
        .is_some_and(|s| !s.locked);
    let passphrase = if already {
        if g.passphrase_stdin {
            // The documented stdin layout: the line is read either way.
            secrets.passphrase()?
        } else {
            Passphrase::from_vec(Vec::new())
        }
    } else {
        access::read_passphrase(g, secrets)?
    };
    let (v, started) = if already {
        (json!({"unlocked": true, "already": true}), false)
    } else {
        (start_unlocked_daemon(passphrase.expose())?, true)
    };
    drop(passphrase);
    if g.json {
        let mut out = json!({"unlocked": true, "daemon_started": started, "already": v["already"]});
        if let Some(note) = v.get("policy_note") {
            out["policy_note"] = note.clone();
        }
        output::json(&out)?;
    } else if v["already"].as_bool() == Some(true) {
        println!("Already unlocked.");
    } else {
        println!("Unlocked (broker started).");
    }
    if let Some(note) = v["policy_note"].as_str() {
        eprintln!("custody: warning: {}", crate::output::shown(note));
    }
    Ok(ExitCode::SUCCESS)
}
