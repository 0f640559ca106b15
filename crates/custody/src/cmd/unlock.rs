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
        .and_then(|mut c| c.call(Request::Status).ok())
        .is_some_and(|s| s["locked"] == json!(false));
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
    let mut v: Value = client.call(Request::Status).map_err(broker_err)?;
    v["running"] = json!(true);
    if g.json {
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "broker: running, {}",
        if v["locked"] == json!(true) {
            "LOCKED"
        } else {
            "unlocked"
        }
    );
    println!("vault:  {}", v["vault"].as_str().unwrap_or_default());
    if let Some(n) = v["audit_unrecorded"].as_u64().filter(|n| *n > 0) {
        println!(
            "AUDIT:  {n} record(s) of things that happened could not be written (see the broker's log); check `custody audit verify`"
        );
    }
    println!(
        "agent sessions: {}",
        v["sessions"].as_array().map_or(0, Vec::len)
    );
    for s in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {} (policy name: {}; {}; pid {}, agent pid {}, agent program {})",
            crate::output::shown(s["session_id"].as_str().unwrap_or_default()),
            crate::output::shown(s["client_name"].as_str().unwrap_or_default()),
            crate::output::shown(s["client_version"].as_str().unwrap_or_default()),
            s["policy_name"].as_str().unwrap_or_default(),
            if s["sandboxed"] == json!(true) {
                "sandboxed"
            } else {
                "unsandboxed"
            },
            s["pid"],
            s["agent_pid"],
            crate::output::shown(s["agent_exe"].as_str().unwrap_or("unknown"))
        );
    }
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    if !agents.is_empty() {
        println!("agents started with `custody agent`: {}", agents.len());
    }
    for a in agents {
        let enforced: Vec<&str> = a["enforced"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str())
            .collect();
        println!(
            "  {} (launcher pid {}, {} MCP session(s)): {}",
            crate::output::shown(a["name"].as_str().unwrap_or_default()),
            a["pid"],
            a["sessions"],
            if a["sandboxed"] == json!(true) {
                format!("sandboxed ({})", enforced.join(", "))
            } else {
                "UNSANDBOXED".to_owned()
            }
        );
    }
    println!(
        "pending requests: {}  (see `custody approve --list`)",
        v["pending"]
    );
    println!("grants: {}", v["grants"]);
    let leases = v["leases"].as_array().cloned().unwrap_or_default();
    println!("running leases: {}", leases.len());
    for l in leases {
        println!(
            "  {} pid {} until {}: {}",
            l["lease_id"].as_str().unwrap_or_default(),
            l["pid"],
            l["deadline"].as_str().unwrap_or_default(),
            super::argv_line(&l["argv"])
        );
    }
    if v["pin_failures"].as_u64().unwrap_or(0) > 0 {
        println!("failed PIN attempts in a row: {}", v["pin_failures"]);
    }
    print_credentials(&v["credentials"]);
    let leaks = v["leaks"].as_array().cloned().unwrap_or_default();
    if !leaks.is_empty() {
        println!("LEAKS found after runs (secret values written to files; rotate them):");
        for l in leaks {
            println!(
                "  {} lease {}: {} holds {}",
                l["at"].as_str().unwrap_or_default(),
                l["lease_id"].as_str().unwrap_or_default(),
                crate::output::field(l["path"].as_str().unwrap_or_default()),
                crate::output::field(l["variable"].as_str().unwrap_or_default())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Dynamic credentials not yet revoked; an *irrevocable* one with its reason.
pub fn print_credentials(creds: &serde_json::Value) {
    let creds = creds.as_array().cloned().unwrap_or_default();
    if creds.is_empty() {
        return;
    }
    println!("dynamic credentials: {}", creds.len());
    for c in creds {
        let state = c["state"].as_str().unwrap_or_default();
        let shown = if state == "irrevocable" {
            "IRREVOCABLE"
        } else {
            state
        };
        print!(
            "  {shown} {} ({}) of lease {}, expires {}",
            c["credential"].as_str().unwrap_or_default(),
            c["source"].as_str().unwrap_or_default(),
            c["lease_id"].as_str().unwrap_or_default(),
            c["expires"].as_str().unwrap_or_default()
        );
        match c["reason"].as_str() {
            Some(r) => println!(
                "\n    since {}, {} attempts: {r} (retrying)",
                c["since"].as_str().unwrap_or_default(),
                c["attempts"]
            ),
            None => println!(),
        }
    }
}
