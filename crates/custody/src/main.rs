//! `custody`: the command-line front end. Libraries do the work; this binary
//! parses arguments, asks for secrets on a hidden prompt or stdin, and prints
//! names, never values.
#![forbid(unsafe_code)]

mod access;
mod cmd;
mod input;
mod mcp_install;
mod output;
mod sandbox;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for a wrong passphrase or PIN.
const EXIT_AUTH: u8 = 2;

fn main() -> ExitCode {
    // Before anything reads a secret: no same-user ptrace, no memory reads
    // through /proc, no core dumps (best effort; `custody daemon` reports
    // what it could not apply).
    let _ = custody_broker::harden_process();
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the context chain on one line; every message in
            // it is built from names and paths, never values.
            eprintln!("custody: error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    use custody_core::vault::VaultError;
    if let Some(VaultError::WrongPassphrase) = err.downcast_ref::<VaultError>() {
        return EXIT_AUTH;
    }
    match err
        .downcast_ref::<access::BrokerFailure>()
        .and_then(|b| b.0.code())
    {
        Some("wrong_passphrase" | "wrong_pin") => EXIT_AUTH,
        _ => 1,
    }
}
