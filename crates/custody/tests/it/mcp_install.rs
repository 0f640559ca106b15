//! `custody mcp install` scenario tests: each runs the real binary with
//! `HOME` and the current directory in a temporary directory and checks the
//! config file it leaves behind.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::Value;

const CLIENTS: [&str; 4] = ["codex", "claude", "gemini", "cursor"];

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let s = Sandbox {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(s.home()).unwrap();
        fs::create_dir(s.project()).unwrap();
        s
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// `custody mcp install ARGS` with no custody or XDG location set.
    fn install(&self, args: &[&str]) -> Command {
        // In a session of its own: no controlling terminal, so a test never
        // prompts on (or waits for) the terminal the suite runs in.
        let mut c = Command::new("setsid");
        c.arg("-w").arg(assert_cmd::cargo::cargo_bin("custody"));
        c.env("HOME", self.home())
            .env_remove("CUSTODY_HOME")
            .env_remove("CUSTODY_RUNTIME_DIR")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(self.project())
            .args(["mcp", "install"])
            .args(args)
            .timeout(std::time::Duration::from_secs(60));
        c
    }

    fn user_config(&self, client: &str) -> PathBuf {
        self.home().join(match client {
            "codex" => ".codex/config.toml",
            "claude" => ".claude.json",
            "gemini" => ".gemini/settings.json",
            _ => ".cursor/mcp.json",
        })
    }

    fn project_config(&self, client: &str) -> PathBuf {
        self.project().join(match client {
            "codex" => ".codex/config.toml",
            "claude" => ".mcp.json",
            "gemini" => ".gemini/settings.json",
            _ => ".cursor/mcp.json",
        })
    }
}

fn custody_exe() -> String {
    let p = assert_cmd::cargo::cargo_bin("custody");
    fs::canonicalize(p).unwrap().to_str().unwrap().to_owned()
}

/// custody's entry as JSON, whatever the file's format.
fn entry(client: &str, path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    if client == "codex" {
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let t = doc["mcp_servers"]["custody"].as_table_like().unwrap();
        let mut v = serde_json::json!({
            "command": t.get("command").and_then(|c| c.as_str()),
            "args": t.get("args").and_then(|a| a.as_array()).unwrap()
                .iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        });
        if let Some(env) = t.get("env").and_then(|e| e.as_table_like()) {
            let env: serde_json::Map<String, Value> = env
                .iter()
                .map(|(k, v)| (k.to_owned(), v.as_str().into()))
                .collect();
            v["env"] = Value::Object(env);
        }
        v
    } else {
        let v: Value = serde_json::from_str(&text).unwrap();
        v["mcpServers"]["custody"].clone()
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn user_install_writes_each_clients_config_once() {
    let s = Sandbox::new();
    for client in CLIENTS {
        s.install(&[client])
            .assert()
            .success()
            .stdout(contains("Added"))
            .stdout(contains("(new file)"));
        let path = s.user_config(client);
        let e = entry(client, &path);
        assert_eq!(e["command"], custody_exe().as_str(), "{client}");
        assert_eq!(e["args"], serde_json::json!(["mcp"]), "{client}");
        assert!(e.get("env").is_none(), "{client}: {e}");

        let before = fs::read(&path).unwrap();
        s.install(&[client])
            .assert()
            .success()
            .stdout(contains("already up to date"));
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "{client}: second run rewrote"
        );
    }
    assert!(
        files_under(&s.project()).is_empty(),
        "the project was touched"
    );
}

#[test]
fn project_install_writes_in_the_current_directory() {
    let s = Sandbox::new();
    for client in CLIENTS {
        s.install(&[client, "--project"]).assert().success();
        let e = entry(client, &s.project_config(client));
        assert_eq!(e["command"], custody_exe().as_str(), "{client}");
    }
    assert!(files_under(&s.home()).is_empty(), "HOME was touched");
}

#[test]
fn new_directories_are_0700_and_new_files_0600() {
    let s = Sandbox::new();
    s.install(&["cursor"]).assert().success();
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(s.home().join(".cursor")), 0o700);
    assert_eq!(mode(s.user_config("cursor")), 0o600);
}

