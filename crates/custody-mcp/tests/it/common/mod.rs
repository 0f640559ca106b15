//! Test harness: a real broker in temp directories (started by `custody
//! unlock`), and `custody mcp` driven by rmcp's client over its real stdio,
//! with every byte the client receives recorded for leak checks.
//!
//! Process tree: the test spawns `sh`, which starts `custody mcp` in the
//! background and waits. The MCP server registers `sh` (its parent) as the
//! agent; `custody approve` is spawned by the test process, which does not
//! descend from `sh`, so the broker lets it approve (G3 holds: anything the
//! agent's tree spawns is refused).
#![allow(clippy::unwrap_used, dead_code)] // test helpers: a panic is the failure report

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use custody_testkit::Home;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, ProgressNotificationParam, ProtocolVersion, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PASS: &str = "mcp test passphrase";
pub const PIN: &str = "135790";
pub const CLIENT: &str = "testagent";

/// A home + runtime dir with an initialised vault; the daemon is stopped on drop.
pub struct Env {
    pub kit: Home,
}

/// The home's directories and commands ([`Home`]).
impl std::ops::Deref for Env {
    type Target = Home;
    fn deref(&self) -> &Home {
        &self.kit
    }
}

impl Env {
    pub fn new() -> Env {
        let e = Env {
            kit: Home::new(None),
        };
        e.cmd()
            .args([
                "init",
                "--passphrase-stdin",
                "--pin-stdin",
                "--insecure-fast-kdf",
            ])
            .write_stdin(format!("{PASS}\n{PIN}\n"))
            .assert()
            .success();
        e
    }

    pub fn unlocked() -> Env {
        let e = Env::new();
        e.unlock();
        e
    }

    pub fn cmd(&self) -> Command {
        // In a session of its own: no controlling terminal, so a test never
        // prompts on (or waits for) the terminal the suite runs in.
        let mut c = Command::from_std(self.kit.command(&assert_cmd::cargo::cargo_bin("custody")));
        c.env_remove("CUSTODY_MCP_APPROVAL_WAIT")
            .timeout(Duration::from_secs(60));
        c
    }

    pub fn unlock(&self) {
        self.cmd()
            .args(["unlock", "--passphrase-stdin"])
            .write_stdin(format!("{PASS}\n"))
            .assert()
            .success();
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    pub fn env_create(&self, name: &str) {
        self.cmd()
            .args(["env", "create", name, "--pin-stdin"])
            .write_stdin(format!("{PIN}\n"))
            .assert()
            .success();
    }

    pub fn set(&self, env: &str, var: &str, value: &str) {
        self.cmd()
            .args(["set", env, var, "--pin-stdin"])
            .write_stdin(format!("{PIN}\n{value}"))
            .assert()
            .success();
    }

    /// Seals `text` as the policy in force (`custody policy apply`, PIN on
    /// stdin).
    pub fn policy(&self, text: &str) {
        let file = self.home().join("policy.toml");
        std::fs::write(&file, text).unwrap();
        self.cmd()
            .arg("policy")
            .arg("apply")
            .arg(&file)
            .arg("--pin-stdin")
            .write_stdin(format!("{PIN}\n"))
            .assert()
            .success();
    }

    /// Waits for one pending request and returns its id.
    pub fn pending_id(&self) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let v = self.json(&["approve", "--list"]);
            if let Some(id) = v
                .as_array()
                .and_then(|a| a.first())
                .and_then(|p| p["id"].as_str())
            {
                return id.to_owned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no pending request appeared");
    }

    pub fn approve(&self, id: &str) {
        self.cmd()
            .args(["approve", id, "--once", "--pin-stdin"])
            .write_stdin(format!("{PIN}\n"))
            .assert()
            .success();
    }

    pub fn deny(&self, id: &str) {
        self.cmd().args(["deny", id]).assert().success();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kit
            .stop_broker(&assert_cmd::cargo::cargo_bin("custody"));
    }
}

/// The client side: records progress notifications.
#[derive(Clone, Default)]
pub struct Recorder {
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(CLIENT, "9.9.9"),
        )
    }
}

/// Which MCP lifecycle the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25: `initialize` handshake.
    Initialize,
    /// 2026-07-28: `server/discover`, per-request metadata.
    Discover,
}

/// A running `custody mcp` (under `sh`) and a connected client.
pub struct Agent {
    pub client: RunningService<RoleClient, Recorder>,
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    /// Every byte the server wrote to stdout (what the client received).
    pub received: Arc<Mutex<Vec<u8>>>,
    /// Everything the server logged.
    pub stderr: Arc<Mutex<Vec<u8>>>,
    child: tokio::process::Child,
}

impl Agent {
    pub async fn start(env: &Env, era: Era, approval_wait: &str) -> Agent {
        Agent::start_with(env, era, approval_wait, &[]).await
    }

    /// [`Agent::start`] with `vars` added to the server's environment (as
    /// an agent client sets them for its MCP servers).
    pub async fn start_with(
        env: &Env,
        era: Era,
        approval_wait: &str,
        vars: &[(&str, &str)],
    ) -> Agent {
        let bin = assert_cmd::cargo::cargo_bin("custody");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            // fd 3 carries our stdin past the background job's /dev/null.
            .arg(r#"exec 3<&0; "$0" mcp --approval-wait "$1" <&3 3<&- & wait"#)
            .arg(&bin)
            .arg(approval_wait)
            .current_dir(env.work())
            .env("CUSTODY_HOME", env.home())
            .env("CUSTODY_RUNTIME_DIR", env.runtime())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("CUSTODY_MCP_APPROVAL_WAIT")
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (mut tee_w, tee_r) = tokio::io::duplex(1 << 20);
        let rec = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        if tee_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let err = stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match stderr_pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        let handler = Recorder::default();
        let progress = handler.progress.clone();
        let client = match era {
            Era::Initialize => handler.serve((tee_r, stdin)).await.unwrap(),
            Era::Discover => handler
                .serve_with_lifecycle(
                    (tee_r, stdin),
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
                .unwrap(),
        };
        Agent {
            client,
            progress,
            received,
            stderr,
            child,
        }
    }

    /// Calls a tool; returns the result (isError results included).
    pub async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let mut p = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(o) = args {
            p = p.with_arguments(o);
        }
        self.client.call_tool(p).await.unwrap()
    }

    /// Calls a tool with a progress token (progress goes to `self.progress`).
    pub async fn call_with_progress(&self, tool: &str, args: Value) -> CallToolResult {
        let mut p = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(o) = args {
            p = p.with_arguments(o);
        }
        let handle = self
            .client
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(p)),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        match handle.await_response().await.unwrap() {
            ServerResult::CallToolResult(r) => r,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub fn all_received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    pub fn all_stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        let _ = self.client.cancel().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The structured content of a successful result.
pub fn structured(r: &CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool failed: {}", text(r));
    r.structured_content.clone().unwrap_or(json!(null))
}

/// The text blocks of a result, joined.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts an isError result whose text contains `needle`.
pub fn assert_tool_error(r: &CallToolResult, needle: &str) {
    assert_eq!(r.is_error, Some(true), "expected an error: {}", text(r));
    assert!(
        text(r).contains(needle),
        "error should mention {needle:?}: {}",
        text(r)
    );
}

#[allow(unused_imports)] // not every test binary uses it
pub use custody_testkit::contains;
