//! `custody approve` and `custody deny`: the human's side of a request.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use custody_broker::protocol::{Approval, ApprovalScope, Event, Request, ServerFrame};
use custody_core::secret::Pin;
use serde_json::{Value, json};

use super::Global;
use crate::access::{self, broker_err};
use crate::input::{self, SecretInput};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The request (from `custody approve --list`); none: interactive queue.
    id: Option<String>,
    /// Allow this one run (the default).
    #[arg(long, conflicts_with = "for_")]
    once: bool,
    /// Allow this exact command for a while, e.g. 15m.
    #[arg(long = "for", value_name = "DURATION", value_parser = super::duration_arg)]
    for_: Option<super::DurationArg>,
    /// Read the approval PIN from the first line of stdin.
    #[arg(long)]
    pin_stdin: bool,
    /// List pending requests and exit.
    #[arg(long)]
    list: bool,
    /// The queue rings the terminal's bell and, where a session bus
    /// exists, shows a desktop notification per request: not the latter.
    #[arg(long)]
    no_notify: bool,
}

#[derive(Debug, clap::Args)]
pub struct DenyArgs {
    /// The request.
    id: String,
}

fn scope(a: &ApproveArgs) -> anyhow::Result<ApprovalScope> {
    match &a.for_ {
        None => Ok(ApprovalScope::Once),
        Some(d) => Ok(ApprovalScope::For {
            secs: d.value.as_secs(),
        }),
    }
}

/// Most differing variables an agent's request lists one per line.
const MAX_ENV_LINES: usize = 24;

/// The passed-through variables whose value differs from this terminal's
/// (an agent's own `PATH` first, say), one per line.
fn differing_env(p: &Value) -> String {
    let mut out = String::new();
    // What an agent passes is its choice: every variable that differs from
    // yours is shown (`HTTPS_PROXY`, `PGHOST` or a CA bundle point a command
    // elsewhere). From a terminal, those that decide what runs and where;
    // its other variables only by count.
    let agent = p["agent"] == json!(true);
    let mut shown = 0;
    let mut others = 0;
    for (k, v) in p["passthrough"].as_object().into_iter().flatten() {
        let theirs = v.as_str().unwrap_or_default();
        if std::env::var(k).ok().as_deref() == Some(theirs) {
            continue;
        }
        let decides = custody_broker::lease::PASSTHROUGH.contains(&k.as_str());
        if decides || (agent && shown < MAX_ENV_LINES) {
            shown += 1;
            // PATH and the like in full; an agent's other values capped.
            let value = |v: &str| {
                if decides {
                    output::shown(v)
                } else {
                    output::field(v)
                }
            };
            out.push_str(&format!(
                "\n  env differs:  {}={} (yours: {})",
                output::shown(k),
                value(theirs),
                value(&std::env::var(k).unwrap_or_else(|_| "unset".into()))
            ));
        } else {
            others += 1;
        }
    }
    if others > 0 {
        out.push_str(&format!(
            "\n  env:          {others} more variable(s) differ from yours (`custody --json approve --list` shows them)"
        ));
    }
    for f in p["files"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  file bound:   {} (its content as of now)",
            output::shown(f.as_str().unwrap_or_default())
        ));
    }
    out
}

/// Warnings for the approval screen: what in the request is unusual.
fn flags(p: &Value) -> String {
    let mut out = String::new();
    let fields = [
        p["requester"].as_str(),
        p["client"].as_str(),
        p["cwd"].as_str(),
        p["program"].as_str(),
    ];
    let argv_hidden = p["argv"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| output::has_hidden(x.as_str().unwrap_or_default()));
    if argv_hidden || fields.into_iter().flatten().any(output::has_hidden) {
        out.push_str("\n  WARNING:      contains control or invisible characters (shown as \\x.. / \\u.... escapes)");
    }
    if let Some(age) = p["cwd"]
        .as_str()
        .and_then(|c| std::fs::metadata(c).ok())
        .and_then(|m| m.created().or_else(|_| m.modified()).ok())
        .and_then(|t| t.elapsed().ok())
        && age.as_secs() < 600
    {
        out.push_str(&format!(
            "\n  WARNING:      the working directory was created {} seconds ago",
            age.as_secs()
        ));
    }
    out
}

fn describe(p: &Value) -> String {
    format!(
        "request {}\n  from:         {}\n  command:      {}\n  program:      {}{}\n  in:           {}\n  environments: {}\n  variables:    {}\n  timeout:      {}s{}{}",
        output::field(p["id"].as_str().unwrap_or_default()),
        output::field(p["requester"].as_str().unwrap_or_default()),
        super::argv_block(&p["argv"], "                "),
        output::field(p["program"].as_str().unwrap_or("(not resolved)")),
        differing_env(p),
        output::field(p["cwd"].as_str().unwrap_or_default()),
        list(&p["environments"]),
        variables(p),
        p["timeout_secs"],
        if p["always_approve"] == json!(true) {
            "\n  policy:       this environment needs a fresh approval for every run"
        } else {
            ""
        },
        flags(p)
    )
}

