//! Unit tests of the config merge, one group per format; the JSON tests run
//! for each JSON client.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

const EXE: &str = "/opt/custody/bin/custody";
const JSON_CLIENTS: [Client; 3] = [Client::Claude, Client::Gemini, Client::Cursor];

fn entry(env: &[(&str, &str)]) -> ServerEntry {
    ServerEntry {
        command: EXE.into(),
        args: vec!["mcp".into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        approve_tools: false,
    }
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap()
}

/// Plans, checks the action, and that a second run changes nothing.
fn apply(
    client: Client,
    existing: Option<&str>,
    e: &ServerEntry,
    want: Action,
) -> (String, Vec<Change>) {
    let p = plan(client, existing, e).unwrap();
    assert_eq!(p.action, want, "{client:?}");
    let text = p.new_text.unwrap();
    let again = plan(client, Some(&text), e).unwrap();
    assert_eq!(again.action, Action::Unchanged, "{client:?}: second run");
    assert!(again.new_text.is_none() && again.changes.is_empty());
    (text, p.changes)
}

// --- paths and environment -------------------------------------------------

#[test]
fn config_paths_per_client_and_scope() {
    let (h, p) = (Path::new("/h"), Path::new("/p"));
    let cases = [
        (
            Client::Codex,
            "/h/.codex/config.toml",
            "/p/.codex/config.toml",
        ),
        (Client::Claude, "/h/.claude.json", "/p/.mcp.json"),
        (
            Client::Gemini,
            "/h/.gemini/settings.json",
            "/p/.gemini/settings.json",
        ),
        (Client::Cursor, "/h/.cursor/mcp.json", "/p/.cursor/mcp.json"),
    ];
    for (c, user, project) in cases {
        assert_eq!(c.config_path(Scope::User, h, p), Path::new(user));
        assert_eq!(c.config_path(Scope::Project, h, p), Path::new(project));
    }
}

#[test]
fn server_env_is_empty_when_defaults_apply() {
    let loc = Locations {
        home: Some("/home/u".into()),
        uid: 1000,
        ..Locations::default()
    };
    assert!(server_env(&loc).unwrap().is_empty());
}

#[test]
fn server_env_carries_explicit_variables() {
    let loc = Locations {
        custody_home: Some("/srv/vault".into()),
        custody_runtime_dir: Some("/run/c".into()),
        xdg_runtime_dir: Some("/run/user/1000".into()),
        home: Some("/home/u".into()),
        uid: 1000,
        ..Locations::default()
    };
    let env = server_env(&loc).unwrap();
    assert_eq!(env["CUSTODY_HOME"], "/srv/vault");
    assert_eq!(env["CUSTODY_RUNTIME_DIR"], "/run/c");
}

#[test]
fn server_env_pins_xdg_locations_a_cleared_environment_would_lose() {
    // Codex drops XDG_RUNTIME_DIR and XDG_DATA_HOME: without these entries
    // `custody mcp` would look in /tmp/custody-1000 and ~/.local/share.
    let loc = Locations {
        xdg_data_home: Some("/data".into()),
        xdg_runtime_dir: Some("/run/user/1000".into()),
        home: Some("/home/u".into()),
        uid: 1000,
        ..Locations::default()
    };
    let env = server_env(&loc).unwrap();
    assert_eq!(env["CUSTODY_HOME"], "/data/custody");
    assert_eq!(env["CUSTODY_RUNTIME_DIR"], "/run/user/1000/custody");

    // XDG_DATA_HOME at its default place adds nothing.
    let loc = Locations {
        xdg_data_home: Some("/home/u/.local/share".into()),
        home: Some("/home/u".into()),
        uid: 1000,
        ..Locations::default()
    };
    assert!(server_env(&loc).unwrap().is_empty());
}

#[test]
fn server_env_refuses_non_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"/v\xff");
    let loc = Locations {
        custody_home: Some(bad.into()),
        ..Locations::default()
    };
    let err = server_env(&loc).unwrap_err();
    assert!(err.to_string().contains("CUSTODY_HOME"), "{err}");
}

// --- TOML (Codex) ----------------------------------------------------------

