//! The broker's state and every operation on it.
//!
//! One `std::sync::Mutex` guards the state; it is never held across an
//! `.await`. Slow work (the passphrase KDF, PIN checks, processes) runs
//! outside it. Every operation that changes something is audited first and
//! refused if the audit record cannot be written (fail closed, G6).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use custody_core::audit::{self, AuditChain, AuditEvent, AuditHead};
use custody_core::crypto::Subkey;
use custody_core::names::EnvName;
use custody_core::policy::Policy;
use custody_core::vault::{Vault, VaultError};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};
use zeroize::Zeroizing;

use crate::grants::{Grant, Requester, Scope, new_id};
use crate::lease::EndReason;
use crate::protocol::{ClientInfo, Event, RunSpec, WireError};
use crate::{procs, reaper};

mod dynamic;
mod leases;
pub mod pin;
mod policy;
mod requests;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `$CUSTODY_HOME`: vault, policy, audit log, lease records.
    pub home: PathBuf,
    /// Socket and ephemeral files.
    pub runtime_dir: PathBuf,
    /// Lock after this long without a request.
    pub idle_lock: Duration,
    /// Most simultaneous connections from agents' process trees.
    pub max_connections: usize,
    /// Connections kept for everyone else (the human's terminals), on top
    /// of `max_connections`: agents cannot use them up (G13).
    pub reserved_connections: usize,
    /// Most simultaneous connections from one process.
    pub max_per_process: usize,
    /// How long a new connection has to say hello.
    pub hello_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Output kept for a run's result, per stream (tail).
    pub output_cap: usize,
    /// Wrong PINs in a row that lock the vault.
    pub max_pin_failures: u32,
    /// How long a request waits for a human before it expires.
    pub pending_lifetime: Duration,
    /// Longest pause between retries of a failed credential revocation.
    pub revoke_retry_max: Duration,
    /// Make the broker process a child subreaper and kill every child it
    /// did not start itself (leftovers of ended leases): see
    /// [`crate::contain`]. Only for a process that is the broker alone (a
    /// test embedding the broker has children of its own).
    pub contain: bool,
}

impl BrokerConfig {
    /// Defaults for a home and runtime directory.
    pub fn new(home: PathBuf, runtime_dir: PathBuf) -> Self {
        BrokerConfig {
            home,
            runtime_dir,
            idle_lock: Duration::from_secs(8 * 3600),
            max_connections: 256,
            reserved_connections: 64,
            max_per_process: 64,
            hello_timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(5),
            output_cap: 1 << 20,
            max_pin_failures: 5,
            pending_lifetime: Duration::from_secs(15 * 60),
            revoke_retry_max: Duration::from_secs(60),
            contain: true,
        }
    }

    fn vault_path(&self) -> PathBuf {
        self.home.join(custody_core::paths::VAULT_FILE)
    }

    fn audit_path(&self) -> PathBuf {
        self.home.join(audit::AUDIT_FILE)
    }
}

/// A connection's identity: what the kernel says (uid, pid) and what the
/// client says (kind, name).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Peer uid (already checked equal to ours).
    pub uid: u32,
    /// Peer pid, from SO_PEERCRED.
    pub pid: Option<u32>,
    /// From `hello`.
    pub client: ClientInfo,
    /// Set once the connection registered an agent session.
    pub session: Option<String>,
}

/// A registered agent session (one `custody mcp` process).
#[derive(Debug, Clone)]
struct Session {
    /// As the handshake said (untrusted, shown).
    client_name: String,
    /// The canonical name policy applies (`custody_core::clients`).
    policy_name: String,
    client_version: String,
    /// The agent client's executable, from `/proc` (what the kernel says,
    /// next to the name the client claims); `None` when unreadable.
    agent_exe: Option<String>,
    mcp_pid: u32,
    /// The agent client's pid, or under `custody agent` the launcher's.
    agent_pid: u32,
    /// Under a `custody agent` launcher that applies the sandbox.
    sandboxed: bool,
    started: SystemTime,
}

/// An agent a human started with `custody agent`: the launcher process,
/// which every process of that agent descends from (it is their subreaper).
struct Launcher {
    /// The human's name for the agent, canonical (its policy name).
    name: String,
    sandboxed: bool,
    /// The protections the kernel enforces (from the launcher's probe).
    enforced: Vec<String>,
    started: SystemTime,
}

/// What became of a pending request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approved; run under this grant.
    Approved(String),
    /// A human (or policy) said no.
    Denied(&'static str),
    /// The requester cancelled.
    Cancelled,
    /// Nobody decided in time.
    Expired,
    /// The vault was locked.
    Locked,
}

impl Decision {
    fn status(&self) -> &'static str {
        match self {
            Decision::Approved(_) => "approved",
            Decision::Denied(_) => "denied",
            Decision::Cancelled => "cancelled",
            Decision::Expired => "expired",
            Decision::Locked => "locked",
        }
    }
}

