//! `custody demo`: a guided tour in a throwaway vault. It makes a vault and
//! an environment with a generated secret, starts the broker, starts
//! `custody mcp` and drives it over stdio the way an agent would, asks the
//! human to approve the agent's command, and shows what the agent got back:
//! masked output, never the value. Then the audit trail and its check.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use custody_broker::protocol::{ApprovalScope, Request};
use serde_json::{Value, json};

use super::Global;
use crate::input::{self, SecretInput};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Approve automatically with the demo PIN (for CI; no terminal needed).
    #[arg(long)]
    yes: bool,
    /// Keep the throwaway directory afterwards (its path is printed).
    #[arg(long)]
    keep: bool,
}

const ENV: &str = "demo-app";
const DEMO_PASSPHRASE: &str = "demo passphrase (throwaway vault)";

struct Tour {
    dir: PathBuf,
    exe: PathBuf,
    yes: bool,
}

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn say(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

impl Tour {
    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    fn runtime(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("CUSTODY_HOME", self.home())
            .env("CUSTODY_RUNTIME_DIR", self.runtime());
        c
    }

    /// Runs a custody subcommand with `stdin`, showing the command line
    /// (quoted, so it can be copied into a shell).
    fn custody(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        println!("   $ custody {}", super::argv_line(&json!(args)));
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running custody {}", args.join(" ")))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "custody {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for line in text.lines() {
            println!("     {line}");
        }
        Ok(text)
    }

    /// Locks and stops the demo's broker, if it runs.
    fn stop_broker(&self) {
        if let Ok(mut c) = self.broker() {
            let _ = c.call(Request::Lock);
            if let Ok(status) = c.status()
                && let Ok(pid) = i32::try_from(status.pid)
                && let Some(p) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
    }

    fn broker(&self) -> anyhow::Result<custody_broker::Client> {
        custody_broker::Client::connect(
            &self.runtime().join(custody_broker::paths::SOCKET_FILE),
            crate::access::client_info(),
        )
        .map_err(crate::access::broker_err)
    }
}

/// A JSON-RPC client over an MCP server's stdio.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    next: u64,
}

impl Agent {
    fn start(tour: &Tour) -> anyhow::Result<Agent> {
        // Through a shell that stays alive: the shell plays the agent client
        // (the MCP server's parent, which the broker registers as the agent),
        // so this demo process, which approves, is not in the agent's tree.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("\"$0\" mcp; exit $?")
            .arg(&tour.exe)
            .env("CUSTODY_HOME", tour.home())
            .env("CUSTODY_RUNTIME_DIR", tour.runtime())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `custody mcp`")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout: ChildStdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Agent {
            child,
            stdin,
            lines: rx,
            next: 1,
        })
    }

    fn send(&mut self, msg: &Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{msg}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        Ok(id)
    }

    /// Waits for the response to `id` (notifications are skipped).
    fn response(&mut self, id: u64, limit: Duration) -> anyhow::Result<Value> {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("no answer from `custody mcp` within {limit:?}"))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    bail!("MCP error: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.request(method, params)?;
        self.response(id, Duration::from_secs(30))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The structured result of a tool call (or its text when there is none).
fn tool_result(v: &Value) -> Value {
    if let Some(s) = v.get("structuredContent") {
        return s.clone();
    }
    let text = v["content"][0]["text"].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

/// On SIGINT, SIGTERM or SIGHUP: put the terminal back as it was, stop the
/// demo broker, remove the throwaway directory (unless `--keep`), exit 130.
fn on_interrupt(tour: &Tour, keep: bool) {
    let saved = rustix::termios::tcgetattr(std::io::stdin()).ok();
    let tour = Tour {
        dir: tour.dir.clone(),
        exe: tour.exe.clone(),
        yes: tour.yes,
    };
    super::on_signal_thread(move || async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        if let Some(t) = &saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
        tour.stop_broker();
        if keep {
            eprintln!(
                "\ncustody demo: interrupted; the demo directory is kept at {}",
                tour.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&tour.dir);
            eprintln!(
                "\ncustody demo: interrupted; the demo broker is stopped and its throwaway vault removed"
            );
        }
        std::process::exit(130);
    });
}

/// Approves `id` once: with `--yes` with the demo PIN; otherwise asks for
/// it, and again after a typo (three tries: each wrong one counts toward
/// the vault's lockout, as it would for real).
fn approve_with_pin(
    t: &Tour,
    broker: &mut custody_broker::Client,
    id: &str,
    pin: &str,
) -> anyhow::Result<()> {
    let request = || Request::Approve {
        request_id: id.to_owned(),
        scope: ApprovalScope::Once,
    };
    if t.yes {
        say(&format!(
            "  (--yes: approving once with the demo PIN {pin})"
        ));
        return broker
            .call_with_pin(request(), pin.as_bytes(), None)
            .map(|_| ())
            .map_err(crate::access::broker_err);
    }
    for attempt in 1..=3 {
        let typed =
            input::prompt_hidden(&format!("   Approval PIN (the demo's is {pin}): "), "--yes")?;
        match broker.call_with_pin(request(), &typed, None) {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("wrong_pin") && attempt < 3 => {
                say(&format!("Wrong PIN (the demo's is {pin}); try again."));
                // The exchange's connection is spent: a fresh one.
                *broker = t.broker()?;
            }
            Err(e) => return Err(crate::access::broker_err(e)),
        }
    }
    bail!("three wrong PINs: the request stays pending; the demo ends here")
}

fn demo_pin() -> anyhow::Result<String> {
    let b: [u8; 4] = custody_core::crypto::random_array()?;
    Ok(format!("{:06}", u32::from_le_bytes(b) % 1_000_000))
}

pub fn run(_g: &Global, _s: &mut SecretInput, a: DemoArgs) -> anyhow::Result<ExitCode> {
    let interactive = input::has_tty() && std::io::stdin().is_terminal();
    if !a.yes && !interactive {
        bail!("the demo asks you to approve on a terminal: run it in one, or pass --yes");
    }
    let dir = tempfile::Builder::new()
        .prefix("custody-demo-")
        .tempdir()
        .context("making the throwaway directory")?;
    let tour = Tour {
        dir: dir.path().to_owned(),
        exe: std::env::current_exe().context("finding the custody binary")?,
        yes: a.yes,
    };
    // Ctrl-C (or the terminal closing) at any step still cleans up: the
    // demo broker stopped, the throwaway directory removed, the terminal's
    // echo back on (a PIN prompt may have turned it off).
    on_interrupt(&tour, a.keep);
    let result = tour_run(&tour);
    // Always stop the demo broker.
    tour.stop_broker();
    if a.keep {
        let kept = dir.keep();
        println!("\nThe demo directory is kept at {}", kept.display());
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

fn tour_run(t: &Tour) -> anyhow::Result<()> {
    println!("custody demo: agents get access, never custody.");
    say(&format!(
        "Everything happens in a throwaway vault under {}.",
        t.dir.display()
    ));
    let pin = demo_pin()?;

    step(
        1,
        "A vault, encrypted with a passphrase, with an approval PIN",
    );
    say(&format!(
        "The demo's approval PIN is {pin}: you will type it when the agent asks to use a secret."
    ));
    say(
        "(This throwaway vault uses the fast test KDF; `custody init` uses Argon2id at 64 MiB, ~0.5 s.)",
    );
    t.custody(
        &[
            "init",
            "--passphrase-stdin",
            "--pin-stdin",
            "--insecure-fast-kdf",
        ],
        &format!("{DEMO_PASSPHRASE}\n{pin}\n"),
    )?;

    step(2, "An environment and a secret that nobody sees");
    t.custody(
        &[
            "--passphrase-stdin",
            "env",
            "create",
            ENV,
            "-d",
            "the demo app",
        ],
        &format!("{DEMO_PASSPHRASE}\n"),
    )?;
    t.custody(
        &[
            "--passphrase-stdin",
            "generate",
            ENV,
            "API_TOKEN",
            "--length",
            "40",
            "-d",
            "token for the demo API",
        ],
        &format!("{DEMO_PASSPHRASE}\n"),
    )?;

    step(3, "The broker holds the unlocked vault (like ssh-agent)");
    t.custody(
        &["unlock", "--passphrase-stdin"],
        &format!("{DEMO_PASSPHRASE}\n"),
    )?;

    step(4, "An agent connects over MCP and looks around");
    let mut agent = Agent::start(t)?;
    let init = agent.call(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "custody-demo-agent", "version": env!("CARGO_PKG_VERSION")}}),
    )?;
    agent.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
    say(&format!(
        "connected to {} (protocol {})",
        init["serverInfo"]["name"].as_str().unwrap_or("custody"),
        init["protocolVersion"].as_str().unwrap_or("?")
    ));
    let tools = agent.call("tools/list", json!({}))?;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["name"].as_str())
        .collect();
    say(&format!("tools: {}", names.join(", ")));
    let envs = agent.call(
        "tools/call",
        json!({"name": "list_environments", "arguments": {}}),
    )?;
    say("list_environments → (names and descriptions only; never a value)");
    for line in serde_json::to_string_pretty(&tool_result(&envs))?.lines() {
        say(&format!("  {line}"));
    }

    step(5, "The agent asks to run a command that prints the secret");
    let script = "echo \"the token is $API_TOKEN\"; printf %s \"$API_TOKEN\" | base64";
    let cwd = t.dir.to_string_lossy().into_owned();
    let run_id = agent.request(
        "tools/call",
        json!({"name": "run", "arguments": {
            "environments": [ENV], "command": ["sh", "-c", script],
            "cwd": cwd, "timeout_seconds": 30}}),
    )?;
    // The request waits for a human. Find it and ask.
    let mut broker = t.broker()?;
    let until = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let list = broker
            .call(Request::Pending)
            .map_err(crate::access::broker_err)?;
        if let Some(p) = list.as_array().and_then(|a| a.first()).cloned() {
            break p;
        }
        if Instant::now() > until {
            bail!("the agent's request never reached the broker");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let id = pending["id"].as_str().unwrap_or_default().to_owned();
    say("The broker stops and asks you, on a channel the agent cannot drive:");
    say(&format!(
        "  request {id}\n  from:         {}\n  command:      {}\n  environment:  {}\n  variables:    {}",
        pending["requester"].as_str().unwrap_or_default(),
        super::argv_line(&pending["argv"]),
        ENV,
        pending["variables"]
    ));
    let approve = t.yes || input::confirm("   Approve this one run?")?;
    if approve {
        approve_with_pin(t, &mut broker, &id, &pin)?;
        let result = agent.response(run_id, Duration::from_secs(60))?;
        let r = tool_result(&result);

        step(6, "What the agent got back");
        say(&format!(
            "exit code {}, {} value(s) masked",
            r["exit_code"], r["masked_count"]
        ));
        for line in r["stdout"].as_str().unwrap_or_default().lines() {
            say(&format!("  | {line}"));
        }
        say("The secret went into the process's environment only; its exact form and its");
        say("base64 form were masked before anything reached the agent.");
    } else {
        broker
            .call(Request::Deny {
                request_id: id.clone(),
            })
            .map_err(crate::access::broker_err)?;
        step(6, "You said no: what the agent got back");
        let denied = agent.response(run_id, Duration::from_secs(30))?;
        say(&format!("agent sees: {}", tool_result(&denied)));
        say("Nothing ran, and no value left the vault. The denial is in the audit trail:");
    }

    step(7, "Who used what, when, approved by whom: the audit trail");
    t.custody(&["audit"], "")?;
    t.custody(&["audit", "verify"], "")?;
    drop(agent);

    println!("\nThat's custody. Next, for real use:");
    say("custody init && custody unlock");
    say("custody env create myapp-dev && custody set myapp-dev DATABASE_URL");
    say("custody mcp install codex   # or claude, gemini, cursor");
    say("custody approve             # keep this open while the agent works");
    Ok(())
}
