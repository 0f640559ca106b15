//! Broker scenarios through the real `custody` binary: a real daemon in temp
//! directories, started by `custody unlock`, driven like a user's script.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use custody_testkit::{Home, pg};
use predicates::prelude::*;
use predicates::str::contains;
use serde_json::Value;

const PASS: &str = "broker test passphrase";
const PIN: &str = "246802";

/// A home + runtime dir with an initialised vault; the daemon is stopped on drop.
struct Env {
    kit: Home,
}

/// The home's directories and commands ([`Home`]).
impl std::ops::Deref for Env {
    type Target = Home;
    fn deref(&self) -> &Home {
        &self.kit
    }
}

impl Env {
    /// Directories only: no vault yet.
    fn empty() -> Env {
        Env {
            kit: Home::new(None),
        }
    }

    fn new() -> Env {
        let e = Env::empty();
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

    fn apply(&self, c: &mut StdCommand) {
        c.env("CUSTODY_HOME", self.home())
            .env("CUSTODY_RUNTIME_DIR", self.runtime())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR");
    }

    fn cmd(&self) -> Command {
        // In a session of its own: no controlling terminal, so a test never
        // prompts on (or waits for) the terminal the suite runs in.
        let mut c = Command::from_std(self.command(&assert_cmd::cargo::cargo_bin("custody")));
        c.timeout(Duration::from_secs(60));
        c
    }

    /// A change to the vault, as a script makes it: `args` and
    /// `--pin-stdin`, the PIN on the first line of stdin, then `stdin`.
    fn change(&self, args: &[&str], stdin: impl Into<Vec<u8>>) -> assert_cmd::assert::Assert {
        let mut input = format!("{PIN}\n").into_bytes();
        input.extend(stdin.into());
        self.cmd()
            .args(args)
            .arg("--pin-stdin")
            .write_stdin(input)
            .assert()
    }

    fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("custody"));
        self.apply(&mut c);
        c
    }

    fn unlock(&self) {
        self.cmd()
            .args(["unlock", "--passphrase-stdin"])
            .write_stdin(format!("{PASS}\n"))
            .assert()
            .success();
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    fn daemon_pid(&self) -> Option<u32> {
        let out = self.cmd().args(["status", "--json"]).output().ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }

    /// Seals `text` as the policy in force (`custody policy apply`, PIN on
    /// stdin).
    fn policy(&self, text: &str) {
        let file = self.home().join("policy.toml");
        fs::write(&file, text).unwrap();
        self.cmd()
            .arg("policy")
            .arg("apply")
            .arg(&file)
            .arg("--pin-stdin")
            .write_stdin(format!("{PIN}\n"))
            .assert()
            .success();
    }

    /// A policy pre-approving exactly `argv` in `env` from any cwd.
    fn preapprove(&self, env: &str, argv: &[&str]) {
        let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        self.policy(&format!(
            "[[clients.cli.preapproved]]\nargv = [{}]\nenvironments = [\"{env}\"]\nexpires = \"2099-01-01T00:00:00Z\"\n",
            argv.join(", ")
        ));
    }

    fn audit_types(&self) -> Vec<String> {
        let out = self.cmd().args(["audit", "--json"]).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|r| r["event"]["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            custody_testkit::stop_process(pid);
        }
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
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

fn spawn_run(e: &Env, args: &[&str]) -> Child {
    e.std_cmd()
        .args(["run", "--no-prompt"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A same-user agent can write in the runtime directory: a symlink it
/// plants at the daemon's log name must not make `custody unlock` append
/// the broker's log to the file it points at; the link is replaced.
#[test]
fn attack_a_planted_daemon_log_symlink_is_not_written_through() {
    let e = Env::new();
    let victim = e.dir.path().join("victim-notes.txt");
    fs::write(&victim, "mine\n").unwrap();
    fs::create_dir_all(e.runtime()).unwrap();
    std::os::unix::fs::symlink(&victim, e.runtime().join("daemon.log")).unwrap();
    e.unlock();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "mine\n");
    let log = fs::symlink_metadata(e.runtime().join("daemon.log")).unwrap();
    assert!(log.file_type().is_file(), "the link was not replaced");
}

#[test]
fn unlock_starts_the_broker_and_lock_status_report_it() {
    let e = Env::new();
    assert_eq!(e.json(&["status"])["running"], false);
    e.cmd()
        .args(["unlock", "--passphrase-stdin"])
        .write_stdin("wrong passphrase\n")
        .assert()
        .code(2)
        .stderr(contains("wrong passphrase"));
    e.unlock();
    let s = e.json(&["status"]);
    assert_eq!(s["running"], true);
    assert_eq!(s["locked"], false);
    // The socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(e.runtime()), 0o700);
    assert_eq!(mode(e.runtime().join("broker.sock")), 0o600);
    // A second daemon on the same runtime dir refuses to start.
    e.cmd()
        .arg("daemon")
        .assert()
        .failure()
        .stderr(contains("already running"));
    e.cmd()
        .arg("lock")
        .assert()
        .success()
        .stdout(contains("Locked"));
    assert_eq!(e.json(&["status"])["locked"], true);
    e.cmd()
        .args(["env", "ls"])
        .assert()
        .failure()
        .stderr(contains("locked").and(contains("custody unlock")));
}

/// With the broker unlocked, vault commands need no passphrase: they go
/// through the daemon, and each change is audited.
#[test]
fn vault_commands_go_through_the_broker() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "shop-dev"], "").success();
    e.change(&["set", "shop-dev", "API_TOKEN"], "tok-0123456789abcdef\n")
        .success();
    e.change(&["generate", "shop-dev", "SESSION"], "").success();
    let ls = e.json(&["ls", "shop-dev"]);
    assert_eq!(ls.as_array().unwrap().len(), 2);
    assert!(!ls.to_string().contains("tok-0123"));
    let types = e.audit_types();
    assert!(
        types.iter().filter(|t| *t == "vault_change").count() >= 3,
        "{types:?}"
    );
    // A script's --passphrase-stdin layout still works with the broker up.
    e.cmd()
        .args(["--passphrase-stdin", "set", "shop-dev", "OTHER"])
        .write_stdin(format!("{PASS}\nother-value-123\n"))
        .assert()
        .success();
    e.change(&["unset", "shop-dev", "OTHER"], "").success();
}

#[test]
fn run_masks_output_and_passes_the_exit_code_through() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "TOKEN"], "s3cr3t-t0k3n-value-xyz")
        .success();
    let script = "echo token=$TOKEN; echo err=$TOKEN >&2; printf %s \"$TOKEN\" | base64; exit 7";
    e.preapprove("e", &["sh", "-c", script]);
    let out = e
        .cmd()
        .args(["run", "-e", "e", "--", "sh", "-c", script])
        .assert()
        .code(7);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stdout.contains("token=[masked:TOKEN]"), "{stdout}");
    assert!(stderr.contains("err=[masked:TOKEN]"), "{stderr}");
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
    assert!(!stdout.contains("czNjcjN0"), "base64 form leaked: {stdout}");
    // With --clean-env, only the injected variables and the short list
    // reach the child (by default, the caller's environment does too:
    // `run_passes_the_callers_environment_unless_clean_env`).
    e.preapprove("e", &["env"]);
    let out = e
        .cmd()
        .args(["run", "--clean-env", "-e", "e", "--", "env"])
        .assert()
        .success();
    let env_out = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(env_out.contains("TOKEN=[masked:TOKEN]"));
    assert!(
        !env_out.contains("CUSTODY_HOME"),
        "broker/requester env leaked: {env_out}"
    );
}