/// A request waiting for a human.
struct Pending {
    requester: Requester,
    spec: RunSpec,
    scope: Scope,
    always_approve: bool,
    created: Instant,
    created_at: SystemTime,
    notify: Option<oneshot::Sender<Decision>>,
}

/// A running lease, as the state knows it.
pub(crate) struct LeaseEntry {
    grant_id: String,
    requester: Requester,
    pid: u32,
    argv: Vec<String>,
    started_at: SystemTime,
    deadline_at: SystemTime,
    pub(crate) stop: watch::Sender<Option<EndReason>>,
}

pub(crate) struct State {
    pub(crate) vault: Option<Vault>,
    audit: Option<AuditChain>,
    pin_failures: u32,
    sessions: BTreeMap<String, Session>,
    /// Agent processes ever seen (pid → start ticks), kept after their
    /// session ends: a process descending from one never approves (G3).
    agents: HashMap<u32, u64>,
    /// Policy names of agent processes known from the sealed record of a
    /// previous broker, until their sessions register again (G9: killing
    /// the broker does not make an agent's children terminals).
    recorded: HashMap<u32, String>,
    /// `custody agent` launchers by pid (their start ticks are in `agents`).
    launchers: HashMap<u32, Launcher>,
    pending: BTreeMap<String, Pending>,
    decided: BTreeMap<String, (Decision, Instant)>,
    pub(crate) grants: BTreeMap<String, Grant>,
    pub(crate) leases: BTreeMap<String, LeaseEntry>,
    deferred: Vec<AuditEvent>,
    /// Records of things that had already happened that could not be
    /// written (see [`State::audit_after`]), for `custody status`.
    unrecorded: u64,
    last_activity: Instant,
    /// The last [`RECENT_LEAKS`] leaks the post-run check found, for
    /// `custody status` (names and paths only).
    recent_leaks: VecDeque<Value>,
    /// Dynamic credentials by lease, from planning until revoked.
    pub(crate) dynamic: BTreeMap<String, crate::sources::DynamicEntry>,
    /// Agents' scans in the current minute: agent pid → (window start,
    /// scans, bytes). See [`AGENT_SCANS_PER_MINUTE`].
    scans: HashMap<u32, (Instant, u32, u64)>,
    /// The policy sealed in the vault, parsed at unlock and replaced by
    /// `policy apply` (never read from a file the agent could write, G9).
    policy: Arc<Policy>,
}

/// Scans one agent may run per minute, and bytes it may have scanned in
/// that minute: enough for a commit hook, too few to turn `scan` into a
/// fast oracle for guesses at a value (each scan answers only "file F holds
/// variable V" and is audited).
pub const AGENT_SCANS_PER_MINUTE: u32 = 10;
/// See [`AGENT_SCANS_PER_MINUTE`].
pub const AGENT_SCAN_BYTES_PER_MINUTE: u64 = 256 << 20;

/// Records kept for the next unlock while the vault is locked.
const MAX_DEFERRED: usize = 10_000;

/// Leak reports kept for `custody status`.
const RECENT_LEAKS: usize = 50;

/// The broker.
pub struct Broker {
    pub(crate) cfg: BrokerConfig,
    state: Mutex<State>,
    events: broadcast::Sender<(u64, Event)>,
    /// Masking engines by the values they mask ([`crate::engines`]).
    pub(crate) engines: crate::engines::Engines,
}

/// Converts a vault error into what the client sees: names only, with the
/// next step.
pub fn vault_error(e: VaultError) -> WireError {
    WireError::new(vault_error_code(&e), e.to_string())
}

/// The wire code of a vault error (also the reason a refusal is audited with).
pub fn vault_error_code(e: &VaultError) -> &'static str {
    match e {
        VaultError::NotFound { .. } => "no_vault",
        VaultError::WrongPassphrase => "wrong_passphrase",
        VaultError::NoSuchEnvironment(_) | VaultError::NoSuchVariable { .. } => "not_found",
        VaultError::EnvironmentExists(_) => "exists",
        VaultError::NotSet { .. } => "not_set",
        VaultError::Name(_)
        | VaultError::ValueTooLarge { .. }
        | VaultError::DescriptionTooLarge { .. }
        | VaultError::DescriptionControl { .. }
        | VaultError::BreaksEveryRun { .. }
        | VaultError::PinTooShort { .. } => "bad_request",
        VaultError::Tampered { .. } | VaultError::Corrupt { .. } => "vault_damaged",
        _ => "vault_error",
    }
}

impl From<VaultError> for WireError {
    fn from(e: VaultError) -> WireError {
        vault_error(e)
    }
}

fn locked() -> WireError {
    WireError::new(
        "locked",
        "the vault is locked: ask the user to run `custody unlock`",
    )
}

