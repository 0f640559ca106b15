//! Test harness: a real broker on a temporary socket, in this process.
//!
//! Every test gets its own `$CUSTODY_HOME` and runtime directory, so state
//! (agent processes, grants, PIN failures) never leaks between tests. The
//! broker runs `daemon::run` on its own tokio runtime in a background thread;
//! tests talk to it with the blocking [`Client`], exactly as the CLI does.

#![allow(dead_code)] // not every test file uses every helper

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use custody_broker::BrokerConfig;
use custody_broker::client::{Client, ClientError};
use custody_broker::daemon;
use custody_broker::protocol::{self, ApprovalScope, ClientInfo, Event, Request, RunSpec};
use custody_core::audit::{self, AuditEvent, AuditHead, AuditRecord};
use custody_core::crypto::{KdfParams, Key, Subkey};
use custody_core::vault::Vault;
use serde_json::Value;

/// The vault passphrase.
pub const PASS: &[u8] = b"correct horse battery staple";
/// The approval PIN.
pub const PIN: &[u8] = b"424242";
/// A PIN that is not the PIN.
pub const WRONG_PIN: &[u8] = b"000000";
/// Upper bound for anything a test waits for (events, results).
pub const WAIT: Duration = Duration::from_secs(30);

/// A broker running in this process on a temporary socket. Dropping it
/// shuts the broker down (which ends every lease) and joins its thread.
pub struct TestBroker {
    dir: tempfile::TempDir,
    pub home: PathBuf,
    pub runtime: PathBuf,
    pub socket: PathBuf,
    kill_grace: Duration,
    running: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestBroker {
    /// A new vault and a broker serving it (still locked).
    pub fn start() -> TestBroker {
        TestBroker::start_with_grace(Duration::from_secs(1))
    }

    /// [`start`](Self::start) with another SIGTERM-to-SIGKILL grace.
    pub fn start_with_grace(kill_grace: Duration) -> TestBroker {
        let dir = tempfile::Builder::new()
            .prefix("cb")
            .tempdir()
            .expect("temp dir");
        let home = dir.path().join("home");
        let runtime = dir.path().join("run");
        std::fs::create_dir_all(&home).expect("home");
        let vault = Vault::create(
            &home.join(custody_core::paths::VAULT_FILE),
            PASS,
            PIN,
            KdfParams::INSECURE_FAST,
        )
        .expect("create vault");
        drop(vault);
        let socket = runtime.join(custody_broker::paths::SOCKET_FILE);
        let mut b = TestBroker {
            dir,
            home,
            runtime,
            socket,
            kill_grace,
            running: None,
        };
        b.launch();
        b
    }

    /// A started, unlocked broker.
    pub fn unlocked() -> TestBroker {
        let b = TestBroker::start();
        b.unlock();
        b
    }

    /// Starts the broker (again) on the same home and runtime directory.
    pub fn launch(&mut self) {
        assert!(self.running.is_none(), "broker already running");
        let mut cfg = BrokerConfig::new(self.home.clone(), self.runtime.clone());
        cfg.kill_grace = self.kill_grace;
        // Failed revocations retry within a second or two in tests.
        cfg.revoke_retry_max = Duration::from_secs(1);
        // This test process has children of its own (PostgreSQL servers):
        // containment, which kills every child the broker did not start,
        // is for a process that is the broker alone. The CLI tests run the
        // real daemon with it (`same_user::attack_escaping_the_deadline`).
        cfg.contain = false;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("test-broker".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener = match daemon::bind(&cfg) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    daemon::run(cfg, listener, shutdown)
                        .await
                        .expect("broker serve");
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("broker thread");
        ready_rx
            .recv_timeout(WAIT)
            .expect("broker did not start")
            .expect("bind");
        self.running = Some((stop_tx, join));
    }

    /// Shuts the broker down (locking it, ending every lease) and waits for
    /// it; the home directory stays.
    pub fn stop(&mut self) {
        if let Some((stop, join)) = self.running.take() {
            let _ = stop.send(());
            let _ = join.join();
        }
    }

    pub fn vault_path(&self) -> PathBuf {
        self.home.join(custody_core::paths::VAULT_FILE)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.home.join(audit::AUDIT_FILE)
    }

    /// A working directory for runs (absolute, exists).
    pub fn workdir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A fresh connection, as the CLI makes it.
    pub fn client(&self) -> Client {
        Client::connect(
            &self.socket,
            ClientInfo {
                kind: "cli".into(),
                name: "custody".into(),
                version: "test".into(),
            },
        )
        .expect("connect to the broker")
    }

    pub fn unlock(&self) {
        let v = self
            .client()
            .call_with_secret(Request::Unlock, PASS)
            .expect("unlock");
        assert_eq!(v["unlocked"], true, "{v}");
    }

    pub fn status(&self) -> Value {
        self.client().call(Request::Status).expect("status")
    }

    /// A change as the human's terminal makes it: the PIN proven.
    pub fn change(&self, req: Request) -> Result<Value, ClientError> {
        self.client().call_with_pin(req, PIN, None)
    }

    pub fn env_create(&self, name: &str) {
        self.change(Request::EnvCreate {
            name: name.into(),
            description: String::new(),
        })
        .expect("env create");
    }

    pub fn set(&self, env: &str, var: &str, value: &[u8]) {
        self.client()
            .call_with_pin(
                Request::Set {
                    env: env.into(),
                    var: var.into(),
                    description: None,
                    kind: None,
                    bindings: None,
                },
                PIN,
                Some(value),
            )
            .expect("set");
    }

    /// Seals `text` as the policy in force, with the PIN, as
    /// `custody policy apply` does (the broker must be unlocked).
    pub fn write_policy(&self, text: &str) {
        self.client()
            .call_with_pin(
                Request::PolicyApply {
                    text: text.to_owned(),
                },
                PIN,
                None,
            )
            .expect("policy apply");
    }

    /// A run spec: `argv` in the work dir with `environments`, PATH handed
    /// through, 30 s deadline.
    pub fn spec(&self, argv: &[&str], environments: &[&str]) -> RunSpec {
        let mut passthrough = BTreeMap::new();
        passthrough.insert(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        );
        RunSpec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            cwd: self.workdir(),
            environments: environments.iter().map(|s| (*s).to_owned()).collect(),
            only: None,
            timeout_secs: 30,
            passthrough,
            capture_limit: None,
            wait_secs: None,
            pty: None,
        }
    }

    /// Runs `spec` on a fresh connection, returning its events and result.
    pub fn run(&self, spec: RunSpec) -> (Vec<Event>, Result<Value, ClientError>) {
        let mut c = self.client();
        let mut events = Vec::new();
        let res = c.call_streaming(Request::Run(spec), &mut |e| events.push(e));
        (events, res)
    }

    /// Starts `spec` on its own thread and connection; events arrive on the
    /// handle as they happen.
    pub fn start_run(&self, spec: RunSpec) -> RunHandle {
        let mut c = self.client();
        let (ev_tx, ev_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            let res = c.call_streaming(Request::Run(spec), &mut |e| {
                let _ = ev_tx.send(e.clone());
                events.push(e);
            });
            let _ = done_tx.send((events, res));
        });
        RunHandle {
            events: ev_rx,
            done: done_rx,
        }
    }