#[test]
fn approve_by_id_with_pin_on_stdin() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "K"], "value-of-k-0001").success();
    let child = spawn_run(&e, &["-e", "e", "--", "sh", "-c", "echo got:$K; exit 3"]);
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let v = e.json(&["approve", "--list"]);
        match v.as_array().and_then(|a| a.first()) {
            Some(p) => {
                id = p["id"].as_str().unwrap().to_owned();
                true
            }
            None => false,
        }
    }));
    let pending = e.json(&["approve", "--list"]);
    assert_eq!(pending[0]["argv"][0], "sh");
    assert_eq!(pending[0]["variables"][0], "e/K");
    e.cmd()
        .args(["approve", &id, "--pin-stdin"])
        .write_stdin("000000\n")
        .assert()
        .code(2)
        .stderr(contains("wrong PIN"));
    e.cmd()
        .args(["approve", &id, "--once", "--pin-stdin"])
        .write_stdin(format!("{PIN}\n"))
        .assert()
        .success()
        .stdout(contains("Approved"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:[masked:K]\n");
    let types = e.audit_types();
    for t in [
        "request",
        "pin_failure",
        "approval",
        "grant",
        "lease_start",
        "lease_end",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} in {types:?}");
    }
    e.cmd()
        .args(["audit", "verify"])
        .assert()
        .success()
        .stdout(contains("intact"));
}

#[test]
fn deny_makes_the_run_fail() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "K"], "value-of-k-0001").success();
    let child = spawn_run(&e, &["-e", "e", "--", "true"]);
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        e.json(&["approve", "--list"])
            .as_array()
            .and_then(|a| a.first())
            .map(|p| id = p["id"].as_str().unwrap().to_owned())
            .is_some()
    }));
    e.cmd().args(["deny", &id]).assert().success();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"));
}

#[test]
fn revoke_all_and_timeout_kill_running_commands() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "K"], "value-of-k-0001").success();
    e.preapprove("e", &["sleep", "3600"]);
    // Deadline: a 2 s timeout ends a `sleep 3600`.
    let t0 = Instant::now();
    e.cmd()
        .args(["run", "-e", "e", "--timeout", "2s", "--", "sleep", "3600"])
        .assert()
        .code(128 + 15)
        .stderr(contains("deadline"));
    assert!(t0.elapsed() < Duration::from_secs(8));
    // Revoke --all kills a running one.
    let child = spawn_run(&e, &["-e", "e", "--", "sleep", "3600"]);
    let mut pid = 0;
    assert!(wait_until(Duration::from_secs(20), || {
        let l = e.json(&["leases"]);
        l.as_array()
            .and_then(|a| a.first())
            .map(|x| pid = x["pid"].as_u64().unwrap() as u32)
            .is_some()
    }));
    assert!(alive(pid));
    e.cmd()
        .args(["revoke", "--all"])
        .assert()
        .success()
        .stdout(contains("killed 1 lease"));
    assert!(wait_until(Duration::from_secs(8), || !alive(pid)));
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    // First hour, item 14: the terminal run says why it was killed.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("was revoked"), "{said}");
    e.cmd()
        .args(["revoke", "nonsense"])
        .assert()
        .failure()
        .stderr(contains("neither a grant"));
}

/// G5 across a crash: kill -9 the daemon while a lease runs; the next broker
/// kills the lease's processes (a grandchild included) and audits it.
#[test]
fn killed_daemon_leaves_nothing_running_after_restart() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "K"], "value-of-k-0001").success();
    let script = "sleep 3600 & echo started; wait";
    e.preapprove("e", &["sh", "-c", script]);
    let mut child = spawn_run(&e, &["-e", "e", "--", "sh", "-c", script]);
    let mut lease = Value::Null;
    assert!(wait_until(Duration::from_secs(20), || {
        lease = e
            .json(&["leases"])
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null);
        !lease.is_null()
    }));
    let leader = lease["pid"].as_u64().unwrap() as u32;
    let lease_id = lease["lease_id"].as_str().unwrap().to_owned();
    // Find the grandchild (the `sleep`) in the lease's process group.
    let mut members = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        members = group_members(leader);
        members.len() >= 2
    }));
    let daemon = e.daemon_pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(daemon)));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        members.iter().all(|&p| alive(p)),
        "the lease should outlive a crashed broker"
    );

    // A new broker reaps at start, before it is even unlocked...
    e.unlock();
    assert!(
        wait_until(Duration::from_secs(10), || members
            .iter()
            .all(|&p| !alive(p))),
        "lease processes survived the restart"
    );
    // ...and audits it once unlocked.
    let out = e.cmd().args(["audit", "--json"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("\"reaped\"") && l.contains(&lease_id)),
        "no reaped record for {lease_id}"
    );
    assert!(
        !e.home()
            .join("leases")
            .join(format!("{lease_id}.json"))
            .exists()
    );
    e.cmd().args(["audit", "verify"]).assert().success();
}

fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && fields[0] != "Z" {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn audit_verify_names_the_first_bad_record() {
    let e = Env::new();
    e.unlock();
    for name in ["a", "b", "c"] {
        e.change(&["env", "create", name], "").success();
    }
    e.cmd().arg("lock").assert().success();
    // Stop the daemon so the log is quiet, then tamper with record 3.
    let pid = e.daemon_pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(15), || !alive(pid)));
    let log = e.home().join("audit.log");
    let text = fs::read_to_string(&log).unwrap();
    let tampered = text.replacen("\"environment\":\"b\"", "\"environment\":\"x\"", 1);
    assert_ne!(text, tampered);
    fs::write(&log, tampered).unwrap();
    e.cmd()
        .args(["--passphrase-stdin", "audit", "verify"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .code(1)
        .stdout(contains("BROKEN at seq"));
    // Truncation is caught too, thanks to the head kept in the vault.
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&log, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    e.cmd()
        .args(["--passphrase-stdin", "--json", "audit", "verify"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .code(1)
        .stdout(contains("\"intact\": false"));
}

/// A log that does not verify keeps unlock refused; `custody audit repair`
/// (passphrase and PIN) keeps the damaged file, starts a new chain that
/// names the break, and unlock works again. `audit verify` then says the
/// log is intact since the break, and fails with `--strict`.
#[test]
fn a_damaged_audit_log_is_repaired_and_the_break_stays_visible() {
    let e = Env::new();
    e.unlock();
    for name in ["a", "b", "c"] {
        e.change(&["env", "create", name], "").success();
    }
    e.cmd().arg("lock").assert().success();
    let log = e.home().join("audit.log");
    let text = fs::read_to_string(&log).unwrap();
    fs::write(
        &log,
        text.replacen("\"environment\":\"b\"", "\"environment\":\"x\"", 1),
    )
    .unwrap();
    e.cmd()
        .args(["unlock", "--passphrase-stdin"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .failure()
        .stderr(contains("audit log does not verify"));
    // A wrong PIN repairs nothing.
    e.cmd()
        .args(["--passphrase-stdin", "audit", "repair", "--pin-stdin"])
        .write_stdin(format!("{PASS}\n000000\n"))
        .assert()
        .failure();
    assert!(log.exists(), "the log moved");
    assert!(
        !fs::read_dir(e.home())
            .unwrap()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().contains("damaged")),
        "a wrong PIN repaired"
    );
    let out = e
        .cmd()
        .args([
            "--passphrase-stdin",
            "--json",
            "audit",
            "repair",
            "--pin-stdin",
        ])
        .write_stdin(format!("{PASS}\n{PIN}\n"))
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["repaired"], true, "{v}");
    let bad = v["first_bad_seq"].as_u64().unwrap();
    assert_eq!(v["last_good_seq"].as_u64(), Some(bad - 1));
    let kept = fs::read_to_string(v["kept"].as_str().unwrap()).unwrap();
    assert!(
        kept.contains("\"environment\":\"x\""),
        "the evidence was not kept"
    );
    e.cmd()
        .args(["--passphrase-stdin", "audit", "verify"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success()
        .stdout(contains(format!("intact since the break at seq {bad}")));
    e.cmd()
        .args(["--passphrase-stdin", "audit", "verify", "--strict"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .code(1);
    e.unlock();
    let first = e.cmd().args(["--json", "audit"]).assert().success();
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&first.get_output().stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["event"]["type"], "chain_start", "{first}");
    assert_eq!(first["event"]["reason"], "repaired", "{first}");
    assert_eq!(first["event"]["first_bad_seq"], bad, "{first}");
}

/// File-kind variables arrive as the path of a 0600 file in a private
/// per-lease directory, which is gone when the lease ends.
#[test]
fn file_kind_variables_are_ephemeral_private_files() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(
        &["set", "e", "TLS_KEY", "--kind", "file"],
        "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----\n",
    )
    .success();
    let script = "echo path=$TLS_KEY; stat -c %a \"$TLS_KEY\"; stat -c %a \"$(dirname \"$TLS_KEY\")\"; cat \"$TLS_KEY\"";
    e.preapprove("e", &["sh", "-c", script]);
    let out = e
        .cmd()
        .args(["run", "-e", "e", "--", "sh", "-c", script])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .unwrap()
        .to_owned();
    assert!(path.starts_with(e.runtime().to_str().unwrap()), "{path}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[1], "600");
    assert_eq!(lines[2], "700");
    assert!(
        !stdout.contains("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
        "{stdout}"
    );
    assert!(stdout.contains("[masked:TLS_KEY]"), "{stdout}");
    assert!(
        !Path::new(&path).exists(),
        "the ephemeral file outlived its lease"
    );
}

/// The README's main command: the guided demo runs end to end without a
/// terminal when told `--yes`, shows masked output and a verified audit log,
/// and leaves no broker running.
#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setsid")
        .arg("-w")
        .arg(assert_cmd::cargo::cargo_bin("custody"))
        .args(["demo", "--yes"])
        .env("TMPDIR", dir.path())
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("the token is [masked:API_TOKEN]"), "{text}");
    assert!(text.contains("audit log intact"), "{text}");
    assert!(text.contains("lease_end"), "{text}");
    // Without a terminal and without --yes it says what to do.
    Command::new("setsid")
        .arg("-w")
        .arg(assert_cmd::cargo::cargo_bin("custody"))
        .arg("demo")
        .env("TMPDIR", dir.path())
        .assert()
        .failure()
        .stderr(contains("--yes"));
}

/// Dynamic PostgreSQL credentials through the CLI, across a crash: `source
/// add`, `set --kind postgres:NAME`, a run that holds its role, kill -9 of
/// the daemon; the next `custody unlock` drops the role and audits it.
#[test]
fn killed_daemon_mid_lease_role_is_dropped_at_the_next_unlock() {
    let db = pg::Pg::start();
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "infra"], "").success();
    e.change(&["env", "create", "app"], "").success();
    e.change(&["set", "infra", "PG_ADMIN_URL"], db.admin_url())
        .success();
    e.change(
        &[
            "source",
            "add",
            "postgres",
            "main",
            "--admin-from",
            "infra/PG_ADMIN_URL",
        ],
        "",
    )
    .success()
    .stdout(contains("postgres:main"));
    e.change(
        &["set", "app", "DATABASE_URL", "--kind", "postgres:main"],
        "",
    )
    .success()
    .stdout(contains("minted per lease"));
    let ls = e.cmd().args(["ls", "app"]).assert().success();
    assert!(String::from_utf8_lossy(&ls.get_output().stdout).contains("postgres:main"));
    e.cmd()
        .args(["source", "ls"])
        .assert()
        .success()
        .stdout(contains("infra/PG_ADMIN_URL").and(contains(pg::ADMIN_PASSWORD).not()));

    let script = "sleep 3600";
    e.preapprove("app", &["sh", "-c", script]);
    let mut child = spawn_run(&e, &["-e", "app", "--", "sh", "-c", script]);
    let mut role = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        role = e.json(&["status"])["credentials"][0]["credential"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !role.is_empty() && db.role_exists(&role)
    }));
    let daemon = e.daemon_pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(daemon)));
    let _ = child.kill();
    let _ = child.wait();
    assert!(db.role_exists(&role), "the role outlives a crashed broker");

    e.unlock();
    assert!(
        pg::eventually(Duration::from_secs(20), || !db.role_exists(&role)),
        "role {role} survived the restart"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        e.audit_types().iter().any(|t| t == "credential_revoked")
    }));
    e.cmd().args(["audit", "verify"]).assert().success();
}