#[test]
fn codex_fresh_file() {
    let (text, changes) = apply(Client::Codex, None, &entry(&[]), Action::Created);
    assert_eq!(
        text,
        format!("[mcp_servers.custody]\ncommand = \"{EXE}\"\nargs = [\"mcp\"]\n")
    );
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].key, "mcp_servers.custody.command");
    assert_eq!(changes[0].old, None);
    assert_eq!(changes[0].new.as_deref(), Some(&*format!("\"{EXE}\"")));
}

#[test]
fn codex_env_is_an_inline_table() {
    let e = entry(&[("CUSTODY_HOME", "/v"), ("CUSTODY_RUNTIME_DIR", "/r")]);
    let (text, _) = apply(Client::Codex, None, &e, Action::Created);
    assert!(
        text.contains("env = { CUSTODY_HOME = \"/v\", CUSTODY_RUNTIME_DIR = \"/r\" }\n"),
        "{text}"
    );
}

const CODEX_EXISTING: &str = r#"# my Codex settings
model = "o3"  # keep me

[mcp_servers.github]
# the GitHub server
command = "npx"
args = ["-y", "@modelcontextprotocol/server-github"]
env = { GITHUB_TOKEN = "ghp_example" }

[profiles.fast]
model = "o4-mini"
"#;

#[test]
fn codex_keeps_other_servers_and_comments() {
    let e = entry(&[("CUSTODY_HOME", "/v")]);
    let (text, _) = apply(Client::Codex, Some(CODEX_EXISTING), &e, Action::Created);
    // toml_edit puts the new table beside its sibling servers; everything
    // else stays byte for byte.
    let block = format!(
        "[mcp_servers.custody]\ncommand = \"{EXE}\"\nargs = [\"mcp\"]\nenv = {{ CUSTODY_HOME = \"/v\" }}\n\n"
    );
    assert_eq!(text.replacen(&block, "", 1), CODEX_EXISTING, "{text}");
    assert!(text.find(&block) > text.find("[mcp_servers.github]"));
    let doc: DocumentMut = text.parse().unwrap();
    assert_eq!(doc["mcp_servers"]["custody"]["command"].as_str(), Some(EXE));
    assert_eq!(
        doc["mcp_servers"]["custody"]["env"]["CUSTODY_HOME"].as_str(),
        Some("/v")
    );
    assert_eq!(
        doc["mcp_servers"]["github"]["command"].as_str(),
        Some("npx")
    );
}

#[test]
fn codex_updates_a_stale_entry_in_place() {
    let stale = r#"[mcp_servers.custody]
command = "/old/custody"  # installed by hand
args = ["mcp"]
tool_timeout_sec = 600
env = { CUSTODY_HOME = "/old", OTHER = "x" }

[mcp_servers.other]
command = "other"
"#;
    let e = entry(&[("CUSTODY_RUNTIME_DIR", "/r")]);
    let (text, changes) = apply(Client::Codex, Some(stale), &e, Action::Updated);
    let doc: DocumentMut = text.parse().unwrap();
    let env = &doc["mcp_servers"]["custody"]["env"];
    assert!(
        text.contains("env = { OTHER = \"x\", CUSTODY_RUNTIME_DIR = \"/r\" }\n"),
        "{text}"
    );
    assert_eq!(env["OTHER"].as_str(), Some("x"));
    assert_eq!(env["CUSTODY_RUNTIME_DIR"].as_str(), Some("/r"));
    assert!(env.get("CUSTODY_HOME").is_none());
    assert!(text.contains("# installed by hand"), "{text}");
    assert!(text.contains("tool_timeout_sec = 600"), "{text}");
    assert!(
        text.ends_with("[mcp_servers.other]\ncommand = \"other\"\n"),
        "{text}"
    );
    let keys: Vec<_> = changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "mcp_servers.custody.command",
            "mcp_servers.custody.env.CUSTODY_HOME",
            "mcp_servers.custody.env.CUSTODY_RUNTIME_DIR",
        ]
    );
    assert_eq!(changes[0].old.as_deref(), Some("\"/old/custody\""));
    assert_eq!(changes[1].new, None);
}

#[test]
fn codex_drops_an_env_table_emptied_by_the_update() {
    let stale = "[mcp_servers.custody]\ncommand = \"x\"\nargs = [\"mcp\"]\nenv = { CUSTODY_HOME = \"/old\" }\n";
    let (text, _) = apply(Client::Codex, Some(stale), &entry(&[]), Action::Updated);
    assert!(!text.contains("env"), "{text}");
}

