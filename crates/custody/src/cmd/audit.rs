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
    /// age like 15m or 2h (`--summary`: 24h unless given).
    #[arg(long)]
    since: Option<String>,
    /// Only what this agent did (its name as approvals show it, e.g.
    /// claude-code; `you` for your own terminal).
    #[arg(long, value_name = "NAME")]
    agent: Option<String>,
    /// Only what concerns this environment.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// Only these record types (comma-separated: request, approval, denial,
    /// lease_start, lease_end, vault_change, session_start, agent_start, …).
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    types: Vec<String>,
    /// One screen: per agent, requests, decisions, runs and masks.
    #[arg(long)]
    summary: bool,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain and MACs; exit 0 when intact, 1 naming the
    /// first bad record otherwise. A chain started by `audit repair` is
    /// reported as intact since its break.
    Verify {
        /// Exit 1 also for a chain intact only since a repaired break.
        #[arg(long)]
        strict: bool,
    },
    /// The log does not verify, so unlock refuses: keep the damaged file
    /// aside (`audit.log.damaged-TIME`) and start a new chain whose first
    /// record names the break (last good seq and hash, first bad seq).
    /// Needs the passphrase and the PIN; the broker must be locked.
    Repair {
        /// Read the PIN from stdin (after the passphrase line with
        /// `--passphrase-stdin`).
        #[arg(long)]
        pin_stdin: bool,
    },
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

/// How records are shown: JSON lines, a table for people (on a terminal),
/// or one plain line each (for pipes and older scripts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    Table,
    Lines,
}