/// Regression: the post-run leak check's findings never reached the human
/// (the CLI's `run` ignored the result's `leaks`).
#[test]
fn cli_run_reports_a_file_the_command_wrote_the_value_into() {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "TOKEN"], "s3cr3t-t0k3n-value-xyz")
        .success();
    let script = "printf %s \"$TOKEN\" > dump.txt";
    e.preapprove("e", &["sh", "-c", script]);
    let work = e.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let out = e
        .cmd()
        .current_dir(&work)
        .args(["run", "-e", "e", "--", "sh", "-c", script])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("dump.txt now holds the value of TOKEN"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"));
}

// ----- terminal flows, driven in tmux -------------------------------------------

/// A private tmux server (its own socket, no user config) running one
/// command in a 200×50 pane; killed on drop. The command's terminal is the
/// pane, never the terminal the tests run in.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(e: &Env, command: &str) -> Tmux {
        // A socket of its own per server: a killed server's socket may
        // linger for a moment.
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = Tmux {
            socket: e.dir.path().join(format!("tmux-{n}.sock")),
        };
        // Keep the pane after the command ends, with its exit code shown.
        // `custody` in `command` is this build's binary.
        let bin = assert_cmd::cargo::cargo_bin("custody");
        let script = format!(
            "export CUSTODY_HOME='{}' CUSTODY_RUNTIME_DIR='{}'; unset XDG_DATA_HOME XDG_RUNTIME_DIR; custody() {{ '{}' \"$@\"; }}; {command}; echo \"[exit $?]\"; sleep 600",
            e.home().display(),
            e.runtime().display(),
            bin.display()
        );
        let status = StdCommand::new("tmux")
            .arg("-S")
            .arg(&t.socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .args(["sh", "-c", &script])
            .status()
            .expect("tmux must be installed (the test command installs it)");
        assert!(status.success(), "tmux new-session failed");
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        StdCommand::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Types `text` and Enter.
    fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", text]);
        self.tmux(&["send-keys", "-t", "0", "Enter"]);
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["capture-pane", "-p", "-t", "0", "-S", "-200"])
                .stdout,
        )
        .into_owned()
    }

    /// Waits until the screen shows `needle`; returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        let mut screen = String::new();
        let seen = wait_until(Duration::from_secs(30), || {
            screen = self.screen();
            screen.contains(needle)
        });
        assert!(seen, "the screen never showed {needle:?}:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn env_with_token() -> Env {
    let e = Env::new();
    e.unlock();
    e.change(&["env", "create", "e"], "").success();
    e.change(&["set", "e", "TOKEN"], "tty-s3cr3t-value-0042")
        .success();
    e
}

/// Regression: `custody approve` with no id (the interactive queue) hung: the
/// broker acknowledged `watch` with id 0, which the client never matched.
#[test]
fn approve_queue_without_an_id_shows_requests_instead_of_hanging() {
    let e = env_with_token();
    let t = Tmux::start(&e, "custody approve");
    t.wait_for("Waiting for requests");
    let child = spawn_run(&e, &["-e", "e", "--", "sh", "-c", "echo queue:$TOKEN"]);
    let screen = t.wait_for("Approve? [o]nce");
    assert!(
        screen.contains("command:      sh -c 'echo queue:$TOKEN'")
            || screen.contains("echo queue:$TOKEN"),
        "{screen}"
    );
    t.line("o");
    t.wait_for("Approval PIN:");
    t.line(PIN);
    let screen = t.wait_for("approved r-");
    assert!(!screen.contains(PIN), "the PIN was echoed:\n{screen}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "queue:[masked:TOKEN]\n"
    );
}

/// `custody run` on a terminal asks inline (once / for / deny, then the PIN,
/// not echoed) and streams the masked output into the same terminal.
#[test]
fn run_on_a_terminal_asks_inline_then_runs_with_masked_output() {
    let e = env_with_token();
    let t = Tmux::start(&e, "custody run -e e -- sh -c 'echo inline:$TOKEN'");
    let screen = t.wait_for("Approve? [o]nce");
    assert!(screen.contains("echo inline:$TOKEN"), "{screen}");
    t.line("o");
    t.wait_for("Approval PIN:");
    // A wrong PIN says so and asks again (first hour, item 9).
    t.line("000000");
    t.wait_for("try again");
    t.line(PIN);
    let screen = t.wait_for("[exit 0]");
    assert!(screen.contains("wrong PIN (1 of 5"), "{screen}");
    assert!(screen.contains("inline:[masked:TOKEN]"), "{screen}");
    assert!(!screen.contains("tty-s3cr3t"), "{screen}");
    assert!(!screen.contains(PIN), "the PIN was echoed:\n{screen}");
    // Denied at the prompt: the run fails, nothing runs.
    drop(t);
    let t = Tmux::start(&e, "custody run -e e -- sh -c 'echo never:$TOKEN'");
    t.wait_for("Approve? [o]nce");
    t.line("d");
    let screen = t.wait_for("[exit ");
    assert!(!screen.contains("never:["), "it ran:\n{screen}");
    assert!(screen.contains("denied"), "{screen}");
    assert!(!screen.contains("[exit 0]"), "{screen}");
}

