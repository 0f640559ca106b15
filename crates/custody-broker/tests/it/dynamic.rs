//! Dynamic credentials against a real PostgreSQL (started here from the
//! machine's binaries) and a command source: minted per lease, usable during
//! it, revoked at its end (sessions terminated), irrevocable while the
//! database is down and revoked when it returns, orphans reaped at unlock,
//! foreign roles untouched. Values never appear in output or audit.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use custody_testkit::pg;

use std::time::Duration;

use crate::common::*;
use custody_broker::protocol::{ApprovalScope, Request};
use custody_core::sources::{
    CommandSource, DEFAULT_CREATION, DEFAULT_REVOCATION, PostgresSource, SourceDef, SourceSpec,
};
use custody_core::vault::{VarKind, Vault};
use pg::{Pg, eventually};
use serde_json::Value;

/// A broker with `infra/PG_ADMIN_URL` pointing at `pg`, source `postgres:main`,
/// and `app/DATABASE_URL` minted from it.
fn with_postgres(pg: &Pg) -> TestBroker {
    let b = TestBroker::unlocked();
    b.env_create("infra");
    b.set("infra", "PG_ADMIN_URL", pg.admin_url().as_bytes());
    let def = SourceDef {
        name: "main".into(),
        spec: SourceSpec::Postgres(PostgresSource {
            admin_from: "infra/PG_ADMIN_URL".into(),
            creation: DEFAULT_CREATION.iter().map(|s| (*s).to_owned()).collect(),
            revocation: DEFAULT_REVOCATION.iter().map(|s| (*s).to_owned()).collect(),
        }),
    };
    let v = b.change(Request::SourceAdd { source: def }).unwrap();
    assert_eq!(v["source"], "postgres:main", "{v}");
    b.env_create("app");
    declare_dynamic(&b, "app", "DATABASE_URL", "postgres:main");
    b
}

fn declare_dynamic(b: &TestBroker, env: &str, var: &str, source: &str) {
    b.change(Request::Declare {
        env: env.into(),
        var: var.into(),
        description: Some("minted per lease".into()),
        kind: Some(VarKind::Dynamic),
        source: Some(source.into()),
    })
    .expect("declare dynamic");
}

fn psql_env(b: &TestBroker, pg: &Pg, script: &str) -> custody_broker::protocol::RunSpec {
    let mut spec = b.spec(&["sh", "-c", script], &["app"]);
    let path = format!(
        "{}:{}",
        pg.psql_path().parent().unwrap().display(),
        spec.passthrough["PATH"]
    );
    spec.passthrough.insert("PATH".into(), path);
    spec.capture_limit = Some(1 << 16);
    spec
}

fn stdout_of(v: &Value) -> String {
    v["stdout"].as_str().unwrap_or_default().to_owned()
}

fn audit_text(b: &TestBroker) -> String {
    std::fs::read_to_string(b.audit_path()).unwrap()
}

#[test]
fn a_role_per_lease_logs_in_then_is_dropped_and_its_sessions_end() {
    let pg = Pg::start();
    let b = with_postgres(&pg);
    // The agent-visible catalog shows the kind, never a value.
    let cat = b.client().call(Request::Catalog).unwrap();
    assert!(cat.to_string().contains("\"postgres:main\""), "{cat}");

    // During the lease: log in, query, check VALID UNTIL, and leave a
    // session behind in a process that escapes the lease's group.
    let script = r#"psql "$DATABASE_URL" -Atqc "select current_user, (select rolvaliduntil is not null from pg_roles where rolname = current_user)" || exit 3
setsid psql "$DATABASE_URL" -qc "select pg_sleep(60)" >/dev/null 2>&1 < /dev/null &
sleep 1
echo "url=$DATABASE_URL""#;
    let (_, res) = b.run_approved(psql_env(&b, &pg, script));
    let v = res.unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    let out = stdout_of(&v);
    let role = out
        .lines()
        .next()
        .unwrap()
        .split('|')
        .next()
        .unwrap()
        .to_owned();
    assert!(role.starts_with("custody-") && role.len() <= 63, "{out}");
    assert!(
        out.lines().next().unwrap().ends_with("|t"),
        "VALID UNTIL set: {out}"
    );
    assert!(out.contains("url=[masked:"), "the URL is masked: {out}");
    assert!(!out.contains("postgresql://"), "{out}");
    assert_eq!(v["credentials"][0]["state"], "revoked", "{v}");
    assert_eq!(v["credentials"][0]["credential"], role.as_str());

    // After the lease: the role is gone and its escaped session was ended.
    assert!(!pg.role_exists(&role), "role {role} survived its lease");
    assert!(
        eventually(Duration::from_secs(10), || pg.sessions_of(&role) == 0),
        "a session of {role} survived"
    );
    let log = audit_text(&b);
    for kind in ["credential_minted", "credential_revoked"] {
        assert!(log.contains(kind), "no {kind} in the audit log");
    }
    assert!(
        !log.contains("postgresql://"),
        "a URL reached the audit log"
    );
    assert!(!log.contains(pg::ADMIN_PASSWORD));
    assert!(b.status()["credentials"].as_array().unwrap().is_empty());
    assert_eq!(b.audit_verify()["intact"], true);
}

