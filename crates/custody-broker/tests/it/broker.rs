//! Integration tests of the broker: a real broker on a temporary socket,
//! driven through the blocking client. Each test tries to break one of the
//! guarantees of THREAT-MODEL.md (G1–G8) or an acceptance point of the
//! approval flow.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use custody_broker::protocol::{
    self, ApprovalScope, CatalogEnvironment, ClientFrame, Event, FrameError, PROTOCOL_VERSION,
    Request, RevokeTarget, RunSpec,
};
use custody_core::audit::{self, AuditEvent, DenialReason, LeaseEndReason, LockReason};
use serde_json::{Value, json};

/// 32 bytes: long enough for every encoded form to be masked.
const SECRET: &[u8] = b"s3cr3t-VALUE_0123456789abcdefXYZ";

/// The forms of a value that must never leave the broker (G1).
fn leak_forms(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let lower: String = value.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw", value.to_vec()),
        ("base64", STANDARD.encode(value).into_bytes()),
        (
            "base64 unpadded",
            STANDARD_NO_PAD.encode(value).into_bytes(),
        ),
        ("base64url", URL_SAFE_NO_PAD.encode(value).into_bytes()),
        ("hex", lower.clone().into_bytes()),
        ("HEX", lower.to_uppercase().into_bytes()),
    ]
}

fn assert_no_leak(what: &str, hay: &[u8], value: &[u8]) {
    for (form, bytes) in leak_forms(value) {
        assert!(
            !contains(hay, &bytes),
            "{what} contains the secret ({form} form): {}",
            String::from_utf8_lossy(hay)
        );
    }
}

fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// An unlocked broker with environment `dev` holding `SECRET`.
fn broker_with_secret() -> TestBroker {
    let b = TestBroker::unlocked();
    b.env_create("dev");
    b.set("dev", "SECRET", SECRET);
    b
}

fn finished(res: Result<Value, custody_broker::ClientError>) -> Value {
    let v = res.unwrap_or_else(|e| panic!("run failed: {e}"));
    assert_eq!(v["status"], "finished", "{v}");
    v
}

fn has_pending_event(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Pending { .. }))
}

// ----- G1: masking -------------------------------------------------------

#[test]
fn g1_env_base64_and_hex_of_a_secret_are_masked_in_stream_and_result() {
    let b = broker_with_secret();
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            r#"env; printf %s "$SECRET" | base64; printf %s "$SECRET" | od -An -tx1 | tr -d " \n""#,
        ],
        &["dev"],
    );
    spec.capture_limit = Some(64 * 1024);
    let (events, res) = b.run_approved(spec);
    let v = finished(res);
    assert_eq!(v["exit_code"], 0, "{v}");

    let out = stream_output(&events, "stdout");
    assert!(
        contains(&out, b"SECRET=[masked:SECRET]"),
        "env output not masked as expected: {}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        occurrences(&out, b"[masked:SECRET]") >= 3,
        "value, base64 and hex must each be masked: {}",
        String::from_utf8_lossy(&out)
    );
    assert_no_leak("streamed stdout", &out, SECRET);
    assert_no_leak("streamed stderr", &stream_output(&events, "stderr"), SECRET);

    let result = serde_json::to_vec(&v).unwrap();
    assert_no_leak("final result", &result, SECRET);
    let captured = v["stdout"].as_str().expect("captured stdout").as_bytes();
    assert!(occurrences(captured, b"[masked:SECRET]") >= 3, "{v}");
    assert!(v["mask_counts"]["SECRET"].as_u64().unwrap() >= 3, "{v}");
}

#[test]
fn g1_value_split_across_two_writes_is_masked() {
    let b = broker_with_secret();
    assert_eq!(SECRET.len(), 32);
    // First 16 bytes, a pause (so they arrive in separate reads), last 16.
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            r#"printf "%s" "${SECRET%????????????????}"; sleep 0.1; printf "%s\n" "${SECRET#????????????????}""#,
        ],
        &["dev"],
    );
    spec.capture_limit = Some(4096);
    let (events, res) = b.run_approved(spec);
    let v = finished(res);
    let out = stream_output(&events, "stdout");
    assert_eq!(String::from_utf8_lossy(&out), "[masked:SECRET]\n");
    assert_eq!(v["stdout"], "[masked:SECRET]\n", "{v}");
    assert_no_leak("result", &serde_json::to_vec(&v).unwrap(), SECRET);
}

// ----- approvals -----------------------------------------------------------

#[test]
fn approval_needs_the_right_pin_and_once_means_once() {
    let b = broker_with_secret();
    let spec = b.spec(&["sh", "-c", "echo ran"], &["dev"]);
    let h = b.start_run(spec.clone());
    let id = h.wait_pending();

    // No PIN proof: refused, still pending. Nor does a PIN sent in the
    // clear (the old way) count: the PIN only ever proves itself.
    let r = b.client().call(Request::Approve {
        request_id: id.clone(),
        scope: ApprovalScope::Once,
    });
    assert_eq!(code(&r), "pin_required");
    let r = b.client().call_with_secret(
        Request::Approve {
            request_id: id.clone(),
            scope: ApprovalScope::Once,
        },
        PIN,
    );
    assert_eq!(code(&r), "pin_required");
    assert_eq!(b.request_status(&id)["status"], "pending");

    // Wrong PIN: wrong_pin, still pending, counted.
    let r = b.approve(&id, ApprovalScope::Once, WRONG_PIN);
    assert_eq!(code(&r), "wrong_pin");
    assert_eq!(b.request_status(&id)["status"], "pending");
    assert_eq!(b.status()["pin_failures"], 1);
    assert!(
        h.try_join(Duration::from_millis(200)).is_none(),
        "ran without approval"
    );

    // Right PIN, once: the run happens.
    let ok = b.approve(&id, ApprovalScope::Once, PIN).expect("approve");
    assert!(ok["grant_id"].as_str().is_some(), "{ok}");
    let (events, res) = h.join();
    let v = finished(res);
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(stream_output(&events, "stdout"), b"ran\n");
    assert_eq!(b.request_status(&id)["status"], "approved");
    assert_eq!(
        b.status()["pin_failures"],
        0,
        "a right PIN resets the count"
    );

    // Once means once: the grant is spent, the same command asks again.
    let grants = b.client().call(Request::Grants).unwrap();
    assert_eq!(grants, json!([]), "a once-grant must be spent");
    let mut again = spec;
    again.wait_secs = Some(1);
    let (events, res) = b.run(again);
    let v = res.unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    assert_ne!(v["request_id"], json!(id));
    assert!(has_pending_event(&events));
}

#[test]
fn five_wrong_pins_lock_the_vault_and_are_audited() {
    let b = broker_with_secret();
    let h = b.start_run(b.spec(&["true"], &["dev"]));
    let id = h.wait_pending();
    for attempt in 1..=4 {
        let r = b.approve(&id, ApprovalScope::Once, WRONG_PIN);
        assert_eq!(code(&r), "wrong_pin", "attempt {attempt}");
        assert_eq!(b.request_status(&id)["status"], "pending");
    }
    let r = b.approve(&id, ApprovalScope::Once, WRONG_PIN);
    assert_eq!(code(&r), "locked", "the fifth wrong PIN locks");
    assert_eq!(b.status()["locked"], true);
    // The waiting run learns the vault was locked; it never ran.
    let (events, res) = h.join();
    assert_eq!(code(&res), "locked");
    assert!(!events.iter().any(|e| matches!(e, Event::Started { .. })));
    // Even the right PIN does nothing now.
    assert_eq!(code(&b.approve(&id, ApprovalScope::Once, PIN)), "locked");

    b.unlock();
    let records = b.audit_records();
    assert_eq!(
        pin_failures(&records),
        vec![(1, false), (2, false), (3, false), (4, false), (5, true)]
    );
    assert!(
        records.iter().any(|r| r.event
            == AuditEvent::Lock {
                reason: LockReason::PinLockout
            }),
        "no pin_lockout lock record"
    );
    assert!(!records.iter().any(|r| r.event.kind() == "approval"));
    assert_eq!(b.audit_verify()["intact"], true);
}

