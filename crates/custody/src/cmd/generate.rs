//! `custody generate ENV VAR`: a random value that nobody sees.

use std::process::ExitCode;

use custody_core::generate::{self, Alphabet};
use custody_core::vault::VariableUpdate;
use serde_json::json;

use super::{Global, KindArg, env_name, var_name};
use crate::access;
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AlphabetArg {
    Alnum,
    Hex,
    Base64url,
    Symbols,
}

impl From<AlphabetArg> for Alphabet {
    fn from(a: AlphabetArg) -> Self {
        match a {
            AlphabetArg::Alnum => Alphabet::Alnum,
            AlphabetArg::Hex => Alphabet::Hex,
            AlphabetArg::Base64url => Alphabet::Base64url,
            AlphabetArg::Symbols => Alphabet::Symbols,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The environment.
    env: String,
    /// The variable.
    var: String,
    /// Number of characters.
    #[arg(long, default_value_t = 32)]
    length: usize,
    /// Characters to draw from.
    #[arg(long, value_enum, default_value = "alnum")]
    alphabet: AlphabetArg,
    /// What the variable is for (agents can read it).
    #[arg(long, short = 'd')]
    description: Option<String>,
    /// How the value reaches a process.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Read the approval PIN from a line of stdin (after the passphrase
    /// line with `--passphrase-stdin`; before a value read from stdin).
    #[arg(long)]
    pin_stdin: bool,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let env = env_name(&a.env)?;
    let var = var_name(&a.var)?;
    let alphabet = Alphabet::from(a.alphabet);
    if !(generate::MIN_LENGTH..=generate::MAX_LENGTH).contains(&a.length) {
        // Say so before asking for the passphrase.
        return Err(generate::GenerateError::Length(a.length).into());
    }
    let mut vault = access::open_to_change(g, secrets, a.pin_stdin)?;
    let update = VariableUpdate {
        description: a.description,
        kind: a.kind.map(Into::into),
        source: None,
        bindings: None,
    };
    let created = vault.generate(&env, &var, a.length, alphabet, &update)?;
    if g.json {
        output::json(&json!({
            "environment": env.as_str(),
            "variable": var.as_str(),
            "created": created,
            "length": a.length,
            "alphabet": alphabet,
        }))?;
    } else {
        println!(
            "Generated {env}/{var}: {} random {} characters (never shown)",
            a.length,
            format!("{alphabet:?}").to_lowercase()
        );
    }
    Ok(ExitCode::SUCCESS)
}
