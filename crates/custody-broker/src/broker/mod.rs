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
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};

use crate::grants::{Grant, Requester, Scope, new_id};
use crate::lease::EndReason;
use crate::protocol::{
    AgentView, Approval, AuditVerified, ClientInfo, CredentialState, CredentialView, DenyAnswer,
    Event, GrantInfo, KeyNonce, LauncherRegistered, LeakView, LeaseListing, LeaseView, Locked,
    PinParams, PinReply, PolicyApplied, PolicyShown, RequestCancelled, RequestDenied, RequestState,
    Revoked, RunSpec, RunningLease, SessionRegistered, SessionView, Status, Unlocked,
};
use crate::{Error, procs, reaper};

mod credentials;
mod dynamic;
mod leases;
mod lock;
pub mod pin;
mod policy;
mod recording;
mod requests;
mod sessions;

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
    /// Upstream roots and name overrides for leases' proxies.
    pub proxy: ProxySettings,
}

/// What every lease's proxy is given besides its bound variables.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// Roots trusted for upstream servers besides the platform's
    /// (`CUSTODY_PROXY_CA_FILE`: a private CA in front of an API).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Host → address overrides (`CUSTODY_PROXY_RESOLVE=host=ip:port,…`).
    pub resolve: std::collections::HashMap<String, std::net::SocketAddr>,
}

impl ProxySettings {
    /// From `CUSTODY_PROXY_CA_FILE` (PEM certificates) and
    /// `CUSTODY_PROXY_RESOLVE` (`host=ip:port`, comma-separated), read by
    /// the daemon from the environment of whoever started it.
    pub fn from_env() -> Result<ProxySettings, String> {
        use rustls::pki_types::pem::PemObject;
        let mut out = ProxySettings::default();
        if let Some(path) = std::env::var_os("CUSTODY_PROXY_CA_FILE") {
            let pem = std::fs::read(&path).map_err(|e| format!("CUSTODY_PROXY_CA_FILE: {e}"))?;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                out.extra_roots
                    .push(cert.map_err(|e| format!("CUSTODY_PROXY_CA_FILE: {e}"))?);
            }
        }
        if let Ok(list) = std::env::var("CUSTODY_PROXY_RESOLVE") {
            for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
                let (host, addr) = pair.split_once('=').ok_or_else(|| {
                    format!("CUSTODY_PROXY_RESOLVE: '{pair}' is not host=ip:port")
                })?;
                let addr = addr
                    .trim()
                    .parse()
                    .map_err(|_| format!("CUSTODY_PROXY_RESOLVE: '{pair}' is not host=ip:port"))?;
                out.resolve.insert(host.trim().to_ascii_lowercase(), addr);
            }
        }
        Ok(out)
    }
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
            proxy: ProxySettings::default(),
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
    /// Bound variables (`ENV/VAR`) and their destinations, as shown.
    bound: BTreeMap<String, Vec<String>>,
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

impl LeaseEntry {
    /// What `status` and `leases` show of it.
    fn view(&self) -> RunningLease {
        RunningLease {
            grant_id: self.grant_id.clone(),
            pid: self.pid,
            argv: self.argv.clone(),
            requester: self.requester.describe(),
            started_at: rfc3339(self.started_at),
            deadline: rfc3339(self.deadline_at),
        }
    }
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
    recent_leaks: VecDeque<LeakView>,
    /// Dynamic credentials by lease, from planning until revoked.
    pub(crate) dynamic: BTreeMap<String, dynamic::DynamicEntry>,
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

fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

fn env_name(raw: &str) -> Result<EnvName, Error> {
    EnvName::new(raw).map_err(|e| bad(e.to_string()))
}

fn rfc3339(t: SystemTime) -> String {
    audit::format_rfc3339(t)
}

impl State {
    fn vault(&mut self) -> Result<&mut Vault, Error> {
        self.vault.as_mut().ok_or_else(Error::locked)
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
    pub(crate) fn scan_allowance(&self, pid: u32) -> Result<(), Error> {
        let mut st = self.state();
        let now = Instant::now();
        let entry = st.scans.entry(pid).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0, 0);
        }
        if entry.1 >= AGENT_SCANS_PER_MINUTE || entry.2 >= AGENT_SCAN_BYTES_PER_MINUTE {
            let wait = 60u64.saturating_sub(now.duration_since(entry.0).as_secs());
            return Err(Error::RateLimited(format!(
                "agents may scan {AGENT_SCANS_PER_MINUTE} times and {} MiB a minute: try again in {wait} s",
                AGENT_SCAN_BYTES_PER_MINUTE >> 20
            )));
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
    ) -> Result<(), Error> {
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
        // Records written behind (lease ends) become durable here at the
        // latest.
        self.state().flush_audit();
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

    // ----- vault operations ---------------------------------------------

    /// Runs a vault read under the lock.
    pub fn with_vault<T>(
        &self,
        f: impl FnOnce(&mut Vault) -> Result<T, VaultError>,
    ) -> Result<T, Error> {
        let mut st = self.state();
        f(st.vault()?).map_err(Error::from)
    }

    /// Runs a vault change under the lock with its audit record, as one
    /// unit: the record is written only if the change succeeded, and a
    /// record that cannot be written undoes the change (fail closed). A
    /// refused change is audited as refused.
    pub fn change_vault<T>(
        &self,
        event: AuditEvent,
        f: impl FnOnce(&mut Vault) -> Result<T, VaultError>,
    ) -> Result<T, Error> {
        let mut guard = self.state();
        let st = &mut *guard;
        let vault = st.vault.as_mut().ok_or_else(Error::locked)?;
        let chain = st.audit.as_mut().ok_or_else(Error::locked)?;
        use custody_core::vault::audited::{self, ChangeError};
        audited::change(
            vault,
            chain,
            event,
            |e| crate::error::vault_code(e).to_owned(),
            f,
        )
        .map_err(|e| {
            match e {
                ChangeError::Refused { error, recorded } => {
                    if let Err(why) = recorded {
                        // Logged, not dropped: the change failed either way.
                        eprintln!("custody daemon: a refused change was not audited: {why}");
                    }
                    Error::from(error)
                }
                ChangeError::Audit(e) => Error::AuditFailed(format!(
                    "the audit log cannot be written ({e}); nothing was done"
                )),
                ChangeError::Head(e) => Error::from(e),
            }
        })
    }
}
