//! `custody agent` (G12): the attacks an agent's shell makes on custody and
//! the human, played inside the sandbox — each refused by the kernel, the
//! errno asserted — and played the same way outside it, where each works,
//! so the test proves the wall and not a broken attack.
//!
//! The targets are real: the human's vault, audit log and socket, a running
//! lease (its child's environment and its file-kind secret), the broker's
//! process, the human's `~/.bashrc` and `~/.ssh`, and a pending request of
//! the human's that an escaped process tries to approve with the PIN.
//! Everything runs as the test's user and, as root, again as uid 65534.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const CERT: &str = "cert-5c1e9a77d03b4f28";

fn python() -> &'static Path {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("python3"))
}

fn custody() -> PathBuf {
    assert_cmd::cargo::cargo_bin("custody")
}

impl Env {
    /// The human's `$HOME`: a `.bashrc` and an SSH key.
    fn user_home(&self) -> PathBuf {
        let home = self.dir.path().join("userhome");
        if !home.exists() {
            fs::create_dir_all(home.join(".ssh")).unwrap();
            fs::create_dir_all(home.join(".codex")).unwrap();
            fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY").unwrap();
            fs::write(home.join(".bashrc"), "# the human's\n").unwrap();
            if let Some(uid) = self.uid {
                for p in [
                    &home,
                    &home.join(".ssh"),
                    &home.join(".codex"),
                    &home.join(".ssh/id_ed25519"),
                    &home.join(".bashrc"),
                ] {
                    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
                }
            }
        }
        home
    }