#[test]
fn codex_env_as_a_sub_table() {
    let stale = "[mcp_servers.custody]\ncommand = \"x\"\nargs = [\"mcp\"]\n\n[mcp_servers.custody.env]\nCUSTODY_HOME = \"/old\"\n";
    let e = entry(&[("CUSTODY_HOME", "/v")]);
    let (text, _) = apply(Client::Codex, Some(stale), &e, Action::Updated);
    assert!(
        text.contains("[mcp_servers.custody.env]\nCUSTODY_HOME = \"/v\"\n"),
        "{text}"
    );
}

#[test]
fn codex_inline_and_dotted_server_tables() {
    let inline = "mcp_servers = { other = { command = \"o\" } }\n";
    let (text, _) = apply(Client::Codex, Some(inline), &entry(&[]), Action::Created);
    let doc: DocumentMut = text.parse().unwrap();
    assert_eq!(doc["mcp_servers"]["custody"]["command"].as_str(), Some(EXE));
    assert_eq!(doc["mcp_servers"]["other"]["command"].as_str(), Some("o"));

    let dotted = "mcp_servers.other.command = \"o\"\n";
    let (text, _) = apply(Client::Codex, Some(dotted), &entry(&[]), Action::Created);
    let doc: DocumentMut = text.parse().unwrap();
    assert_eq!(
        doc["mcp_servers"]["custody"]["args"][0].as_str(),
        Some("mcp")
    );
}

#[test]
fn codex_malformed_file_is_refused_without_quoting_it() {
    let bad = "[mcp_servers.github]\nenv = { GITHUB_TOKEN = \"ghp_secret\" \n";
    let err = plan(Client::Codex, Some(bad), &entry(&[])).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, InstallError::Malformed { format: "TOML", .. }),
        "{msg}"
    );
    assert!(msg.contains("line 2"), "{msg}");
    assert!(!msg.contains("ghp_secret"), "{msg}");
}

#[test]
fn codex_wrong_shapes_are_refused() {
    for bad in [
        "mcp_servers = 3\n",
        "[mcp_servers]\ncustody = \"x\"\n",
        "[mcp_servers.custody]\nenv = \"x\"\n",
    ] {
        let err = plan(Client::Codex, Some(bad), &entry(&[("CUSTODY_HOME", "/v")])).unwrap_err();
        assert!(
            matches!(err, InstallError::WrongShape { .. }),
            "{bad}: {err}"
        );
    }
}

// --- JSON (Claude Code, Gemini CLI, Cursor) --------------------------------

#[test]
fn json_fresh_file() {
    for c in JSON_CLIENTS {
        let (text, changes) = apply(c, None, &entry(&[]), Action::Created);
        let v = json(&text);
        let custody = &v["mcpServers"]["custody"];
        assert_eq!(custody["command"], EXE);
        assert_eq!(custody["args"], serde_json::json!(["mcp"]));
        assert!(custody.get("env").is_none());
        assert_eq!(custody.get("type").is_some(), c == Client::Claude, "{c:?}");
        assert!(
            text.starts_with("{\n  \"mcpServers\": {\n    \"custody\": {"),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        assert!(
            changes
                .iter()
                .all(|ch| ch.key.starts_with("mcpServers.custody."))
        );
    }
}

#[test]
fn json_empty_file_counts_as_empty_object() {
    for c in JSON_CLIENTS {
        apply(c, Some(" \n"), &entry(&[]), Action::Created);
    }
}

#[test]
fn json_env_carried() {
    let e = entry(&[("CUSTODY_HOME", "/v"), ("CUSTODY_RUNTIME_DIR", "/r")]);
    for c in JSON_CLIENTS {
        let (text, _) = apply(c, None, &e, Action::Created);
        let v = json(&text);
        assert_eq!(
            v["mcpServers"]["custody"]["env"],
            serde_json::json!({"CUSTODY_HOME": "/v", "CUSTODY_RUNTIME_DIR": "/r"})
        );
    }
}

const JSON_EXISTING: &str = r#"{
  "theme": "dark",
  "zeta": 1,
  "mcpServers": {
    "github": {"command": "npx", "args": ["-y", "server-github"], "env": {"GITHUB_TOKEN": "ghp_example"}},
    "alpha": {"url": "https://example.invalid/mcp"}
  },
  "after": [1, 2.5, null, true]
}"#;