#[test]
fn dry_run_writes_nothing() {
    let s = Sandbox::new();
    for client in CLIENTS {
        s.install(&[client, "--dry-run"])
            .assert()
            .success()
            .stdout(contains("Would add"))
            .stdout(contains("nothing was written"))
            .stdout(contains(custody_exe()));
        s.install(&[client, "--project", "--dry-run"])
            .assert()
            .success();
    }
    assert!(files_under(&s.home()).is_empty());
    assert!(files_under(&s.project()).is_empty());

    // A stale entry is reported, not fixed.
    let path = s.user_config("claude");
    let stale = "{\"mcpServers\": {\"custody\": {\"command\": \"/old\", \"args\": [\"mcp\"]}}}";
    fs::write(&path, stale).unwrap();
    s.install(&["claude", "--dry-run"])
        .assert()
        .success()
        .stdout(contains("Would update"))
        .stdout(contains("- mcpServers.custody.command = \"/old\""));
    assert_eq!(fs::read_to_string(&path).unwrap(), stale);
}

#[test]
fn json_output_names_client_path_and_action() {
    let s = Sandbox::new();
    let run = |args: &[&str]| -> Value {
        let out = s.install(args).arg("--json").assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let v = run(&["codex", "--dry-run"]);
    assert_eq!(v["client"], "codex");
    assert_eq!(v["scope"], "user");
    assert_eq!(v["path"], s.user_config("codex").to_str().unwrap());
    assert_eq!(v["action"], "created");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["changes"][0]["key"], "mcp_servers.custody.command");
    assert_eq!(v["changes"][0]["old"], Value::Null);

    assert_eq!(run(&["codex"])["action"], "created");
    let v = run(&["codex"]);
    assert_eq!(v["action"], "unchanged");
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["changes"], serde_json::json!([]));

    let v = run(&["gemini", "--project"]);
    assert_eq!(v["scope"], "project");
    assert_eq!(v["path"], s.project_config("gemini").to_str().unwrap());
}

#[test]
fn custody_locations_are_carried_in_env() {
    let s = Sandbox::new();
    for client in CLIENTS {
        s.install(&[client])
            .env("CUSTODY_HOME", "vault") // relative: written absolute
            .env("CUSTODY_RUNTIME_DIR", "/run/custody-test")
            .assert()
            .success()
            .stdout(contains("CUSTODY_HOME"));
        let e = entry(client, &s.user_config(client));
        let home = s.project().join("vault");
        assert_eq!(e["env"]["CUSTODY_HOME"], home.to_str().unwrap(), "{client}");
        assert_eq!(
            e["env"]["CUSTODY_RUNTIME_DIR"], "/run/custody-test",
            "{client}"
        );

        // Installed again without them: the stale values are removed.
        s.install(&[client])
            .assert()
            .success()
            .stdout(contains("Updated"))
            .stdout(contains("- "));
        assert!(entry(client, &s.user_config(client)).get("env").is_none());
    }
}

#[test]
fn xdg_runtime_dir_is_pinned_for_clients_that_clear_the_environment() {
    let s = Sandbox::new();
    s.install(&["codex"])
        .env("XDG_RUNTIME_DIR", "/run/user/4242")
        .assert()
        .success();
    let e = entry("codex", &s.user_config("codex"));
    assert_eq!(e["env"]["CUSTODY_RUNTIME_DIR"], "/run/user/4242/custody");
}

#[test]
fn other_servers_comments_and_permissions_are_kept() {
    let s = Sandbox::new();
    let codex = s.user_config("codex");
    fs::create_dir_all(codex.parent().unwrap()).unwrap();
    let toml_before = "# mine\nmodel = \"o3\"\n\n[mcp_servers.other]\ncommand = \"other\" # keep\n";
    fs::write(&codex, toml_before).unwrap();
    fs::set_permissions(&codex, fs::Permissions::from_mode(0o640)).unwrap();
    s.install(&["codex"]).assert().success();
    let after = fs::read_to_string(&codex).unwrap();
    assert!(after.starts_with(toml_before), "{after}");
    assert_eq!(
        fs::metadata(&codex).unwrap().permissions().mode() & 0o777,
        0o640
    );

    let gemini = s.user_config("gemini");
    fs::create_dir_all(gemini.parent().unwrap()).unwrap();
    fs::write(
        &gemini,
        r#"{"theme": "x", "mcpServers": {"other": {"command": "o"}}, "a": 1}"#,
    )
    .unwrap();
    s.install(&["gemini"]).assert().success();
    let v: Value = serde_json::from_str(&fs::read_to_string(&gemini).unwrap()).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["theme", "mcpServers", "a"]);
    assert_eq!(v["mcpServers"]["other"]["command"], "o");
    assert_eq!(
        v["mcpServers"]["custody"]["command"],
        custody_exe().as_str()
    );
}

