//! `custody run -e ENV -- cmd args`: run a command with an environment's
//! secrets injected by the broker, output masked, exit code passed through.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use custody_broker::protocol::{Event, Request, RunResult, RunSpec, unb64};

use super::Global;
use crate::access::{self, broker_err};
use crate::input::SecretInput;

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Environment whose variables are injected (repeat for several).
    #[arg(short = 'e', long = "env", required = true)]
    environments: Vec<String>,
    /// Only these variables (comma-separated; VAR or ENV/VAR).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Hard deadline: the process group is killed after this long.
    #[arg(long, default_value = "10m", value_parser = super::duration_arg)]
    timeout: super::DurationArg,
    /// Never ask for approval here; wait for `custody approve` elsewhere.
    #[arg(long)]
    no_prompt: bool,
    /// Pass only PATH, HOME, USER, LANG, TERM and TMPDIR from this
    /// environment (by default the command gets all of it, except variables
    /// that change how programs load, such as LD_PRELOAD, NODE_OPTIONS or
    /// RUSTFLAGS: put those in the command, `-- env RUSTFLAGS=… cargo build`).
    #[arg(long)]
    clean_env: bool,
    /// Run the command on a terminal of its own (the default when stdin and
    /// stdout are terminals): it sees a terminal, so colours and prompts
    /// work, its output is one stream masked in the order it was written,
    /// and what you type (Ctrl-C too) goes to it.
    #[arg(long, conflicts_with = "no_pty")]
    pty: bool,
    /// Pipes instead of a terminal: stdin is /dev/null, stdout and stderr
    /// stay apart (each masked on its own).
    #[arg(long)]
    no_pty: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(g: &Global, _s: &mut SecretInput, a: RunArgs) -> anyhow::Result<ExitCode> {
    let timeout = a.timeout.value;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    // Your environment, as `op run` passes it (the broker drops what only a
    // terminal may not pass, see `lease::passthrough_for`); `--clean-env`:
    // the few variables an agent's command gets.
    let passthrough: BTreeMap<String, String> = if a.clean_env {
        custody_broker::lease::PASSTHROUGH
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect()
    } else {
        custody_broker::lease::caller_environment()
    };
    let spec = RunSpec {
        argv: a.command.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        environments: a.environments.clone(),
        only: a.only.clone(),
        timeout_secs: timeout.as_secs().max(1),
        passthrough,
        capture_limit: None,
        wait_secs: None,
        pty: super::run_pty::wanted(a.pty, a.no_pty).then(super::run_pty::size),
    };
    let mut client = access::require_broker()?;
    let mut typist = match spec.pty {
        Some(_) => Some(client.typist().map_err(broker_err)?),
        None => None,
    };
    let mut raw: Option<super::run_pty::RawMode> = None;
    let inline = !a.no_prompt && crate::input::has_tty();
    let mut approve_error: Option<anyhow::Error> = None;
    let result = client.call_streaming(Request::Run(spec), &mut |event| match event {
        Event::Output { stream, data } => {
            let bytes = unb64(&data).unwrap_or_default();
            if stream == "stderr" {
                let _ = std::io::stderr().write_all(&bytes);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
        }
        Event::Pending { request_id, .. } => {
            if inline {
                if let Err(e) = super::approve::inline(g, &request_id) {
                    approve_error = Some(e);
                }
            } else {
                eprintln!(
                    "custody: waiting for approval of request {request_id}: run `custody approve {request_id}` in another terminal"
                );
            }
        }
        Event::Started { .. } => {
            if let Some(t) = typist.take() {
                raw = Some(super::run_pty::start(t));
            }
        }
        _ => {}
    });
    // The terminal as it was before anything more is printed.
    drop(raw);
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            if let Some(a) = approve_error {
                eprintln!("custody: approval failed: {a:#}");
            }
            return Err(broker_err(e));
        }
    };
    if g.json {
        crate::output::json(&v)?;
    }
    let r: RunResult =
        serde_json::from_value(v).context("unexpected run result from the broker")?;
    for leak in &r.leaks {
        eprintln!(
            "custody: warning: {} now holds the value of {} (written during this run): remove it and never commit it",
            crate::output::field(&leak.path),
            crate::output::field(&leak.variable),
        );
    }
    match r.reason.as_str() {
        "deadline" => eprintln!(
            "custody: the command hit its {} deadline and was killed",
            a.timeout.text
        ),
        "revoked" => eprintln!(
            "custody: the lease was revoked (`custody revoke`) and the command was killed"
        ),
        "locked" => {
            eprintln!("custody: the vault was locked and the command was killed")
        }
        "shutdown" => {
            eprintln!("custody: the broker shut down and the command was killed")
        }
        _ => {}
    }
    if let Some(c) = r.exit_code {
        return Ok(ExitCode::from(u8::try_from(c).unwrap_or(1)));
    }
    if let Some(sig) = r.signal {
        return Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)));
    }
    Ok(ExitCode::from(1))
}
