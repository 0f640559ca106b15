//! `custody`: the command-line front end. Libraries do the work; this binary
//! parses arguments, asks for secrets on a hidden prompt or stdin, and prints
//! names, never values.
#![forbid(unsafe_code)]

mod access;
mod cmd;
mod global;
mod input;
mod mcp_install;
mod notify;
mod output;
mod sandbox;

use std::process::ExitCode;

use clap::FromArgMatches;

/// Exit code for a wrong passphrase or PIN.
const EXIT_AUTH: u8 = 2;

fn main() -> ExitCode {
    // Before anything reads a secret: no same-user ptrace, no memory reads
    // through /proc, no core dumps (best effort; `custody daemon` reports
    // what it could not apply).
    let _ = custody_broker::harden_process();
    quiet_on_broken_pipe();
    let cli = match cmd::Cli::from_arg_matches(&cmd::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) if broken_pipe(&err) => ExitCode::from(EXIT_BROKEN_PIPE),
        Err(err) => {
            // `{:#}` prints the context chain on one line; every message in
            // it is built from names and paths, never values.
            eprintln!("custody: error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Exit code when whoever reads our output went away (`custody ls | head`):
/// what a shell reports for a process killed by SIGPIPE, without a message.
const EXIT_BROKEN_PIPE: u8 = 128 + 13;

fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout's reader has gone: end quietly instead, as
/// a program killed by SIGPIPE would, rather than print a panic.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.contains("Broken pipe") {
            std::process::exit(i32::from(EXIT_BROKEN_PIPE));
        }
        default(info);
    }));
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
