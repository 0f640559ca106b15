//! `custody mcp` through the real binary and rmcp's client: every tool, both
//! protocol eras, approval granted / denied / timed out / cancelled.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const TOKEN: &str = "s3cr3t-VALUE_0123456789abcdefXYZ";

fn env_with_secret() -> Env {
    let e = Env::unlocked();
    e.env_create("dev");
    e.set("dev", "TOKEN", TOKEN);
    e
}

fn run_args(e: &Env, argv: &[&str]) -> Value {
    json!({
        "environments": ["dev"],
        "command": argv,
        "cwd": e.work().to_string_lossy(),
        "timeout_seconds": 60,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_with_output_schemas_and_honest_annotations() {
    let e = Env::unlocked();
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let info = a.client.peer_info().unwrap();
    assert!(
        info.instructions
            .as_deref()
            .unwrap()
            .contains("without ever seeing")
    );
    let tools = a.client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    let mut published = custody_mcp::TOOL_NAMES.to_vec();
    published.sort();
    assert_eq!(
        names, published,
        "TOOL_NAMES (used by the installers) is stale"
    );
    assert_eq!(
        names,
        [
            "audit_tail",
            "create_environment",
            "declare_variable",
            "generate_secret",
            "list_environments",
            "list_grants",
            "request_status",
            "revoke_grant",
            "run"
        ]
    );
    for t in &tools {
        assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
        let ann = t.annotations.as_ref().unwrap();
        let ro = ann.read_only_hint == Some(true);
        // Regression: `uint64`/`uint`/`int32` formats made Claude Code print
        // 12 warnings per `claude mcp list` and Gemini CLI 16 at start.
        for schema in [Some(&t.input_schema), t.output_schema.as_ref()]
            .into_iter()
            .flatten()
        {
            let v = Value::Object((**schema).clone());
            assert!(
                !custody_mcp::has_nonstandard_format(&v),
                "{} has a non-standard format: {v}",
                t.name
            );
        }
        match t.name.as_ref() {
            // `request_status` only waits for and returns what the human
            // approved; it never runs anything itself.
            "list_environments" | "list_grants" | "audit_tail" | "request_status" => {
                assert!(ro, "{}", t.name)
            }
            "revoke_grant" | "run" => {
                assert!(!ro);
                assert_eq!(ann.destructive_hint, Some(true), "{}", t.name);
            }
            _ => assert!(!ro, "{}", t.name),
        }
    }
    a.stop().await;
}

/// Initialize era: environments, slots, generation, an approved run with
/// progress, grants, revoke, audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_era_every_tool_with_an_approved_run() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "50s").await;

    let r = a
        .call(
            "create_environment",
            json!({"name": "shop", "description": "the shop"}),
        )
        .await;
    assert_eq!(structured(&r)["created"], true);
    let r = a
        .call(
            "declare_variable",
            json!({"environment": "shop", "name": "STRIPE_KEY", "description": "from the dashboard"}),
        )
        .await;
    assert!(text(&r).contains("custody set shop STRIPE_KEY"));
    let r = a
        .call(
            "generate_secret",
            json!({"environment": "shop", "name": "SESSION_SECRET", "length": 40, "alphabet": "hex"}),
        )
        .await;
    assert_eq!(structured(&r)["variable"], "SESSION_SECRET");
    // A value a human stored is never replaced by an agent.
    let r = a
        .call(
            "generate_secret",
            json!({"environment": "dev", "name": "TOKEN"}),
        )
        .await;
    assert_tool_error(&r, "custody generate dev TOKEN");

    let r = a.call("list_environments", json!({})).await;
    let v = structured(&r);
    let shop = v["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "shop")
        .unwrap();
    assert_eq!(shop["description"], "the shop");
    let vars: Vec<(String, bool)> = shop["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["is_set"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(vars.contains(&("STRIPE_KEY".into(), false)));
    assert!(vars.contains(&("SESSION_SECRET".into(), true)));

    // An approved run, with progress notifications while it waits.
    let args = run_args(&e, &["sh", "-c", "echo token=$TOKEN; echo err >&2; exit 3"]);
    let call = {
        let a = &a;
        async move { a.call_with_progress("run", args).await }
    };
    let approver = async {
        let e = &e;
        tokio::task::block_in_place(|| {
            let id = e.pending_id();
            // Let a progress tick or two go out first.
            std::thread::sleep(Duration::from_millis(300));
            e.approve(&id);
        });
    };
    let (r, ()) = tokio::join!(call, approver);
    let v = structured(&r);
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "token=[masked:TOKEN]\n");
    assert_eq!(v["stderr"], "err\n");
    assert_eq!(v["masked_count"], 1);
    assert_eq!(v["truncated"], false);
    assert!(v["lease_id"].as_str().unwrap().starts_with("l-"));
    assert!(v["duration_ms"].is_u64());
    assert!(text(&r).contains("exit code 3"));
    let progress = a.progress.lock().unwrap().clone();
    assert!(
        progress.iter().any(|p| p
            .message
            .as_deref()
            .is_some_and(|m| m.contains("custody approve r-"))),
        "no progress while waiting: {progress:?}"
    );

    // A timed grant shows in list_grants and can be revoked.
    let args = run_args(&e, &["true"]);
    let call = a.call("run", args.clone());
    let approver = async {
        tokio::task::block_in_place(|| {
            let id = e.pending_id();
            e.cmd()
                .args(["approve", &id, "--for", "15m", "--pin-stdin"])
                .write_stdin(format!("{PIN}\n"))
                .assert()
                .success();
        });
    };
    let (r, ()) = tokio::join!(call, approver);
    assert_eq!(structured(&r)["exit_code"], 0);
    let r = a.call("list_grants", json!({})).await;
    let grants = structured(&r)["grants"].as_array().unwrap().clone();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["argv"], json!(["true"]));
    let gid = grants[0]["grant_id"].as_str().unwrap().to_owned();
    // The grant covers a second identical run without asking.
    let r = a.call("run", args).await;
    assert_eq!(structured(&r)["status"], "finished");
    let r = a.call("revoke_grant", json!({"grant_id": gid})).await;
    assert_eq!(structured(&r)["revoked_grants"], json!([gid]));
    let r = a.call("list_grants", json!({})).await;
    assert_eq!(structured(&r)["grants"], json!([]));
    let r = a.call("revoke_grant", json!({"grant_id": "g-nope"})).await;
    assert_tool_error(&r, "no grant 'g-nope' of yours");

    // The audit tail holds this session's own history, its own vault
    // changes included.
    let r = a
        .call(
            "declare_variable",
            json!({"environment": "dev", "name": "FROM_THE_AGENT"}),
        )
        .await;
    assert_eq!(structured(&r)["created"], true, "{r:?}");
    let r = a.call("audit_tail", json!({"limit": 100})).await;
    let types: Vec<String> = structured(&r)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["event"]["type"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "session_start",
        "request",
        "approval",
        "grant",
        "lease_start",
        "lease_end",
        "revoke",
        "vault_change",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} in {types:?}");
    }
    let r = a.call("audit_tail", json!({"limit": 2})).await;
    assert_eq!(structured(&r)["records"].as_array().unwrap().len(), 2);

    // The broker saw the session under the handshake's client name.
    let st = e.json(&["status"]);
    assert_eq!(st["sessions"][0]["client_name"], CLIENT);
    assert_eq!(st["sessions"][0]["client_version"], "9.9.9");

    assert!(!contains(&a.all_received(), TOKEN.as_bytes()));
    assert!(!contains(&a.all_stderr(), TOKEN.as_bytes()));
    a.stop().await;
}

/// 2026-07-28: no initialize; the client's name comes with each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_era_lists_runs_after_approval_and_follows_a_pending_request() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Discover, "2s").await;
    let info = a.client.peer_info().unwrap();
    assert_eq!(info.protocol_version.as_str(), "2026-07-28");
    assert!(
        info.instructions
            .as_deref()
            .unwrap()
            .contains("custody approve")
    );
    let tools = a.client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 9);

    let r = a.call("list_environments", json!({})).await;
    assert_eq!(
        structured(&r)["environments"][0]["variables"][0]["name"],
        "TOKEN"
    );
    let st = e.json(&["status"]);
    assert_eq!(st["sessions"][0]["client_name"], CLIENT);

    // Nobody approves within the 2 s wait: pending, with the id to follow.
    let args = run_args(&e, &["sh", "-c", "echo $TOKEN"]);
    let r = a.call_with_progress("run", args).await;
    let v = structured(&r);
    assert_eq!(v["status"], "pending", "{v}");
    let id = v["request_id"].as_str().unwrap().to_owned();
    assert_eq!(v["approve_hint"], format!("custody approve {id}"));
    assert!(
        a.progress
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.message.as_deref().is_some_and(|m| m.contains(&id))),
        "progress notifications reach a 2026-07-28 client"
    );
    let r = a.call("request_status", json!({"request_id": id})).await;
    assert_eq!(structured(&r)["status"], "pending");
    tokio::task::block_in_place(|| e.approve(&id));
    // Approved: request_status re-issues the same run under the grant.
    let r = a.call("request_status", json!({"request_id": id})).await;
    let v = structured(&r);
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["stdout"], "[masked:TOKEN]\n");
    assert_eq!(v["exit_code"], 0);

    let r = a.call("audit_tail", json!({})).await;
    assert!(!structured(&r)["records"].as_array().unwrap().is_empty());
    assert!(!contains(&a.all_received(), TOKEN.as_bytes()));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_run_is_a_tool_error_that_says_not_to_retry() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let call = a.call("run", run_args(&e, &["true"]));
    let denier = async {
        tokio::task::block_in_place(|| {
            let id = e.pending_id();
            e.deny(&id);
        });
    };
    let (r, ()) = tokio::join!(call, denier);
    assert_tool_error(&r, "was denied");
    assert_tool_error(&r, "without asking the user");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_status_reports_a_denial_after_the_wait_returned_pending() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    let r = a.call("run", run_args(&e, &["true"])).await;
    let id = structured(&r)["request_id"].as_str().unwrap().to_owned();
    tokio::task::block_in_place(|| e.deny(&id));
    let r = a.call("request_status", json!({"request_id": id})).await;
    let v = structured(&r);
    assert_eq!(v["status"], "denied");
    assert!(v["message"].as_str().unwrap().contains("do not retry"));
    let r = a
        .call("request_status", json!({"request_id": "r-unknown"}))
        .await;
    assert_tool_error(&r, "no request 'r-unknown'");
    a.stop().await;
}