    /// Approves request `id` from a separate connection.
    pub fn approve(
        &self,
        id: &str,
        scope: ApprovalScope,
        pin: &[u8],
    ) -> Result<Value, ClientError> {
        self.client().call_with_pin(
            Request::Approve {
                request_id: id.into(),
                scope,
            },
            pin,
            None,
        )
    }

    /// Runs `spec`, approving its request once with the right PIN.
    pub fn run_approved(&self, spec: RunSpec) -> (Vec<Event>, Result<Value, ClientError>) {
        let h = self.start_run(spec);
        let id = h.wait_pending();
        self.approve(&id, ApprovalScope::Once, PIN)
            .expect("approve");
        h.join()
    }

    /// The state of a request (`pending`, `approved`, `denied`, ...).
    pub fn request_status(&self, id: &str) -> Value {
        self.client()
            .call(Request::RequestStatus {
                request_id: id.into(),
            })
            .expect("request status")
    }

    /// `AuditVerify` through the broker.
    pub fn audit_verify(&self) -> Value {
        self.client()
            .call(Request::AuditVerify)
            .expect("audit verify")
    }

    /// Every record of the audit log (unauthenticated read).
    pub fn audit_records(&self) -> Vec<AuditRecord> {
        audit::read(&self.audit_path(), None)
            .expect("open audit log")
            .map(|r| r.expect("audit record"))
            .collect()
    }