fn bad(msg: impl Into<String>) -> WireError {
    WireError::new("bad_request", msg)
}

fn env_name(raw: &str) -> Result<EnvName, WireError> {
    EnvName::new(raw).map_err(|e| bad(e.to_string()))
}

fn rfc3339(t: SystemTime) -> String {
    audit::format_rfc3339(t)
}

impl State {
    fn vault(&mut self) -> Result<&mut Vault, WireError> {
        self.vault.as_mut().ok_or_else(locked)
    }

    /// Appends an audit record and stores the new head in the vault. An error
    /// here means the caller must not go on (fail closed).
    fn audit(&mut self, event: AuditEvent) -> Result<(), WireError> {
        let chain = self.audit.as_mut().ok_or_else(locked)?;
        let head = chain.append(&event).map_err(|e| {
            WireError::new(
                "audit_failed",
                format!("the audit log cannot be written ({e}); nothing was done"),
            )
        })?;
        if let Some(v) = self.vault.as_ref() {
            v.set_audit_head(&head).map_err(vault_error)?;
        }
        Ok(())
    }

    /// Records `event` before what it describes happens (fail closed); while
    /// the vault is locked, at the next unlock (at most [`MAX_DEFERRED`]).
    fn audit_or_defer(&mut self, event: AuditEvent) -> Result<(), WireError> {
        if self.audit.is_some() {
            return self.audit(event);
        }
        if self.deferred.len() >= MAX_DEFERRED {
            return Err(WireError::new(
                "audit_failed",
                "too many records wait for the vault to be unlocked: run `custody unlock`",
            ));
        }
        self.deferred.push(event);
        Ok(())
    }

    /// Records something that has already happened (a lease ended, a grant
    /// expired, a revoke, a wrong PIN), which no failure can undo. Its
    /// record is never dropped silently: while the vault is locked it waits
    /// for the next unlock (at most [`MAX_DEFERRED`]); a record that cannot
    /// be written is logged by kind and counted (`audit_unrecorded` in
    /// `custody status`).
    pub(crate) fn audit_after(&mut self, event: AuditEvent) {
        if self.audit.is_none() {
            if self.deferred.len() < MAX_DEFERRED {
                self.deferred.push(event);
            } else {
                self.unrecorded += 1;
            }
            return;
        }
        let kind = event.kind();
        if let Err(e) = self.audit(event) {
            self.unrecorded += 1;
            eprintln!(
                "custody daemon: the audit record `{kind}` could not be written: {}",
                e.message
            );
        }
    }

    fn is_agent_process(&self, pid: u32) -> Option<u32> {
        if self.agents.is_empty() {
            return None;
        }
        // Walk up one parent at a time and stop at the first agent process:
        // a `custody mcp` connection is found with a single /proc read.
        let mut cur = pid;
        for _ in 0..procs::MAX_DEPTH {
            let (ppid, start) = procs::stat(cur)?;
            if self.agents.get(&cur) == Some(&start) {
                return Some(cur);
            }
            if ppid == 0 || ppid == cur {
                return None;
            }
            cur = ppid;
        }
        None
    }

    /// Seals the agent processes still alive into the vault (pid, start,
    /// policy name), so a broker started after this one was killed still
    /// knows them. Best effort: without an open vault it waits for unlock.
    fn record_agents(&mut self) {
        let Some(vault) = self.vault.as_ref() else {
            return;
        };
        let mut out = Vec::new();
        self.agents
            .retain(|pid, start| procs::same_process(*pid, *start));
        let agents = &self.agents;
        self.launchers.retain(|pid, _| agents.contains_key(pid));
        for (pid, start) in &self.agents {
            if let Some(l) = self.launchers.get(pid) {
                out.push(json!([pid, start, l.name, l.sandboxed]));
                continue;
            }
            let name = self
                .session_for_agent(*pid)
                .map(|s| s.policy_name.clone())
                .or_else(|| self.recorded.get(pid).cloned())
                .unwrap_or_else(|| "agent".to_owned());
            out.push(json!([pid, start, name]));
        }
        if let Ok(bytes) = serde_json::to_vec(&out) {
            let _ = vault.set_agents_record(&bytes);
        }
    }

