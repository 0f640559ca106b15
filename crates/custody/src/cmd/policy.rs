//! `custody policy show | apply FILE | edit | check [FILE] | clients`.
//!
//! The policy in force is sealed in the vault: the broker never reads
//! `policy.toml` (an agent running as the same user can write that file).
//! `apply` and `edit` need the approval PIN; `check` parses a file and names
//! the client each table applies to.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use custody_core::audit::{self, AuditEvent};
use custody_core::clients::{self, KNOWN_CLIENTS};
use custody_core::policy::{POLICY_FILE, Policy};
use serde_json::json;

use super::Global;
use crate::access::{self, broker_err};
use crate::input::{self, SecretInput};
use crate::output;
use custody_broker::protocol::Request;

/// The sealed policy's text ("" when none was applied).
fn sealed_text() -> anyhow::Result<(bool, String)> {
    let mut c = access::require_broker()?;
    let v = c.call(Request::PolicyShow).map_err(broker_err)?;
    Ok((
        v["sealed"].as_bool().unwrap_or(false),
        v["text"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn show(g: &Global) -> anyhow::Result<ExitCode> {
    let mut c = access::require_broker()?;
    let v = c.call(Request::PolicyShow).map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else if v["sealed"].as_bool() == Some(true) {
        print!("{}", v["text"].as_str().unwrap_or_default());
    } else {
        println!(
            "# No policy is sealed in the vault: the defaults apply (every environment visible,\n# nothing pre-approved, leases up to 1h). Set one with `custody policy apply FILE`."
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_policy_file(file: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut text = String::new();
    f.take(custody_core::vault::MAX_POLICY_TEXT as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as UTF-8 text", file.display()))?;
    if text.len() > custody_core::vault::MAX_POLICY_TEXT {
        anyhow::bail!("{} is larger than 256 KiB", file.display());
    }
    Ok(text)
}

/// Checks `text`, asks for the PIN, and seals it through the broker.
fn apply(
    g: &Global,
    s: &mut SecretInput,
    text: &str,
    pin_stdin: bool,
    from: &str,
) -> anyhow::Result<ExitCode> {
    Policy::parse(text).map_err(|e| anyhow::anyhow!("invalid policy {from}: {e}"))?;
    let mut c = access::require_broker()?;
    if g.passphrase_stdin {
        // The documented stdin layout: passphrase line first, then the PIN.
        s.passphrase()?;
    }
    let pin = if pin_stdin {
        s.pin()?
    } else {
        eprintln!("Applying {from} as the policy in force.");
        input::prompt_pin("Approval PIN: ", "--pin-stdin")?
    };
    let v = c
        .call_with_pin(
            Request::PolicyApply {
                text: text.to_owned(),
            },
            pin.expose(),
            None,
        )
        .map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else if v["unchanged"].as_bool() == Some(true) {
        println!("The policy in force is already {from}: nothing changed.");
    } else {
        let withdrawn = v["grants_withdrawn"].as_array().map_or(0, Vec::len);
        println!(
            "Policy applied (sha256 {}); {withdrawn} grant(s) withdrawn.",
            v["sha256"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the sealed policy in the editor on a private copy; applies it once
/// it parses.
fn edit(g: &Global, s: &mut SecretInput, pin_stdin: bool) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (_, current) = sealed_text()?;
    let base = std::env::temp_dir().join(format!(
        "custody-policy-{}-{}",
        std::process::id(),
        custody_core::crypto::random_array::<8>()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&base)
        .with_context(|| format!("cannot create {}", base.display()))?;
    let _cleanup = RemoveOnDrop(base.clone());
    let file = base.join("policy.toml");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(current.as_bytes())?;
    }
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_owned());
    loop {
        // The editor line may carry flags (`code --wait`): the shell splits it.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("custody-editor")
            .arg(&file)
            .status()
            .with_context(|| format!("cannot start the editor ({editor})"))?;
        if !status.success() {
            anyhow::bail!("the editor exited with {status}: nothing applied");
        }
        let text = read_policy_file(&file)?;
        if text == current {
            println!("No change: nothing applied.");
            return Ok(ExitCode::SUCCESS);
        }
        match Policy::parse(&text) {
            Ok(_) => return apply(g, s, &text, pin_stdin, "the edited policy"),
            Err(e) => {
                eprintln!("custody: invalid policy: {e}");
                if !input::has_tty() || !input::confirm("Edit it again?")? {
                    anyhow::bail!("invalid policy: nothing applied");
                }
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force (sealed in the vault).
    Show,
    /// Seal FILE as the policy in force (needs the approval PIN). Grants
    /// the new policy would not make or allow are withdrawn at once.
    Apply {
        /// The policy TOML (`docs/policy.example.toml` shows every key).
        file: PathBuf,
        /// Read the approval PIN from stdin (after the passphrase line when
        /// `--passphrase-stdin` is given too).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Edit the policy in force in `$VISUAL`/`$EDITOR` (a private temp copy,
    /// checked before it is applied; needs the approval PIN).
    Edit {
        /// Read the approval PIN from stdin.
        #[arg(long)]
        pin_stdin: bool,
    },
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

pub fn run(g: &Global, s: &mut SecretInput, c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::Show => show(g),
        PolicyCommand::Apply { file, pin_stdin } => {
            let text = read_policy_file(&file)?;
            apply(g, s, &text, pin_stdin, &file.display().to_string())
        }
        PolicyCommand::Edit { pin_stdin } => edit(g, s, pin_stdin),
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