/// A lease's end is written behind (one `fdatasync` per run): it is in the
/// log as soon as the run's result is, and under the vault's sealed head
/// within the broker's tick (about a second), with the chain intact.
/// The audit record of kind `kind` (`lease_start`, `lease_end`) of lease
/// `lease_id`.
fn lease_record(b: &TestBroker, lease_id: &str, kind: &str) -> Option<audit::AuditRecord> {
    b.audit_records().into_iter().find(|r| {
        r.event.kind() == kind
            && match &r.event {
                AuditEvent::LeaseStart { lease_id: l, .. }
                | AuditEvent::LeaseEnd { lease_id: l, .. } => l == lease_id,
                _ => false,
            }
    })
}

#[test]
fn a_lease_end_is_in_the_log_at_once_and_under_the_vault_head_within_a_second() {
    let b = broker_with_secret();
    let res = b.run_approved(b.spec(&["true"], &["dev"])).1;
    let lease_id = finished(res)["lease_id"].as_str().unwrap().to_owned();
    let end = lease_record(&b, &lease_id, "lease_end")
        .expect("the lease_end record, as soon as the result");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, head) = audit_key_and_head(&b.vault_path());
        if head.is_some_and(|h| h.seq >= end.seq) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the vault's head never reached the lease_end record (seq {})",
            end.seq
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.audit_verify()["intact"], true);
    // From then on, a same-user process that cuts the record off is caught.
    let log = std::fs::read(b.audit_path()).unwrap();
    let lines: Vec<&[u8]> = log.split_inclusive(|c| *c == b'\n').collect();
    let kept: Vec<u8> = lines[..(end.seq - 1) as usize].concat();
    std::fs::write(b.audit_path(), kept).unwrap();
    let v = b.audit_verify();
    assert_eq!(v["intact"], false, "{v}");
}

/// A lease's start record is written before the child is let run on (the
/// run fails closed without it) and made durable on a thread of its own
/// while the child runs; the result waits for it: when the result comes,
/// the vault's head (stored only for durable records) covers it. (On a fast
/// disk the sync also wins without the wait: the head's bookkeeping is
/// tested in custody-core's `a_pending_record_is_durable_off_the_chain…`.)
#[test]
fn a_lease_start_is_under_the_vault_head_when_the_result_comes() {
    let b = broker_with_secret();
    for _ in 0..5 {
        let res = b.run_approved(b.spec(&["true"], &["dev"])).1;
        let (_, head) = audit_key_and_head(&b.vault_path());
        let lease_id = finished(res)["lease_id"].as_str().unwrap().to_owned();
        let start = lease_record(&b, &lease_id, "lease_start").expect("the lease_start record");
        let head = head.expect("a head");
        assert!(
            head.seq >= start.seq,
            "the result came before its start record (seq {}) was durable (head {})",
            start.seq,
            head.seq
        );
    }
    assert_eq!(b.audit_verify()["intact"], true);
}

#[test]
fn deny_fails_the_waiting_run_with_denied() {
    let b = broker_with_secret();
    let h = b.start_run(b.spec(&["true"], &["dev"]));
    let id = h.wait_pending();
    b.client()
        .call(Request::Deny {
            request_id: id.clone(),
        })
        .expect("deny");
    let (events, res) = h.join();
    assert_eq!(code(&res), "denied");
    assert!(!events.iter().any(|e| matches!(e, Event::Started { .. })));
    let st = b.request_status(&id);
    assert_eq!(st["status"], "denied", "{st}");
    assert_eq!(st["reason"], "human", "{st}");
    // Decided is decided: a late approval finds nothing.
    assert_eq!(code(&b.approve(&id, ApprovalScope::Once, PIN)), "not_found");
}

// ----- G3: the agent cannot approve its own request ----------------------------

#[test]
fn g3_approvals_from_an_agent_process_tree_are_refused_and_deny_the_request() {
    let b = broker_with_secret();
    let ppid = real_parent_pid();
    let mut agent = b.client();

    // The broker checks the claimed parent against /proc.
    let r = agent.call(Request::RegisterSession {
        client_name: "codex".into(),
        client_version: "1".into(),
        parent_pid: ppid + 1,
        cwd: String::new(),
    });
    assert_eq!(code(&r), "bad_request");

    let s = agent
        .call(Request::RegisterSession {
            client_name: "codex".into(),
            client_version: "1".into(),
            parent_pid: ppid,
            cwd: String::new(),
        })
        .expect("register session");
    assert_eq!(s["agent_pid"], ppid, "{s}");

    let mut spec = b.spec(&["sh", "-c", "echo agent"], &["dev"]);
    spec.wait_secs = Some(1);

    // 1. The session's own connection approves, with the right PIN.
    let v = agent.call(Request::Run(spec.clone())).expect("run");
    assert_eq!(v["status"], "pending", "{v}");
    let a = v["request_id"].as_str().unwrap().to_owned();
    let r = agent.call_with_pin(
        Request::Approve {
            request_id: a.clone(),
            scope: ApprovalScope::Once,
        },
        PIN,
        None,
    );
    assert_eq!(code(&r), "forbidden");
    let st = b.request_status(&a);
    assert_eq!(st["status"], "denied", "{st}");
    assert_eq!(st["reason"], "approver_is_agent", "{st}");

    // 2. Another connection of the same (agent) process approves.
    let v = agent.call(Request::Run(spec.clone())).expect("run");
    assert_eq!(v["status"], "pending", "{v}");
    let c = v["request_id"].as_str().unwrap().to_owned();
    assert_ne!(a, c);
    let r = b.approve(&c, ApprovalScope::For { secs: 60 }, PIN);
    assert_eq!(code(&r), "forbidden");
    assert_eq!(b.request_status(&c)["status"], "denied");

    // 3. A run waiting for its decision learns it was denied.
    spec.wait_secs = None;
    let h = b.start_run(spec);
    let d = h.wait_pending();
    assert_eq!(code(&b.approve(&d, ApprovalScope::Once, PIN)), "forbidden");
    let (events, res) = h.join();
    assert_eq!(code(&res), "denied");
    assert!(!events.iter().any(|e| matches!(e, Event::Started { .. })));

    // Nothing was granted; the audit log says why.
    assert_eq!(b.client().call(Request::Grants).unwrap(), json!([]));
    let records = b.audit_records();
    let refused = records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                AuditEvent::Denial {
                    reason: DenialReason::ApproverIsAgent,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 3);
    assert!(!records.iter().any(|r| r.event.kind() == "approval"));
    assert_eq!(
        b.status()["pin_failures"],
        0,
        "the PIN was never even checked"
    );
}

// ----- G4: grants cannot be widened -----------------------------------------------