    /// The pid of running lease `lease_id`, from `Leases`.
    pub fn lease_pid(&self, lease_id: &str) -> u32 {
        let leases = self.client().call(Request::Leases).expect("leases");
        leases
            .as_array()
            .expect("lease list")
            .iter()
            .find(|l| l["lease_id"] == lease_id)
            .and_then(|l| l["pid"].as_u64())
            .unwrap_or_else(|| panic!("lease {lease_id} not in {leases}")) as u32
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A run in progress on its own thread.
pub struct RunHandle {
    pub events: mpsc::Receiver<Event>,
    done: mpsc::Receiver<(Vec<Event>, Result<Value, ClientError>)>,
}

impl RunHandle {
    /// Waits for the first event that `pick` accepts.
    pub fn wait_for<T>(&self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(_) => panic!("no {what} event within {WAIT:?}"),
            }
        }
    }

    /// Waits for the pending event; returns the request id.
    pub fn wait_pending(&self) -> String {
        self.wait_for("pending", |e| match e {
            Event::Pending { request_id, .. } => Some(request_id),
            _ => None,
        })
    }

    /// Waits for the started event; returns the lease id.
    pub fn wait_started(&self) -> String {
        self.wait_for("started", |e| match e {
            Event::Started { lease_id } => Some(lease_id),
            _ => None,
        })
    }

    /// Waits for the run to end (bounded).
    pub fn join(self) -> (Vec<Event>, Result<Value, ClientError>) {
        self.done
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the run did not end within {WAIT:?}"))
    }

    /// The result, if the run ended within `t`.
    pub fn try_join(&self, t: Duration) -> Option<(Vec<Event>, Result<Value, ClientError>)> {
        self.done.recv_timeout(t).ok()
    }
}

/// The masked output of one stream, from a run's events.
pub fn stream_output(events: &[Event], stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let Event::Output { stream: s, data } = e
            && s == stream
        {
            out.extend(protocol::unb64(data).expect("output is base64"));
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
#[allow(unused_imports)] // not every test binary uses it
pub use custody_testkit::contains;

/// The error code of a failed call (panics on success).
pub fn code(res: &Result<Value, ClientError>) -> String {
    match res {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a broker error code, got {e}"))
            .to_owned(),
    }
}

/// Live (non-zombie) processes whose process group is `pgid`, from /proc.
/// Zombies hold neither memory nor environment; this VM's init does not reap
/// orphans, so they can linger after a group is killed.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // state ppid pgrp
        let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        if pgrp.parse::<u32>().ok() == Some(pgid) && *state != "Z" && *state != "X" {
            out.push(pid);
        }
    }
    out
}

/// Polls until no live process of group `pgid` remains or `until` passes;
/// returns what is left.
pub fn wait_group_gone(pgid: u32, until: Instant) -> Vec<u32> {
    loop {
        let left = live_group_members(pgid);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This process's real parent pid (field 4 of /proc/self/stat).
pub fn real_parent_pid() -> u32 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

/// Opens the vault (broker stopped) for its audit head and audit key.
pub fn audit_key_and_head(vault: &Path) -> (Key, Option<AuditHead>) {
    let v = Vault::unlock(vault, PASS).expect("open vault");
    let head = v.audit_head().expect("audit head");
    (v.subkey(Subkey::Audit), head)
}

/// Counts the records of each event kind.
pub fn kinds(records: &[AuditRecord]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.event.kind()).or_insert(0) += 1;
    }
    m
}

/// `AuditEvent::PinFailure` fields of every pin failure record.
pub fn pin_failures(records: &[AuditRecord]) -> Vec<(u32, bool)> {
    records
        .iter()
        .filter_map(|r| match r.event {
            AuditEvent::PinFailure {
                attempt,
                locked_out,
            } => Some((attempt, locked_out)),
            _ => None,
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*), for the fuzz-style test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
