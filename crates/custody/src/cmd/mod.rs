//! The subcommands: one file each, dispatched from [`Command`].

mod env;
mod generate;
mod import;
mod init;
mod ls;
mod passwd;
mod set;
mod unset;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::input::SecretInput;

/// custody: agents get access, never custody.
///
/// A local credential broker for AI coding agents. Values are never accepted
/// on the command line: they come from a hidden prompt or stdin.
#[derive(Debug, Parser)]
#[command(name = "custody", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Read the vault passphrase from the first line of stdin (for scripts).
    #[arg(long, global = true)]
    pub passphrase_stdin: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new vault (passphrase and approval PIN).
    Init(init::InitArgs),
    /// Change the vault passphrase (re-wraps the vault key only).
    Passwd(passwd::PasswdArgs),
    /// Create, list, describe and remove environments.
    #[command(subcommand)]
    Env(env::EnvCommand),
    /// Store a variable's value (hidden prompt, or stdin).
    Set(set::SetArgs),
    /// Store a random value that nobody sees.
    Generate(generate::GenerateArgs),
    /// Remove a variable.
    Unset(unset::UnsetArgs),
    /// List variables: names, kinds, descriptions; never values.
    Ls(ls::LsArgs),
    /// Import a dotenv file into an environment.
    Import(import::ImportArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut secrets = SecretInput::new();
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, &mut secrets, a),
        Command::Passwd(a) => passwd::run(g, &mut secrets, a),
        Command::Env(c) => env::run(g, &mut secrets, c),
        Command::Set(a) => set::run(g, &mut secrets, a),
        Command::Generate(a) => generate::run(g, &mut secrets, a),
        Command::Unset(a) => unset::run(g, &mut secrets, a),
        Command::Ls(a) => ls::run(g, &mut secrets, a),
        Command::Import(a) => import::run(g, &mut secrets, a),
    }
}

/// Parses an environment name at the edge, with the rule in the error.
pub fn env_name(raw: &str) -> anyhow::Result<custody_core::names::EnvName> {
    Ok(custody_core::names::EnvName::new(raw)?)
}

/// Parses a variable name at the edge, with the rule in the error.
pub fn var_name(raw: &str) -> anyhow::Result<custody_core::names::VarName> {
    Ok(custody_core::names::VarName::new(raw)?)
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Injected as an environment variable.
    Env,
    /// Delivered as the path of an ephemeral 0600 file.
    File,
}

impl From<KindArg> for custody_core::vault::VarKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Env => custody_core::vault::VarKind::Env,
            KindArg::File => custody_core::vault::VarKind::File,
        }
    }
}