#[test]
fn json_keeps_other_keys_servers_and_order() {
    for c in JSON_CLIENTS {
        let (text, _) = apply(c, Some(JSON_EXISTING), &entry(&[]), Action::Created);
        let v = json(&text);
        let old = json(JSON_EXISTING);
        let top: Vec<_> = v.as_object().unwrap().keys().collect();
        assert_eq!(top, ["theme", "zeta", "mcpServers", "after"]);
        let servers: Vec<_> = v["mcpServers"].as_object().unwrap().keys().collect();
        assert_eq!(servers, ["github", "alpha", "custody"]);
        assert_eq!(v["mcpServers"]["github"], old["mcpServers"]["github"]);
        assert_eq!(v["mcpServers"]["alpha"], old["mcpServers"]["alpha"]);
        assert_eq!(v["after"], old["after"]);
        assert!(
            text.contains("\n  \"theme\": \"dark\",\n"),
            "two-space indent: {text}"
        );
    }
}

#[test]
fn json_updates_a_stale_entry_keeping_user_keys() {
    let stale = r#"{"mcpServers": {"custody": {
        "command": "/old/custody", "trust": true, "args": ["mcp"],
        "env": {"CUSTODY_HOME": "/old", "RUST_LOG": "debug"}, "timeout": 600000}}}"#;
    let e = entry(&[("CUSTODY_RUNTIME_DIR", "/r")]);
    for c in JSON_CLIENTS {
        let (text, changes) = apply(c, Some(stale), &e, Action::Updated);
        let custody = &json(&text)["mcpServers"]["custody"];
        let keys: Vec<_> = custody.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["command", "trust", "args", "env", "timeout"],
            "{c:?}"
        );
        assert_eq!(custody["command"], EXE);
        assert_eq!(
            custody["env"],
            serde_json::json!({"RUST_LOG": "debug", "CUSTODY_RUNTIME_DIR": "/r"})
        );
        let keys: Vec<_> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mcpServers.custody.command",
                "mcpServers.custody.env.CUSTODY_HOME",
                "mcpServers.custody.env.CUSTODY_RUNTIME_DIR",
            ]
        );
        assert_eq!(changes[0].old.as_deref(), Some("\"/old/custody\""));
    }
}

#[test]
fn json_args_difference_is_an_update() {
    let stale = format!(r#"{{"mcpServers": {{"custody": {{"command": "{EXE}", "args": []}}}}}}"#);
    for c in JSON_CLIENTS {
        let (_, changes) = apply(c, Some(&stale), &entry(&[]), Action::Updated);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new.as_deref(), Some("[\"mcp\"]"));
    }
}

#[test]
fn claude_fixes_a_non_stdio_type_only() {
    let no_type =
        format!(r#"{{"mcpServers": {{"custody": {{"command": "{EXE}", "args": ["mcp"]}}}}}}"#);
    let p = plan(Client::Claude, Some(&no_type), &entry(&[])).unwrap();
    assert_eq!(p.action, Action::Unchanged);
    let http = format!(
        r#"{{"mcpServers": {{"custody": {{"type": "http", "command": "{EXE}", "args": ["mcp"]}}}}}}"#
    );
    let (text, _) = apply(Client::Claude, Some(&http), &entry(&[]), Action::Updated);
    assert_eq!(json(&text)["mcpServers"]["custody"]["type"], "stdio");
}

#[test]
fn json_malformed_file_is_refused_without_quoting_it() {
    let bad = r#"{"mcpServers": {"github": {"env": {"GITHUB_TOKEN": "ghp_secret"}}"#;
    for c in JSON_CLIENTS {
        let err = plan(c, Some(bad), &entry(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, InstallError::Malformed { format: "JSON", .. }),
            "{msg}"
        );
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("ghp_secret"), "{msg}");
    }
}