    /// A human's command started in the background.
    fn background(&self, args: &[&str]) -> std::process::Child {
        self.command(&custody())
            .args(args)
            .env("HOME", self.user_home())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The attack script with `cfg`, inside `custody agent` or as a plain
    /// process of the same user.
    fn attack(&self, cfg: &Value, sandboxed: bool) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/inside.py");
        let mut c = if sandboxed {
            let mut c = self.command(&custody());
            c.args(["agent", "--name", "intruder", "--"]).arg(python());
            c
        } else {
            self.command(python())
        };
        let out = c
            .arg(script)
            .arg(cfg.to_string())
            .env("HOME", self.user_home())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "attack script failed (sandboxed: {sandboxed}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "attack output {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// The running lease's pid and the path of its file-kind secret.
fn running_lease(e: &Env) -> (u64, PathBuf) {
    let until = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let leases = e.json(&["leases"]);
        if let Some(pid) = leases
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["state"] == "running")
            .and_then(|l| l["pid"].as_u64())
        {
            break pid;
        }
        assert!(Instant::now() < until, "the lease never started: {leases}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut found = None;
    let mut dirs = vec![e.runtime()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if fs::read(&p).is_ok_and(|b| b == CERT.as_bytes()) {
                found = Some(p);
            }
        }
    }
    (pid, found.expect("the lease's file-kind secret"))
}

#[test]
fn attacks_from_inside_custody_agent_are_refused_by_the_kernel_and_work_outside() {
    as_each_user(|e| {
        e.ok(
            &["set", "dev", "CERT", "--kind", "file", "--pin-stdin"],
            &format!("{PIN}\n{CERT}"),
        );
        e.apply_policy(&preapproving(&["sleep", "60"]));
        let mut lease = e.background(&["run", "--env", "dev", "--", "sleep", "60"]);
        let (lease_pid, lease_file) = running_lease(e);
        let broker_pid = e.json(&["status"])["pid"].as_u64().unwrap();
        // Where the escapee leaves its answer: the agent may write its work dir.
        let tmp = e.work();
        // A socket of the human's under /tmp (as tmux's and ssh-agent's are).
        let human_socket = e.dir.path().join("human.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&human_socket).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&human_socket, fs::Permissions::from_mode(0o777)).unwrap();
        let cfg = |request: &str| {
            json!({
                "vault": e.home().join("vault.db"),
                "audit": e.home().join("audit.log"),
                "custody_home": e.home(),
                "runtime": e.runtime(),
                "socket": e.runtime().join("broker.sock"),
                "lease_pid": lease_pid,
                "lease_file": lease_file,
                "token": TOKEN,
                "file_value": CERT,
                "broker_pid": broker_pid,
                "home": e.user_home(),
                "tmp": tmp,
                "pin": PIN,
                "custody": custody(),
                "request": request,
                "human_socket": human_socket,
            })
        };

        // Inside: every attempt refused by the kernel (the errno), and the
        // escaped process is still the agent's, so its approval is refused.
        let mut waiting = e.background(&["run", "--env", "dev", "--", "true"]);
        let request = pending_id(e);
        let inside = e.attack(&cfg(&request), true);
        let uid = e.uid;
        for (attempt, errno) in [
            ("read_vault", "EACCES"),
            ("write_policy", "EACCES"),
            ("roll_back", "EACCES"),
            ("rename_socket", "EACCES"),
            ("plant_socket", "EACCES"),
            ("lease_environ", "ENOENT"),
            ("lease_file", "EACCES"),
            ("signal_broker", "ESRCH"),
            ("write_bashrc", "EACCES"),
            ("read_ssh_key", "EACCES"),
            ("connect_human_socket", "ECONNREFUSED"),
            ("write_other_client", "EACCES"),
        ] {
            assert_eq!(
                inside[attempt], errno,
                "{attempt} inside (uid {uid:?}): {inside}"
            );
        }
        let refusal = inside["escape_and_approve"].as_str().unwrap();
        assert!(
            refusal.contains("approvals cannot come from an agent's process tree"),
            "escaped approval inside (uid {uid:?}): {refusal}"
        );
        let started = e.audit("agent_start");
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0]["event"]["name"], "intruder");
        assert_eq!(started[0]["event"]["sandboxed"], true);
        // The human's request is still waiting: deny it and let `run` end.
        e.ok(&["deny", &request], "");
        waiting.wait().unwrap();
        fs::remove_file(tmp.join("escapee.out")).unwrap();

        // Outside: the same script, the same targets: each attempt works.
        let mut waiting = e.background(&["run", "--env", "dev", "--", "true"]);
        let request = pending_id(e);
        let outside = e.attack(&cfg(&request), false);
        for attempt in [
            "read_vault",
            "write_policy",
            "roll_back",
            "rename_socket",
            "plant_socket",
            "lease_environ",
            "lease_file",
            "signal_broker",
            "write_bashrc",
            "read_ssh_key",
            "connect_human_socket",
            "write_other_client",
            "escape_and_approve",
        ] {
            assert_eq!(
                outside[attempt], "ok",
                "{attempt} outside (uid {uid:?}): {outside}"
            );
        }
        waiting.wait().unwrap();
        let _ = fs::remove_file(e.home().join("policy.toml"));
        e.ok(&["revoke", "--all"], "");
        lease.wait().unwrap();
    });
}

/// Starts the scripted MCP agent (`attacks/agent.py` as client
/// `claude-code`, playing `steps`) with the command `c` puts in front of it.
fn spawn_scripted_agent(
    e: &Env,
    mut c: std::process::Command,
    steps: &Value,
) -> std::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/agent.py");
    c.arg(script)
        .arg(custody())
        .arg("claude-code")
        .arg(steps.to_string())
        .env("HOME", e.user_home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A scripted MCP agent's `run` request: as the human sees it in
/// `approve --list`, while the agent waits for `release`.
fn requester_of_a_run(e: &Env, sandboxed: bool, release: &str) -> Value {
    let steps = json!([
        {"tool": "run", "args": {"environments": ["dev"], "command": ["true"],
                                 "cwd": e.work().to_str().unwrap(), "timeout_seconds": 30}},
        {"wait_file": e.mark(release)},
    ]);
    let c = if sandboxed {
        let mut c = e.command(&custody());
        c.args(["agent", "--name", "reviewer", "--"]).arg(python());
        c
    } else {
        e.command(python())
    };
    let child = spawn_scripted_agent(e, c, &steps);
    let id = pending_id(e);
    let listed = e.json(&["approve", "--list"]);
    let request = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap()
        .clone();
    e.ok(&["deny", &id], "");
    e.release(release);
    agent_results(child);
    request
}

#[test]
fn mcp_sessions_inside_take_the_launchers_name_and_approvals_say_whether_sandboxed() {
    as_each_user(|e| {
        let outside = requester_of_a_run(e, false, "outside-done");
        let shown = outside["requester"].as_str().unwrap();
        assert!(
            shown.starts_with("unsandboxed agent claude-code (pid "),
            "{outside}"
        );
        assert_eq!(outside["client"], "claude-code");
        assert_eq!(outside["sandboxed"], false);

        // Inside, the MCP session knows its parent by a namespace pid; the
        // broker goes by the launcher, whose name (the human's) it takes.
        let inside = requester_of_a_run(e, true, "inside-done");
        let shown = inside["requester"].as_str().unwrap();
        assert!(
            shown.starts_with("agent reviewer (pid ") && shown.ends_with(", sandboxed)"),
            "{inside}"
        );
        assert_eq!(inside["client"], "reviewer");
        assert_eq!(inside["sandboxed"], true);
    });
}

#[test]
fn policy_can_require_the_sandbox() {
    as_each_user(|e| {
        e.apply_policy("[clients.claude-code]\nrequire_sandbox = true\n");
        // Unsandboxed, the session is refused: its first tool call fails.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/agent.py");
        let steps = json!([{"tool": "list_environments", "args": {}}]);
        let out = e
            .command(python())
            .arg(&script)
            .arg(custody())
            .arg("claude-code")
            .arg(steps.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("require"), "unsandboxed: {text}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("\"dev\""),
            "unsandboxed saw environments: {text}"
        );
        // The same client under `custody agent` works.
        let out = e
            .command(&custody())
            .args(["agent", "--"])
            .arg(python())
            .arg(&script)
            .arg(custody())
            .arg("claude-code")
            .arg(steps.to_string())
            .env("HOME", e.user_home())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("dev"),
            "sandboxed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The broker that knew the launcher goes away (the vault was locked, and
/// `custody unlock` starts a new broker, which takes over the socket): the
/// new one knows the sandboxed agent at once (it recognises the launcher
/// in the requester's ancestry), and the launcher registers again, so the
/// agent is listed as sandboxed. With the PIN, the agent's `env rm` is
/// still refused as an agent's.
#[test]
fn a_new_broker_still_knows_the_sandboxed_agent() {
    as_each_user(|e| {
        e.ok(&["lock"], "");
        let go = e.work().join("go");
        let out = e.work().join("agent-out");
        let script = format!(
            "while [ ! -e '{go}' ]; do sleep 0.02; done; printf '{PIN}\\n' | '{custody}' env rm dev --yes --pin-stdin > '{out}.part' 2>&1; echo rc=$? >> '{out}.part'; mv '{out}.part' '{out}'; while [ ! -e '{go}.done' ]; do sleep 0.02; done",
            go = go.display(),
            out = out.display(),
            custody = custody().display(),
        );
        let mut agent = e
            .command(&custody())
            .args(["agent", "--name", "builder", "--", "sh", "-c", &script])
            .env("HOME", e.user_home())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Registered with the locked broker (no sealed record possible).
        let until = Instant::now() + Duration::from_secs(20);
        while e.json(&["status"])["agents"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        {
            assert!(Instant::now() < until, "the launcher never registered");
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = e.json(&["status"])["pid"].as_u64().unwrap();
        e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
        assert_ne!(
            e.json(&["status"])["pid"].as_u64().unwrap(),
            old,
            "no new broker"
        );
        fs::write(&go, "").unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while !out.exists() {
            assert!(Instant::now() < until, "the agent never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        let said = fs::read_to_string(&out).unwrap();
        assert!(said.contains("agents cannot"), "{said}");
        assert!(!said.contains("rc=0"), "{said}");
        assert!(e.json(&["env", "ls"]).to_string().contains("\"dev\""));
        // The launcher registered again with the new broker.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let agents = e.json(&["status"])["agents"].clone();
            if agents[0]["name"] == "builder" && agents[0]["sandboxed"] == true {
                break;
            }
            assert!(Instant::now() < until, "not registered again: {agents}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let shown = e.ok(&["status"], "");
        assert!(
            shown.contains("builder (launcher pid ") && shown.contains("sandboxed (files"),
            "{shown}"
        );
        fs::write(e.work().join("go.done"), "").unwrap();
        agent.wait().unwrap();
    });
}

/// A process inside an agent's sandbox that names itself a launcher
/// (`custody agent --name mine --sandbox-init …`) is still the agent it
/// descends from; and nothing but custody's own launcher may register an
/// agent (a script that sends `agent_launch` cannot vouch for a sandbox).
#[test]
fn a_fake_launcher_gets_no_name_and_no_sandbox_of_its_own() {
    as_each_user(|e| {
        let steps = json!([
            {"tool": "run", "args": {"environments": ["dev"], "command": ["true"],
                                     "cwd": e.work().to_str().unwrap(), "timeout_seconds": 30}},
            {"wait_file": e.mark("fake-done")},
        ]);
        let layout = json!({"home": null, "hidden": [], "writable": [], "socket": "/nonexistent"});
        let mut c = e.command(&custody());
        c.args(["agent", "--name", "reviewer", "--"])
            .arg(custody())
            .args([
                "agent",
                "--name",
                "mine",
                "--sandbox-init",
                "--sandbox-layout",
            ])
            .arg(layout.to_string())
            .arg("--")
            .arg(python());
        let child = spawn_scripted_agent(e, c, &steps);
        let id = pending_id(e);
        let listed = e.json(&["approve", "--list"]);
        let shown = listed[0]["requester"].as_str().unwrap().to_owned();
        e.ok(&["deny", &id], "");
        e.release("fake-done");
        agent_results(child);
        assert!(shown.starts_with("agent reviewer (pid "), "{shown}");

        // A script on the socket asks to register a sandboxed agent.
        let wire = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks");
        let code = format!(
            "import sys; sys.path.insert(0, {dir:?}); import wire, json\n\
             s = wire.connect({sock:?})\n\
             wire.send(s, {{'id': 2, 'op': 'agent_launch', 'name': 'codex', 'sandboxed': True, 'enforced': []}})\n\
             print(json.dumps(wire.recv(s)))",
            dir = wire.display().to_string(),
            sock = e.runtime().join("broker.sock").display().to_string(),
        );
        let out = e.command(python()).args(["-c", &code]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("only `custody agent` registers"),
            "{said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}
