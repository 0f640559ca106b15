//! `custody policy check [FILE]`: parse a policy, name the client each table
//! applies to, and warn about tables no client will ever match.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use custody_core::audit::{self, AuditEvent};
use custody_core::clients::{self, KNOWN_CLIENTS};
use custody_core::policy::{POLICY_FILE, Policy};
use serde_json::json;

use super::Global;
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file (default: `$CUSTODY_HOME/policy.toml`): errors,
    /// the client each table applies to, and tables for clients custody has
    /// never seen.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
    /// The agent clients custody knows: the names they send in the MCP
    /// handshake and the policy name each maps to.
    Clients,
}

pub fn run(g: &Global, _s: &mut SecretInput, c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::Check { file } => check(g, file),
        PolicyCommand::Clients => known(g),
    }
}

fn known(g: &Global) -> anyhow::Result<ExitCode> {
    if g.json {
        let v: Vec<_> = KNOWN_CLIENTS
            .iter()
            .map(|k| json!({"policy_name": k.canonical, "product": k.product, "handshake_names": k.handshake_names}))
            .collect();
        output::json(&json!(v))?;
    } else {
        println!("{:<14} {:<18} handshake names", "policy name", "client");
        for k in KNOWN_CLIENTS {
            println!(
                "{:<14} {:<18} {}",
                k.canonical,
                k.product,
                k.handshake_names.join(", ")
            );
        }
        println!(
            "{:<14} {:<18} `custody run` from a terminal (no agent can use this name)",
            clients::TERMINAL,
            "-"
        );
        println!(
            "{:<14} {:<18} any client without a table of its own",
            "*", "-"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Client names that started a session in this vault's audit log (read
/// without the key: only to tell a typo from a client seen before).
fn seen_clients(home: &std::path::Path) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let Ok(reader) = audit::read(&home.join(audit::AUDIT_FILE), None) else {
        return seen;
    };
    for r in reader.flatten() {
        if let AuditEvent::SessionStart { client_name, .. } = r.event {
            seen.insert(clients::canonical(&client_name));
        }
    }
    seen
}

fn check(g: &Global, file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let home = custody_core::paths::home_dir()
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")?;
    let path = file.unwrap_or_else(|| home.join(POLICY_FILE));
    if !path.exists() {
        anyhow::bail!("no policy at {}: nothing to check", path.display());
    }
    let policy = Policy::load(&path)?;
    let seen = seen_clients(&home);
    let mut tables = Vec::new();
    let mut warnings = Vec::new();
    for name in policy.client_names() {
        let known = clients::known(name).map(|k| k.product);
        let special = name == clients::TERMINAL || name == "*";
        if !special && known.is_none() && !seen.contains(name) {
            warnings.push(format!(
                "[clients.{name}] matches no client custody knows or has seen: check the name (`custody policy clients` lists the known ones; `custody status` shows what a running agent sends)"
            ));
        }
        tables.push(json!({"policy_name": name, "client": known, "seen": seen.contains(name)}));
    }
    if g.json {
        output::json(
            &json!({"file": path, "valid": true, "clients": tables, "warnings": warnings}),
        )?;
    } else {
        println!("{}: valid", path.display());
        for t in &tables {
            println!(
                "  [clients.{}] applies to {}",
                t["policy_name"].as_str().unwrap_or_default(),
                match (t["policy_name"].as_str(), t["client"].as_str()) {
                    (Some("cli"), _) => "`custody run` from a terminal".to_owned(),
                    (Some("*"), _) => "every client without a table of its own".to_owned(),
                    (_, Some(p)) => p.to_owned(),
                    _ => "a client named so in its MCP handshake".to_owned(),
                }
            );
        }
        for w in &warnings {
            eprintln!("custody: warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