#[test]
fn g4_timed_grant_covers_exactly_the_approved_argv_cwd_and_environments() {
    let b = broker_with_secret();
    b.set("dev", "OTHER", b"another-value-0123456789");
    b.env_create("extra");
    b.set("extra", "EXTRA", b"extra-value-0123456789ab");
    let sub = format!("{}/sub", b.workdir());
    std::fs::create_dir(&sub).unwrap();

    let spec = b.spec(&["sh", "-c", "echo g4"], &["dev"]);
    let h = b.start_run(spec.clone());
    let id = h.wait_pending();
    b.approve(&id, ApprovalScope::For { secs: 60 }, PIN)
        .expect("approve for 60 s");
    finished(h.join().1);

    // The exact same request is covered, repeatedly, without asking.
    let mut same = spec.clone();
    same.wait_secs = Some(1);
    for _ in 0..2 {
        let (events, res) = b.run(same.clone());
        let v = finished(res);
        assert_eq!(v["exit_code"], 0, "{v}");
        assert!(!has_pending_event(&events));
    }

    let mut variants: Vec<(&str, RunSpec)> = Vec::new();
    let mut s = same.clone();
    s.argv = vec!["sh".into(), "-c".into(), "echo g4; env".into()];
    variants.push(("different argv", s));
    let mut s = same.clone();
    s.argv.push("extra-arg".into());
    variants.push(("added argument", s));
    let mut s = same.clone();
    s.cwd = sub.clone();
    variants.push(("different cwd", s));
    let mut s = same.clone();
    s.environments.push("extra".into());
    variants.push(("added environment", s));
    let mut s = same.clone();
    s.only = Some(vec!["SECRET".into()]);
    variants.push(("different variable set", s));

    let mut ids = vec![id];
    for (what, s) in variants {
        let (events, res) = b.run(s);
        let v = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(v["status"], "pending", "{what} must be a new request: {v}");
        assert!(has_pending_event(&events), "{what}");
        assert!(
            !events.iter().any(|e| matches!(e, Event::Started { .. })),
            "{what} ran under the old grant"
        );
        let rid = v["request_id"].as_str().unwrap().to_owned();
        assert!(!ids.contains(&rid), "{what}: reused request id");
        ids.push(rid);
    }
    let pending = b.client().call(Request::Pending).unwrap();
    assert_eq!(pending.as_array().unwrap().len(), 5, "{pending}");
    let grants = b.client().call(Request::Grants).unwrap();
    let grants = grants.as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["argv"], json!(spec.argv));
    assert_eq!(grants[0]["cwd"], json!(spec.cwd));
}

// ----- G5: access ends on time ---------------------------------------------------

/// Starts `argv` (approved once) and returns the handle, its lease id, its
/// process group and when it started.
fn start_lease(
    b: &TestBroker,
    argv: &[&str],
    timeout_secs: u64,
) -> (RunHandle, String, u32, Instant) {
    let mut spec = b.spec(argv, &["dev"]);
    spec.timeout_secs = timeout_secs;
    let h = b.start_run(spec);
    let id = h.wait_pending();
    b.approve(&id, ApprovalScope::Once, PIN).expect("approve");
    let t0 = Instant::now();
    let lease = h.wait_started();
    let pgid = b.lease_pid(&lease);
    assert!(pgid > 1);
    (h, lease, pgid, t0)
}

/// Waits (bounded) until group `pgid` has at least `n` live members.
fn wait_members(pgid: u32, n: usize) {
    let until = Instant::now() + Duration::from_secs(5);
    while live_group_members(pgid).len() < n {
        assert!(
            Instant::now() < until,
            "group {pgid} never had {n} live processes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn g5_deadline_kills_the_process_and_its_grandchildren() {
    let b = broker_with_secret();
    for (argv, members, signal) in [
        (&["sleep", "3600"][..], 1, 15),
        (&["sh", "-c", "sleep 3600 & sleep 3600"][..], 3, 15),
        // Ignores SIGTERM (and so do its children): SIGKILL after the grace.
        (
            &["sh", "-c", "trap '' TERM; sleep 3600 & sleep 3600"][..],
            3,
            9,
        ),
    ] {
        let (h, lease, pgid, t0) = start_lease(&b, argv, 2);
        wait_members(pgid, members);
        let (_, res) = h.join();
        let v = finished(res);
        assert_eq!(v["reason"], "deadline", "{argv:?}: {v}");
        assert_eq!(v["signal"], signal, "{argv:?}: {v}");
        assert_eq!(v["lease_id"], json!(lease));
        assert!(
            t0.elapsed() >= Duration::from_millis(1900),
            "{argv:?} ended before its deadline"
        );
        let left = wait_group_gone(pgid, t0 + Duration::from_secs(8));
        assert!(
            left.is_empty(),
            "{argv:?}: processes {left:?} of group {pgid} survived"
        );
        assert_eq!(b.client().call(Request::Leases).unwrap(), json!([]));
    }
    let deadlines = b
        .audit_records()
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                AuditEvent::LeaseEnd {
                    reason: LeaseEndReason::Deadline,
                    ..
                }
            )
        })
        .count();
    assert_eq!(deadlines, 3);
}

#[test]
fn g5_revoke_all_kills_a_running_lease_at_once() {
    let b = broker_with_secret();
    let (h, lease, pgid, _) = start_lease(&b, &["sh", "-c", "sleep 3600 & sleep 3600"], 600);
    wait_members(pgid, 3);
    let t0 = Instant::now();
    let v = b
        .client()
        .call(Request::Revoke(RevokeTarget::All))
        .expect("revoke");
    assert_eq!(v["revoked_leases"], json!([lease]), "{v}");
    let (_, res) = h.join();
    let v = finished(res);
    assert_eq!(v["reason"], "revoked", "{v}");
    let left = wait_group_gone(pgid, t0 + Duration::from_secs(8));
    assert!(left.is_empty(), "processes {left:?} survived the revoke");
    assert!(t0.elapsed() < Duration::from_secs(8));
    assert_eq!(b.client().call(Request::Leases).unwrap(), json!([]));
}

#[test]
fn g5_lock_kills_a_running_lease_at_once() {
    let b = broker_with_secret();
    lock_kills_and_audits(&b, &["sh", "-c", "sleep 3600 & sleep 3600"]);
}

/// A lease that ignores SIGTERM (and whose background child, once killed,
/// may linger as a zombie in its group until an init reaps it) takes the
/// longest to end: lock must still wait for it, so its end is audited.
#[test]
fn g5_lock_kills_a_lease_that_ignores_sigterm_and_audits_its_end() {
    let b = TestBroker::start_with_grace(Duration::from_secs(3));
    b.unlock();
    b.env_create("dev");
    b.set("dev", "SECRET", SECRET);
    lock_kills_and_audits(&b, &["sh", "-c", "trap '' TERM; sleep 3600 & sleep 3600"]);
}

fn lock_kills_and_audits(b: &TestBroker, argv: &[&str]) {
    let (h, _lease, pgid, _) = start_lease(b, argv, 600);
    wait_members(pgid, 3);
    let t0 = Instant::now();
    let v = b.client().call(Request::Lock).expect("lock");
    assert_eq!(v["leases_killed"], 1, "{v}");
    let (_, res) = h.join();
    let v = finished(res);
    assert_eq!(v["reason"], "locked", "{v}");
    let left = wait_group_gone(pgid, t0 + Duration::from_secs(10));
    assert!(left.is_empty(), "processes {left:?} survived the lock");
    assert_eq!(b.status()["locked"], true);
    // The lease's end was audited before the key went away.
    b.unlock();
    let records = b.audit_records();
    let end = records
        .iter()
        .position(|r| {
            matches!(
                r.event,
                AuditEvent::LeaseEnd {
                    reason: LeaseEndReason::Locked,
                    ..
                }
            )
        })
        .expect("lease_end (locked) record");
    let lock = records
        .iter()
        .position(|r| r.event.kind() == "lock")
        .expect("lock record");
    assert!(end < lock);
}

// ----- G6: tamper-evident history ------------------------------------------------