    /// Takes in the agent processes a previous broker recorded, those still
    /// the same processes (pid and start time): their descendants are that
    /// agent's until its session registers again.
    fn recall_agents(&mut self) {
        let Some(bytes) = self
            .vault
            .as_ref()
            .and_then(|v| v.agents_record().ok().flatten())
        else {
            return;
        };
        /// An agent process, or (with the sandbox flag) a launcher.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Recorded {
            Launcher(u32, u64, String, bool),
            Agent(u32, u64, String),
        }
        let Ok(list) = serde_json::from_slice::<Vec<Recorded>>(&bytes) else {
            return;
        };
        for entry in list.into_iter().take(4096) {
            let (pid, start, name, launcher) = match entry {
                Recorded::Launcher(p, s, n, sandboxed) => (p, s, n, Some(sandboxed)),
                Recorded::Agent(p, s, n) => (p, s, n, None),
            };
            if pid > 1 && procs::same_process(pid, start) {
                self.agents.insert(pid, start);
                let name = custody_core::clients::canonical(&name);
                if let Some(sandboxed) = launcher {
                    self.launchers.insert(
                        pid,
                        Launcher {
                            name,
                            sandboxed,
                            enforced: Vec::new(),
                            started: SystemTime::now(),
                        },
                    );
                } else {
                    self.recorded.insert(pid, name);
                }
            }
        }
    }

    /// The `custody agent` launcher `pid` descends from (or is), if any: a
    /// registered one, or one this broker has not heard from (it started
    /// after the launcher, and the launcher has not re-registered yet),
    /// which is taken in as an agent, unsandboxed until it registers.
    fn launcher_of(&mut self, pid: u32) -> Option<u32> {
        // The outermost agent or launcher above `pid` decides: a launcher
        // counts only when no agent is above it (a process in an agent's
        // tree that calls itself `custody agent --name X` is still that
        // agent's, whatever X it picks).
        let mut outermost: Option<(u32, u64, Option<String>)> = None;
        let mut cur = pid;
        for _ in 0..procs::MAX_DEPTH {
            let Some((ppid, start)) = procs::stat(cur) else {
                break;
            };
            if self.agents.get(&cur) == Some(&start) {
                outermost = Some((cur, start, None));
            } else if let Some(name) = procs::launcher_name(cur) {
                outermost = Some((cur, start, Some(name)));
            }
            if ppid == 0 || ppid == cur {
                break;
            }
            cur = ppid;
        }
        let (pid, start, name) = outermost?;
        if let Some(name) = name {
            self.agents.insert(pid, start);
            self.launchers.insert(
                pid,
                Launcher {
                    name,
                    sandboxed: false,
                    enforced: Vec::new(),
                    started: SystemTime::now(),
                },
            );
        }
        self.launchers.contains_key(&pid).then_some(pid)
    }

    fn session_for_agent(&self, agent_pid: u32) -> Option<&Session> {
        self.sessions
            .values()
            .find(|s| s.agent_pid == agent_pid || s.mcp_pid == agent_pid)
    }
}

