//! Secrets at rest, through a real broker: the post-run leak check and the
//! `scan` request (tree, git history, staged blobs). Every answer names
//! paths and variables or rules, never a value.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;

use crate::common::*;
use base64::Engine;
use custody_broker::protocol::Request;
use custody_core::audit::AuditEvent;
use serde_json::{Value, json};

/// 32 bytes: long enough for every encoded form to be matched.
const SECRET: &[u8] = b"s3cr3t-VALUE_0123456789abcdefXYZ";

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// No form of `SECRET` in `hay`.
fn assert_no_value(what: &str, hay: &[u8]) {
    for form in [
        SECRET.to_vec(),
        b64(SECRET).into_bytes(),
        hex(SECRET).into_bytes(),
    ] {
        assert!(
            !contains(hay, &form),
            "{what} shows the value: {}",
            String::from_utf8_lossy(hay)
        );
    }
}

fn broker_with_secret() -> TestBroker {
    let b = TestBroker::unlocked();
    b.env_create("dev");
    b.set("dev", "SECRET", SECRET);
    b
}

fn leaks(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["leaks"]
        .as_array()
        .unwrap_or_else(|| panic!("no leaks array in {v}"))
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_owned(),
                l["variable"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn leak_check_reports_each_file_the_lease_wrote_the_value_into_in_any_form() {
    let b = broker_with_secret();
    let cwd = Path::new(&b.workdir()).join("project");
    std::fs::create_dir_all(cwd.join(".git/objects/ab")).unwrap();
    std::fs::create_dir_all(cwd.join("out")).unwrap();
    // Written before the lease: not this lease's leak.
    std::fs::write(cwd.join("before.txt"), SECRET).unwrap();
    std::fs::write(cwd.join(".gitignore"), "ignored.log\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));

    let script = r#"
        printf 'token=%s\n' "$SECRET" > plain.txt
        printf %s "$SECRET" | base64 > out/b64.txt
        printf %s "$SECRET" | od -An -tx1 | tr -d ' \n' > out/hex.txt
        printf %s "$SECRET" > ignored.log
        printf %s "$SECRET" > .git/objects/ab/cdef
        printf %s "$SECRET" > .git/config
        echo harmless > clean.txt
        touch before.txt.other
        : > "named-$SECRET.txt"
    "#;
    let mut spec = b.spec(&["sh", "-c", script], &["dev"]);
    spec.cwd = cwd.display().to_string();
    let (_, res) = b.run_approved(spec);
    let v = res.unwrap();
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    let want: Vec<(String, String)> = [
        ".git/config",
        "ignored.log",
        "named-[masked:SECRET].txt",
        "out/b64.txt",
        "out/hex.txt",
        "plain.txt",
    ]
    .iter()
    .map(|p| ((*p).to_owned(), "SECRET".to_owned()))
    .collect();
    assert_eq!(leaks(&v), want, "{v}");
    assert_eq!(v["leak_check"]["truncated"], false, "{v}");
    assert_no_value("run result", &serde_json::to_vec(&v).unwrap());

    // Audited, one record per leak, names only.
    let recorded: Vec<(String, String)> = b
        .audit_records()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::LeakFound { path, variable, .. } => Some((path, variable)),
            _ => None,
        })
        .collect();
    let mut sorted = recorded.clone();
    sorted.sort();
    assert_eq!(sorted, want);
    assert_no_value("audit log", &std::fs::read(b.audit_path()).unwrap());
    assert_eq!(b.audit_verify()["intact"], true);

    // Shown to the human in status.
    let status = b.status();
    let shown = status["leaks"].as_array().unwrap();
    assert_eq!(shown.len(), want.len(), "{status}");
    assert!(
        shown.iter().all(|l| l["lease_id"] == v["lease_id"]),
        "{status}"
    );
}

#[test]
fn a_run_that_writes_nothing_secret_has_no_leaks() {
    let b = broker_with_secret();
    let cwd = Path::new(&b.workdir()).join("clean");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            "echo hello > a.txt; printf %s \"$SECRET\" | rev > r.txt",
        ],
        &["dev"],
    );
    spec.cwd = cwd.display().to_string();
    let v = b.run_approved(spec).1.unwrap();
    assert_eq!(v["leaks"], json!([]), "{v}");
    assert_eq!(v["leak_check"]["files"], 2, "{v}");
    assert_eq!(b.status()["leaks"], json!([]));
}