/// The lines of a log, each with its newline.
fn lines(log: &[u8]) -> Vec<Vec<u8>> {
    log.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn g6_audit_chain_verifies_and_names_the_first_bad_record() {
    let mut b = broker_with_secret();
    b.run_approved(b.spec(&["sh", "-c", "echo audited"], &["dev"]))
        .1
        .expect("run");
    let h = b.start_run(b.spec(&["false"], &["dev"]));
    let id = h.wait_pending();
    b.client().call(Request::Deny { request_id: id }).unwrap();
    assert_eq!(code(&h.join().1), "denied");
    b.client().call(Request::Lock).unwrap();
    b.unlock();
    let v = b.audit_verify();
    assert_eq!(v["intact"], true, "{v}");
    b.stop();

    let path = b.audit_path();
    let (key, head) = audit_key_and_head(&b.vault_path());
    let head = head.expect("the vault stores the audit head");
    let report = audit::verify(&path, &key, Some(&head)).expect("intact after shutdown");
    assert_eq!(report.records, head.seq);
    let original = std::fs::read(&path).unwrap();
    let lines = lines(&original);
    let n = lines.len();
    assert!(n >= 12, "only {n} records");
    assert_eq!(n as u64, head.seq);
    let k = n / 2; // seq k is lines[k - 1]
    assert!(
        String::from_utf8_lossy(&lines[k - 1]).starts_with(&format!("{{\"seq\":{k},")),
        "line {k} is not seq {k}"
    );

    let check = |what: &str, bytes: Vec<u8>, want: u64| {
        let p = b.home.join("tampered.log");
        std::fs::write(&p, bytes).unwrap();
        let err = audit::verify(&p, &key, Some(&head))
            .err()
            .unwrap_or_else(|| panic!("{what}: tampering not detected"));
        assert_eq!(err.first_bad_seq(), Some(want), "{what}: {err}");
    };

    // One byte of record k changed (a digit of its time).
    let mut edited = lines.clone();
    let at = find(&edited[k - 1], b"\"time\":\"").expect("time field") + 8;
    let byte = &mut edited[k - 1][at];
    assert!(byte.is_ascii_digit());
    *byte = if *byte == b'9' { b'0' } else { *byte + 1 };
    let edited = edited.concat();
    check("edited byte", edited.clone(), k as u64);

    // Record k deleted.
    let mut deleted = lines.clone();
    deleted.remove(k - 1);
    check("deleted line", deleted.concat(), k as u64);

    // Truncated after record k - 1, at a line boundary and inside record k.
    check("truncated", lines[..k - 1].concat(), k as u64);
    let mut torn = lines[..k - 1].concat();
    torn.extend_from_slice(&lines[k - 1][..lines[k - 1].len() / 2]);
    check("truncated mid-record", torn, k as u64);

    // Last record removed (the head in the vault catches it).
    check("last record removed", lines[..n - 1].concat(), n as u64);

    // The broker itself refuses to unlock over the edited log.
    std::fs::write(&path, &edited).unwrap();
    b.launch();
    let r = b.client().call_with_secret(Request::Unlock, PASS);
    assert_eq!(code(&r), "audit_damaged");
    assert_eq!(b.status()["locked"], true);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ----- G7 / G8: hostile input --------------------------------------------------

fn raw(b: &TestBroker) -> UnixStream {
    let s = UnixStream::connect(&b.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send_json(s: &mut UnixStream, v: &Value) {
    protocol::write_frame(s, &serde_json::to_vec(v).unwrap()).expect("write frame");
}

fn recv(s: &mut UnixStream) -> Result<Value, FrameError> {
    let f = protocol::read_frame(s)?;
    Ok(serde_json::from_slice(&f).expect("the broker sends JSON"))
}

fn hello(s: &mut UnixStream) {
    send_json(
        s,
        &json!({"id": 1, "op": "hello", "protocol": PROTOCOL_VERSION,
                "client": {"kind": "cli", "name": "raw"}}),
    );
    let v = recv(s).expect("hello answer");
    assert!(v.get("ok").is_some(), "{v}");
}

/// An agent that asks for a run and then stops reading its socket (the
/// output fills the socket and the broker's write to it never ends) does
/// not hold its lease open: the deadline still kills the lease's process
/// group, a background child included. Fails when the run is polled in
/// the connection's task, whose pending write then starves the lease's
/// supervisor (deadline, revoke and lock all went unheard).
#[test]
fn a_requester_that_stops_reading_does_not_keep_its_lease_past_the_deadline() {
    let b = broker_with_secret();
    let pidfile = format!("{}/bg.pid", b.workdir());
    let script = format!("sleep 60 & echo $! > {pidfile}; exec yes custody-output-line");
    let mut spec = b.spec(&["sh", "-c", &script], &["dev"]);
    spec.timeout_secs = 2;
    let mut s = raw(&b);
    hello(&mut s);
    let frame = ClientFrame {
        id: 2,
        secret_len: None,
        pin_proof: None,
        request: Request::Run(spec),
    };
    protocol::write_frame(&mut s, &serde_json::to_vec(&frame).unwrap()).unwrap();
    let request_id = loop {
        let v = recv(&mut s).expect("an event");
        if v["event"]["type"] == "pending" {
            break v["event"]["request_id"].as_str().unwrap().to_owned();
        }
    };
    b.approve(&request_id, ApprovalScope::Once, PIN)
        .expect("approve");
    // From here on nothing is read.
    let until = Instant::now() + Duration::from_secs(5);
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < until, "the lease never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                t.rsplit(')')
                    .next()
                    .map(|r| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    assert!(alive(pid), "the background child runs");
    // Deadline 2 s, then the 1 s grace, with room for a loaded machine.
    let until = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < until,
            "the lease's background child outlived the deadline by 8 s while its requester did not read"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s);
}

/// The connection was closed by the broker (EOF or reset), not left hanging.
fn assert_closed(s: &mut UnixStream) {
    match recv(s) {
        Err(FrameError::Closed) | Err(FrameError::Io(_)) => {}
        Err(e) => panic!("unexpected: {e}"),
        Ok(v) => panic!("expected the connection to close, got {v}"),
    }
}

fn still_serving(b: &TestBroker) {
    let v = b.status();
    assert!(v.get("locked").is_some(), "{v}");
}

#[test]
fn g8_oversized_frame_gets_too_large_and_closes_but_the_broker_keeps_serving() {
    let b = TestBroker::unlocked();
    let two_mib = (2u32 << 20).to_be_bytes();

    // As the first frame.
    let mut s = raw(&b);
    s.write_all(&two_mib).unwrap();
    s.write_all(b"{\"id\":").unwrap();
    let v = recv(&mut s).expect("error frame");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_closed(&mut s);

    // After hello.
    let mut s = raw(&b);
    hello(&mut s);
    s.write_all(&two_mib).unwrap();
    let v = recv(&mut s).expect("error frame");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_eq!(v["id"], 0);
    assert_closed(&mut s);

    // Exactly one byte over the limit is too large too.
    let mut s = raw(&b);
    hello(&mut s);
    s.write_all(&((protocol::MAX_FRAME + 1) as u32).to_be_bytes())
        .unwrap();
    assert_eq!(recv(&mut s).unwrap()["error"]["code"], "too_large");
    assert_closed(&mut s);

    still_serving(&b);
    assert_eq!(b.audit_verify()["intact"], true);
}

#[test]
fn g8_garbage_json_gets_bad_request_and_the_connection_goes_on() {
    let b = TestBroker::unlocked();
    let mut s = raw(&b);
    hello(&mut s);
    for garbage in [
        &b"{not json"[..],
        b"",
        b"[]",
        b"{\"id\":5,\"op\":\"no_such_op\"}",
        b"{\"id\":\"x\",\"op\":\"status\"}",
        b"\xff\xfe\x00garbage",
    ] {
        protocol::write_frame(&mut s, garbage).unwrap();
        let v = recv(&mut s).expect("an error frame, not a closed connection");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        // Never echoes the input back.
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains("no_such_op") && !msg.contains("garbage"),
            "{msg}"
        );
    }
    // A secret frame whose length does not match.
    send_json(
        &mut s,
        &json!({"id": 9, "op": "set", "env": "dev", "var": "X", "secret_len": 10}),
    );
    protocol::write_frame(&mut s, b"short").unwrap();
    let v = recv(&mut s).unwrap();
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["code"], "bad_request", "{v}");

    // The same connection still works.
    send_json(&mut s, &json!({"id": 6, "op": "status"}));
    let v = recv(&mut s).unwrap();
    assert_eq!(v["id"], 6);
    assert_eq!(v["ok"]["locked"], false, "{v}");
}

#[test]
fn g8_hundreds_of_random_frames_never_crash_the_broker() {
    let b = TestBroker::unlocked();
    b.env_create("dev");
    let mut rng = Rng::new(0xC0FF_EE00_D15E_A5E5);
    // Harmless requests to mutate (nothing that runs, locks or watches).
    let seeds = [
        r#"{"id":2,"op":"status"}"#,
        r#"{"id":3,"op":"env_list"}"#,
        r#"{"id":4,"op":"pending"}"#,
        r#"{"id":5,"op":"grants"}"#,
        r#"{"id":6,"op":"leases"}"#,
        r#"{"id":7,"op":"request_status","request_id":"r-000000000000"}"#,
        r#"{"id":8,"op":"deny","request_id":"r-000000000000"}"#,
        r#"{"id":9,"op":"cancel","request_id":"r-000000000000"}"#,
        r#"{"id":10,"op":"approve","request_id":"r-1","scope":"for","secs":18446744073709551615}"#,
        r#"{"id":11,"op":"env_describe","name":"dev"}"#,
        r#"{"id":12,"op":"list","env":"dev"}"#,
        r#"{"id":13,"op":"revoke","target":"lease","target_id":"l-000000000000"}"#,
        r#"{"id":14,"op":"hello","protocol":1,"client":{"kind":"x","name":"y"}}"#,
    ];
    let mut s = raw(&b);
    hello(&mut s);
    let mut answered = 0;
    for i in 0..400 {
        let body: Vec<u8> = match rng.below(3) {
            0 => {
                let n = rng.below(600) as usize;
                rng.bytes(n)
            }
            1 => {
                let mut v = seeds[rng.below(seeds.len() as u64) as usize]
                    .as_bytes()
                    .to_vec();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(v.len() as u64) as usize;
                    match rng.below(3) {
                        0 => v[at] = rng.next() as u8,
                        1 => v.insert(at, rng.next() as u8),
                        _ => {
                            v.remove(at);
                        }
                    }
                }
                v
            }
            _ => seeds[rng.below(seeds.len() as u64) as usize]
                .as_bytes()
                .to_vec(),
        };
        protocol::write_frame(&mut s, &body).unwrap();
        match recv(&mut s) {
            Ok(v) => {
                assert!(
                    v.get("ok").is_some() || v.get("error").is_some(),
                    "frame {i}: {v}"
                );
                answered += 1;
            }
            Err(e) => panic!("frame {i}: the broker dropped the connection: {e}"),
        }
    }
    assert_eq!(answered, 400);

    // Unframed random bytes: every such connection is closed, never hangs.
    for i in 0..60 {
        let mut s = raw(&b);
        if i % 2 == 0 {
            hello(&mut s);
        }
        let n = 1 + rng.below(300) as usize;
        let _ = s.write_all(&rng.bytes(n));
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let t = Instant::now();
        let _ = s.read_to_end(&mut sink);
        assert!(t.elapsed() < Duration::from_secs(10), "connection {i} hung");
    }

    still_serving(&b);
    assert_eq!(b.status()["locked"], false);
    assert_eq!(b.audit_verify()["intact"], true);
    assert_eq!(b.client().call(Request::Pending).unwrap(), json!([]));
}

#[test]
fn hello_with_another_protocol_version_or_no_hello_is_refused() {
    let b = TestBroker::start();
    let mut s = raw(&b);
    send_json(
        &mut s,
        &json!({"id": 1, "op": "hello", "protocol": PROTOCOL_VERSION + 1,
                "client": {"kind": "cli", "name": "future"}}),
    );
    let v = recv(&mut s).expect("error frame");
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], "version", "{v}");
    assert_closed(&mut s);

    let mut s = raw(&b);
    send_json(&mut s, &json!({"id": 1, "op": "status"}));
    let v = recv(&mut s).expect("error frame");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert_closed(&mut s);

    // Hello twice on one connection.
    let mut s = raw(&b);
    hello(&mut s);
    send_json(
        &mut s,
        &json!({"id": 2, "op": "hello", "protocol": PROTOCOL_VERSION,
                "client": {"kind": "cli", "name": "again"}}),
    );
    assert_eq!(recv(&mut s).unwrap()["error"]["code"], "bad_request");
    still_serving(&b);
}

