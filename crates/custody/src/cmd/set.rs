//! `custody set ENV VAR`: store a value from a hidden prompt or stdin; with
//! `--kind postgres:NAME` (or `command:NAME`), declare a dynamic variable
//! instead (minted per lease, no stored value).

use std::process::ExitCode;

use anyhow::bail;
use custody_core::vault::VariableUpdate;
use serde_json::json;
use zeroize::Zeroizing;

use super::{Global, KindArg, env_name, var_name};
use crate::access;
use crate::input::{self, SecretInput};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The environment.
    env: String,
    /// The variable (e.g. DATABASE_URL).
    var: String,
    /// What the variable is for (agents can read it).
    #[arg(long, short = 'd')]
    description: Option<String>,
    /// How the value reaches a process: env, file, or a dynamic source
    /// (postgres:NAME, command:NAME; see `custody source`).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Keep a trailing newline read from stdin (by default one is stripped).
    #[arg(long)]
    keep_newline: bool,
    /// Read the approval PIN from a line of stdin (after the passphrase
    /// line with `--passphrase-stdin`; before a value read from stdin).
    #[arg(long)]
    pin_stdin: bool,
    #[command(flatten)]
    binding: super::bind::BindingArgs,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: SetArgs) -> anyhow::Result<ExitCode> {
    let env = env_name(&a.env)?;
    let var = var_name(&a.var)?;
    let kind = match a.kind.as_deref() {
        None => None,
        Some(k) if k.contains(':') => return declare_dynamic(g, secrets, &a, k),
        Some(k) => Some(
            <KindArg as clap::ValueEnum>::from_str(k, true).map_err(|_| {
                anyhow::anyhow!("--kind is env, file, postgres:NAME or command:NAME")
            })?,
        ),
    };
    let bindings = a.binding.rules()?;
    let mut vault = access::open_to_change(g, secrets, a.pin_stdin)?;
    // Fail on a missing environment before asking for the value.
    vault.environment(&env)?;
    let value = read_value(
        g,
        secrets,
        &format!("Value for {env}/{var} (hidden): "),
        a.keep_newline,
    )?;
    if value.is_empty() {
        bail!(
            "empty value: nothing was stored (use `custody unset {env} {var}` to remove a variable)"
        );
    }
    let update = VariableUpdate {
        description: a.description,
        kind: kind.map(Into::into),
        source: None,
        bindings,
    };
    let created = vault.set_variable(&env, &var, &value, &update)?;
    let short = value.len() < custody_core::mask::MIN_MASKABLE_LEN;
    if g.json {
        output::json(&json!({
            "environment": env.as_str(),
            "variable": var.as_str(),
            "created": created,
            "too_short_to_mask": short,
        }))?;
    } else {
        println!("{} {env}/{var}", if created { "Stored" } else { "Updated" });
    }
    if short {
        eprintln!(
            "warning: {env}/{var} is shorter than {} bytes: too short to mask reliably in command output",
            custody_core::mask::MIN_MASKABLE_LEN
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A dynamic variable: no value is read; the broker checks the source.
fn declare_dynamic(
    g: &Global,
    secrets: &mut SecretInput,
    a: &SetArgs,
    reference: &str,
) -> anyhow::Result<ExitCode> {
    custody_core::sources::parse_reference(reference)?;
    let mut client = access::require_broker()?;
    let v = access::ChangeAuth::read(g, secrets, a.pin_stdin)?.call(
        &mut client,
        custody_broker::protocol::Request::Declare {
            env: a.env.clone(),
            var: a.var.clone(),
            description: a.description.clone(),
            kind: Some(custody_core::vault::VarKind::Dynamic),
            source: Some(reference.to_owned()),
        },
        None,
    )?;
    if g.json {
        output::json(&v)?;
    } else {
        println!(
            "{}/{} is minted per lease by {reference}: each run gets a fresh credential, revoked when it ends",
            a.env, a.var
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The value: the rest of stdin after the passphrase line, a hidden prompt
/// on a terminal, or all of stdin. One trailing newline is stripped from
/// stdin unless `keep_newline`.
fn read_value(
    g: &Global,
    secrets: &mut SecretInput,
    prompt: &str,
    keep_newline: bool,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut value = if !g.passphrase_stdin && input::stdin_is_tty() {
        return input::prompt_hidden(prompt, "a value on stdin");
    } else {
        secrets.rest()?
    };
    if !keep_newline {
        let strip = if value.ends_with(b"\r\n") {
            2
        } else {
            usize::from(value.ends_with(b"\n"))
        };
        // Truncated bytes stay in spare capacity, which Zeroizing clears on drop.
        let keep = value.len() - strip;
        value.truncate(keep);
    }
    Ok(value)
}
