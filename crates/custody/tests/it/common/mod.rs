//! The same-user test kit: a human's vault and broker in temp dirs, run as
//! the test's user or as an unprivileged uid, and the scripted agent.
#![allow(dead_code)] // each test binary uses its own part of the kit

use std::fs;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use custody_testkit::Home;
use serde_json::Value;

pub const PASS: &str = "same-user test passphrase";
pub const PIN: &str = "913579";
pub const TOKEN: &str = "tok-3f9a1c7e5b2d8046";
/// The uid the unprivileged runs use (`nobody`).
pub const NOBODY: u32 = 65534;

/// A human's vault and broker in temp directories, run as `uid` (`None`:
/// as whoever runs the tests). Stops the daemon on drop.
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
    /// Initialised, unlocked, with environment `dev` holding `TOKEN`.
    pub fn new(uid: Option<u32>) -> Env {
        let e = Env {
            kit: Home::new(uid),
        };
        e.ok(
            &[
                "init",
                "--passphrase-stdin",
                "--pin-stdin",
                "--insecure-fast-kdf",
            ],
            &format!("{PASS}\n{PIN}\n"),
        );
        e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
        e.ok(
            &["env", "create", "dev", "--pin-stdin"],
            &format!("{PIN}\n"),
        );
        e.ok(
            &["set", "dev", "TOKEN", "--pin-stdin"],
            &format!("{PIN}\n{TOKEN}"),
        );
        e
    }

    /// `program` as this environment's user, in a session of its own (no
    /// controlling terminal).
    pub fn command(&self, program: &Path) -> StdCommand {
        let mut c = self.kit.command(program);
        c.current_dir(self.work())
            .env("CUSTODY_MCP_APPROVAL_WAIT", "1s");
        c
    }

    /// The human's `custody ARGS` (stdin: `stdin`).
    pub fn cmd(&self, args: &[&str], stdin: &str) -> assert_cmd::assert::Assert {
        let mut c = Command::from_std(self.command(&assert_cmd::cargo::cargo_bin("custody")));
        c.args(args)
            .write_stdin(stdin.to_owned())
            .timeout(Duration::from_secs(60));
        c.assert()
    }

    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cmd(args, stdin).success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    }

    /// The human's `custody unlock` with `vars` added to its environment
    /// (passphrase on stdin); its output.
    pub fn unlock_with(&self, vars: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut c = self.command(&assert_cmd::cargo::cargo_bin("custody"));
        c.args(["unlock", "--passphrase-stdin"])
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASS}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all, "")).unwrap()
    }

    /// The human seals `text` as the policy (`custody policy apply`).
    pub fn apply_policy(&self, text: &str) -> Value {
        let file = self.dir.path().join("reviewed-policy.toml");
        fs::write(&file, text).unwrap();
        if let Some(uid) = self.uid {
            std::os::unix::fs::chown(&file, Some(uid), Some(uid)).unwrap();
        }
        let out = self.ok(
            &[
                "--json",
                "policy",
                "apply",
                file.to_str().unwrap(),
                "--pin-stdin",
            ],
            &format!("{PIN}\n"),
        );
        serde_json::from_str(&out).unwrap()
    }

    /// Runs the scripted agent (`tests/attacks/agent.py`) and returns one
    /// result per step.
    pub fn agent(&self, client: &str, steps: Value) -> Vec<Value> {
        agent_results(self.spawn_agent(client, steps))
    }

    /// Starts the scripted agent in the background.
    pub fn spawn_agent(&self, client: &str, steps: Value) -> std::process::Child {
        self.spawn_agent_with_path(client, steps, None)
    }

    /// [`spawn_agent`](Self::spawn_agent) with the agent's own `PATH` (which
    /// its `custody mcp` passes on with every run).
    pub fn spawn_agent_with_path(
        &self,
        client: &str,
        steps: Value,
        path: Option<&str>,
    ) -> std::process::Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/agent.py");
        // The system Python: the agent needs only its standard library, and
        // a per-user install (pyenv under /root) is not reachable by `nobody`.
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap_or(Path::new("python3"));
        let mut c = self.command(python);
        if let Some(path) = path {
            c.env("PATH", path);
        }
        c.arg(script)
            .arg(assert_cmd::cargo::cargo_bin("custody"))
            .arg(client)
            .arg(steps.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    }

    /// A path in the shared temp dir both sides can create and see.
    pub fn mark(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    pub fn wait_mark(&self, name: &str) {
        let path = self.dir.path().join(name);
        let until = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(Instant::now() < until, "the agent never reached {name}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets a waiting agent go on.
    pub fn release(&self, name: &str) {
        let path = self.dir.path().join(name);
        fs::write(&path, "").unwrap();
    }
}

pub fn agent_results(child: std::process::Child) -> Vec<Value> {
    {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the agent failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| {
            panic!("agent output {e}: {}", String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Env {
    /// Audit records of `kind`.
    pub fn audit(&self, kind: &str) -> Vec<Value> {
        self.ok(&["--json", "audit"], "")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["event"]["type"] == kind)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kit
            .stop_broker(&assert_cmd::cargo::cargo_bin("custody"));
    }
}

/// Runs `attack` as the test's own user and, when that is root, again as
/// an unprivileged uid.
pub fn as_each_user(attack: impl Fn(&Env)) {
    attack(&Env::new(None));
    if rustix::process::geteuid().is_root() {
        attack(&Env::new(Some(NOBODY)));
    }
}

/// Policy pre-approving `argv` in `dev` for every client.
pub fn preapproving(argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[clients.\"*\".preapproved]]\nargv = [{}]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n",
        argv.join(", ")
    )
}

/// The first pending request's id (waits for one).
pub fn pending_id(e: &Env) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(id) = e.json(&["approve", "--list"])[0]["id"].as_str() {
            return id.to_owned();
        }
        assert!(Instant::now() < until, "no pending request");
        std::thread::sleep(Duration::from_millis(50));
    }
}
