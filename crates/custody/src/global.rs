//! The options every subcommand takes, in a module of their own: the
//! subcommands and [`crate::access`] read them, and neither imports the
//! other for it.

use clap::Args;

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