/// The variables, each bound one with the destinations its value can reach
/// (the command itself gets a placeholder).
fn variables(p: &Value) -> String {
    let Some(bound) = p["bound"].as_object().filter(|b| !b.is_empty()) else {
        return list(&p["variables"]);
    };
    let mut out = list(&p["variables"]);
    for (var, dests) in bound {
        out.push_str(&format!(
            "\n                {} is bound: only to {} (the command gets a placeholder)",
            output::field(var),
            list(dests)
        ));
    }
    out
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(output::field)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn send_approval(id: &str, scope: ApprovalScope, pin: &Pin) -> anyhow::Result<Approval> {
    let mut c = access::require_broker()?;
    c.call_with_pin(
        Request::Approve {
            request_id: id.to_owned(),
            scope,
        },
        pin.expose(),
        None,
    )
    .map_err(broker_err)
    .and_then(|v| serde_json::from_value(v).context("unexpected approval answer from the broker"))
}

pub fn approve(g: &Global, secrets: &mut SecretInput, a: ApproveArgs) -> anyhow::Result<ExitCode> {
    let mut client = access::require_broker()?;
    if a.list {
        let pending = client.call(Request::Pending).map_err(broker_err)?;
        if g.json {
            output::json(&pending)?;
        } else if pending.as_array().is_none_or(Vec::is_empty) {
            println!("No pending requests.");
        } else {
            for p in pending.as_array().into_iter().flatten() {
                println!("{}\n", describe(p));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(id) = a.id.clone() else {
        drop(client);
        return queue(g, !a.no_notify);
    };
    let scope = scope(&a)?;
    let pin = if a.pin_stdin {
        secrets.pin()?
    } else {
        let pending = client.call(Request::Pending).map_err(broker_err)?;
        if let Some(p) = pending
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == json!(id))
        {
            eprintln!("{}", describe(p));
        }
        input::prompt_pin("Approval PIN: ", "--pin-stdin")?
    };
    let v = send_approval(&id, scope, &pin)?;
    if g.json {
        output::json(&v)?;
    } else {
        println!("Approved {id} (grant {})", v.grant_id);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn deny(g: &Global, _s: &mut SecretInput, a: DenyArgs) -> anyhow::Result<ExitCode> {
    let mut client = access::require_broker()?;
    let v = client
        .call(Request::Deny {
            request_id: a.id.clone(),
        })
        .map_err(broker_err)?;
    if g.json {
        output::json(&v)?;
    } else {
        println!("Denied {}", a.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal about one request: once / for N / deny, then the PIN.
fn decide_on_tty(id: &str, details: Option<&Value>) -> anyhow::Result<Option<String>> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    if let Some(p) = details {
        writeln!(tty, "\n{}", describe(p))?;
    } else {
        writeln!(tty, "\nrequest {id}")?;
    }
    write!(
        tty,
        "Approve? [o]nce, [f]or a duration (e.g. f 15m), [d]eny, [s]kip: "
    )?;
    tty.flush()?;
    let mut answer = String::new();
    BufReader::new(tty.try_clone()?).read_line(&mut answer)?;
    let answer = answer.trim();
    let scope = match answer.split_whitespace().next().unwrap_or("") {
        "o" | "once" | "y" | "yes" => ApprovalScope::Once,
        "f" | "for" => {
            let d = answer.split_whitespace().nth(1).unwrap_or("15m");
            let secs = custody_core::duration::parse(d)
                .ok_or_else(|| anyhow!("'{d}' is not a duration like 15m"))?
                .as_secs();
            ApprovalScope::For { secs }
        }
        "d" | "deny" | "n" | "no" => {
            let mut c = access::require_broker()?;
            c.call(Request::Deny {
                request_id: id.to_owned(),
            })
            .map_err(broker_err)?;
            return Ok(Some(format!("denied {id}")));
        }
        _ => return Ok(None),
    };
    // A wrong PIN says so and asks again (each try counts toward the
    // lockout, which ends the loop by locking the vault).
    for _ in 0..3 {
        let pin = input::prompt_pin("Approval PIN: ", "--pin-stdin")?;
        match send_approval(id, scope, &pin) {
            Ok(v) => {
                return Ok(Some(format!("approved {id} (grant {})", v.grant_id)));
            }
            Err(e)
                if e.downcast_ref::<access::BrokerFailure>()
                    .and_then(|b| b.0.code())
                    == Some("wrong_pin") =>
            {
                writeln!(tty_for_messages()?, "custody: {e:#}; try again")?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(format!(
        "not approved: three wrong PINs; approve later with `custody approve {id}`"
    )))
}

fn tty_for_messages() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open("/dev/tty")
}

/// Inline approval from `custody run` on a terminal.
pub fn inline(_g: &Global, request_id: &str) -> anyhow::Result<()> {
    let mut c = access::require_broker()?;
    let pending = c.call(Request::Pending).map_err(broker_err)?;
    let details = pending
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"] == json!(request_id))
        .cloned();
    match decide_on_tty(request_id, details.as_ref())? {
        Some(msg) => eprintln!("custody: {msg}"),
        None => eprintln!(
            "custody: skipped; waiting for `custody approve {request_id}` from another terminal"
        ),
    }
    Ok(())
}

/// The interactive queue: shows each pending request as it arrives.
fn queue(_g: &Global, notify: bool) -> anyhow::Result<ExitCode> {
    if !input::has_tty() {
        bail!(
            "no terminal for the interactive queue: pass a request id (see `custody approve --list --json`)"
        );
    }
    let mut lister = access::require_broker()?;
    let mut watcher = access::require_broker()?;
    watcher.call(Request::Watch).map_err(broker_err)?;
    eprintln!("Waiting for requests (Ctrl-C to stop)...");
    let mut seen = std::collections::BTreeSet::new();
    // Those already waiting (listed once the watch is on, so none falls
    // between); after that each event carries its request.
    let mut arrived: Vec<Value> = lister
        .call(Request::Pending)
        .map_err(broker_err)?
        .as_array()
        .cloned()
        .unwrap_or_default();
    loop {
        for p in arrived.drain(..) {
            let id = p["id"].as_str().unwrap_or_default().to_owned();
            if seen.insert(id.clone()) {
                // The terminal's bell (and the desktop's notification): a
                // request is waiting for the human.
                eprint!("\x07");
                if notify {
                    crate::notify::request_waiting(
                        &id,
                        p["requester"].as_str().unwrap_or_default(),
                        &super::argv_line(&p["argv"]),
                    );
                }
                match decide_on_tty(&id, Some(&p)) {
                    Ok(Some(msg)) => eprintln!("{msg}"),
                    Ok(None) => eprintln!("skipped {id}"),
                    Err(e) => eprintln!("custody: {e:#}"),
                }
            }
        }
        // Block until the broker pushes something.
        match watcher.read().map_err(broker_err)? {
            ServerFrame::Event {
                event: Event::Locked,
                ..
            } => {
                eprintln!("The vault was locked.");
                return Ok(ExitCode::SUCCESS);
            }
            ServerFrame::Event {
                event: Event::Pending { request, .. },
                ..
            } => match request {
                Some(r) => arrived.push(serde_json::to_value(*r).unwrap_or_default()),
                // An older broker: ask.
                None => {
                    let all = lister.call(Request::Pending).map_err(broker_err)?;
                    arrived.extend(all.as_array().cloned().unwrap_or_default());
                }
            },
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Untrusted text in the approval cannot rewrite the human's screen.
    #[test]
    fn escapes_hide_nothing_on_the_approval_screen() {
        let p = json!({
            "id": "r-1", "requester": "agent codex (pid 1)",
            "argv": ["sh", "-c", "printenv K > loot\r\u{1b}[2K  command:      cargo test"],
            "cwd": "/tmp/x\u{1b}[1A\u{202e}", "program": "/bin/sh",
            "environments": ["e"], "variables": ["e/K"], "timeout_secs": 60,
        });
        let d = describe(&p);
        assert!(
            !d.chars().any(|c| c != '\n' && output::is_hidden(c)),
            "{d:?}"
        );
        assert!(d.contains("(one argument per line, escaped)"), "{d}");
        assert!(d.contains("[2] printenv K > loot\\x0d\\x1b[2K"), "{d}");
        assert!(d.contains("/tmp/x\\x1b[1A\\u202e"), "{d}");
        assert!(d.contains("WARNING:      contains control"), "{d}");
        // An ordinary request stays on one line, unflagged.
        let plain = json!({"id": "r-2", "requester": "terminal session 1",
            "argv": ["cargo", "test"], "cwd": "/", "program": "/usr/bin/cargo",
            "environments": ["e"], "variables": [], "timeout_secs": 60});
        let d = describe(&plain);
        assert!(
            d.contains("command:      cargo test") && !d.contains("WARNING"),
            "{d}"
        );
    }
}
