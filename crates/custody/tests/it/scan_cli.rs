//! `custody scan` through the real binary: vault values in plain and encoded
//! forms, token shapes by rule name, .gitignore, git history, exit codes,
//! and the pre-commit hook blocking a real `git commit`.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::time::Duration;

use assert_cmd::Command;
use base64::Engine;
use custody_testkit::Home;
use serde_json::Value;

const PASS: &str = "scan test passphrase";
const PIN: &str = "135790";
/// 32 bytes: long enough for every encoded form to be matched.
const SECRET: &str = "s3cr3t-VALUE_0123456789abcdefXYZ";

fn hex(v: &str) -> String {
    v.bytes().map(|b| format!("{b:02x}")).collect()
}

fn b64(v: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// A home + runtime dir, a work dir; the daemon (if any) is stopped on drop.
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
    /// No vault at all.
    fn bare() -> Env {
        Env {
            kit: Home::new(None),
        }
    }

    /// A vault whose `dev/TOKEN` holds [`SECRET`].
    fn with_secret() -> Env {
        let e = Env::bare();
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
        e.cmd()
            .args(["--passphrase-stdin", "env", "create", "dev"])
            .write_stdin(format!("{PASS}\n"))
            .assert()
            .success();
        e.cmd()
            .args(["--passphrase-stdin", "set", "dev", "TOKEN"])
            .write_stdin(format!("{PASS}\n{SECRET}\n"))
            .assert()
            .success();
        e
    }

    fn cmd(&self) -> Command {
        let mut c = Command::from_std(self.command(&assert_cmd::cargo::cargo_bin("custody")));
        c.timeout(Duration::from_secs(60));
        c
    }

    /// `custody --json scan ARGS` (passphrase on stdin); exit code and JSON.
    fn scan(&self, args: &[&str]) -> (i32, Value) {
        let out = self
            .cmd()
            .args(["--json", "--passphrase-stdin", "scan"])
            .args(args)
            .write_stdin(format!("{PASS}\n"))
            .output()
            .unwrap();
        assert_no_value("scan stdout", &out.stdout);
        assert_no_value("scan stderr", &out.stderr);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "not JSON: {} / {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    fn unlock(&self) {
        self.cmd()
            .args(["unlock", "--passphrase-stdin"])
            .write_stdin(format!("{PASS}\n"))
            .assert()
            .success();
    }

    fn git(&self, args: &[&str]) -> std::process::Output {
        let mut c = StdCommand::new("git");
        c.arg("-C")
            .arg(self.work())
            .args([
                "-c",
                "user.email=a@b",
                "-c",
                "user.name=n",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("CUSTODY_HOME", self.dir.path().join("home"))
            .env("CUSTODY_RUNTIME_DIR", self.dir.path().join("run"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR");
        c.output().unwrap()
    }

    /// A git repository in the work dir with custody's pre-commit hook.
    fn hooked_repo(&self) -> PathBuf {
        let w = self.work();
        self.git_ok(&["init", "-q"]);
        self.cmd()
            .args(["scan", "--install-hook"])
            .arg(&w)
            .assert()
            .success();
        w
    }

    fn git_ok(&self, args: &[&str]) {
        let out = self.git(args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_broker(&assert_cmd::cargo::cargo_bin("custody"));
    }
}

fn assert_no_value(what: &str, hay: &[u8]) {
    let hay = String::from_utf8_lossy(hay);
    for form in [SECRET.to_owned(), b64(SECRET), hex(SECRET)] {
        assert!(!hay.contains(&form), "{what} shows the value: {hay}");
    }
}

/// `(path, variable or rule)` of every finding, sorted.
fn found(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {v}"))
        .iter()
        .map(|f| {
            let what = f["variable"].as_str().or(f["rule"].as_str()).unwrap();
            (f["path"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, w)| ((*p).to_owned(), (*w).to_owned()))
        .collect()
}

#[test]
fn without_a_vault_token_shapes_are_found_by_rule_name_and_exit_1() {
    let e = Env::bare();
    let w = e.work();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    fs::write(
        w.join("aws.txt"),
        format!("{}{}", "AKIA", "ABCDEFGHIJKLMNOP"),
    )
    .unwrap();
    fs::write(
        w.join("gh.txt"),
        format!("{}{}", "ghp_", "a1B2c3D4".repeat(4) + "e5F6"),
    )
    .unwrap();
    fs::write(
        w.join("slack.txt"),
        format!("{}{}", "xoxb-", "123456789012-abcdefABCDEF"),
    )
    .unwrap();
    fs::write(
        w.join("stripe.txt"),
        format!("{}{}", "sk_live_", "4eC39HqLyjWDarjtT1zdp7dc"),
    )
    .unwrap();
    fs::write(w.join("key.pem"), "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n").unwrap();
    fs::write(w.join("jwt.txt"), jwt).unwrap();
    fs::write(
        w.join(".env"),
        "DEBUG=true\nAPI_SECRET=q8Zr2LmX0vT7pK4wYc9N1bH6\n",
    )
    .unwrap();
    let out = e.cmd().args(["--json", "scan"]).arg(&w).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        found(&v),
        pairs(&[
            (".env", "high-entropy-assignment"),
            ("aws.txt", "aws-access-key-id"),
            ("gh.txt", "github-token"),
            ("jwt.txt", "jwt"),
            ("key.pem", "private-key"),
            ("slack.txt", "slack-token"),
            ("stripe.txt", "stripe-live-key"),
        ]),
        "{v}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for shown in [
        "ABCDEFGHIJKLMNOP",
        "4eC39HqLyjWDarjtT1zdp7dc",
        jwt,
        "q8Zr2LmX0vT7pK4wYc9N1bH6",
    ] {
        assert!(!text.contains(shown), "matched text shown: {text}");
    }
    assert_eq!(v["files"], 7);

    // A clean tree: exit 0, human output.
    let clean = e.dir.path().join("clean");
    fs::create_dir_all(&clean).unwrap();
    fs::write(clean.join("readme.md"), "nothing to see\n").unwrap();
    e.cmd()
        .arg("scan")
        .arg(&clean)
        .assert()
        .code(0)
        .stdout(predicates::str::contains("0 finding(s) in 1 file(s)"));
}

#[test]
fn direct_scan_finds_plain_and_encoded_values_and_respects_gitignore() {
    let e = Env::with_secret();
    let w = e.work();
    fs::create_dir_all(w.join("src")).unwrap();
    fs::write(w.join(".gitignore"), "*.log\n").unwrap();
    fs::write(w.join("debug.log"), SECRET).unwrap();
    fs::write(
        w.join("src/main.rs"),
        format!("fn main() {{}}\n// {SECRET}\n"),
    )
    .unwrap();
    fs::write(w.join("b64.json"), format!("{{\"k\":\"{}\"}}", b64(SECRET))).unwrap();
    fs::write(w.join("HEX.txt"), hex(SECRET).to_uppercase()).unwrap();
    let (code, v) = e.scan(&[w.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        found(&v),
        pairs(&[
            ("HEX.txt", "dev/TOKEN"),
            ("b64.json", "dev/TOKEN"),
            ("src/main.rs", "dev/TOKEN"),
        ]),
        "{v}"
    );
    let main = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "src/main.rs")
        .unwrap();
    assert_eq!(main["line"], 2);

    // Wrong passphrase: the scan cannot run (exit 2), nothing is shown.
    let out = e
        .cmd()
        .args(["--passphrase-stdin", "scan"])
        .arg(&w)
        .write_stdin("wrong\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn git_history_finds_a_value_only_history_holds_directly_and_through_the_broker() {
    let e = Env::with_secret();
    let w = e.work();
    e.git_ok(&["init", "-q"]);
    fs::write(w.join("settings.py"), format!("TOKEN = \"{SECRET}\"\n")).unwrap();
    e.git_ok(&["add", "."]);
    e.git_ok(&["commit", "-q", "-m", "oops"]);
    fs::write(w.join("settings.py"), "TOKEN = os.environ['TOKEN']\n").unwrap();
    e.git_ok(&["commit", "-q", "-am", "fix"]);

    let (code, v) = e.scan(&[w.to_str().unwrap()]);
    assert_eq!((code, found(&v)), (0, vec![]), "{v}");
    let (code, v) = e.scan(&["--git-history", w.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(found(&v), pairs(&[("settings.py", "dev/TOKEN")]), "{v}");
    assert_eq!(v["findings"][0]["line"], 1);
    assert_eq!(v["findings"][0]["commit"].as_str().map(str::len), Some(40));

    e.unlock();
    let (code, v) = e.scan(&["--git-history", w.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(found(&v), pairs(&[("settings.py", "dev/TOKEN")]), "{v}");
}

#[test]
fn the_pre_commit_hook_blocks_a_commit_carrying_a_vault_value() {
    let e = Env::with_secret();
    let w = e.hooked_repo();
    let hook = w.join(".git/hooks/pre-commit");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&hook).unwrap().permissions().mode() & 0o111,
        0o111
    );
    // Reinstalling custody's own hook is fine.
    e.cmd()
        .args(["scan", "--install-hook"])
        .arg(&w)
        .assert()
        .success();

    e.unlock();
    fs::write(w.join("ok.txt"), "fine\n").unwrap();
    e.git_ok(&["add", "ok.txt"]);
    e.git_ok(&["commit", "-q", "-m", "clean"]);

    fs::write(w.join("leak.txt"), b64(SECRET)).unwrap();
    e.git_ok(&["add", "leak.txt"]);
    let out = e.git(&["commit", "-q", "-m", "leak"]);
    assert!(!out.status.success(), "the commit went through");
    let said = [out.stdout.clone(), out.stderr.clone()].concat();
    assert!(
        String::from_utf8_lossy(&said).contains("leak.txt"),
        "{}",
        String::from_utf8_lossy(&said)
    );
    assert_no_value("hook output", &said);
    // `git commit -a` stages into a temporary index: still checked.
    e.git_ok(&["reset", "-q", "leak.txt"]);
    fs::write(w.join("ok.txt"), hex(SECRET)).unwrap();
    let out = e.git(&["commit", "-q", "-am", "leak via -a"]);
    assert!(!out.status.success(), "the -a commit went through");
    let log = e.git(&["log", "--format=%s"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "clean");
}

#[test]
fn install_hook_refuses_a_foreign_hook_unless_forced() {
    let e = Env::bare();
    let w = e.work();
    e.git_ok(&["init", "-q"]);
    let hook = w.join(".git/hooks/pre-commit");
    fs::create_dir_all(hook.parent().unwrap()).unwrap();
    fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    e.cmd()
        .args(["scan", "--install-hook"])
        .arg(&w)
        .assert()
        .failure()
        .stderr(predicates::str::contains("--force"));
    assert_eq!(fs::read_to_string(&hook).unwrap(), "#!/bin/sh\nexit 0\n");
    e.cmd()
        .args(["scan", "--install-hook", "--force"])
        .arg(&w)
        .assert()
        .success();
    assert!(fs::read_to_string(&hook).unwrap().contains("scan --staged"));
    // Not a repository: a clear error.
    e.cmd()
        .args(["scan", "--install-hook"])
        .arg(e.dir.path())
        .assert()
        .failure()
        .stderr(predicates::str::contains("git init"));
}

/// First hour, item 1: one dynamic variable (no stored value, minted per
/// lease) no longer breaks every scan: it is skipped, and `--json` says so,
/// through the broker and directly.
#[test]
fn a_dynamic_variable_is_skipped_and_said_so() {
    let e = Env::with_secret();
    e.unlock();
    for args in [
        vec![
            "--passphrase-stdin",
            "source",
            "add",
            "command",
            "gh",
            "--mint",
            "echo t",
        ],
        vec![
            "--passphrase-stdin",
            "set",
            "dev",
            "GH_TOKEN",
            "--kind",
            "command:gh",
        ],
    ] {
        e.cmd()
            .args(&args)
            .write_stdin(format!("{PASS}\n"))
            .assert()
            .success();
    }
    fs::write(e.work().join("leak.txt"), SECRET).unwrap();
    let (code, v) = e.scan(&[e.work().to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(found(&v), pairs(&[("leak.txt", "dev/TOKEN")]), "{v}");
    assert_eq!(
        v["skipped_dynamic"],
        serde_json::json!(["dev/GH_TOKEN"]),
        "{v}"
    );
    // Directly, with the broker stopped.
    e.cmd().arg("lock").assert().success();
    let (code, v) = e.scan(&[e.work().to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        v["skipped_dynamic"],
        serde_json::json!(["dev/GH_TOKEN"]),
        "{v}"
    );
}

/// First hour, item 2: with the broker locked and no terminal to ask for
/// the passphrase, the pre-commit hook blocks the commit (it used to let a
/// staged vault value through with a warning) and says how to go on.
#[test]
fn the_hook_blocks_when_vault_values_cannot_be_checked() {
    let e = Env::with_secret();
    let w = e.hooked_repo();
    fs::write(w.join("leak.txt"), SECRET).unwrap();
    e.git_ok(&["add", "leak.txt"]);
    // No broker, and no controlling terminal (a session of its own).
    let out = StdCommand::new("setsid")
        .arg("-w")
        .arg("git")
        .arg("-C")
        .arg(&w)
        .args([
            "-c",
            "user.email=a@b",
            "-c",
            "user.name=n",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["commit", "-q", "-m", "leak"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("CUSTODY_HOME", e.dir.path().join("home"))
        .env("CUSTODY_RUNTIME_DIR", e.dir.path().join("run"))
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the commit went through: {said}");
    assert!(
        said.contains("commit blocked") && said.contains("--no-verify"),
        "{said}"
    );
    let log = e.git(&["log", "--format=%s"]);
    assert!(String::from_utf8_lossy(&log.stdout).trim().is_empty());
}

/// First hour, item 12: `import --shred` of a file git tracks shreds the
/// working copy and warns that history still holds the values, pointing at
/// `custody scan --git-history`; an untracked file gets no such warning.
#[test]
fn shredding_a_git_tracked_file_warns_about_history() {
    let e = Env::with_secret();
    let w = e.work();
    e.git_ok(&["init", "-q"]);
    fs::write(w.join(".env"), "API=value-0123456789\n").unwrap();
    e.git_ok(&["add", ".env"]);
    e.git_ok(&["commit", "-q", "-m", "oops"]);
    let out = e
        .cmd()
        .args(["--passphrase-stdin", "--json", "import", "dev"])
        .arg(w.join(".env"))
        .arg("--shred")
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("tracked by git") && err.contains("custody scan --git-history"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["tracked_by_git"], true, "{v}");
    assert!(!w.join(".env").exists());
    fs::write(w.join("other.env"), "B=value-0123456789\n").unwrap();
    e.cmd()
        .args(["--passphrase-stdin", "import", "dev"])
        .arg(w.join("other.env"))
        .arg("--shred")
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success()
        .stderr(predicates::prelude::PredicateBooleanExt::not(
            predicates::str::contains("tracked by git"),
        ));
}