/// The client gives up on a waiting run: the request is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_run_cancels_the_request() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let call = a.call("run", run_args(&e, &["true"]));
    // Dropping the call's future sends notifications/cancelled.
    let dropped = tokio::time::timeout(Duration::from_secs(3), call).await;
    assert!(dropped.is_err(), "the run should still be waiting");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = tokio::task::block_in_place(|| e.json(&["approve", "--list"]));
        if pending.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < until, "request still pending: {pending}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = a.call("audit_tail", json!({})).await;
    let recs = structured(&r)["records"].as_array().unwrap().clone();
    assert!(
        recs.iter().any(|x| x["event"]["type"] == "revoke"),
        "cancellation audited: {recs:?}"
    );
    a.stop().await;
}

/// The client gives up on a running command: its lease is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_command_kills_its_lease() {
    let e = env_with_secret();
    e.policy(&format!(
        "[[clients.{CLIENT}.preapproved]]\nargv = [\"sleep\", \"30\"]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n"
    ));
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let call = a.call("run", run_args(&e, &["sleep", "30"]));
    let started = Instant::now();
    let dropped = tokio::time::timeout(Duration::from_secs(3), call).await;
    assert!(dropped.is_err());
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let leases = tokio::task::block_in_place(|| e.json(&["leases"]));
        if leases.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < until, "lease still running: {leases}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = a.call("audit_tail", json!({})).await;
    let ends: Vec<Value> = structured(&r)["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["event"]["type"] == "lease_end")
        .cloned()
        .collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0]["event"]["reason"], "revoked");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_tools_say_unlock_and_register_once_it_runs() {
    let e = Env::new();
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let r = a.call("list_environments", json!({})).await;
    assert_tool_error(&r, "ask the user to run `custody unlock`");
    tokio::task::block_in_place(|| e.unlock());
    let r = a.call("list_environments", json!({})).await;
    assert_eq!(structured(&r)["environments"], json!([]));
    let st = tokio::task::block_in_place(|| e.json(&["status"]));
    assert_eq!(st["sessions"].as_array().unwrap().len(), 1);
    // Locked vault: the broker's message passes through.
    tokio::task::block_in_place(|| e.cmd().arg("lock").assert().success());
    let r = a.call("list_environments", json!({})).await;
    assert_tool_error(&r, "custody unlock");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_environments_are_not_changed_by_agents() {
    let e = Env::unlocked();
    e.env_create("prod");
    e.policy(&format!(
        "[clients.{CLIENT}]\nalways_approve = [\"prod*\"]\n"
    ));
    let a = Agent::start(&e, Era::Initialize, "50s").await;
    let r = a
        .call("create_environment", json!({"name": "prod-eu"}))
        .await;
    assert_tool_error(&r, "protected by policy");
    let r = a
        .call(
            "declare_variable",
            json!({"environment": "prod", "name": "DB_URL"}),
        )
        .await;
    assert_tool_error(&r, "ask the user");
    let r = a
        .call(
            "generate_secret",
            json!({"environment": "prod", "name": "K"}),
        )
        .await;
    assert_tool_error(&r, "protected by policy");
    let r = a.call("list_environments", json!({})).await;
    assert_eq!(structured(&r)["environments"][0]["always_approve"], true);
    // Bad input: the broker's message, as a tool error.
    let r = a
        .call("create_environment", json!({"name": "Bad Name!"}))
        .await;
    assert_eq!(r.is_error, Some(true));
    a.stop().await;
}

/// Audit records of one type.
fn audit_of(e: &Env, kind: &str) -> Vec<Value> {
    let out = e.cmd().args(["audit", "--json"]).assert().success();
    String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"]["type"] == kind)
        .collect()
}

/// Regression: `request_status` re-ran an approved command on every poll
/// (it never forgot the request) and filed a new request after a
/// once-grant. Now the approval starts the run that asked, once, and every
/// `request_status` returns that run's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_status_never_reruns_an_approved_command() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    let r = a
        .call(
            "run",
            run_args(&e, &["sh", "-c", "echo ran >> count; echo $TOKEN"]),
        )
        .await;
    let v = structured(&r);
    assert_eq!(v["status"], "pending", "{v}");
    let id = v["request_id"].as_str().unwrap().to_owned();
    tokio::task::block_in_place(|| e.approve(&id));
    for round in 0..3 {
        let r = a.call("request_status", json!({"request_id": id})).await;
        let v = structured(&r);
        assert_eq!(v["status"], "finished", "round {round}: {v}");
        assert_eq!(v["stdout"], "[masked:TOKEN]\n", "round {round}");
    }
    let count = std::fs::read_to_string(e.work().join("count")).unwrap();
    assert_eq!(count, "ran\n", "the approved command ran more than once");
    assert_eq!(
        e.json(&["approve", "--list"]),
        json!([]),
        "a new request was filed"
    );
    assert_eq!(audit_of(&e, "lease_start").len(), 1);
    assert_eq!(audit_of(&e, "request").len(), 1);
    a.stop().await;
}