#[test]
fn g7_socket_is_private_and_other_users_are_refused() {
    let b = TestBroker::unlocked();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&b.runtime), 0o700, "runtime dir");
    assert_eq!(mode(&b.socket), 0o600, "socket");

    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("not root: the peer-uid refusal is not exercised");
        return;
    }
    // As root we can become another user on one thread (Linux credentials
    // are per thread; the raw syscall does not sync them process-wide).
    // Open the file modes so only the broker's own uid check stands.
    std::fs::set_permissions(&b.runtime, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&b.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = b.socket.clone();
    let answer = std::thread::spawn(move || {
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534))
            .expect("drop to uid 65534 on this thread");
        let mut s = UnixStream::connect(&socket).expect("connect as another user");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let first = recv(&mut s);
        let second = recv(&mut s).map(|_| ());
        (first.expect("error frame"), second.is_err())
    })
    .join()
    .unwrap();
    let (first, closed) = answer;
    assert_eq!(first["error"]["code"], "forbidden", "{first}");
    assert!(closed);
    std::fs::set_permissions(&b.runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    still_serving(&b);
}

// ----- load --------------------------------------------------------------------

#[test]
fn load_32_clients_x_50_preapproved_runs_are_all_audited() {
    const CLIENTS: usize = 32;
    const RUNS: usize = 50;
    let b = TestBroker::unlocked();
    b.env_create("load");
    b.set("load", "TOKEN", b"load-token-0123456789abcdef");
    b.write_policy(&format!(
        r#"[[clients.cli.preapproved]]
argv = ["true"]
cwd = "{}"
environments = ["load"]
expires = "2099-12-31T00:00:00Z"
"#,
        b.workdir()
    ));
    let spec = b.spec(&["true"], &["load"]);

    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = b.client();
            let spec = spec.clone();
            std::thread::spawn(move || {
                for _ in 0..RUNS {
                    let v = c
                        .call(Request::Run(spec.clone()))
                        .unwrap_or_else(|e| panic!("run failed under load: {e}"));
                    assert_eq!(v["status"], "finished", "{v}");
                    assert_eq!(v["exit_code"], 0, "{v}");
                    assert_eq!(v["reason"], "exited", "{v}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let elapsed = t0.elapsed();
    let total = CLIENTS * RUNS;
    eprintln!(
        "load: {total} runs from {CLIENTS} clients in {:.2} s = {:.0} runs/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    let records = b.audit_records();
    let k = kinds(&records);
    assert_eq!(k.get("lease_start"), Some(&total), "{k:?}");
    assert_eq!(k.get("lease_end"), Some(&total), "{k:?}");
    // Pre-approved runs never wait for a human: no approval; the one
    // policy grant is audited with the request that made it (who, what).
    assert_eq!(
        k.get("approval"),
        None,
        "pre-approved runs never ask: {k:?}"
    );
    assert_eq!(k.get("request"), k.get("grant"), "{k:?}");
    let v = b.audit_verify();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["records"], records.len(), "{v}");
    assert_eq!(b.client().call(Request::Leases).unwrap(), json!([]));
    assert!(
        elapsed < Duration::from_secs(120),
        "load test took {elapsed:?}"
    );
}

// ----- output cap ------------------------------------------------------------------

/// `out` is the end of `yes 0123456789abcdef | head -c …; printf END`.
fn assert_tail_of_yes(out: &str) {
    let body = out
        .strip_suffix("END")
        .unwrap_or_else(|| panic!("not the tail: …{}", &out[out.len().saturating_sub(40)..]));
    let lines: Vec<&str> = body.split('\n').collect();
    assert!(lines.len() > 2, "{} lines", lines.len());
    assert!(
        "0123456789abcdef".ends_with(lines[0]),
        "first line {:?}",
        lines[0]
    );
    assert!("0123456789abcdef".starts_with(lines[lines.len() - 1]));
    for l in &lines[1..lines.len() - 1] {
        assert_eq!(*l, "0123456789abcdef");
    }
}

#[test]
fn output_cap_keeps_the_last_mebibyte_and_says_truncated() {
    let b = broker_with_secret();
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            "yes 0123456789abcdef | head -c 3145728; printf END",
        ],
        &["dev"],
    );
    spec.capture_limit = Some(1 << 20);
    let (events, res) = b.run_approved(spec);
    let v = finished(res);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["truncated"], true);
    let out = v["stdout"].as_str().expect("captured stdout");
    assert!(out.len() <= 1 << 20, "kept {} bytes", out.len());
    assert!(out.len() >= 1 << 19, "kept only {} bytes", out.len());
    assert_tail_of_yes(out);
    // The stream itself was complete.
    assert_eq!(stream_output(&events, "stdout").len(), 3 * (1 << 20) + 3);
}

#[test]
fn output_cap_result_fits_one_frame_with_escaped_bytes_on_both_streams() {
    let b = broker_with_secret();
    // stdout: 3 MiB of text; stderr: 2 MiB of \x01, which JSON writes as
    // \u0001 (6 bytes each): two full captures encode to ~7 MiB.
    let mut spec = b.spec(
        &[
            "sh",
            "-c",
            "yes 0123456789abcdef | head -c 3145728; printf END; \
             head -c 2097152 /dev/zero | tr '\\0' '\\1' >&2; printf ERR >&2",
        ],
        &["dev"],
    );
    spec.capture_limit = Some(1 << 20);
    let (events, res) = b.run_approved(spec);
    let v = finished(res);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["truncated"], true);
    assert!(serde_json::to_vec(&v).unwrap().len() <= protocol::MAX_FRAME);
    let out = v["stdout"].as_str().unwrap();
    let err = v["stderr"].as_str().unwrap();
    assert!(out.len() <= 1 << 20 && err.len() <= 1 << 20);
    assert_tail_of_yes(out);
    assert!(err.ends_with("\u{1}ERR"), "stderr tail lost");
    // Both tails kept, each with a fair share of the frame.
    assert!(out.len() >= 1 << 18, "stdout kept only {} bytes", out.len());
    assert!(
        err.len() >= (1 << 18) / 6,
        "stderr kept only {} bytes",
        err.len()
    );
    assert_eq!(stream_output(&events, "stderr").len(), 2 * (1 << 20) + 3);
}

