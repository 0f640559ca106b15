//! `custody unlock`, `custody lock`, `custody status`.

use std::process::{ExitCode, Stdio};

use anyhow::Context;
use custody_broker::protocol::Request;
use serde_json::{Value, json};

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {}

#[derive(Debug, clap::Args)]
pub struct LockArgs {}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

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
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(runtime.join("daemon.log"))
        .context("opening the daemon log")?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(exe)
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
            secrets.line("passphrase")?
        } else {
            zeroize::Zeroizing::new(Vec::new())
        }
    } else {
        access::read_passphrase(g, secrets)?
    };
    let (v, started) = if already {
        (json!({"unlocked": true, "already": true}), false)
    } else {
        (start_unlocked_daemon(&passphrase)?, true)
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

pub fn lock(g: &Global, _s: &mut SecretInput, _a: LockArgs) -> anyhow::Result<ExitCode> {
    let Some(mut client) = access::broker()? else {
        if g.json {
            output::json(&json!({"locked": true, "running": false}))?;
        } else {
            println!("The broker is not running: nothing is unlocked.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let v = client.call(Request::Lock).map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else {
        println!(
            "Locked; {} running lease(s) killed.",
            v["leases_killed"].as_u64().unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global, _s: &mut SecretInput, _a: StatusArgs) -> anyhow::Result<ExitCode> {
    let vault = access::vault_path()?;
    let Some(mut client) = access::broker()? else {
        if g.json {
            output::json(
                &json!({"running": false, "locked": true, "vault": vault, "vault_exists": vault.exists()}),
            )?;
        } else {
            println!("broker: not running (start it with `custody unlock`)");
            println!(
                "vault:  {}{}",
                vault.display(),
                if vault.exists() {
                    ""
                } else {
                    " (missing: run `custody init`)"
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let s = client.status().map_err(broker_err)?;
    if g.json {
        let mut v = serde_json::to_value(&s)?;
        v["running"] = json!(true);
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "broker: running, {}",
        if s.locked { "LOCKED" } else { "unlocked" }
    );
    println!("vault:  {}", s.vault.display());
    if s.audit_unrecorded > 0 {
        println!(
            "AUDIT:  {} record(s) of things that happened could not be written (see the broker's log); check `custody audit verify`",
            s.audit_unrecorded
        );
    }
    println!("agent sessions: {}", s.sessions.len());
    for x in &s.sessions {
        println!(
            "  {} {} {} (policy name: {}; {}; pid {}, agent pid {}, agent program {})",
            output::shown(&x.session_id),
            output::shown(&x.client_name),
            output::shown(&x.client_version),
            x.policy_name,
            if x.sandboxed {
                "sandboxed"
            } else {
                "unsandboxed"
            },
            x.pid,
            x.agent_pid,
            output::shown(x.agent_exe.as_deref().unwrap_or("unknown"))
        );
    }
    if !s.agents.is_empty() {
        println!("agents started with `custody agent`: {}", s.agents.len());
    }
    for a in &s.agents {
        println!(
            "  {} (launcher pid {}, {} MCP session(s)): {}",
            output::shown(&a.name),
            a.pid,
            a.sessions,
            if a.sandboxed {
                format!("sandboxed ({})", a.enforced.join(", "))
            } else {
                "UNSANDBOXED".to_owned()
            }
        );
    }
    println!(
        "pending requests: {}  (see `custody approve --list`)",
        s.pending
    );
    println!("grants: {}", s.grants);
    println!("running leases: {}", s.leases.len());
    for l in &s.leases {
        println!(
            "  {} pid {} until {}: {}",
            l.lease_id,
            l.lease.pid,
            l.lease.deadline,
            super::argv_words(&l.lease.argv)
        );
    }
    if s.pin_failures > 0 {
        println!("failed PIN attempts in a row: {}", s.pin_failures);
    }
    output::credentials(&s.credentials);
    if !s.leaks.is_empty() {
        println!("LEAKS found after runs (secret values written to files; rotate them):");
        for l in &s.leaks {
            println!(
                "  {} lease {}: {} holds {}",
                l.at,
                l.lease_id,
                output::field(&l.path),
                output::field(&l.variable)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
