//! `custody source add|ls|rm`: dynamic sources, which mint a credential per
//! lease. A variable uses one with `custody set ENV VAR --kind postgres:NAME`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use custody_broker::protocol::{Request, SourceRemoved, SourceSaved};
use custody_core::sources::{
    CommandSource, DEFAULT_CREATION, DEFAULT_REVOCATION, PostgresSource, SourceDef, SourceSpec,
};
use serde_json::Value;

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum SourceCommand {
    /// Add (or replace) a source.
    #[command(subcommand)]
    Add(AddCommand),
    /// List the sources (never a secret: the admin URL is named, not shown).
    Ls,
    /// Remove a source (variables that use it then fail to run).
    Rm {
        /// The source's name.
        name: String,
        /// Read the approval PIN from a line of stdin.
        #[arg(long)]
        pin_stdin: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AddCommand {
    /// A PostgreSQL role per lease, dropped when the lease ends.
    Postgres(super::Lazy<PostgresArgs>),
    /// A token per lease from a command you configure (`gh`, cloud CLIs…).
    Command(super::Lazy<CommandArgs>),
}

#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    /// The source's name (lowercase, digits, `.`, `_`, `-`).
    name: String,
    /// ENV/VAR: the vault variable holding the admin connection URL.
    #[arg(long, value_name = "ENV/VAR")]
    admin_from: String,
    /// A role each minted role is granted (added to the default creation
    /// statements).
    #[arg(long, value_name = "ROLE")]
    grant: Vec<String>,
    /// Creation statements, one per line (`{{name}}`, `{{password}}`,
    /// `{{expiration}}`); lines starting with `--` are comments.
    #[arg(long, value_name = "FILE")]
    creation_file: Option<std::path::PathBuf>,
    /// Revocation statements, one per line (`{{name}}`).
    #[arg(long, value_name = "FILE")]
    revocation_file: Option<std::path::PathBuf>,
    /// Read the approval PIN from a line of stdin.
    #[arg(long)]
    pin_stdin: bool,
}

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The source's name.
    name: String,
    /// Prints one token on stdout (run with `sh -c`; gets CUSTODY_LEASE_ID,
    /// CUSTODY_TTL_SECONDS and CUSTODY_EXPIRES_AT).
    #[arg(long, value_name = "SHELL COMMAND")]
    mint: String,
    /// Revokes the token it gets in CUSTODY_TOKEN and on stdin.
    #[arg(long, value_name = "SHELL COMMAND")]
    revoke: Option<String>,
    /// Longest life of a token (a lease using it ends by then).
    #[arg(long, default_value = "15m", value_parser = super::duration_arg)]
    ttl: super::DurationArg,
    /// Read the approval PIN from a line of stdin.
    #[arg(long)]
    pin_stdin: bool,
}

fn statements(file: Option<&std::path::Path>, default: &[&str]) -> anyhow::Result<Vec<String>> {
    let Some(f) = file else {
        return Ok(default.iter().map(|s| (*s).to_owned()).collect());
    };
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect();
    if list.is_empty() {
        bail!("{} holds no statements", f.display());
    }
    Ok(list)
}

fn quote_ident(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

pub fn run(g: &Global, s: &mut SecretInput, c: SourceCommand) -> anyhow::Result<ExitCode> {
    let mut client = access::require_broker()?;
    let pin_stdin = match &c {
        SourceCommand::Add(AddCommand::Postgres(super::Lazy(a))) => a.pin_stdin,
        SourceCommand::Add(AddCommand::Command(super::Lazy(a))) => a.pin_stdin,
        SourceCommand::Rm { pin_stdin, .. } => *pin_stdin,
        SourceCommand::Ls => false,
    };
    let mut auth = if matches!(c, SourceCommand::Ls) {
        None
    } else {
        Some(access::ChangeAuth::read(g, s, pin_stdin)?)
    };
    match c {
        SourceCommand::Add(add) => {
            let def = match add {
                AddCommand::Postgres(super::Lazy(a)) => {
                    let mut creation = statements(a.creation_file.as_deref(), DEFAULT_CREATION)?;
                    for role in &a.grant {
                        creation.push(format!(r#"GRANT {} TO "{{{{name}}}}""#, quote_ident(role)));
                    }
                    SourceDef {
                        name: a.name,
                        spec: SourceSpec::Postgres(PostgresSource {
                            admin_from: a.admin_from,
                            creation,
                            revocation: statements(
                                a.revocation_file.as_deref(),
                                DEFAULT_REVOCATION,
                            )?,
                        }),
                    }
                }
                AddCommand::Command(super::Lazy(a)) => {
                    let ttl = a.ttl.value;
                    SourceDef {
                        name: a.name,
                        spec: SourceSpec::Command(CommandSource {
                            mint: a.mint,
                            revoke: a.revoke,
                            ttl_secs: ttl.as_secs(),
                        }),
                    }
                }
            };
            let auth = auth.as_mut().context("internal: no change proof")?;
            let v = auth.call(&mut client, Request::SourceAdd { source: def }, None)?;
            let saved: SourceSaved =
                serde_json::from_value(v).context("unexpected answer from the broker")?;
            if g.json {
                output::json(&saved)?;
            } else {
                let r = &saved.source;
                let verb = if saved.created { "Added" } else { "Replaced" };
                println!("{verb} source {r}. Use it: custody set ENV VAR --kind {r}");
            }
        }
        SourceCommand::Ls => {
            let v = client.call(Request::SourceList).map_err(broker_err)?;
            if g.json {
                output::json(&v)?;
            } else if v.as_array().is_none_or(Vec::is_empty) {
                println!("No dynamic sources. Add one with `custody source add postgres|command`.");
            } else {
                for s in v.as_array().into_iter().flatten() {
                    println!("{}", describe(s));
                }
            }
        }
        SourceCommand::Rm { name, .. } => {
            let auth = auth.as_mut().context("internal: no change proof")?;
            let v = auth.call(&mut client, Request::SourceRemove { name }, None)?;
            let removed: SourceRemoved =
                serde_json::from_value(v).context("unexpected answer from the broker")?;
            if g.json {
                output::json(&removed)?;
            } else {
                println!("Removed source {}", removed.removed);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(s: &Value) -> String {
    let name = s["name"].as_str().unwrap_or_default();
    match s["type"].as_str() {
        Some("postgres") => format!(
            "postgres:{name}  admin URL from {}  ({} creation, {} revocation statements)",
            s["admin_from"].as_str().unwrap_or_default(),
            s["creation"].as_array().map_or(0, Vec::len),
            s["revocation"].as_array().map_or(0, Vec::len)
        ),
        Some("command") => format!(
            "command:{name}  ttl {}s  mint: {}  revoke: {}",
            s["ttl_secs"],
            s["mint"].as_str().unwrap_or_default(),
            s["revoke"]
                .as_str()
                .unwrap_or("(none; tokens end at their TTL)")
        ),
        _ => name.to_owned(),
    }
}