#[test]
fn a_role_is_revoked_when_the_lease_is_revoked_or_the_vault_locked() {
    let pg = Pg::start();
    let b = with_postgres(&pg);
    for how in ["revoke", "lock"] {
        if how == "lock" {
            b.unlock();
        }
        let h = b.start_run(psql_env(
            &b,
            &pg,
            "psql \"$DATABASE_URL\" -qc 'select 1' && sleep 60",
        ));
        let id = h.wait_pending();
        b.approve(&id, ApprovalScope::Once, PIN).unwrap();
        let lease = h.wait_started();
        let role = b.status()["credentials"][0]["credential"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(eventually(Duration::from_secs(10), || pg.role_exists(&role)));
        match how {
            "revoke" => {
                b.client()
                    .call(Request::Revoke(
                        custody_broker::protocol::RevokeTarget::Lease(lease),
                    ))
                    .unwrap();
            }
            _ => {
                b.client().call(Request::Lock).unwrap();
            }
        }
        let _ = h.join();
        assert!(
            eventually(Duration::from_secs(15), || !pg.role_exists(&role)),
            "{how}: role {role} survived"
        );
    }
}

#[test]
fn a_database_down_at_revocation_is_irrevocable_until_it_returns() {
    let pg = Pg::start();
    let b = with_postgres(&pg);
    let h = b.start_run(psql_env(
        &b,
        &pg,
        "psql \"$DATABASE_URL\" -qc 'select 1' && sleep 2",
    ));
    let id = h.wait_pending();
    b.approve(&id, ApprovalScope::Once, PIN).unwrap();
    let lease = h.wait_started();
    let role = b.status()["credentials"][0]["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(eventually(Duration::from_secs(10), || pg.role_exists(&role)));
    pg.down();
    let (_, res) = h.join();
    let v = res.unwrap();
    assert_eq!(v["credentials"][0]["state"], "irrevocable", "{v}");
    assert!(
        v["credentials"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("database"),
        "{v}"
    );

    let leases = b.client().call(Request::Leases).unwrap();
    let entry = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lease_id"] == lease.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["state"], "irrevocable", "{leases}");
    assert_eq!(b.status()["credentials"][0]["state"], "irrevocable");
    assert!(b.home.join("leases").join(format!("{lease}.json")).exists());

    pg.up();
    assert!(
        eventually(Duration::from_secs(20), || {
            b.status()["credentials"].as_array().unwrap().is_empty()
        }),
        "the retry did not revoke it: {}",
        b.status()
    );
    assert!(!pg.role_exists(&role));
    assert!(!b.home.join("leases").join(format!("{lease}.json")).exists());
    let log = audit_text(&b);
    assert!(log.contains("credential_irrevocable") && log.contains("credential_revoked"));
}

#[test]
fn unlock_reaps_this_vaults_orphans_and_leaves_other_roles_alone() {
    let pg = Pg::start();
    let mut b = with_postgres(&pg);
    let tag = Vault::unlock(&b.vault_path(), PASS).unwrap().tag();
    let orphan = format!("custody-{tag}-00000000000000aa");
    let foreign = [
        "app_owner",
        "custody_reporting",
        "custody-ffffffff-00000000000000bb",
    ];
    for r in foreign.iter().copied().chain([orphan.as_str()]) {
        pg.sql(&format!("CREATE ROLE \"{r}\" LOGIN"));
    }
    // A broker start plus unlock reaps; twice, to show it is repeatable.
    for _ in 0..2 {
        b.stop();
        b.launch();
        b.unlock();
        assert!(
            eventually(Duration::from_secs(15), || !pg.role_exists(&orphan)),
            "orphan {orphan} not reaped"
        );
        for r in foreign {
            assert!(pg.role_exists(r), "{r} is not custody's and was touched");
        }
    }
    assert!(audit_text(&b).contains("credential_reaped"));
}

#[test]
fn a_command_source_mints_a_token_per_lease_and_revokes_it() {
    let b = TestBroker::unlocked();
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked");
    let def = SourceDef {
        name: "gh".into(),
        spec: SourceSpec::Command(CommandSource {
            mint: "printf 'ghs_%s%s\\n' \"$CUSTODY_LEASE_ID\" \"$CUSTODY_TTL_SECONDS\"".into(),
            revoke: Some(format!(
                "[ \"$(cat)\" = \"$CUSTODY_TOKEN\" ] && printf '%s\\n' \"$CUSTODY_TOKEN\" >> '{}'",
                revoked.display()
            )),
            ttl_secs: 20,
        }),
    };
    b.change(Request::SourceAdd { source: def }).unwrap();
    b.env_create("app");
    declare_dynamic(&b, "app", "GH_TOKEN", "command:gh");
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            "echo \"token=$GH_TOKEN\"; echo \"$GH_TOKEN\" | base64",
        ],
        &["app"],
    );
    spec.timeout_secs = 600; // capped to the source's TTL
    let (events, res) = b.run_approved(spec);
    let v = res.unwrap();
    let out = String::from_utf8(stream_output(&events, "stdout")).unwrap();
    let lease = v["lease_id"].as_str().unwrap();
    let token = format!("ghs_{lease}20");
    assert!(
        !out.contains(&token) && out.contains("token=[masked:"),
        "{out}"
    );
    assert_eq!(v["credentials"][0]["state"], "revoked", "{v}");
    assert_eq!(std::fs::read_to_string(&revoked).unwrap().trim(), token);
    let log = audit_text(&b);
    assert!(!log.contains(&token), "the token reached the audit log");
    assert!(log.contains("credential_revoked"));
}

/// Sources run statements and commands with admin rights: an agent may not
/// add one, remove one, or point a variable at one.
#[test]
fn agents_cannot_configure_sources_or_declare_dynamic_variables() {
    let b = TestBroker::unlocked();
    b.env_create("app");
    let def = SourceDef {
        name: "gh".into(),
        spec: SourceSpec::Command(CommandSource {
            mint: "echo tok-0123456789".into(),
            revoke: None,
            ttl_secs: 60,
        }),
    };
    b.change(Request::SourceAdd {
        source: def.clone(),
    })
    .unwrap();
    let mut agent = b.client();
    agent
        .call(Request::RegisterSession {
            client_name: "codex".into(),
            client_version: "1".into(),
            parent_pid: real_parent_pid(),
            cwd: String::new(),
        })
        .expect("register session");
    let declare = agent.call(Request::Declare {
        env: "app".into(),
        var: "GH_TOKEN".into(),
        description: None,
        kind: Some(VarKind::Dynamic),
        source: Some("command:gh".into()),
    });
    assert_eq!(code(&declare), "forbidden");
    assert_eq!(
        code(&agent.call(Request::SourceAdd { source: def })),
        "forbidden"
    );
    assert_eq!(
        code(&agent.call(Request::SourceRemove { name: "gh".into() })),
        "forbidden"
    );
    let cat = agent.call(Request::Catalog).unwrap();
    assert!(!cat.to_string().contains("GH_TOKEN"), "{cat}");
}

/// First hour, item 4: a mint command that cannot run leaves nothing
/// behind (no credential shown irrevocable in `leases`/`status`, none to
/// revoke) and its error says why, with the command's stderr (masked); a
/// command that printed a token and then failed has that token revoked.
#[test]
fn a_failed_mint_leaves_nothing_and_says_why() {
    let b = TestBroker::unlocked();
    let dir = tempfile::tempdir().unwrap();
    b.env_create("app");
    b.set("app", "API_KEY", b"static-secret-value-0123");
    let missing = SourceDef {
        name: "gh".into(),
        spec: SourceSpec::Command(CommandSource {
            mint: "gh-token-printer-that-does-not-exist --ttl \"$CUSTODY_TTL_SECONDS\"".into(),
            revoke: Some("true".into()),
            ttl_secs: 60,
        }),
    };
    b.change(Request::SourceAdd { source: missing }).unwrap();
    declare_dynamic(&b, "app", "GH_TOKEN", "command:gh");
    let (_events, res) = b.run_approved(b.spec(&["true"], &["app"]));
    let err = res.unwrap_err().to_string();
    assert!(err.contains("exited with code 127"), "{err}");
    assert!(err.contains("not found"), "no stderr in: {err}");
    let leases = b.client().call(Request::Leases).unwrap();
    assert_eq!(
        leases,
        serde_json::json!([]),
        "a phantom credential: {leases}"
    );
    let status = b.status();
    assert_eq!(status["credentials"], serde_json::json!([]), "{status}");

    // Printed a token (and the static value) to stderr and stdout, then
    // failed: the error masks both, and the token is revoked.
    let revoked = dir.path().join("revoked");
    let half = SourceDef {
        name: "gh".into(),
        spec: SourceSpec::Command(CommandSource {
            mint: "echo tok-half-minted-0123456789; echo \"minted tok-half-minted-0123456789 then failed\" >&2; exit 3".into(),
            revoke: Some(format!("cat >> '{}'", revoked.display())),
            ttl_secs: 60,
        }),
    };
    b.change(Request::SourceAdd { source: half }).unwrap();
    let (_events, res) = b.run_approved(b.spec(&["true"], &["app"]));
    let err = res.unwrap_err().to_string();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("then failed"), "{err}");
    assert!(
        !err.contains("tok-half-minted"),
        "the token in the error: {err}"
    );
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(
            &revoked
        )
        .is_ok_and(|t| t.contains("tok-half-minted-0123456789"))),
        "the half-minted token was not revoked"
    );
    assert!(eventually(Duration::from_secs(10), || b
        .client()
        .call(Request::Leases)
        .unwrap()
        == serde_json::json!([])));
}