/// The catalog (an agent's whole view in one answer) holds names, kinds and
/// whether values are set, follows policy visibility and `always_approve`,
/// and never carries a value.
#[test]
fn catalog_lists_visible_names_never_values() {
    let b = TestBroker::unlocked();
    for env in ["app-dev", "app-prod", "hidden"] {
        b.env_create(env);
        b.set(
            env,
            "API_TOKEN",
            format!("catalog-secret-{env}-5f1c9e").as_bytes(),
        );
    }
    b.change(Request::Declare {
        env: "app-dev".into(),
        var: "EMPTY_SLOT".into(),
        description: Some("fill me".into()),
        kind: None,
        source: None,
    })
    .expect("declare");
    b.write_policy(
        "[defaults]\nalways_approve = [\"*-prod\"]\n[clients.cli]\nenvironments = [\"app-*\"]\n",
    );
    let v = b.client().call(Request::Catalog).expect("catalog");
    let text = v.to_string();
    assert!(!text.contains("catalog-secret"), "a value leaked: {text}");
    let envs: Vec<CatalogEnvironment> = serde_json::from_value(v).expect("typed catalog");
    let names: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["app-dev", "app-prod"], "policy hides 'hidden'");
    let dev = &envs[0];
    assert!(!dev.always_approve);
    assert!(envs[1].always_approve, "*-prod always asks");
    let vars: Vec<(&str, bool, &str)> = dev
        .variables
        .iter()
        .map(|v| (v.name.as_str(), v.is_set, v.description.as_str()))
        .collect();
    assert_eq!(
        vars,
        [("API_TOKEN", true, ""), ("EMPTY_SLOT", false, "fill me")]
    );
    assert!(dev.variables.iter().all(|v| v.kind == "env"));
}

// ----- client names: the alias table ---------------------------------------------

/// Registers the test process's connection as an agent session named `name`.
fn agent_named(b: &TestBroker, name: &str) -> custody_broker::client::Client {
    let mut agent = b.client();
    agent
        .call(Request::RegisterSession {
            client_name: name.into(),
            client_version: "1".into(),
            parent_pid: real_parent_pid(),
            cwd: String::new(),
        })
        .expect("register session");
    agent
}

/// Regression: Codex says `codex-mcp-client` in its handshake, the docs say
/// `codex`; a policy written from the docs silently did not apply. Both
/// sides now go through one alias table.
#[test]
fn a_policy_for_codex_applies_to_the_client_named_codex_mcp_client() {
    let b = broker_with_secret();
    b.write_policy(
        "[[clients.codex.preapproved]]\nargv = [\"sh\", \"-c\", \"echo pre\"]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n",
    );
    let mut agent = agent_named(&b, "codex-mcp-client");
    let mut spec = b.spec(&["sh", "-c", "echo pre"], &["dev"]);
    spec.wait_secs = Some(1);
    let v = agent.call(Request::Run(spec)).expect("run");
    assert_eq!(
        v["status"], "finished",
        "the codex table did not apply: {v}"
    );
    let s = b.status();
    assert_eq!(s["sessions"][0]["client_name"], "codex-mcp-client");
    assert_eq!(s["sessions"][0]["policy_name"], "codex");
    // A table under the handshake name is the same client: two are an error.
    let both = "[clients.codex]\nmax_ttl = \"1h\"\n[clients.codex-mcp-client]\nmax_ttl = \"2h\"\n";
    assert!(custody_core::policy::Policy::parse(both).is_err());
}

/// Part of "chosen identity": an agent that calls itself `cli` does not
/// inherit the terminal's pre-approvals.
#[test]
fn an_agent_that_calls_itself_cli_gets_no_terminal_preapproval() {
    let b = broker_with_secret();
    b.write_policy(
        "[[clients.cli.preapproved]]\nargv = [\"sh\", \"-c\", \"echo pre\"]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n",
    );
    let mut agent = agent_named(&b, "cli");
    let mut spec = b.spec(&["sh", "-c", "echo pre"], &["dev"]);
    spec.wait_secs = Some(1);
    let v = agent.call(Request::Run(spec.clone())).expect("run");
    assert_eq!(
        v["status"], "pending",
        "an agent used the terminal's rule: {v}"
    );
    assert_eq!(b.status()["sessions"][0]["policy_name"], "unknown");
    // Next to the claimed name, the kernel's: the agent's executable.
    let exe = b.status()["sessions"][0]["agent_exe"].clone();
    assert!(exe.as_str().is_some_and(|p| p.starts_with('/')), "{exe}");
}

// ----- same-user agent: attack classes (issue "same-user agent, part 1") --------