/// Regression (clients polled `request_status` in a tight loop, and
/// Gemini's loop detector ended the turn): `request_status` waits for the
/// decision like `run` does, and answers as soon as it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_status_waits_for_the_decision_instead_of_answering_at_once() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    let r = a
        .call("run", run_args(&e, &["sh", "-c", "echo $TOKEN"]))
        .await;
    let id = structured(&r)["request_id"].as_str().unwrap().to_owned();
    // Nobody decides: it waits out the approval wait, then says pending.
    let t = Instant::now();
    let r = a.call("request_status", json!({"request_id": id})).await;
    assert_eq!(structured(&r)["status"], "pending");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "answered at once"
    );
    // The decision comes while it waits: one call gets the result.
    let e2 = &e;
    let id2 = id.clone();
    let approver = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| e2.approve(&id2));
    };
    let status = a.call("request_status", json!({"request_id": id}));
    let (r, ()) = tokio::join!(status, approver);
    let v = structured(&r);
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(v["stdout"], "[masked:TOKEN]\n");
    a.stop().await;
}

/// Part of "swapping what was reviewed": a once-grant is spent by the run
/// that asked for it at approval time; it never waits for a later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_once_grant_is_spent_by_the_waiting_run_at_approval_time() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    let r = a
        .call("run", run_args(&e, &["sh", "-c", "echo ran > marker"]))
        .await;
    let id = structured(&r)["request_id"].as_str().unwrap().to_owned();
    tokio::task::block_in_place(|| e.approve(&id));
    // No further tool call: the run happened at approval.
    let until = Instant::now() + Duration::from_secs(10);
    while !e.work().join("marker").exists() {
        assert!(
            Instant::now() < until,
            "the approved run did not start: {}",
            String::from_utf8_lossy(&e.cmd().args(["audit", "--json"]).output().unwrap().stdout)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.json(&["grants"]), json!([]), "a once-grant was kept");
    a.stop().await;
}