/// Attack class 9, "starving the broker": an agent (a process that started
/// `custody mcp`) and its forked workers hold 1,000 connections that never
/// say hello, reconnecting each one the broker closes. The human's `status`,
/// an approval, `revoke --all` and `lock` still go through: agents' process
/// trees share one pool of connections, everyone else has their own.
#[test]
fn attack_starving_the_broker_with_idle_agent_connections() {
    let e = env_with_token();
    let ready = e.dir.path().join("starver.ready");
    let mut starver = StdCommand::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/starve.py"))
        .arg(assert_cmd::cargo::cargo_bin("custody"))
        .arg(e.runtime().join("broker.sock"))
        .arg(&ready)
        .env("CUSTODY_HOME", e.home())
        .env("CUSTODY_RUNTIME_DIR", e.runtime())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(30), || ready.exists());
    let outcome = std::panic::catch_unwind(|| {
        assert!(started, "the starving agent did not start");
        let st = e.json(&["status"]);
        assert_eq!(st["sessions"][0]["client_name"], "starver", "{st}");
        let child = spawn_run(&e, &["-e", "e", "--", "sh", "-c", "echo human:$TOKEN"]);
        let mut id = String::new();
        assert!(wait_until(Duration::from_secs(20), || {
            match e
                .json(&["approve", "--list"])
                .as_array()
                .and_then(|a| a.first().cloned())
            {
                Some(p) => {
                    id = p["id"].as_str().unwrap().to_owned();
                    true
                }
                None => false,
            }
        }));
        e.cmd()
            .args(["approve", &id, "--once", "--pin-stdin"])
            .write_stdin(format!("{PIN}\n"))
            .assert()
            .success();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "human:[masked:TOKEN]\n"
        );
        e.cmd().args(["revoke", "--all"]).assert().success();
        e.cmd().arg("lock").assert().success();
    });
    // The agent, its workers and its `custody mcp`: the whole group.
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(starver.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = starver.wait();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

/// `custody policy edit` opens the policy in force in `$EDITOR` on a private
/// copy, applies it with the PIN once it parses, and applies nothing when
/// the edit does not parse; `policy show` prints the one in force.
#[test]
fn policy_edit_applies_a_checked_edit_and_nothing_else() {
    let e = Env::new();
    e.unlock();
    let file = e.dir.path().join("p.toml");
    fs::write(&file, "[defaults]\nmax_ttl = \"1h\"\n").unwrap();
    e.cmd()
        .args(["policy", "apply", file.to_str().unwrap(), "--pin-stdin"])
        .write_stdin(format!("{PIN}\n"))
        .assert()
        .success();
    e.cmd()
        .env("EDITOR", "sed -i s/1h/2h/")
        .args(["policy", "edit", "--pin-stdin"])
        .write_stdin(format!("{PIN}\n"))
        .assert()
        .success()
        .stdout(contains("Policy applied"));
    e.cmd()
        .args(["policy", "show"])
        .assert()
        .success()
        .stdout(contains("max_ttl = \"2h\""));
    e.cmd()
        .env("EDITOR", "sed -i s/max_ttl/max_tll/")
        .args(["policy", "edit", "--pin-stdin"])
        .write_stdin(format!("{PIN}\n"))
        .assert()
        .failure()
        .stderr(contains("invalid policy"));
    e.cmd()
        .args(["policy", "show"])
        .assert()
        .success()
        .stdout(contains("max_ttl = \"2h\""));
    // No private copy is left behind.
    let left: Vec<_> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_string_lossy()
                .starts_with("custody-policy-")
        })
        .filter(|d| {
            fs::read_to_string(d.path().join("policy.toml")).is_ok_and(|t| t.contains("max_tll"))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The agent's prompt-rewriting attack (the human's channel, class 1): a
/// request whose working directory's name holds `\r`, cursor-up and
/// erase-line sequences and a fake "command: cargo test" / "in:" pair, and
/// whose argv holds an erase-line too. In a
/// real terminal (tmux), `custody approve --list` and the PIN prompt of
/// `custody approve ID` show the real command, the directory escaped and a
/// warning; no raw escape sequence reaches the screen. A description with
/// control characters is refused at creation.
#[test]
fn the_approval_screen_shows_what_will_run_escaped() {
    let e = env_with_token();
    let hostile = e.dir.path().join(
        "x\r\x1b[1A\x1b[2K  command:      cargo test\n  in:           \x1b[2K\u{202e}pohs-ved-emoh",
    );
    fs::create_dir(&hostile).unwrap();
    let mut requester = e.std_cmd();
    requester
        .args([
            "run",
            "--no-prompt",
            "-e",
            "e",
            "--",
            "sh",
            "-c",
            "printenv TOKEN > loot",
            "--note=\x1b[2K\rok",
        ])
        .current_dir(&hostile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut requester = requester.spawn().unwrap();
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        match e.json(&["approve", "--list"])[0]["id"].as_str() {
            Some(i) => {
                id = i.to_owned();
                true
            }
            None => false,
        }
    }));
    for command in [
        "custody approve --list".to_owned(),
        format!("custody approve {id}"),
    ] {
        let t = Tmux::start(&e, &command);
        let screen = t.wait_for(if command.ends_with("--list") {
            "[exit 0]"
        } else {
            "Approval PIN:"
        });
        let raw = t
            .tmux(&["capture-pane", "-p", "-e", "-t", "0", "-S", "-200"])
            .stdout;
        for seq in ["\x1b[1A", "\x1b[2K", "\r"] {
            assert!(
                !raw.windows(seq.len()).any(|w| w == seq.as_bytes()),
                "{command}: a raw {seq:?} reached the screen"
            );
        }
        assert!(
            screen.contains("[2] printenv TOKEN > loot"),
            "{command}:\n{screen}"
        );
        assert!(
            screen.contains("[3] --note=\\x1b[2K\\x0dok"),
            "{command}:\n{screen}"
        );
        assert!(
            screen.contains("\\x0d\\x1b[1A\\x1b[2K"),
            "{command}:\n{screen}"
        );
        assert!(screen.contains("\\u202e"), "{command}:\n{screen}");
        assert!(
            screen.contains("WARNING:      contains control"),
            "{command}:\n{screen}"
        );
        assert!(
            !screen
                .lines()
                .any(|l| l.trim_start().starts_with("command:      cargo test")),
            "{command}: the fake command line shows as a line of its own:\n{screen}"
        );
    }
    let _ = requester.kill();
    let _ = requester.wait();
    e.change(&["env", "create", "d", "-d", "ok\x1b[2K\rwiped"], "")
        .failure()
        .stderr(contains("control character"));
}

/// First hour, item 6: values that would break every run are refused at
/// `set` with the reason (a loader variable such as `PATH`; a value over
/// 128 KiB as an environment variable, pointing at `--kind file`), and a
/// run that cannot start names the variable.
#[test]
fn values_that_would_break_every_run_are_refused_with_the_reason() {
    let e = env_with_token();
    e.change(&["set", "e", "PATH"], "/tmp/evil")
        .failure()
        .stderr(contains("refusing 'PATH'").and(contains("changes how programs are found")));
    let big = "b".repeat(200 * 1024);
    e.change(&["set", "e", "CERT"], big.clone())
        .failure()
        .stderr(contains("--kind file").and(contains("128 KiB")));
    // As a file it is fine.
    e.change(&["set", "e", "CERT", "--kind", "file"], big)
        .success();
    let out = e.json(&["ls", "e"]);
    assert!(out.to_string().contains("CERT"), "{out}");
    // (A run that cannot start names the variable: `lease::tests`.)
}

/// First hour, item 9: `custody unlock` with the broker already unlocked
/// says so without asking for the passphrase (no terminal, no stdin here:
/// asking would fail).
#[test]
fn unlock_when_unlocked_does_not_ask_for_the_passphrase() {
    let e = env_with_token();
    e.cmd()
        .arg("unlock")
        .assert()
        .success()
        .stdout(contains("Already unlocked"));
}