/// Attack class 10a, "denying the human's own requests": an agent session
/// denies a request a human's terminal is waiting on. Refused; the request
/// stays pending and its run keeps waiting. An agent may still withdraw its
/// own.
#[test]
fn attack_denying_the_humans_own_requests_is_refused() {
    let b = broker_with_secret();
    let h = b.start_run(b.spec(&["sh", "-c", "echo human"], &["dev"]));
    let id = h.wait_pending();
    let mut agent = agent_named(&b, "codex-mcp-client");
    let r = agent.call(Request::Deny {
        request_id: id.clone(),
    });
    assert_eq!(code(&r), "forbidden", "{r:?}");
    assert_eq!(b.request_status(&id)["status"], "pending");
    // Nor by "approving" it from the agent's tree, which used to deny it
    // (review finding): refused, still pending, and not even listed.
    let r = agent.call_with_secret(
        Request::Approve {
            request_id: id.clone(),
            scope: ApprovalScope::Once,
        },
        b"000000",
    );
    assert_eq!(code(&r), "forbidden", "{r:?}");
    assert_eq!(b.request_status(&id)["status"], "pending");
    assert_eq!(agent.call(Request::Pending).unwrap(), json!([]));
    assert!(
        h.try_join(Duration::from_millis(100)).is_none(),
        "the run ended"
    );
    // (This test process is an agent's now, so the human's approval is the
    // CLI tests' business.) Its own request: the agent may withdraw it.
    let mut spec = b.spec(&["true"], &["dev"]);
    spec.wait_secs = Some(1);
    let v = agent.call(Request::Run(spec)).expect("run");
    let own = v["request_id"].as_str().unwrap().to_owned();
    agent
        .call(Request::Deny {
            request_id: own.clone(),
        })
        .expect("deny own");
    // Withdrawn: a cancellation, not a human's denial.
    assert_eq!(b.request_status(&own)["status"], "cancelled");
}

/// Attack class 10b, "declaring loader variables": an agent declares (or
/// generates) `LD_PRELOAD`, `BASH_ENV`, `PATH`, `NODE_OPTIONS` for the human
/// to fill in. Refused, nothing is created; ordinary names still work.
#[test]
fn attack_declaring_loader_variables_is_refused_for_agents() {
    let b = broker_with_secret();
    let mut agent = agent_named(&b, "claude-code");
    for name in [
        "LD_PRELOAD",
        "BASH_ENV",
        "PATH",
        "NODE_OPTIONS",
        "GIT_SSH_COMMAND",
        "ld_audit",
    ] {
        let r = agent.call(Request::Declare {
            env: "dev".into(),
            var: name.into(),
            description: Some("fill me in".into()),
            kind: None,
            source: None,
        });
        assert_eq!(code(&r), "forbidden", "{name}: {r:?}");
        let r = agent.call(Request::Generate {
            env: "dev".into(),
            var: name.into(),
            length: 32,
            alphabet: custody_core::generate::Alphabet::Alnum,
            description: None,
            kind: None,
        });
        assert_eq!(code(&r), "forbidden", "{name}: {r:?}");
    }
    let vars = b
        .client()
        .call(Request::List {
            env: Some("dev".into()),
        })
        .unwrap();
    let names: Vec<&str> = vars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SECRET"], "{vars}");
    agent
        .call(Request::Declare {
            env: "dev".into(),
            var: "STRIPE_KEY".into(),
            description: None,
            kind: None,
            source: None,
        })
        .expect("an ordinary name");
}

/// Attack class 5, "swapped programs": the human approved `date` for a
/// while; the requester then puts its own `date` first in the PATH it
/// passes. The grant does not cover it (a new request shows the agent's
/// program by its absolute path), and the agent's `date` never runs.
#[test]
fn attack_swapped_programs_through_path_need_a_new_approval() {
    use std::os::unix::fs::PermissionsExt;
    let b = broker_with_secret();
    let evil = format!("{}/evil-bin", b.workdir());
    std::fs::create_dir(&evil).unwrap();
    let fake = format!("{evil}/date");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho evil > pwned; printf %s \"$SECRET\" | rev\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut spec = b.spec(&["date"], &["dev"]);
    spec.passthrough
        .insert("PATH".into(), "/usr/bin:/bin".into());
    let h = b.start_run(spec.clone());
    let id = h.wait_pending();
    let pending = b.client().call(Request::Pending).unwrap();
    assert_eq!(pending[0]["program"], "/usr/bin/date", "{pending}");
    b.approve(&id, ApprovalScope::For { secs: 60 }, PIN)
        .unwrap();
    assert_eq!(finished(h.join().1)["exit_code"], 0);

    let mut swapped = spec.clone();
    swapped
        .passthrough
        .insert("PATH".into(), format!("{evil}:/usr/bin:/bin"));
    swapped.wait_secs = Some(1);
    let (_, res) = b.run(swapped);
    let v = res.unwrap();
    assert_eq!(
        v["status"], "pending",
        "the grant covered another program: {v}"
    );
    let pending = b.client().call(Request::Pending).unwrap();
    assert_eq!(pending[0]["program"], fake.as_str(), "{pending}");
    assert!(!std::path::Path::new(&format!("{}/pwned", b.workdir())).exists());
}