fn print(shape: Shape, r: &AuditRecord, row: &super::audit_view::Row) -> anyhow::Result<()> {
    if shape == Shape::Table {
        super::audit_view::print_row(row);
        return Ok(());
    }
    if shape == Shape::Json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let mut ev = serde_json::to_value(&r.event)?;
        let kind = ev["type"].as_str().unwrap_or_default().to_owned();
        if let Some(o) = ev.as_object_mut() {
            o.remove("type");
        }
        // JSON already escapes C0 controls; escape what it leaves as is
        // (C1 controls, bidi, zero-width) so no field rewrites the line.
        let text: String = ev
            .to_string()
            .chars()
            .map(|c| {
                if output::is_hidden(c) {
                    format!("\\u{:04x}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect();
        println!("{:>6}  {}  {:<14} {}", r.seq, r.time, kind, text);
    }
    Ok(())
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: AuditArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(AuditCommand::Verify { strict }) => return verify(g, secrets, strict),
        Some(AuditCommand::Repair { pin_stdin }) => return repair(g, secrets, pin_stdin),
        None => {}
    }
    let path = log_path()?;
    let since_text = a
        .since
        .clone()
        .or_else(|| a.summary.then(|| "24h".to_owned()));
    let since = since_text.as_deref().map(since).transpose()?;
    let filter = super::audit_view::Filter {
        agent: a.agent.clone(),
        env: a.env.clone(),
        types: a.types.clone(),
    };
    let shape = if g.json {
        Shape::Json
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Shape::Table
    } else {
        Shape::Lines
    };
    // Every record is read from the start, so a row can name who is behind
    // it (a lease's requester); `--since` only decides what is shown.
    let mut links = super::audit_view::Links::default();
    let mut shown = |r: &AuditRecord, rows: Option<&mut Vec<super::audit_view::Row>>| {
        let row = links.row(r);
        if since.as_ref().is_some_and(|s| !s.admits(r)) || !filter.keeps(&row) {
            return Ok(());
        }
        match rows {
            Some(rows) => {
                rows.push(row);
                Ok(())
            }
            None => print(shape, r, &row),
        }
    };
    if a.follow {
        let follower = audit::follow(&path, None, Duration::from_millis(200))
            .with_context(|| format!("reading {}", path.display()))?;
        if shape == Shape::Table {
            super::audit_view::print_header();
        }
        for item in follower {
            match item {
                Ok(r) => shown(&r, None)?,
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
    let records =
        audit::read(&path, None).with_context(|| format!("reading {}", path.display()))?;
    if a.summary {
        let mut rows = Vec::new();
        for r in records.flatten() {
            shown(&r, Some(&mut rows))?;
        }
        super::audit_view::print_summary(&rows, since_text.as_deref().unwrap_or("the start"));
        return Ok(ExitCode::SUCCESS);
    }
    if shape == Shape::Table {
        super::audit_view::print_header();
    }
    for item in records {
        match item {
            Ok(r) => shown(&r, None)?,
            Err(e) => eprintln!("custody: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The break a repaired chain starts after: its first record, if that is a
/// `chain_start` of a repair (seq of the first bad record, and the last good
/// seq before it).
fn repaired_break(path: &std::path::Path) -> Option<(u64, Option<u64>)> {
    let first = audit::read(path, None).ok()?.next()?.ok()?;
    match first.event {
        audit::AuditEvent::ChainStart {
            reason: audit::ChainStartReason::Repaired,
            first_bad_seq,
            previous_seq,
            ..
        } => Some((first_bad_seq.unwrap_or(0), previous_seq)),
        _ => None,
    }
}

fn repair(g: &Global, secrets: &mut SecretInput, pin_stdin: bool) -> anyhow::Result<ExitCode> {
    if let Some(mut c) = access::broker()?
        && c.status().is_ok_and(|s| !s.locked)
    {
        anyhow::bail!(
            "the broker is unlocked and writing the audit log: `custody lock` first, then repair"
        );
    }
    let vault = access::open_vault(g, secrets)?;
    let pin = if pin_stdin {
        secrets.pin()?
    } else {
        crate::input::prompt_pin("Approval PIN: ", "--pin-stdin")?
    };
    if !vault.verify_pin(pin.expose())? {
        return Err(access::broker_err(custody_broker::ClientError::Broker(
            custody_broker::protocol::WireError::new(
                "wrong_pin",
                "wrong PIN: nothing was repaired",
            ),
        )));
    }
    let path = log_path()?;
    let key = vault.subkey(Subkey::Audit);
    let head = vault.audit_head()?;
    let (first_bad, offset) = match audit::verify(&path, &key, head.as_ref()) {
        Ok(r) => {
            if g.json {
                output::json(&json!({"repaired": false, "intact": true, "records": r.records}))?;
            } else {
                println!(
                    "audit log intact ({} records): nothing to repair",
                    r.records
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(audit::VerifyError::Bad { seq, offset, .. }) => (seq, offset),
        Err(e) => return Err(e.into()),
    };
    // The last good record: verify the part before the first bad line.
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let good = bytes
        .get(
            ..usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len()),
        )
        .unwrap_or_default();
    let last_good = if good.is_empty() {
        None
    } else {
        let tmp =
            tempfile::NamedTempFile::new_in(path.parent().unwrap_or(std::path::Path::new(".")))?;
        std::fs::write(tmp.path(), good)?;
        Some(audit::verify(tmp.path(), &key, None)?.head)
    };
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept = path.with_file_name(format!("{}.damaged-{stamp}", audit::AUDIT_FILE));
    std::fs::rename(&path, &kept).with_context(|| format!("keeping {}", kept.display()))?;
    let chain = audit::AuditChain::start_over(
        &path,
        &key,
        last_good.as_ref(),
        audit::ChainStartReason::Repaired,
        Some(first_bad),
    )?;
    vault.set_audit_head(&chain.head())?;
    if g.json {
        output::json(&json!({
            "repaired": true,
            "first_bad_seq": first_bad,
            "last_good_seq": last_good.map(|h| h.seq),
            "kept": kept,
        }))?;
    } else {
        println!(
            "audit log repaired: the damaged log is kept at {}; a new chain starts after seq {} (first bad record: seq {first_bad})",
            kept.display(),
            last_good.map_or(0, |h| h.seq)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(g: &Global, secrets: &mut SecretInput, strict: bool) -> anyhow::Result<ExitCode> {
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
    let mut v = v;
    let intact = v["intact"] == json!(true);
    let repaired = if intact {
        repaired_break(&log_path()?)
    } else {
        None
    };
    if let Some((bad, good)) = repaired {
        v["repaired_break"] = json!({"first_bad_seq": bad, "last_good_seq": good});
    }
    if g.json {
        output::json(&v)?;
    } else if let Some((bad, _)) = repaired {
        println!(
            "audit log intact since the break at seq {bad} ({} records since; the damaged log was kept by `custody audit repair`)",
            v["records"]
        );
    } else if intact {
        println!("audit log intact: {} records", v["records"]);
    } else {
        println!(
            "audit log BROKEN at seq {}: {}",
            v["first_bad_seq"],
            v["problem"].as_str().unwrap_or_default()
        );
    }
    Ok(if intact && !(strict && repaired.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