/// First hour, item 10: with the broker locked, the CLI speaks to the human
/// (not "ask the user to …"), and vault commands open the file with the
/// passphrase as they do without a broker.
#[test]
fn a_locked_broker_is_explained_to_the_human_and_vault_commands_fall_back_to_the_passphrase() {
    let e = env_with_token();
    e.cmd().arg("lock").assert().success();
    assert!(e.daemon_pid().is_some(), "the locked broker stays up");
    let out = e
        .cmd()
        .args(["run", "-e", "e", "--", "true"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("run `custody unlock` first"), "{err}");
    assert!(!err.contains("ask the user"), "{err}");
    // `ls` opens the vault file with the passphrase (the locked broker has none).
    e.cmd()
        .args(["--passphrase-stdin", "ls", "e"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success()
        .stdout(contains("TOKEN"));
    // Without the passphrase (no terminal), it says how to give it.
    e.cmd()
        .args(["ls", "e"])
        .assert()
        .failure()
        .stderr(contains("--passphrase-stdin"));
}

/// First hour, item 14: `ls` lines up its columns when a kind names a
/// dynamic source (`command:gh-app`).
#[test]
fn ls_columns_line_up_with_dynamic_kinds() {
    let e = env_with_token();
    e.change(
        &["source", "add", "command", "gh-app", "--mint", "echo tok"],
        "",
    )
    .success();
    e.change(&["set", "e", "GH_TOKEN", "--kind", "command:gh-app"], "")
        .success();
    let out = e.cmd().args(["ls", "e"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let at = |line: &str, what: &str| {
        line.find(what)
            .unwrap_or_else(|| panic!("{what} in {line}"))
    };
    let value = at(lines[0], "VALUE");
    for line in &lines[1..] {
        let cell = if line.contains("GH_TOKEN") {
            "lease"
        } else {
            "set"
        };
        assert_eq!(at(line, cell), value, "{text}");
    }
}

/// First hour, item 8: `custody run` from a terminal passes the caller's
/// environment (not only PATH, HOME, …), `--clean-env` only the short list,
/// and never a variable that changes how programs load.
#[test]
fn run_passes_the_callers_environment_unless_clean_env() {
    let e = env_with_token();
    let script = "echo \"[$RAILS_ENV][$RUSTUP_HOME][$LD_PRELOAD]\"";
    e.preapprove("e", &["sh", "-c", script]);
    let run = |extra: &[&str]| {
        let out = e
            .cmd()
            .env("RAILS_ENV", "test")
            .env("RUSTUP_HOME", "/opt/rustup")
            .env("LD_PRELOAD", "/nonexistent/evil.so")
            .arg("run")
            .args(extra)
            .args(["-e", "e", "--", "sh", "-c", script])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    assert_eq!(run(&[]), "[test][/opt/rustup][]\n");
    assert_eq!(run(&["--clean-env"]), "[][][]\n");
}

/// `custody ARGS` on a pseudo-terminal of its own (`script`), for output
/// that is meant for a terminal.
fn on_a_terminal(e: &Env, args: &str) -> String {
    let bin = assert_cmd::cargo::cargo_bin("custody");
    let mut c = StdCommand::new("script");
    e.apply(&mut c);
    let out = c
        .args(["-qec", &format!("'{}' {args}", bin.display()), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// First hour, item 13: "what did my agent do today?" — on a terminal,
/// `custody audit` is a table in local time with who, what and where;
/// filters pick an agent, an environment or record types; `--summary` is
/// one screen; `--json` stays one record per line for machines.
#[test]
fn audit_reads_as_a_table_with_filters_and_a_summary() {
    let e = env_with_token();
    e.preapprove("e", &["sh", "-c", "echo $TOKEN"]);
    e.cmd()
        .args(["run", "-e", "e", "--", "sh", "-c", "echo $TOKEN"])
        .assert()
        .success();
    let table = on_a_terminal(&e, "audit");
    assert!(table.contains("WHEN") && table.contains("WHO"), "{table}");
    assert!(table.contains("ran `sh -c 'echo $TOKEN'`"), "{table}");
    assert!(table.contains("masked TOKEN×1"), "{table}");
    // A pre-approved run is attributed too: its request, then its grant.
    assert!(table.contains("pre-approved by policy: grant"), "{table}");
    assert!(
        table.contains("asked to run `sh -c 'echo $TOKEN'`"),
        "{table}"
    );
    assert!(
        table.contains("s ago") || table.contains("m ago"),
        "{table}"
    );
    assert!(
        !table.contains("\"type\""),
        "raw JSON in the table: {table}"
    );
    let ends = on_a_terminal(&e, "audit --type lease_end");
    assert!(ends.contains("ended (exited): exit 0"), "{ends}");
    assert!(!ends.contains("ran `"), "{ends}");
    let mine = on_a_terminal(&e, "audit --agent you --env e");
    assert!(mine.contains("ran `"), "{mine}");
    let other = on_a_terminal(&e, "audit --agent codex");
    assert!(!other.contains("ran `"), "{other}");
    let summary = on_a_terminal(&e, "audit --summary");
    assert!(summary.contains("Since 24h"), "{summary}");
    assert!(
        summary.contains("1 request(s)") && summary.contains("1 run(s)"),
        "{summary}"
    );
    // Machines: JSON lines, filtered the same way.
    let out = e
        .cmd()
        .args(["--json", "audit", "--type", "request"])
        .assert()
        .success();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"]["type"], "request");
}

/// The demo's PIN, as it prints it.
fn demo_pin_on(screen: &str) -> String {
    let at = screen
        .find("The demo's approval PIN is ")
        .expect("the demo prints its PIN");
    screen[at + "The demo's approval PIN is ".len()..][..6].to_owned()
}

/// First hour, item 11: the demo forgives a PIN typo (asks again), shows
/// the audit trail and the next steps after a denial too, cleans up on
/// Ctrl-C (no broker left, no throwaway vault), and prints commands quoted
/// for copy-paste.
#[test]
fn the_demo_forgives_typos_shows_a_denial_through_and_cleans_up_on_ctrl_c() {
    let e = Env::new();
    let tmp = e.dir.path().join("demo-tmp");
    fs::create_dir(&tmp).unwrap();
    let demo = format!("TMPDIR='{}' custody demo", tmp.display());

    // A typo, then the right PIN.
    let t = Tmux::start(&e, &demo);
    let screen = t.wait_for("Approve this one run?");
    assert!(
        screen.contains("env create demo-app -d 'the demo app'"),
        "{screen}"
    );
    let pin = demo_pin_on(&screen);
    let wrong = if pin == "111111" { "222222" } else { "111111" };
    t.line("y");
    t.wait_for("Approval PIN");
    t.line(wrong);
    t.wait_for("Wrong PIN");
    t.line(&pin);
    t.wait_for("the token is [masked:API_TOKEN]");
    t.wait_for("[exit 0]");
    drop(t);

    // A denial: the agent's answer, then the audit trail and next steps.
    let t = Tmux::start(&e, &demo);
    t.wait_for("Approve this one run?");
    t.line("n");
    let screen = t.wait_for("[exit 0]");
    assert!(screen.contains("You said no"), "{screen}");
    assert!(screen.contains("denial"), "{screen}");
    assert!(screen.contains("Next, for real use"), "{screen}");
    drop(t);

    // Ctrl-C at the question: everything it made is gone. (The pane's shell
    // outlives the Ctrl-C, as an interactive one does.)
    let t = Tmux::start(&e, &format!("trap 'true' INT; {demo}"));
    t.wait_for("Approve this one run?");
    let demo_dir = fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("custody-demo-")
        })
        .expect("the demo's throwaway directory");
    let status = StdCommand::new(assert_cmd::cargo::cargo_bin("custody"))
        .args(["--json", "status"])
        .env("CUSTODY_HOME", demo_dir.join("home"))
        .env("CUSTODY_RUNTIME_DIR", demo_dir.join("run"))
        .output()
        .unwrap();
    let broker = serde_json::from_slice::<Value>(&status.stdout).unwrap()["pid"]
        .as_u64()
        .expect("the demo broker runs") as u32;
    assert!(alive(broker));
    t.tmux(&["send-keys", "-t", "0", "C-c"]);
    t.wait_for("interrupted");
    assert!(!demo_dir.exists(), "the throwaway vault is left");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(broker)),
        "the demo broker {broker} is left running"
    );
}

/// First hour, item 9: `init` on a terminal checks each rule as soon as the
/// entry is typed and asks again (a short passphrase, then a mismatch, then
/// a short PIN), instead of failing after all four entries.
#[test]
fn init_on_a_terminal_checks_each_entry_at_once_and_asks_again() {
    let e = Env::empty();
    let t = Tmux::start(&e, "custody init --insecure-fast-kdf");
    t.wait_for("New vault passphrase:");
    t.line("short");
    t.wait_for("at least 8 characters; try again");
    t.line(PASS);
    t.wait_for("Repeat the passphrase:");
    t.line("not the same passphrase");
    t.wait_for("did not match; try again");
    t.line(PASS);
    t.line(PASS);
    t.wait_for("Approval PIN");
    t.line("123");
    t.wait_for("at least 6 characters; try again");
    t.line(PIN);
    t.wait_for("Repeat the PIN:");
    t.line(PIN);
    let screen = t.wait_for("[exit ");
    assert!(screen.contains("[exit 0]"), "{screen}");
    assert!(screen.contains("Created vault"), "{screen}");
    // The vault opens with what was finally typed.
    e.cmd()
        .args(["--passphrase-stdin", "ls"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success();
}

/// First hour, item 7: a run's two pipes reach the caller as whole lines.
/// With a hundred values in the vault the masker held back a line's end
/// (bytes that might begin a value's wrapped or encoded form) while the
/// other stream's line went out, and lines came out cut into each other
/// ("err line 7 xyzout line 1 abcdef").
#[test]
fn stdout_and_stderr_lines_are_never_cut_into_each_other() {
    let e = env_with_token();
    let dotenv = e.dir.path().join("many.env");
    // Random-looking values, as `custody generate` makes them: their
    // encoded forms begin with almost any letter or digit.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let values: String = (0..100)
        .map(|i| {
            let value: String = (0..32)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    alphabet[(x >> 33) as usize % alphabet.len()] as char
                })
                .collect();
            format!("V{i}={value}\n")
        })
        .collect();
    fs::write(&dotenv, values).unwrap();
    e.change(&["import", "e", dotenv.to_str().unwrap()], "")
        .success();
    let script =
        "for i in $(seq 1 300); do echo \"out line $i abcdef\"; echo \"err line $i xyz\" >&2; done";
    e.preapprove("e", &["sh", "-c", script]);
    for round in 0..3 {
        // Both streams on one file, as `2>&1` or a terminal has them.
        let log = e.dir.path().join(format!("both-{round}.log"));
        let file = fs::File::create(&log).unwrap();
        let status = e
            .std_cmd()
            .arg("run")
            .args(["--no-pty", "-e", "e", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        assert!(status.success());
        let text = fs::read_to_string(&log).unwrap();
        let cut: Vec<&str> = text
            .lines()
            .filter(|l| {
                !(l.starts_with("out line ") && l.ends_with(" abcdef")
                    || l.starts_with("err line ") && l.ends_with(" xyz"))
            })
            .collect();
        assert!(cut.is_empty(), "lines cut into each other: {cut:?}");
        assert_eq!(text.lines().count(), 600);
    }
    // Each stream alone keeps its lines whole and in order.
    let merged = e
        .std_cmd()
        .arg("run")
        .args(["--no-pty", "-e", "e", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&merged.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = (1..=300).map(|i| format!("out line {i} abcdef")).collect();
    assert_eq!(lines, expected);
}

/// First hour, item 7: `--pty` runs the command on a terminal of its own:
/// it sees a terminal on all three streams (colours, prompts), its output
/// is one stream masked in the order written (stderr no longer overtakes
/// stdout), and what the caller sends reaches it, end of input included.
#[test]
fn a_run_on_a_pty_sees_a_terminal_and_one_ordered_masked_stream() {
    let e = env_with_token();
    let script = "test -t 0 && test -t 1 && test -t 2 && echo all-three-tty; stty size; \
                  for i in 1 2 3 4 5; do echo o$i; echo e$i >&2; done; \
                  echo tok=$TOKEN; read x; echo got:$x; read y || echo input-ended";
    e.preapprove("e", &["sh", "-c", script]);
    let mut child = e
        .std_cmd()
        .arg("run")
        .args(["--pty", "-e", "e", "--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Type once it asks (what is typed early is echoed early).
    use std::io::{BufRead, Write};
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("tok=") {
        assert!(lines.read_line(&mut text).unwrap() > 0, "{text}");
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed tty-s3cr3t-value-0042\n").unwrap();
    drop(stdin);
    std::io::Read::read_to_string(lines.get_mut(), &mut text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = text.replace('\r', "");
    assert!(text.contains("all-three-tty\n"), "{text}");
    // Without a terminal of the caller's own: 24 rows, 80 columns.
    assert!(text.contains("24 80\n"), "{text}");
    assert!(
        text.contains("o1\ne1\no2\ne2\no3\ne3\no4\ne4\no5\ne5\n"),
        "{text}"
    );
    assert!(text.contains("tok=[masked:TOKEN]\n"), "{text}");
    // Typed input reaches it, and its echo is masked like any output.
    assert!(text.contains("got:typed [masked:TOKEN]\n"), "{text}");
    assert!(text.contains("input-ended"), "{text}");
    assert!(!text.contains("tty-s3cr3t-value-0042"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The terminal's node is the broker's alone while it runs.
    let mode = "stat -c %a $(tty)";
    e.preapprove("e", &["sh", "-c", mode]);
    let out = e
        .std_cmd()
        .args(["run", "--pty", "-e", "e", "--", "sh", "-c", mode])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");
    // Pipes, as before: stdin is /dev/null and no stream is a terminal.
    let pipes = "test -t 0 || test -t 1 || test -t 2 || echo no-tty";
    e.preapprove("e", &["sh", "-c", pipes]);
    e.cmd()
        .args(["run", "--no-pty", "-e", "e", "--", "sh", "-c", pipes])
        .assert()
        .success()
        .stdout("no-tty\n");
}

/// First hour, item 7: on a terminal a run gets a terminal by default;
/// keys go to the command (Ctrl-C is its SIGINT, not the end of custody),
/// a resize reaches it as SIGWINCH, and the caller's terminal is back in
/// its normal mode afterwards.
#[test]
fn a_terminal_run_is_on_a_pty_by_default_and_takes_keys_and_resizes() {
    let e = env_with_token();
    let script = e.dir.path().join("interactive.sh");
    fs::write(
        &script,
        "trap 'echo size:$(stty size)' WINCH\n\
         trap 'echo caught-int; exit 3' INT\n\
         test -t 0 && test -t 1 && echo on-a-tty\n\
         read name; echo hello:$name:$TOKEN\n\
         echo ready\n\
         while :; do sleep 0.05; done\n",
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    e.preapprove("e", &["sh", &script]);
    let t = Tmux::start(
        &e,
        &format!(
            "custody run -e e -- sh '{script}'; echo \"[run $?]\"; stty -a | grep -o -- '-\\?icanon'"
        ),
    );
    t.wait_for("on-a-tty");
    t.line("world");
    t.wait_for("hello:world:[masked:TOKEN]");
    t.wait_for("ready");
    t.tmux(&["resize-window", "-t", "0", "-x", "150", "-y", "40"]);
    t.wait_for("size:40 150");
    t.tmux(&["send-keys", "-t", "0", "C-c"]);
    let screen = t.wait_for("[run 3]");
    assert!(screen.contains("caught-int"), "{screen}");
    // The caller's terminal is canonical again (not left raw).
    let screen = t.wait_for("[exit 0]");
    assert!(screen.contains("\nicanon"), "{screen}");
    assert!(!screen.contains("tty-s3cr3t-value-0042"), "{screen}");
}

/// First hour, item 14: a scan of a large tree shows how far it got on a
/// terminal, also when the broker does it (before: one "scanning in the
/// broker…" line until the end).
#[test]
fn a_broker_scan_shows_progress_on_a_terminal() {
    let e = env_with_token();
    let tree = e.dir.path().join("big-tree");
    fs::create_dir(&tree).unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..24 {
        fs::write(tree.join(format!("f{i}.txt")), &chunk).unwrap();
    }
    let screen = on_a_terminal(&e, &format!("scan '{}'", tree.display()));
    assert!(screen.contains("scanning: "), "{screen}");
    assert!(
        screen.contains(" files, ") && screen.contains("MiB/s"),
        "{screen}"
    );
    // Piped, nothing but the report.
    let out = e
        .cmd()
        .args(["scan", tree.to_str().unwrap()])
        .assert()
        .success();
    assert!(!String::from_utf8_lossy(&out.get_output().stderr).contains("scanning"));
}

/// First hour, item 15: where a session bus exists, the approval queue
/// shows a desktop notification per request (here a private bus, watched
/// with `dbus-monitor`), naming the request, who asks and the command,
/// never a value. The notifier comes from a system directory: a `gdbus`
/// or `notify-send` planted first on `PATH` never runs in the human's
/// queue (it would share the terminal the PIN is typed on).
#[test]
fn the_approval_queue_notifies_the_desktop_without_trusting_path() {
    let e = env_with_token();
    let dir = e.dir.path();
    let socket = dir.join("session-bus.sock");
    let config = dir.join("session-bus.conf");
    fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\
             <busconfig><type>session</type><listen>unix:path={}</listen>\
             <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
             <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>",
            socket.display()
        ),
    )
    .unwrap();
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _bus = Killed(
        StdCommand::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (the test command installs it)"),
    );
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let address = format!("unix:path={}", socket.display());
    let log = dir.join("monitor.log");
    let _monitor = Killed(
        StdCommand::new("dbus-monitor")
            .args(["--address", &address])
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || read_log()
        .contains("NameAcquired")));
    // The agent's planted notifiers, first on PATH.
    let planted = dir.join("planted-bin");
    fs::create_dir(&planted).unwrap();
    let marker = dir.join("planted-ran");
    for name in ["gdbus", "notify-send"] {
        let p = planted.join(name);
        fs::write(&p, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let t = Tmux::start(
        &e,
        &format!(
            "export DBUS_SESSION_BUS_ADDRESS='{address}' PATH='{}':\"$PATH\"; custody approve",
            planted.display()
        ),
    );
    t.wait_for("Waiting for requests");
    let mut child = spawn_run(&e, &["-e", "e", "--", "sh", "-c", "echo notify:$TOKEN"]);
    t.wait_for("Approve?");
    let id = e.json(&["approve", "--list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = String::new();
    let notified = wait_until(Duration::from_secs(10), || {
        seen = read_log();
        seen.contains("member=Notify") && seen.contains(&format!("custody approve {id}"))
    });
    assert!(notified, "no notification on the bus:\n{seen}");
    assert!(
        seen.contains("asks to run sh -c 'echo notify:$TOKEN'"),
        "{seen}"
    );
    assert!(!seen.contains("tty-s3cr3t-value-0042"));
    assert!(!marker.exists(), "a notifier planted on PATH ran");
    t.line("d");
    let _ = child.wait();
}

/// Architecture issue, G6: `custody passwd` changed the vault file with no
/// audit record. It is now recorded like every change; while an unlocked
/// broker holds the log it refuses (nothing changed) and says to lock
/// first; the broker then unlocks with the new passphrase and the chain
/// verifies.
#[test]
fn passwd_is_audited_and_waits_for_a_locked_broker() {
    let e = env_with_token();
    let new = "a brand new passphrase 42";
    e.cmd()
        .args(["--passphrase-stdin", "passwd"])
        .write_stdin(format!("{PASS}\n{new}\n"))
        .assert()
        .failure()
        .stderr(contains("custody lock"));
    e.cmd().arg("lock").assert().success();
    e.cmd()
        .args(["--passphrase-stdin", "passwd"])
        .write_stdin(format!("{PASS}\n{new}\n"))
        .assert()
        .success();
    e.cmd()
        .args(["unlock", "--passphrase-stdin"])
        .write_stdin(format!("{new}\n"))
        .assert()
        .success();
    let log = fs::read_to_string(e.home().join("audit.log")).unwrap();
    let changes = log
        .lines()
        .filter(|l| l.contains("\"change_passphrase\""))
        .collect::<Vec<_>>();
    assert_eq!(changes.len(), 1, "{log}");
    assert!(changes[0].contains("terminal (vault file, no broker)"));
    assert!(!log.contains(new));
    assert_eq!(e.json(&["audit", "verify"])["intact"], true);
}