impl Broker {
    /// Makes a broker: reaps what a previous broker left running (G5) and
    /// keeps the reaper's audit records for the next unlock.
    pub fn new(cfg: BrokerConfig) -> Arc<Broker> {
        let report = reaper::reap(&cfg.home, &cfg.runtime_dir);
        let deferred =
            report
                .reaped
                .into_iter()
                .map(|r| AuditEvent::Reaped {
                    lease_id: r.record.id,
                    pgid: r.killed.then_some(r.record.pid),
                    files_removed: 1,
                    credentials_revoked: 0,
                })
                .chain(report.rejected.into_iter().map(|lease_id| {
                    AuditEvent::LeaseRecordRejected {
                        lease_id,
                        place: "file".into(),
                    }
                }))
                .collect();
        let (events, _) = broadcast::channel(256);
        Arc::new(Broker {
            cfg,
            state: Mutex::new(State {
                vault: None,
                audit: None,
                pin_failures: 0,
                sessions: BTreeMap::new(),
                agents: HashMap::new(),
                recorded: HashMap::new(),
                launchers: HashMap::new(),
                pending: BTreeMap::new(),
                decided: BTreeMap::new(),
                grants: BTreeMap::new(),
                leases: BTreeMap::new(),
                deferred,
                unrecorded: 0,
                last_activity: Instant::now(),
                recent_leaks: VecDeque::new(),
                dynamic: BTreeMap::new(),
                policy: Arc::new(Policy::default()),
                scans: HashMap::new(),
            }),
            events,
            engines: crate::engines::Engines::default(),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not wedge the broker forever;
        // the state is still consistent at every await-free step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether agent `pid` may scan now (see [`AGENT_SCANS_PER_MINUTE`]);
    /// counts the scan.
    pub(crate) fn scan_allowance(&self, pid: u32) -> Result<(), WireError> {
        let mut st = self.state();
        let now = Instant::now();
        let entry = st.scans.entry(pid).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0, 0);
        }
        if entry.1 >= AGENT_SCANS_PER_MINUTE || entry.2 >= AGENT_SCAN_BYTES_PER_MINUTE {
            let wait = 60u64.saturating_sub(now.duration_since(entry.0).as_secs());
            return Err(WireError::new(
                "rate_limited",
                format!(
                    "agents may scan {AGENT_SCANS_PER_MINUTE} times and {} MiB a minute: try again in {wait} s",
                    AGENT_SCAN_BYTES_PER_MINUTE >> 20
                ),
            ));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Records an agent's scan: its bytes count toward the minute, and it
    /// is audited (fail closed: no record, no answer).
    pub(crate) fn scanned_by_agent(
        &self,
        who: &Requester,
        pid: u32,
        path: &str,
        bytes: u64,
        findings: usize,
    ) -> Result<(), WireError> {
        let mut st = self.state();
        if let Some(e) = st.scans.get_mut(&pid) {
            e.2 = e.2.saturating_add(bytes);
        }
        st.audit(AuditEvent::AgentScan {
            by: who.describe(),
            path: path.to_owned(),
            bytes,
            findings,
        })
    }

    /// Whether the vault is locked (no key held).
    pub fn is_locked(&self) -> bool {
        self.state().vault.is_none()
    }

    /// The policy in force (the sealed one; the default while locked).
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.state().policy)
    }

    /// Subscribes to pushed events.
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Event)> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send((0, event));
    }

    /// Notes activity (for the idle lock).
    pub fn touch(&self) {
        self.state().last_activity = Instant::now();
    }

    /// Periodic housekeeping: idle lock, expired requests and grants.
    pub async fn tick(self: &Arc<Self>) {
        let idle = {
            let st = self.state();
            st.vault.is_some() && st.last_activity.elapsed() >= self.cfg.idle_lock
        };
        if idle {
            self.lock(audit::LockReason::Idle).await;
        }
        let mut st = self.state();
        let now = Instant::now();
        let expired: Vec<String> = st
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.created) >= self.cfg.pending_lifetime)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            st.audit_after(AuditEvent::RequestExpired {
                request_id: id.clone(),
            });
            if let Some(mut p) = st.pending.remove(&id)
                && let Some(n) = p.notify.take()
            {
                let _ = n.send(Decision::Expired);
            }
            st.decided.insert(id, (Decision::Expired, now));
        }
        let gone: Vec<String> = st
            .grants
            .iter()
            .filter(|(_, g)| now >= g.expires)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            st.grants.remove(&id);
            st.audit_after(AuditEvent::GrantExpired { grant_id: id });
        }
        // Keep the decided-request memory bounded.
        while st.decided.len() > 1024 {
            let oldest = st
                .decided
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => st.decided.remove(&k),
                None => break,
            };
        }
    }

    // ----- lock state ---------------------------------------------------

    /// Broker state for `custody status`.
    pub fn status(&self) -> Value {
        let st = self.state();
        let leases: Vec<Value> = st
            .leases
            .iter()
            .map(|(id, l)| {
                json!({"lease_id": id, "grant_id": l.grant_id, "pid": l.pid, "argv": l.argv,
                       "requester": l.requester.describe(), "started_at": rfc3339(l.started_at),
                       "deadline": rfc3339(l.deadline_at)})
            })
            .collect();
        json!({
            "pid": std::process::id(),
            "locked": st.vault.is_none(),
            "vault": self.cfg.vault_path(),
            "audit_unrecorded": st.unrecorded,
            "sessions": st.sessions.iter().map(|(id, s)| json!({
                "session_id": id, "client_name": s.client_name, "policy_name": s.policy_name,
                "client_version": s.client_version, "agent_exe": s.agent_exe,
                "pid": s.mcp_pid, "agent_pid": s.agent_pid, "sandboxed": s.sandboxed,
                "started_at": rfc3339(s.started)})).collect::<Vec<_>>(),
            "agents": st.launchers.iter()
                .filter(|(pid, _)| st.agents.get(pid).is_some_and(|start| procs::same_process(**pid, *start)))
                .map(|(pid, l)| json!({
                    "name": l.name, "pid": pid, "sandboxed": l.sandboxed, "enforced": l.enforced,
                    "started_at": rfc3339(l.started),
                    "sessions": st.sessions.values().filter(|s| s.agent_pid == *pid).count()})).collect::<Vec<_>>(),
            "pending": st.pending.len(),
            "grants": st.grants.len(),
            "leases": leases,
            "pin_failures": st.pin_failures,
            "idle_lock_secs": self.cfg.idle_lock.as_secs(),
            "leaks": st.recent_leaks,
            "credentials": Self::dynamic_view(&st),
        })
    }

    /// Unlocks with the passphrase (KDF on a blocking thread), opens the audit
    /// chain, and writes what the reaper found since the last unlock.
    pub async fn unlock(
        self: &Arc<Self>,
        passphrase: Zeroizing<Vec<u8>>,
    ) -> Result<Value, WireError> {
        if self.state().vault.is_some() {
            return Ok(json!({"unlocked": true, "already": true}));
        }
        if let Some((pid, comm)) = procs::tracer_of_self() {
            return Err(WireError::new(
                "traced",
                format!(
                    "the broker is being traced by pid {pid} ({comm}), which could read the vault key: refusing to unlock"
                ),
            ));
        }
        let path = self.cfg.vault_path();
        let vault = tokio::task::spawn_blocking(move || Vault::unlock(&path, &passphrase))
            .await
            .map_err(|_| WireError::new("internal", "unlock task failed"))?
            .map_err(vault_error)?;
        let head = vault.audit_head().map_err(vault_error)?;
        let key = vault.subkey(Subkey::Audit);
        let (chain, _report) = AuditChain::open(&self.cfg.audit_path(), &key, head.as_ref())
            .map_err(|e| {
                WireError::new(
                    "audit_damaged",
                    format!(
                        "the audit log does not verify ({e}); the vault stays locked: inspect it with `custody audit verify`"
                    ),
                )
            })?;
        if head != Some(chain.head()) {
            vault.set_audit_head(&chain.head()).map_err(vault_error)?;
        }
        crate::sys::lock_in_memory(vault.vault_key().expose());
        let (policy, policy_note) = self.sealed_policy(&vault)?;
        let mut st = self.state();
        if st.vault.is_some() {
            return Ok(json!({"unlocked": true, "already": true}));
        }
        st.vault = Some(vault);
        st.audit = Some(chain);
        st.policy = Arc::new(policy);
        st.recall_agents();
        st.record_agents();
        st.pin_failures = 0;
        st.last_activity = Instant::now();
        let deferred = std::mem::take(&mut st.deferred);
        let mut result = st.audit(AuditEvent::Unlock {});
        for ev in deferred {
            if result.is_ok() {
                result = st.audit(ev);
            }
        }
        if let Err(e) = result {
            st.vault = None;
            st.audit = None;
            return Err(e);
        }
        drop(st);
        // Credentials a crashed broker left, and this vault's orphaned roles.
        tokio::spawn(crate::sources::recover(Arc::clone(self)));
        let mut out = json!({"unlocked": true});
        if let Some(note) = policy_note {
            out["policy_note"] = json!(note);
        }
        Ok(out)
    }

    /// Locks: stops every lease (waits for them to end, so their ends are
    /// audited), cancels pending requests, drops grants, then zeroizes the key.
    pub async fn lock(self: &Arc<Self>, reason: audit::LockReason) -> Value {
        let lease_reason = if reason == audit::LockReason::Shutdown {
            EndReason::Shutdown
        } else {
            EndReason::Locked
        };
        let killed = {
            let mut st = self.state();
            if st.vault.is_none() && st.leases.is_empty() {
                return json!({"locked": true, "already": true});
            }
            for (_, mut p) in std::mem::take(&mut st.pending) {
                if let Some(n) = p.notify.take() {
                    let _ = n.send(Decision::Locked);
                }
            }
            st.grants.clear();
            for l in st.leases.values() {
                let _ = l.stop.send(Some(lease_reason));
            }
            st.leases.len()
        };
        // A lease ends within two graces (SIGTERM → grace → SIGKILL for the
        // child, then the same for what it left in its group); wait a little
        // beyond that so every lease's end is audited before the lock record.
        let until = Instant::now() + 2 * self.cfg.kill_grace + Duration::from_secs(2);
        // Then their credentials' first revocation attempts (an irrevocable
        // one keeps its record on disk for the next unlock).
        let busy = |st: &State| {
            !st.leases.is_empty() || st.dynamic.values().any(|e| e.irrevocable.is_none())
        };
        while Instant::now() < until && busy(&self.state()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut st = self.state();
        st.audit_after(AuditEvent::Lock { reason });
        st.dynamic.clear(); // Their records stay on disk for the next unlock.
        st.policy = Arc::new(Policy::default());
        st.vault = None; // Vault's keys zeroize on drop.
        st.audit = None;
        drop(st);
        self.engines.clear();
        self.publish(Event::Locked);
        json!({"locked": true, "leases_killed": killed})
    }

    // ----- vault operations ---------------------------------------------

    /// Runs a vault read under the lock.
    pub fn with_vault<T>(
        &self,
        f: impl FnOnce(&mut Vault) -> Result<T, VaultError>,
    ) -> Result<T, WireError> {
        let mut st = self.state();
        f(st.vault()?).map_err(vault_error)
    }

    /// Runs a vault change under the lock with its audit record, as one
    /// unit: the record is written only if the change succeeded, and a
    /// record that cannot be written undoes the change (fail closed). A
    /// refused change is audited as refused.
    pub fn change_vault<T>(
        &self,
        event: AuditEvent,
        f: impl FnOnce(&mut Vault) -> Result<T, VaultError>,
    ) -> Result<T, WireError> {
        let mut guard = self.state();
        let st = &mut *guard;
        let vault = st.vault.as_mut().ok_or_else(locked)?;
        let chain = st.audit.as_mut().ok_or_else(locked)?;
        use custody_core::vault::audited::{self, ChangeError};
        audited::change(vault, chain, event, |e| vault_error_code(e).to_owned(), f).map_err(|e| {
            match e {
                ChangeError::Refused { error, recorded } => {
                    if let Err(why) = recorded {
                        // Logged, not dropped: the change failed either way.
                        eprintln!("custody daemon: a refused change was not audited: {why}");
                    }
                    vault_error(error)
                }
                ChangeError::Audit(e) => WireError::new(
                    "audit_failed",
                    format!("the audit log cannot be written ({e}); nothing was done"),
                ),
                ChangeError::Head(e) => vault_error(e),
            }
        })
    }

    // ----- sessions -----------------------------------------------------

    /// Registers an agent session for the connection of `peer`. The agent is
    /// the peer's real parent (from /proc), whatever the client claims.
    pub fn register_session(
        &self,
        peer: &mut Peer,
        client_name: &str,
        client_version: &str,
        claimed_parent: u32,
    ) -> Result<Value, WireError> {
        let pid = peer
            .pid
            .ok_or_else(|| WireError::new("forbidden", "peer pid unknown"))?;
        let (ppid, _) = procs::stat(pid).ok_or_else(|| bad("cannot read the session's process"))?;
        let id = new_id("s");
        let mut st = self.state();
        // Under `custody agent` the session is the launcher's agent: its
        // name (the human's choice), its whole tree, its sandbox. Inside
        // the agent's PID namespace the session knows its parent by another
        // number, so only a session outside one must name it right.
        let launcher = st.launcher_of(pid);
        if launcher.is_none() && claimed_parent != ppid {
            return Err(bad(format!(
                "parent_pid {claimed_parent} is not the session's parent ({ppid})"
            )));
        }
        let (policy_name, agent_pid, sandboxed) =
            match launcher.and_then(|l| st.launchers.get(&l).map(|x| (l, x))) {
                Some((l, x)) => (x.name.clone(), l, x.sandboxed),
                None => (custody_core::clients::canonical(client_name), ppid, false),
            };
        if !sandboxed && st.policy.require_sandbox(&policy_name) {
            // Refused, and still known as an agent: its tree never passes
            // for a terminal.
            for p in [pid, ppid] {
                if let Some((_, start)) = procs::stat(p) {
                    st.agents.insert(p, start);
                }
            }
            return Err(WireError::new(
                "forbidden",
                format!(
                    "policy requires agent '{policy_name}' to run inside the custody sandbox: the user starts it with `custody agent -- COMMAND`"
                ),
            ));
        }
        if launcher.is_none() {
            for p in [pid, ppid] {
                if let Some((_, start)) = procs::stat(p) {
                    st.agents.insert(p, start);
                }
            }
        }
        st.audit_or_defer(AuditEvent::SessionStart {
            session_id: id.clone(),
            client_name: client_name.to_owned(),
            client_version: client_version.to_owned(),
            pid,
            parent_pid: Some(ppid),
        })?;
        st.sessions.insert(
            id.clone(),
            Session {
                client_name: client_name.to_owned(),
                policy_name,
                client_version: client_version.to_owned(),
                agent_exe: std::fs::read_link(format!("/proc/{ppid}/exe"))
                    .ok()
                    .map(|p| p.display().to_string()),
                mcp_pid: pid,
                agent_pid,
                sandboxed,
                started: SystemTime::now(),
            },
        );
        st.record_agents();
        peer.session = Some(id.clone());
        Ok(json!({"session_id": id, "agent_pid": agent_pid, "sandboxed": sandboxed}))
    }

    /// `custody agent`: registers the launcher `peer` (a human's process)
    /// as an agent named `name`; every process that descends from it is that
    /// agent from now on, also for a broker started later (sealed record).
    pub fn register_launcher(
        &self,
        peer: &Peer,
        name: &str,
        sandboxed: bool,
        enforced: Vec<String>,
    ) -> Result<Value, WireError> {
        let pid = peer
            .pid
            .ok_or_else(|| WireError::new("forbidden", "peer pid unknown"))?;
        let (ppid, start) =
            procs::stat(pid).ok_or_else(|| bad("cannot read the launcher's process"))?;
        // Only custody's own launcher registers (its executable this
        // binary, its command line `custody agent … -- CMD`): a script that
        // sends the request itself cannot vouch for a sandbox.
        if procs::launcher_name(pid).is_none() {
            return Err(WireError::new(
                "forbidden",
                "only `custody agent` registers an agent: this process is not custody's launcher",
            ));
        }
        {
            // The launcher is itself a launcher by its command line: what
            // counts is whose tree it was started in.
            let mut st = self.state();
            if let Some(hit) = st.is_agent_process(ppid).or_else(|| st.launcher_of(ppid)) {
                let client = st
                    .launchers
                    .get(&hit)
                    .map(|l| l.name.clone())
                    .or_else(|| st.session_for_agent(hit).map(|s| s.policy_name.clone()))
                    .or_else(|| st.recorded.get(&hit).cloned())
                    .unwrap_or_else(|| "agent".to_owned());
                return Err(WireError::new(
                    "forbidden",
                    format!(
                        "agents cannot start agents (this process belongs to agent '{client}'): the user runs `custody agent` from their own terminal"
                    ),
                ));
            }
        }
        let name = custody_core::clients::canonical(name);
        // What the launcher reports is shown in `status`: a short, plain list.
        let enforced: Vec<String> = enforced
            .into_iter()
            .filter(|e| {
                e.len() <= 64
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || " _-./:()".contains(c))
            })
            .take(32)
            .collect();
        let mut st = self.state();
        if !sandboxed && st.policy.require_sandbox(&name) {
            return Err(WireError::new(
                "forbidden",
                format!(
                    "policy requires agent '{name}' to run inside the custody sandbox, and this launcher runs it unsandboxed"
                ),
            ));
        }
        let event = AuditEvent::AgentStart {
            name: name.clone(),
            pid,
            sandboxed,
            enforced: enforced.clone(),
        };
        st.audit_or_defer(event)?;
        st.agents.insert(pid, start);
        st.launchers.insert(
            pid,
            Launcher {
                name: name.clone(),
                sandboxed,
                enforced,
                started: SystemTime::now(),
            },
        );
        st.record_agents();
        Ok(json!({"name": name, "pid": pid, "sandboxed": sandboxed}))
    }

    /// Ends a session when its connection closes. When it was the agent's
    /// last session, the agent's pending requests are cancelled and its
    /// grants dropped (each audited): nothing it asked for outlives it.
    pub fn end_session(&self, id: &str) {
        let mut st = self.state();
        let Some(session) = st.sessions.remove(id) else {
            return;
        };
        st.audit_after(AuditEvent::SessionEnd {
            session_id: id.to_owned(),
        });
        let agent = session.agent_pid;
        if st.sessions.values().any(|s| s.agent_pid == agent) {
            return;
        }
        let by = format!("broker (session {id} ended)");
        let theirs =
            |r: &Requester| matches!(r, Requester::Agent { agent_pid, .. } if *agent_pid == agent);
        let requests: Vec<String> = st
            .pending
            .iter()
            .filter(|(_, p)| theirs(&p.requester))
            .map(|(r, _)| r.clone())
            .collect();
        for r in requests {
            st.audit_after(AuditEvent::Revoke {
                target: r.clone(),
                by: by.clone(),
            });
            Self::decide(&mut st, &r, Decision::Cancelled);
        }
        let grants: Vec<String> = st
            .grants
            .iter()
            .filter(|(_, g)| theirs(&g.requester))
            .map(|(g, _)| g.clone())
            .collect();
        for g in grants {
            st.grants.remove(&g);
            st.audit_after(AuditEvent::Revoke {
                target: g,
                by: by.clone(),
            });
        }
    }

    /// Whether `pid` descends from a registered agent (or is one).
    pub fn is_agent_pid(&self, pid: u32) -> bool {
        self.state().is_agent_process(pid).is_some()
    }

    /// Who a connection is, for grants and policy.
    pub fn requester(&self, peer: &Peer) -> Requester {
        let mut st = self.state();
        if let Some(s) = peer.session.as_ref().and_then(|id| st.sessions.get(id)) {
            return Requester::Agent {
                client: s.policy_name.clone(),
                agent_pid: s.agent_pid,
                sandboxed: s.sandboxed,
            };
        }
        let pid = peer.pid.unwrap_or(0);
        let hit = st.is_agent_process(pid).or_else(|| st.launcher_of(pid));
        if let Some(hit) = hit {
            // The hit may be the agent client or one of its `custody mcp`
            // processes; either way the identity is the agent client's, so
            // every connection of a session shares its grants.
            if let Some(l) = st.launchers.get(&hit) {
                return Requester::Agent {
                    client: l.name.clone(),
                    agent_pid: hit,
                    sandboxed: l.sandboxed,
                };
            }
            let (client, agent_pid) = st.session_for_agent(hit).map_or_else(
                || {
                    let name = st.recorded.get(&hit).cloned();
                    (name.unwrap_or_else(|| "agent".to_owned()), hit)
                },
                |s| (s.policy_name.clone(), s.agent_pid),
            );
            return Requester::Agent {
                client,
                agent_pid,
                sandboxed: false,
            };
        }
        Requester::Terminal {
            session: procs::session_id(pid).unwrap_or(pid),
        }
    }
}
