//! `custody bind ENV VAR --bind URL …`: bind an existing variable to the
//! destinations its value may go to (`--clear` unbinds). A run that uses a
//! bound variable gives the child a placeholder and a proxy that puts the
//! value in on requests to those destinations only. Humans only, with the
//! PIN when a broker runs; agents can neither make nor widen a binding.

use std::process::ExitCode;

use anyhow::bail;
use custody_core::bound::Rule;
use serde_json::json;

use super::{Global, env_name, var_name};
use crate::access;
use crate::input::SecretInput;
use crate::output;

/// Where a variable's value may go (shared by `set` and `bind`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BindingArgs {
    /// Bind the value to a destination, `https://HOST[:PORT]` (repeatable):
    /// the child gets a placeholder, the lease's proxy puts the value in.
    #[arg(long = "bind", value_name = "URL")]
    pub bind: Vec<String>,
    /// The header the value goes in, `{value}` standing for it (default
    /// `Authorization: Bearer {value}`).
    #[arg(long, value_name = "'NAME: …{value}…'", requires = "bind")]
    pub header: Option<String>,
    /// Methods allowed (`GET,POST`; repeatable; default any).
    #[arg(long = "method", value_name = "METHODS", requires = "bind")]
    pub methods: Vec<String>,
    /// Paths allowed (`/v1/*` for a prefix; repeatable; default any).
    #[arg(long = "path", value_name = "PATH", requires = "bind")]
    pub paths: Vec<String>,
    /// Where the value goes: `header` (default: the --header), or, for APIs
    /// that take it there, `query` or `body` (in place of the placeholder).
    #[arg(long = "in", value_name = "header|query|body", requires = "bind")]
    pub place: Option<String>,
}

impl BindingArgs {
    /// The rules, or `None` when no `--bind` was given.
    pub fn rules(&self) -> anyhow::Result<Option<Vec<Rule>>> {
        if self.bind.is_empty() {
            return Ok(None);
        }
        let place = match &self.place {
            Some(p) => custody_core::bound::Place::parse(p)?,
            None => custody_core::bound::Place::Header,
        };
        let rules = self
            .bind
            .iter()
            .map(|d| {
                Rule::parse(d, self.header.as_deref(), &self.methods, &self.paths)
                    .map(|r| r.with_place(place))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(rules))
    }
}

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// The environment.
    env: String,
    /// The variable (it must exist).
    var: String,
    #[command(flatten)]
    binding: BindingArgs,
    /// Remove every binding (the value goes to the child again).
    #[arg(long, conflicts_with = "bind")]
    clear: bool,
    /// Read the approval PIN from a line of stdin (after the passphrase
    /// line with `--passphrase-stdin`).
    #[arg(long)]
    pin_stdin: bool,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: BindArgs) -> anyhow::Result<ExitCode> {
    let env = env_name(&a.env)?;
    let var = var_name(&a.var)?;
    let rules = match (a.binding.rules()?, a.clear) {
        (Some(r), false) => r,
        (None, true) => Vec::new(),
        _ => bail!("give --bind URL (with --header, --method, --path), or --clear"),
    };
    let mut vault = access::open_to_change(g, secrets, a.pin_stdin)?;
    vault.bind_variable(&env, &var, &rules)?;
    if g.json {
        let shown: Vec<String> = rules.iter().map(Rule::destination).collect();
        output::json(&json!({
            "environment": env.as_str(),
            "variable": var.as_str(),
            "bound_to": shown,
        }))?;
    } else if rules.is_empty() {
        println!("{env}/{var} is no longer bound: runs get its value again");
    } else {
        println!("{env}/{var} is bound to:");
        for r in &rules {
            println!("  {} ({}: {})", r.destination(), r.header, r.template);
        }
        println!("Runs get a placeholder; the lease's proxy puts the value in there only.");
    }
    Ok(ExitCode::SUCCESS)
}
