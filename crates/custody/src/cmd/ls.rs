//! `custody ls [ENV]`: variables by name; never values.

use std::process::ExitCode;

use custody_core::mask::MIN_MASKABLE_LEN;
use custody_core::vault::VariableInfo;
use serde::Serialize;

use super::{Global, env_name};
use crate::access;
use crate::input::SecretInput;
use crate::output::{self, cell, timestamp};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this environment (default: all).
    env: Option<String>,
}

#[derive(Serialize)]
struct Row {
    environment: String,
    #[serde(flatten)]
    variable: VariableInfo,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: LsArgs) -> anyhow::Result<ExitCode> {
    let only = a.env.as_deref().map(env_name).transpose()?;
    let mut vault = access::open(g, secrets)?;
    let envs = match only {
        Some(e) => vec![e],
        None => vault
            .environments()?
            .into_iter()
            .map(|e| env_name(&e.name))
            .collect::<anyhow::Result<_>>()?,
    };
    let mut rows = Vec::new();
    for env in envs {
        for variable in vault.variables(&env)? {
            rows.push(Row {
                environment: env.to_string(),
                variable,
            });
        }
    }
    if g.json {
        output::json(&rows)?;
    } else if rows.is_empty() {
        println!("No variables yet: `custody set ENV VAR`.");
    } else {
        // Columns as wide as their widest cell (a dynamic kind names its
        // source, `postgres:main`), so rows line up whatever they hold.
        let name_w = rows
            .iter()
            .map(|r| r.environment.len() + 1 + r.variable.name.len())
            .chain([20])
            .max()
            .unwrap_or(20);
        let kind_w = rows
            .iter()
            .map(|r| r.variable.kind_label().chars().count())
            .chain([4])
            .max()
            .unwrap_or(4);
        println!(
            "{:<name_w$} {:<kind_w$} {:<5} {:<20}  DESCRIPTION",
            "ENVIRONMENT/VARIABLE", "KIND", "VALUE", "UPDATED"
        );
        for r in &rows {
            let v = &r.variable;
            println!(
                "{:<name_w$} {:<kind_w$} {:<5} {:<20}  {}",
                format!("{}/{}", r.environment, v.name),
                crate::output::shown(&v.kind_label()),
                match (v.kind, v.is_set) {
                    (custody_core::vault::VarKind::Dynamic, _) => "lease",
                    (_, true) => "set",
                    (_, false) => "empty",
                },
                timestamp(v.updated_at),
                cell(&v.description, 50)
            );
        }
    }
    for r in rows.iter().filter(|r| r.variable.too_short_to_mask) {
        eprintln!(
            "warning: {}/{} is shorter than {MIN_MASKABLE_LEN} bytes: too short to mask reliably in command output",
            r.environment, r.variable.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
