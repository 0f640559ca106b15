//! `custody demo`: a guided tour in a throwaway vault. It makes a vault and
//! an environment with a generated secret, starts the broker, starts
//! `custody mcp` and drives it over stdio with rmcp's client, as an agent would, asks the
//! human to approve the agent's command, and shows what the agent got back:
//! masked output, never the value. Then the audit trail and its check.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use custody_broker::protocol::{ApprovalScope, Request};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::RunningService;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
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

/// The demo's agent: rmcp's MCP client driving `custody mcp` over its
/// stdio, on a runtime of its own (the tour itself is synchronous).
struct Agent {
    rt: tokio::runtime::Runtime,
    client: RunningService<RoleClient, DemoClient>,
    /// Kept so the server (and the shell above it) go when the agent does.
    _child: tokio::process::Child,
}

/// How the demo agent introduces itself.
#[derive(Debug, Clone)]
struct DemoClient;

impl ClientHandler for DemoClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("custody-demo-agent", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A tool call started, answered later ([`Agent::finish`]).
type PendingCall = tokio::task::JoinHandle<Result<CallToolResult, rmcp::ServiceError>>;

impl Agent {
    fn start(tour: &Tour) -> anyhow::Result<Agent> {
        // One worker: the client keeps reading and writing while the tour
        // waits for the human between calls.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the demo agent's runtime")?;
        let (client, child) = rt.block_on(async {
            // Through a shell that stays alive: the shell plays the agent
            // client (the MCP server's parent, which the broker registers as
            // the agent), so this demo process, which approves, is not in
            // the agent's tree.
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg("\"$0\" mcp; exit $?")
                .arg(&tour.exe)
                .env("CUSTODY_HOME", tour.home())
                .env("CUSTODY_RUNTIME_DIR", tour.runtime())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting `custody mcp`")?;
            let stdin = child.stdin.take().context("no stdin")?;
            let stdout = child.stdout.take().context("no stdout")?;
            let client =
                tokio::time::timeout(Duration::from_secs(30), DemoClient.serve((stdout, stdin)))
                    .await
                    .map_err(|_| anyhow!("`custody mcp` did not answer within 30 s"))?
                    .context("connecting to `custody mcp`")?;
            anyhow::Ok((client, child))
        })?;
        Ok(Agent {
            rt,
            client,
            _child: child,
        })
    }

    /// The server's name and the protocol version agreed on.
    fn server(&self) -> (String, String) {
        let info = self.client.peer_info();
        let name = info
            .as_ref()
            .and_then(|i| i.server_info.as_ref())
            .map_or_else(|| "custody".to_owned(), |s| s.name.clone());
        let protocol = info.map_or_else(|| "?".to_owned(), |i| i.protocol_version.to_string());
        (name, protocol)
    }

    fn tool_names(&self) -> anyhow::Result<Vec<String>> {
        let tools = self.rt.block_on(self.client.list_all_tools())?;
        Ok(tools.into_iter().map(|t| t.name.to_string()).collect())
    }

    /// Starts a call to `tool`; its answer comes from [`finish`](Self::finish).
    fn start_call(&self, tool: &str, args: Value) -> PendingCall {
        let mut p = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(o) = args {
            p = p.with_arguments(o);
        }
        let peer = self.client.peer().clone();
        self.rt.spawn(async move { peer.call_tool(p).await })
    }

    /// Waits for a started call's answer: its structured result (or its
    /// text when there is none).
    fn finish(&self, call: PendingCall, limit: Duration) -> anyhow::Result<Value> {
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(limit, call).await })
            .map_err(|_| anyhow!("no answer from `custody mcp` within {limit:?}"))?
            .context("the demo agent stopped")?
            .context("MCP error")?;
        if let Some(s) = r.structured_content {
            return Ok(s);
        }
        let text = r
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn call(&self, tool: &str, args: Value) -> anyhow::Result<Value> {
        let call = self.start_call(tool, args);
        self.finish(call, Duration::from_secs(30))
    }
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
    let agent = Agent::start(t)?;
    let (server, protocol) = agent.server();
    say(&format!("connected to {server} (protocol {protocol})"));
    say(&format!("tools: {}", agent.tool_names()?.join(", ")));
    let envs = agent.call("list_environments", json!({}))?;
    say("list_environments → (names and descriptions only; never a value)");
    for line in serde_json::to_string_pretty(&envs)?.lines() {
        say(&format!("  {line}"));
    }

    step(5, "The agent asks to run a command that prints the secret");
    let script = "echo \"the token is $API_TOKEN\"; printf %s \"$API_TOKEN\" | base64";
    let cwd = t.dir.to_string_lossy().into_owned();
    let run = agent.start_call(
        "run",
        json!({"environments": [ENV], "command": ["sh", "-c", script],
               "cwd": cwd, "timeout_seconds": 30}),
    );
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
        let r = agent.finish(run, Duration::from_secs(60))?;

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
        let denied = agent.finish(run, Duration::from_secs(30))?;
        say(&format!("agent sees: {denied}"));
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