/// When an MCP session ends, its pending requests are cancelled (audited)
/// and its grants dropped; approving a cancelled request says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_cancels_its_requests_and_drops_its_grants() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    // A timed grant for `true`.
    let call = a.call("run", run_args(&e, &["true"]));
    let approver = async {
        tokio::task::block_in_place(|| {
            let id = e.pending_id();
            e.cmd()
                .args(["approve", &id, "--for", "15m", "--pin-stdin"])
                .write_stdin(format!("{PIN}\n"))
                .assert()
                .success();
        });
    };
    let (r, ()) = tokio::join!(call, approver);
    assert_eq!(structured(&r)["status"], "finished");
    assert_eq!(e.json(&["grants"]).as_array().unwrap().len(), 1);
    // A request left pending.
    let r = a
        .call("run", run_args(&e, &["sh", "-c", "echo $TOKEN"]))
        .await;
    let id = structured(&r)["request_id"].as_str().unwrap().to_owned();
    a.stop().await;

    let until = Instant::now() + Duration::from_secs(10);
    while e.json(&["approve", "--list"]) != json!([]) || e.json(&["grants"]) != json!([]) {
        assert!(
            Instant::now() < until,
            "the session's requests or grants outlived it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = e
        .cmd()
        .args(["approve", &id, "--once", "--pin-stdin"])
        .write_stdin(format!("{PIN}\n"))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("was cancelled"), "{err}");
    let revokes = audit_of(&e, "revoke");
    assert!(
        revokes.iter().any(|r| r["event"]["target"] == json!(id)),
        "the cancellation is not audited: {revokes:?}"
    );
    assert!(
        revokes.iter().any(|r| r["event"]["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("g-")),
        "the dropped grant is not audited: {revokes:?}"
    );
}

/// Regression: the post-run leak check's findings never reached the agent
/// (the MCP `run` result had no `leaks` field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_result_reports_leaks_to_the_agent() {
    let e = env_with_secret();
    e.policy(&format!(
        "[[clients.{CLIENT}.preapproved]]\nargv = [\"sh\", \"-c\", \"printf %s \\\"$TOKEN\\\" > out.txt\"]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n"
    ));
    let a = Agent::start(&e, Era::Initialize, "5s").await;
    let r = a
        .call(
            "run",
            run_args(&e, &["sh", "-c", "printf %s \"$TOKEN\" > out.txt"]),
        )
        .await;
    let v = structured(&r);
    assert_eq!(v["status"], "finished", "{v}");
    assert_eq!(
        v["leaks"],
        json!([{"path": "out.txt", "variable": "TOKEN"}]),
        "{v}"
    );
    assert!(text(&r).contains("LEAK: out.txt"), "{}", text(&r));
    a.stop().await;
}

/// Review finding: `request_status` on an approved command that runs longer
/// than the wait blocked until it ended (clients time tool calls out). It
/// answers `running` with the lease, and the next call returns the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_status_answers_running_for_a_long_approved_command() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "1s").await;
    let r = a
        .call("run", run_args(&e, &["sh", "-c", "sleep 3; echo $TOKEN"]))
        .await;
    let id = structured(&r)["request_id"].as_str().unwrap().to_owned();
    tokio::task::block_in_place(|| e.approve(&id));
    let r = a.call("request_status", json!({"request_id": id})).await;
    let v = structured(&r);
    assert_eq!(v["status"], "running", "{v}");
    assert!(v["lease_id"].as_str().unwrap().starts_with("l-"));
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = a.call("request_status", json!({"request_id": id})).await;
        let v = structured(&r);
        if v["status"] == "finished" {
            assert_eq!(v["stdout"], "[masked:TOKEN]\n");
            break;
        }
        assert_eq!(v["status"], "running", "{v}");
        assert!(Instant::now() < until, "never finished");
    }
    assert_eq!(audit_of(&e, "lease_start").len(), 1);
    a.stop().await;
}

