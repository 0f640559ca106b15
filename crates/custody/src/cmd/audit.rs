//! `custody audit [--follow] [--json] [--since]` and `custody audit verify`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use custody_broker::protocol::Request;
use custody_core::audit::{self, AuditRecord, Since};
use custody_core::crypto::Subkey;
use serde_json::{Value, json};

use super::Global;
use crate::access;
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Keep printing records as they are written.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only records from this point: a seq number, an RFC 3339 time, or an
    /// age like 15m or 2h.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain and MACs; exit 0 when intact, 1 naming the
    /// first bad record otherwise.
    Verify,
}

fn since(raw: &str) -> anyhow::Result<Since> {
    if let Ok(seq) = raw.parse::<u64>() {
        return Ok(Since::Seq(seq));
    }
    if let Some(t) = audit::parse_rfc3339(raw) {
        return Ok(Since::Time(t));
    }
    if let Some(d) = custody_core::duration::parse(raw) {
        return Ok(Since::Time(SystemTime::now() - d));
    }
    Err(anyhow!(
        "--since '{raw}' is not a seq number, a time like 2026-11-23T09:00:00Z, or an age like 15m"
    ))
}

fn log_path() -> anyhow::Result<std::path::PathBuf> {
    Ok(custody_core::paths::home_dir()
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")?
        .join(audit::AUDIT_FILE))
}

fn print(g: &Global, r: &AuditRecord) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let mut ev = serde_json::to_value(&r.event)?;
        let kind = ev["type"].as_str().unwrap_or_default().to_owned();
        if let Some(o) = ev.as_object_mut() {
            o.remove("type");
        }
        println!("{:>6}  {}  {:<14} {}", r.seq, r.time, kind, ev);
    }
    Ok(())
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: AuditArgs) -> anyhow::Result<ExitCode> {
    if let Some(AuditCommand::Verify) = a.command {
        return verify(g, secrets);
    }
    let path = log_path()?;
    let since = a.since.as_deref().map(since).transpose()?;
    if a.follow {
        let follower = audit::follow(&path, since, Duration::from_millis(200))
            .with_context(|| format!("reading {}", path.display()))?;
        for item in follower {
            match item {
                Ok(r) => print(g, &r)?,
                Err(e) => eprintln!("custody: {e}"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !path.exists() {
        if !g.json {
            println!("No audit records yet ({} does not exist).", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    for item in audit::read(&path, since).with_context(|| format!("reading {}", path.display()))? {
        match item {
            Ok(r) => print(g, &r)?,
            Err(e) => eprintln!("custody: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(g: &Global, secrets: &mut SecretInput) -> anyhow::Result<ExitCode> {
    // The broker holds the key while unlocked; otherwise use the passphrase.
    let via_broker: Option<Value> = match access::broker()? {
        Some(mut c) => match c.call(Request::AuditVerify) {
            Ok(v) => Some(v),
            Err(e) if e.code() == Some("locked") => None,
            Err(e) => return Err(access::broker_err(e)),
        },
        None => None,
    };
    let v = match via_broker {
        Some(v) => v,
        None => {
            let vault = access::open_vault(g, secrets)?;
            let head = vault.audit_head()?;
            let key = vault.subkey(Subkey::Audit);
            match audit::verify(&log_path()?, &key, head.as_ref()) {
                Ok(r) => json!({"intact": true, "records": r.records, "head_seq": r.head.seq}),
                Err(e) => {
                    json!({"intact": false, "first_bad_seq": e.first_bad_seq(), "problem": e.to_string()})
                }
            }
        }
    };
    let intact = v["intact"] == json!(true);
    if g.json {
        output::json(&v)?;
    } else if intact {
        println!("audit log intact: {} records", v["records"]);
    } else {
        println!(
            "audit log BROKEN at seq {}: {}",
            v["first_bad_seq"],
            v["problem"].as_str().unwrap_or_default()
        );
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