// ----- the scan request ----------------------------------------------------

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
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
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn scan(b: &TestBroker, path: &Path, git_history: bool, staged: bool) -> Value {
    let v = b
        .client()
        .call(Request::Scan {
            path: path.display().to_string(),
            git_history,
            staged,
            index_file: None,
            progress: false,
        })
        .unwrap();
    assert_no_value("scan answer", &serde_json::to_vec(&v).unwrap());
    v
}

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

#[test]
fn scan_finds_vault_values_in_every_form_and_token_shapes_but_not_ignored_files() {
    let b = broker_with_secret();
    let tree = Path::new(&b.workdir()).join("tree");
    std::fs::create_dir_all(tree.join("src")).unwrap();
    std::fs::write(tree.join(".gitignore"), "secret.log\n").unwrap();
    std::fs::write(tree.join("secret.log"), SECRET).unwrap();
    std::fs::write(
        tree.join("src/plain.rs"),
        [b"// x\nlet k = \"".as_slice(), SECRET, b"\";"].concat(),
    )
    .unwrap();
    std::fs::write(tree.join("b64.txt"), b64(SECRET)).unwrap();
    std::fs::write(tree.join("hex.txt"), hex(SECRET)).unwrap();
    std::fs::write(
        tree.join("aws.txt"),
        format!("id={}{}", "AKIA", "ABCDEFGHIJKLMNOP"),
    )
    .unwrap();
    std::fs::write(tree.join("clean.txt"), "nothing here").unwrap();
    let v = scan(&b, &tree, false, false);
    let want = [
        ("aws.txt", "aws-access-key-id"),
        ("b64.txt", "dev/SECRET"),
        ("hex.txt", "dev/SECRET"),
        ("src/plain.rs", "dev/SECRET"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, w)| ((*p).into(), (*w).into()))
        .collect();
    assert_eq!(found(&v), want, "{v}");
    let plain = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "src/plain.rs")
        .unwrap();
    assert_eq!(plain["line"], 2, "{v}");
    assert_eq!(v["files"], 6, "{v}");
}

#[test]
fn scan_git_history_finds_a_value_that_only_history_holds_with_its_commit() {
    let b = broker_with_secret();
    let repo = Path::new(&b.workdir()).join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(
        repo.join("config.json"),
        format!("{{\"key\": \"{}\"}}", b64(SECRET)),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "add config"]);
    std::fs::write(repo.join("config.json"), "{}").unwrap();
    git(&repo, &["commit", "-q", "-am", "remove key"]);

    assert_eq!(
        found(&scan(&b, &repo, false, false)),
        vec![],
        "the tree is clean now"
    );
    let v = scan(&b, &repo, true, false);
    assert_eq!(
        found(&v),
        vec![("config.json".into(), "dev/SECRET".into())],
        "{v}"
    );
    let first = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-list", "--max-parents=0", "HEAD"])
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert_eq!(v["findings"][0]["commit"], first, "{v}");
}

#[test]
fn scan_staged_sees_only_what_the_next_commit_records() {
    let b = broker_with_secret();
    let repo = Path::new(&b.workdir()).join("staged");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("unstaged.txt"), SECRET).unwrap();
    std::fs::write(repo.join("staged.txt"), hex(SECRET)).unwrap();
    git(&repo, &["add", "staged.txt"]);
    let v = scan(&b, &repo, false, true);
    assert_eq!(
        found(&v),
        vec![("staged.txt".into(), "dev/SECRET".into())],
        "{v}"
    );
}

#[test]
fn scan_needs_an_unlocked_vault_and_an_absolute_path() {
    let b = TestBroker::start();
    let res = b.client().call(Request::Scan {
        path: b.workdir(),
        git_history: false,
        staged: false,
        index_file: None,
        progress: false,
    });
    assert_eq!(code(&res), "locked");
    b.unlock();
    let res = b.client().call(Request::Scan {
        path: "relative".into(),
        git_history: false,
        staged: false,
        index_file: None,
        progress: false,
    });
    assert_eq!(code(&res), "bad_request");
}