#[test]
fn json_wrong_shapes_are_refused() {
    for bad in [
        "[]",
        r#"{"mcpServers": []}"#,
        r#"{"mcpServers": {"custody": "x"}}"#,
        r#"{"mcpServers": {"custody": {"env": []}}}"#,
    ] {
        for c in JSON_CLIENTS {
            let err = plan(c, Some(bad), &entry(&[("CUSTODY_HOME", "/v")])).unwrap_err();
            assert!(
                matches!(err, InstallError::WrongShape { .. }),
                "{bad}: {err}"
            );
        }
    }
}

// --- leaving tool confirmations to custody ---------------------------------

const TOOLS: [&str; 2] = ["run", "request_status"];

#[test]
fn codex_entry_leaves_tool_confirmations_to_custody() {
    let mut e = entry(&[]);
    e.approve_tools = true;
    let (text, _) = apply(Client::Codex, None, &e, Action::Created);
    assert!(
        text.contains("default_tools_approval_mode = \"approve\""),
        "{text}"
    );
    // An entry from an older install gets the key on update.
    let old = format!("[mcp_servers.custody]\ncommand = \"{EXE}\"\nargs = [\"mcp\"]\n");
    let (text, changes) = apply(Client::Codex, Some(&old), &e, Action::Updated);
    assert!(text.contains("default_tools_approval_mode"));
    assert_eq!(changes.len(), 1, "{changes:?}");
    // A value the user chose is kept.
    let mine = format!(
        "[mcp_servers.custody]\ncommand = \"{EXE}\"\nargs = [\"mcp\"]\ndefault_tools_approval_mode = \"prompt\"\n"
    );
    let p = plan(Client::Codex, Some(&mine), &e).unwrap();
    assert_eq!(p.action, Action::Unchanged, "{:?}", p.changes);
}

#[test]
fn claude_permissions_are_added_to_what_is_there() {
    let existing = r#"{"model": "x", "permissions": {"allow": ["Bash(ls:*)", "mcp__custody__run"], "deny": ["Read(.env)"]}}"#;
    let p = plan_companion(Companion::ClaudePermissions, Some(existing), &TOOLS).unwrap();
    assert_eq!(p.action, Action::Updated);
    assert_eq!(p.changes.len(), 1, "only the missing rule: {:?}", p.changes);
    let v = json(p.new_text.as_deref().unwrap());
    assert_eq!(
        v["permissions"]["allow"],
        serde_json::json!([
            "Bash(ls:*)",
            "mcp__custody__run",
            "mcp__custody__request_status"
        ])
    );
    assert_eq!(v["permissions"]["deny"], serde_json::json!(["Read(.env)"]));
    assert_eq!(v["model"], "x");
    let again =
        plan_companion(Companion::ClaudePermissions, p.new_text.as_deref(), &TOOLS).unwrap();
    assert_eq!(again.action, Action::Unchanged);
    let fresh = plan_companion(Companion::ClaudePermissions, None, &TOOLS).unwrap();
    assert_eq!(fresh.action, Action::Created);
    let bad = plan_companion(
        Companion::ClaudePermissions,
        Some(r#"{"permissions": []}"#),
        &TOOLS,
    );
    assert!(matches!(bad, Err(InstallError::WrongShape { .. })));
}

#[test]
fn gemini_policy_is_one_allow_rule_per_tool_and_rewritten_whole() {
    let p = plan_companion(Companion::GeminiPolicy, None, &TOOLS).unwrap();
    assert_eq!(p.action, Action::Created);
    let text = p.new_text.unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    let rules = doc["rule"].as_array_of_tables().unwrap();
    assert_eq!(rules.len(), 2);
    let rule = |i: usize, k: &str| rules.get(i).unwrap()[k].as_str().map(str::to_owned);
    assert_eq!(rule(0, "mcpName").as_deref(), Some("custody"));
    assert_eq!(rule(1, "toolName").as_deref(), Some("request_status"));
    assert_eq!(rule(1, "decision").as_deref(), Some("allow"));
    let again = plan_companion(Companion::GeminiPolicy, Some(&text), &TOOLS).unwrap();
    assert_eq!(again.action, Action::Unchanged);
    let edited = plan_companion(Companion::GeminiPolicy, Some("# mine\n"), &TOOLS).unwrap();
    assert_eq!(edited.action, Action::Updated);
}