/// Attack class 5, with a pre-approval: the human pre-approved `date` in
/// policy; the requester puts its own `date` first in the PATH it passes.
/// The rule means `date` as the broker's own PATH finds it (or the rule's
/// `program`), so the agent's `date` gets no pre-approval: the request waits
/// for a human, and the real `date` still runs without asking.
#[test]
fn attack_swapped_programs_get_no_preapproval() {
    use std::os::unix::fs::PermissionsExt;
    let b = broker_with_secret();
    b.write_policy(
        "[[clients.cli.preapproved]]\nargv = [\"date\"]\nenvironments = [\"dev\"]\nexpires = \"2099-01-01T00:00:00Z\"\n",
    );
    let evil = format!("{}/evil-bin", b.workdir());
    std::fs::create_dir(&evil).unwrap();
    let fake = format!("{evil}/date");
    std::fs::write(&fake, "#!/bin/sh\necho evil > pwned\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut spec = b.spec(&["date"], &["dev"]);
    spec.wait_secs = Some(1);
    let (_, res) = b.run(spec.clone());
    assert_eq!(res.unwrap()["exit_code"], 0, "the rule did not apply");
    let mut swapped = spec.clone();
    let path = swapped.passthrough["PATH"].clone();
    swapped
        .passthrough
        .insert("PATH".into(), format!("{evil}:{path}"));
    let (_, res) = b.run(swapped);
    let v = res.unwrap();
    assert_eq!(
        v["status"], "pending",
        "the agent's date was pre-approved: {v}"
    );
    assert!(!std::path::Path::new(&format!("{}/pwned", b.workdir())).exists());
}

/// Attack class 11, "swapping what was reviewed": the human read
/// `deploy.sh` and approved `sh deploy.sh`; the requester then rewrites it.
/// A timed grant does not cover the edited script, and an edit between the
/// request and the approval stops the run before it starts.
#[test]
fn attack_swapping_a_reviewed_script_is_caught() {
    let b = broker_with_secret();
    let script = format!("{}/deploy.sh", b.workdir());
    std::fs::write(&script, "echo deployed\n").unwrap();
    let spec = b.spec(&["sh", "deploy.sh"], &["dev"]);
    let h = b.start_run(spec.clone());
    let id = h.wait_pending();
    let pending = b.client().call(Request::Pending).unwrap();
    assert_eq!(pending[0]["files"], json!(["deploy.sh"]), "{pending}");
    b.approve(&id, ApprovalScope::For { secs: 60 }, PIN)
        .unwrap();
    let (events, res) = h.join();
    assert_eq!(finished(res)["exit_code"], 0);
    assert_eq!(stream_output(&events, "stdout"), b"deployed\n");

    // Rewritten after the approval: not covered.
    std::fs::write(&script, "echo pwned > pwned; printf %s \"$SECRET\" | rev\n").unwrap();
    let mut again = spec.clone();
    again.wait_secs = Some(1);
    let (_, res) = b.run(again);
    assert_eq!(
        res.unwrap()["status"],
        "pending",
        "the grant covered the edited script"
    );

    // Rewritten between the request and the approval: nothing runs.
    std::fs::write(&script, "echo reviewed\n").unwrap();
    let mut fresh = b.spec(&["sh", "deploy.sh", "--fresh"], &["dev"]);
    fresh.wait_secs = None;
    let h = b.start_run(fresh);
    let id = h.wait_pending();
    std::fs::write(&script, "echo pwned > pwned\n").unwrap();
    b.approve(&id, ApprovalScope::Once, PIN).unwrap();
    let (events, res) = h.join();
    assert_eq!(code(&res), "changed", "{res:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Started { .. })));
    assert!(!std::path::Path::new(&format!("{}/pwned", b.workdir())).exists());
}

/// First hour, item 5: a refused change is audited as refused, not as a
/// change. An oversized `set` and a description with control characters
/// fail, leave the vault as it was, and each appends `vault_change_refused`
/// (with the reason), never `vault_change`. The chain still verifies.
#[test]
fn a_refused_change_is_audited_as_refused() {
    let b = broker_with_secret();
    let before = b.audit_records().len();
    let big = vec![b'x'; custody_core::vault::MAX_VALUE_LEN + 1];
    let r = b.client().call_with_pin(
        Request::Set {
            env: "dev".into(),
            var: "HUGE".into(),
            description: None,
            kind: None,
            bindings: None,
        },
        PIN,
        Some(&big),
    );
    assert_eq!(code(&r), "bad_request", "{r:?}");
    let r = b.change(Request::EnvCreate {
        name: "shop".into(),
        description: "ok\u{1b}[2K".into(),
    });
    assert_eq!(code(&r), "bad_request", "{r:?}");
    let new: Vec<_> = b.audit_records().into_iter().skip(before).collect();
    let kinds: Vec<&str> = new.iter().map(|r| r.event.kind()).collect();
    assert!(!kinds.contains(&"vault_change"), "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "vault_change_refused")
            .count(),
        2,
        "{kinds:?}"
    );
    let envs = b.client().call(Request::EnvList).unwrap();
    assert!(!envs.to_string().contains("\"shop\""), "{envs}");
    assert_eq!(b.audit_verify()["intact"], true);
}

/// First hour, item 7: output shows while the command runs, not when more
/// output (or the end) pushes it out. The command prints a line, then waits
/// for the test to have seen that line: held back, the run would never go on.
#[test]
fn output_shows_while_the_command_is_quiet() {
    let b = TestBroker::unlocked();
    b.env_create("e");
    b.set("e", "TOKEN", b"live-output-secret-value-77");
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo hello; printf 'partial %s' \"$TOKEN\"; while [ ! -e '{}' ]; do sleep 0.02; done; echo; echo bye",
        go.display()
    );
    let mut spec = b.spec(&["sh", "-c", &script], &["e"]);
    spec.timeout_secs = 60;
    let h = b.start_run(spec);
    let id = h.wait_pending();
    b.approve(&id, ApprovalScope::Once, PIN).expect("approve");
    let mut seen = Vec::new();
    h.wait_for("hello and the masked value", |e| {
        if let Event::Output { stream, data } = e
            && stream == "stdout"
        {
            seen.extend(custody_broker::protocol::unb64(&data).unwrap());
        }
        contains(&seen, b"hello\npartial [masked:TOKEN]").then_some(())
    });
    std::fs::write(&go, "").unwrap();
    let (events, res) = h.join();
    res.unwrap();
    let all = stream_output(&events, "stdout");
    assert_eq!(all, b"hello\npartial [masked:TOKEN]\nbye\n");
}

/// First hour, item 8: a human's terminal run gets the terminal's
/// environment (RAILS_ENV, RUSTUP_HOME…) but never a variable that changes
/// how programs load (a process escaped from an agent counts as a terminal
/// and must not slip LD_PRELOAD into a command). What an agent may pass:
/// `lease::tests::an_agent_passes_only_the_short_list`.
#[test]
fn a_terminal_passes_its_environment_but_no_loader_variable() {
    let b = TestBroker::unlocked();
    b.env_create("e");
    b.set("e", "TOKEN", b"env-pass-secret-value-01");
    let script = "echo \"[$RAILS_ENV][$LD_PRELOAD][$NODE_OPTIONS][$HOME]\"";
    let with_env = |mut spec: RunSpec| {
        for (k, v) in [
            ("RAILS_ENV", "test"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("NODE_OPTIONS", "--require /tmp/evil.js"),
            ("HOME", "/home/someone"),
        ] {
            spec.passthrough.insert(k.into(), v.into());
        }
        spec
    };
    let (events, res) = b.run_approved(with_env(b.spec(&["sh", "-c", script], &["e"])));
    res.unwrap();
    assert_eq!(
        stream_output(&events, "stdout"),
        b"[test][][][/home/someone]\n"
    );
}

/// Architecture issue, typed errors: records of things that had already
/// happened were written with `let _ = audit(…)`, so one that came while
/// the vault was locked (a session ending, a grant expiring, a lease killed
/// at lock) was dropped without a trace. It now waits for the next unlock;
/// one that cannot be written is counted in `status` (`audit_unrecorded`).
#[test]
fn what_happens_while_locked_is_audited_at_the_next_unlock() {
    let b = broker_with_secret();
    let agent = agent_named(&b, "codex");
    b.client().call(Request::Lock).unwrap();
    drop(agent); // the session ends while the vault is locked
    let until = Instant::now() + Duration::from_secs(10);
    while b.status()["sessions"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
    {
        assert!(Instant::now() < until, "the session never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.unlock();
    let records = b.audit_records();
    let kinds: Vec<&str> = records.iter().map(|r| r.event.kind()).collect();
    let lock = kinds.iter().rposition(|k| *k == "lock").unwrap();
    let unlock = kinds.iter().rposition(|k| *k == "unlock").unwrap();
    assert!(
        kinds[unlock..].contains(&"session_end"),
        "the session's end was dropped: {kinds:?}"
    );
    assert!(lock < unlock);
    assert_eq!(b.status()["audit_unrecorded"], 0);
    assert_eq!(b.audit_verify()["intact"], true);
}

/// Architecture issue, typed protocol: a `watch` stream's `pending` event
/// carries what the approver is shown (the queue re-listed every pending
/// request on every event), and the same as `approve --list` has; never a
/// value.
#[test]
fn a_watched_pending_event_carries_the_request() {
    let b = broker_with_secret();
    let mut watcher = b.client();
    watcher.call(Request::Watch).unwrap();
    let run = b.start_run(b.spec(&["sh", "-c", "echo $SECRET"], &["dev"]));
    let id = run.wait_pending();
    let request = loop {
        match watcher.read().unwrap() {
            protocol::ServerFrame::Event {
                event:
                    Event::Pending {
                        request_id,
                        request: Some(r),
                        ..
                    },
                ..
            } if request_id == id => break r,
            _ => continue,
        }
    };
    assert_eq!(request.id, id);
    assert_eq!(request.argv, ["sh", "-c", "echo $SECRET"]);
    assert_eq!(request.variables, ["dev/SECRET"]);
    assert!(request.program.ends_with("/sh"), "{}", request.program);
    let listed = b.client().call(Request::Pending).unwrap();
    assert_eq!(listed[0], serde_json::to_value(&*request).unwrap());
    assert!(!contains(
        serde_json::to_string(&*request).unwrap().as_bytes(),
        SECRET
    ));
    b.client().call(Request::Deny { request_id: id }).unwrap();
    let _ = run.join();
}
