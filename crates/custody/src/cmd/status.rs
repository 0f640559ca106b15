//! `custody status`: the broker, its sessions, agents, leases, credentials and leaks.

use std::process::ExitCode;

use serde_json::json;

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

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
