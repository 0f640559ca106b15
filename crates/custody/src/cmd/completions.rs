//! `custody completions SHELL` and `custody man`: generated from the same
//! command definitions clap parses, so they never drift from the CLI.

use std::process::ExitCode;

use super::Global;
use crate::input::SecretInput;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {}

/// Prints the completion script for the shell.
pub fn completions(
    _g: &Global,
    _s: &mut SecretInput,
    a: CompletionsArgs,
) -> anyhow::Result<ExitCode> {
    super::lazy::build_eagerly();
    let mut cmd = super::command();
    clap_complete::generate(a.shell, &mut cmd, "custody", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Prints the man page (roff) on stdout.
pub fn man(_g: &Global, _s: &mut SecretInput, _a: ManArgs) -> anyhow::Result<ExitCode> {
    super::lazy::build_eagerly();
    let cmd = super::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