#[test]
fn malformed_config_is_refused_and_left_alone() {
    let s = Sandbox::new();
    let claude = s.user_config("claude");
    let bad = "{\"mcpServers\": {\"x\": {\"env\": {\"TOKEN\": \"tok_do_not_print\"}}";
    fs::write(&claude, bad).unwrap();
    s.install(&["claude"])
        .assert()
        .failure()
        .stderr(contains(claude.to_str().unwrap()))
        .stderr(contains("is not valid JSON"))
        .stderr(contains("not changed"))
        .stderr(contains("tok_do_not_print").not());
    assert_eq!(fs::read_to_string(&claude).unwrap(), bad);

    let codex = s.project_config("codex");
    fs::create_dir_all(codex.parent().unwrap()).unwrap();
    fs::write(&codex, "[mcp_servers\n").unwrap();
    s.install(&["codex", "--project"])
        .assert()
        .failure()
        .stderr(contains("is not valid TOML"));
    assert_eq!(fs::read_to_string(&codex).unwrap(), "[mcp_servers\n");
}

#[test]
fn symlinked_config_is_written_through_the_link() {
    let s = Sandbox::new();
    let real = s.dir.path().join("dotfiles-cursor.json");
    fs::write(&real, "{}").unwrap();
    let link = s.user_config("cursor");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(&real, &link).unwrap();
    s.install(&["cursor"]).assert().success();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(entry("cursor", &real)["args"], serde_json::json!(["mcp"]));
}

#[test]
fn user_install_without_home_says_what_to_do() {
    let s = Sandbox::new();
    s.install(&["codex"])
        .env_remove("HOME")
        .assert()
        .failure()
        .stderr(contains("HOME is not set"))
        .stderr(contains("--project"));
}

#[test]
fn unknown_client_is_rejected_with_the_choices() {
    let s = Sandbox::new();
    s.install(&["vim"])
        .assert()
        .failure()
        .stderr(contains("codex"))
        .stderr(contains("cursor"));
}

/// Headless clients refuse custody's tools unless told not to ask (custody
/// asks the human itself): Codex's entry carries the approval mode, Claude
/// Code gets permission rules, Gemini CLI a policy file. The real clients
/// run against these files in tests/agents.
#[test]
fn installers_leave_tool_confirmations_to_custody() {
    let s = Sandbox::new();
    for client in ["codex", "claude", "gemini"] {
        s.install(&[client])
            .assert()
            .success()
            .stdout(contains("custody asks you to approve every run itself"));
    }
    let codex = fs::read_to_string(s.user_config("codex")).unwrap();
    assert!(
        codex.contains("default_tools_approval_mode = \"approve\""),
        "{codex}"
    );
    let claude: Value =
        serde_json::from_str(&fs::read_to_string(s.home().join(".claude/settings.json")).unwrap())
            .unwrap();
    let allow = claude["permissions"]["allow"].as_array().unwrap();
    for tool in ["list_environments", "run", "request_status", "audit_tail"] {
        assert!(
            allow.contains(&Value::from(format!("mcp__custody__{tool}"))),
            "{claude}"
        );
    }
    let policy = fs::read_to_string(s.home().join(".gemini/policies/custody.toml")).unwrap();
    assert_eq!(policy.matches("[[rule]]").count(), 9, "{policy}");
    // A second install changes nothing in any of them.
    for client in ["codex", "claude", "gemini"] {
        s.install(&["--json", client])
            .assert()
            .success()
            .stdout(contains("\"action\":\"unchanged\"").or(contains("\"action\": \"unchanged\"")));
    }
    let out = s.install(&["--json", "claude"]).assert().success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["companion"]["action"], "unchanged", "{v}");
}

#[test]
fn install_prints_the_sandbox_launcher_line_for_each_client() {
    let s = Sandbox::new();
    for (client, command) in [
        ("codex", "codex"),
        ("claude", "claude"),
        ("gemini", "gemini"),
        ("cursor", "cursor-agent"),
    ] {
        s.install(&[client])
            .assert()
            .success()
            .stdout(contains(format!("custody agent -- {command}")));
        let out = s.install(&["--json", client]).assert().success();
        let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(v["launcher"], format!("custody agent -- {command}"));
    }
}

#[test]
fn agents_md_snippet_tells_the_agent_to_use_custody_and_changes_nothing() {
    let s = Sandbox::new();
    let out = s.install(&["claude", "--agents-md"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "Never ask the user to paste a secret",
        "`run`",
        "`request_status`",
        "custody agent -- claude",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(files_under(&s.home()).is_empty(), "it wrote files");
}
