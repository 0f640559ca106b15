//! `custody env create|ls|rm|describe`.

use std::process::ExitCode;

use anyhow::bail;
use serde_json::json;

use super::{Global, env_name};
use crate::access;
use crate::input::{self, SecretInput};
use crate::output::{self, cell, timestamp};

#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment.
    Create {
        /// Name: lowercase letters, digits, '.', '_', '-' (e.g. shop-dev).
        name: String,
        /// What the environment is for (agents can read it).
        #[arg(long, short = 'd', default_value = "")]
        description: String,
        /// Read the approval PIN from a line of stdin.
        #[arg(long)]
        pin_stdin: bool,
    },
    /// List environments.
    Ls,
    /// Remove an environment and every variable in it.
    Rm {
        /// The environment.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Read the approval PIN from a line of stdin.
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Show an environment, or change its description.
    Describe {
        /// The environment.
        name: String,
        /// Set a new description instead of showing.
        #[arg(long, short = 'd')]
        description: Option<String>,
        /// Read the approval PIN from a line of stdin (with `-d`).
        #[arg(long)]
        pin_stdin: bool,
    },
}

pub fn run(g: &Global, secrets: &mut SecretInput, c: EnvCommand) -> anyhow::Result<ExitCode> {
    match c {
        EnvCommand::Create {
            name,
            description,
            pin_stdin,
        } => {
            let name = env_name(&name)?;
            let mut vault = access::open_to_change(g, secrets, pin_stdin)?;
            vault.create_environment(&name, &description)?;
            if g.json {
                output::json(&json!({ "created": name.as_str() }))?;
            } else {
                println!("Created environment {name}");
            }
        }
        EnvCommand::Ls => {
            let mut vault = access::open(g, secrets)?;
            let envs = vault.environments()?;
            if g.json {
                output::json(&envs)?;
            } else if envs.is_empty() {
                println!("No environments yet: `custody env create NAME`.");
            } else {
                println!(
                    "{:<24} {:>9}  {:<20}  DESCRIPTION",
                    "ENVIRONMENT", "VARIABLES", "UPDATED"
                );
                for e in envs {
                    println!(
                        "{:<24} {:>9}  {:<20}  {}",
                        e.name,
                        e.variable_count,
                        timestamp(e.updated_at),
                        cell(&e.description, 60)
                    );
                }
            }
        }
        EnvCommand::Rm {
            name,
            yes,
            pin_stdin,
        } => {
            let name = env_name(&name)?;
            let mut vault = access::open_to_change(g, secrets, pin_stdin)?;
            let info = vault.environment(&name)?;
            if !yes {
                if !input::has_tty() {
                    bail!(
                        "refusing to remove environment '{name}' without confirmation: pass --yes"
                    );
                }
                let q = format!(
                    "Remove environment '{name}' and its {} variable(s)?",
                    info.variable_count
                );
                if !input::confirm(&q)? {
                    bail!("not removed");
                }
            }
            let removed = vault.remove_environment(&name)?;
            if g.json {
                output::json(&json!({ "removed": name.as_str(), "variables": removed }))?;
            } else {
                println!("Removed environment {name} and {removed} variable(s)");
            }
        }
        EnvCommand::Describe {
            name,
            description,
            pin_stdin,
        } => {
            let name = env_name(&name)?;
            let mut vault = access::open_to_change(g, secrets, pin_stdin)?;
            if let Some(d) = description {
                vault.describe_environment(&name, &d)?;
                if !g.json {
                    println!("Updated the description of {name}");
                }
            }
            let info = vault.environment(&name)?;
            let vars = vault.variables(&name)?;
            if g.json {
                output::json(&json!({ "environment": info, "variables": vars }))?;
            } else {
                println!("Environment: {}", info.name);
                println!("Description: {}", output::field(&info.description));
                println!("Created:     {}", timestamp(info.created_at));
                println!("Updated:     {}", timestamp(info.updated_at));
                println!("Variables:   {}", info.variable_count);
                for v in vars {
                    let state = if v.is_set { "set" } else { "empty" };
                    println!(
                        "  {:<32} {:<4} {:<5} {}",
                        v.name,
                        v.kind.as_str(),
                        state,
                        cell(&v.description, 60)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