/// Part of attack class 12, "killing the broker to be forgotten": after the
/// broker dies and the human starts it again, `custody mcp` registers its
/// session at once, not at its next tool call, so the agent's processes are
/// an agent's again without the agent doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_mcp_registers_again_as_soon_as_the_broker_is_back() {
    let e = env_with_secret();
    let a = Agent::start(&e, Era::Initialize, "5s").await;
    // The session registers right after the handshake, not during it:
    // wait for it (seen slow once under a loaded terminal run).
    let until = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = tokio::task::block_in_place(|| e.json(&["status"]));
        if st["sessions"].as_array().is_some_and(|s| !s.is_empty()) || Instant::now() >= until {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st["sessions"].as_array().unwrap().len(), 1, "{st}");
    let agent_pid = st["sessions"][0]["agent_pid"].clone();
    let pid = st["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| e.unlock());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tokio::task::block_in_place(|| e.json(&["status"]));
        if let Some(s) = st["sessions"].as_array().and_then(|s| s.first()) {
            assert_eq!(s["agent_pid"], agent_pid, "{st}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no session without a tool call: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
}

/// First hour, item 8, with the same-user rule that what was approved is
/// what runs: an agent's run gets its MCP server's environment (an app's
/// `RAILS_ENV`), never a loader variable; the approval lists every
/// variable that differs from the approver's (an `HTTPS_PROXY` pointing
/// the command elsewhere is seen); and a run pre-approved by policy, which
/// nobody sees, gets only PATH, HOME, USER, LANG, TERM and TMPDIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_run_gets_its_servers_environment_shown_and_bound() {
    let e = env_with_secret();
    let a = Agent::start_with(
        &e,
        Era::Initialize,
        "50s",
        &[
            ("RAILS_ENV", "test"),
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("NODE_OPTIONS", "--require /tmp/evil.js"),
        ],
    )
    .await;
    let script = "echo \"[$RAILS_ENV][$HTTPS_PROXY][$NODE_OPTIONS]\"";
    let args = run_args(&e, &["sh", "-c", script]);
    let call = a.call("run", args.clone());
    let approver = async {
        tokio::task::block_in_place(|| {
            let id = e.pending_id();
            let out = e.cmd().args(["approve", "--list"]).assert().success();
            let screen = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
            assert!(
                screen.contains("env differs:  HTTPS_PROXY=http://127.0.0.1:9 (yours: unset)"),
                "{screen}"
            );
            assert!(
                screen.contains("env differs:  RAILS_ENV=test (yours: unset)"),
                "{screen}"
            );
            assert!(!screen.contains("NODE_OPTIONS="), "{screen}");
            e.approve(&id);
        });
    };
    let (r, ()) = tokio::join!(call, approver);
    let v = structured(&r);
    assert_eq!(v["stdout"], "[test][http://127.0.0.1:9][]\n", "{v}");

    e.policy(&format!(
        "[[clients.\"*\".preapproved]]\nargv = [\"sh\", \"-c\", {script:?}]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n"
    ));
    let v = structured(&a.call("run", args).await);
    assert_eq!(v["stdout"], "[][][]\n", "{v}");
}
