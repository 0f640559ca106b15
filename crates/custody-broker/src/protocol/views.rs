//! Typed views the broker answers with: what `status`, `leases` and the
//! approval queue show. Names, ids and commands, never a value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request waiting for a human, as `approve --list` and the approval
/// screen show it. Names and the command, never a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingRequest {
    /// Its id.
    pub id: String,
    /// Who asks, for the screen (`agent codex (pid 42, sandboxed)`).
    pub requester: String,
    /// The requester's policy name.
    pub client: String,
    /// Whether an agent asks from inside `custody agent`'s sandbox.
    pub sandboxed: bool,
    /// Whether an agent asks (its whole passed environment is shown).
    pub agent: bool,
    /// The exact command.
    pub argv: Vec<String>,
    /// The program as bound (absolute path).
    pub program: String,
    /// The environment the command would get besides its secrets.
    pub passthrough: BTreeMap<String, String>,
    /// Files bound by content (arguments naming files).
    pub files: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Environments asked for.
    pub environments: Vec<String>,
    /// Variables (`ENV/VAR`) the run would get.
    pub variables: Vec<String>,
    /// Bound variables (`ENV/VAR`) and the destinations each may reach:
    /// the command gets a placeholder, the proxy puts the value in there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bound: BTreeMap<String, Vec<String>>,
    /// Its deadline, in seconds.
    pub timeout_secs: u64,
    /// Whether policy wants a fresh approval for every run here.
    pub always_approve: bool,
    /// When it was asked (RFC 3339).
    pub created_at: String,
}

/// The broker's state, for `custody status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The broker's pid.
    pub pid: u32,
    /// Whether the vault is locked.
    pub locked: bool,
    /// The vault file.
    pub vault: PathBuf,
    /// Audit records that could not be written (logged, counted).
    pub audit_unrecorded: u64,
    /// MCP sessions.
    pub sessions: Vec<SessionView>,
    /// Agents started with `custody agent` that still run.
    pub agents: Vec<AgentView>,
    /// Requests waiting for a human.
    pub pending: usize,
    /// Live grants.
    pub grants: usize,
    /// Running leases.
    pub leases: Vec<LeaseView>,
    /// Wrong PINs in a row.
    pub pin_failures: u32,
    /// The idle lock, in seconds.
    pub idle_lock_secs: u64,
    /// Secret values found in files after runs, most recent last.
    pub leaks: Vec<LeakView>,
    /// Dynamic credentials not yet revoked.
    pub credentials: Vec<CredentialView>,
}

/// One MCP session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    /// Its id.
    pub session_id: String,
    /// The name the client gave (untrusted, shown).
    pub client_name: String,
    /// The name policy applies.
    pub policy_name: String,
    /// The version the client gave.
    pub client_version: String,
    /// The agent's executable as the kernel has it, when readable.
    pub agent_exe: Option<String>,
    /// The MCP server's pid.
    pub pid: u32,
    /// The agent client's pid (or its `custody agent` launcher's).
    pub agent_pid: u32,
    /// Whether it runs inside `custody agent`'s sandbox.
    pub sandboxed: bool,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// An agent started with `custody agent`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentView {
    /// The human's name for it (its policy name).
    pub name: String,
    /// The launcher's pid.
    pub pid: u32,
    /// Whether it is sandboxed.
    pub sandboxed: bool,
    /// The protections the kernel enforces.
    pub enforced: Vec<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its MCP sessions.
    pub sessions: usize,
}

/// A running lease, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseView {
    /// Its id.
    pub lease_id: String,
    /// What it runs.
    #[serde(flatten)]
    pub lease: RunningLease,
}

/// A secret value found in a file after a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeakView {
    /// The lease whose run wrote it.
    pub lease_id: String,
    /// The file.
    pub path: String,
    /// The variable whose value it holds (a name).
    pub variable: String,
    /// When it was found (RFC 3339).
    pub at: String,
}

/// Where a dynamic credential is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// Its lease runs.
    Live,
    /// Its lease ended; revocation is under way.
    Revoking,
    /// Revocation failed so far; retried in the background.
    Irrevocable,
}

/// A dynamic credential not yet revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialView {
    /// Its lease.
    pub lease_id: String,
    /// `TYPE:NAME`.
    pub source: String,
    /// Its public id (a role name, `tok-…`).
    pub credential: String,
    /// When it ends at the source by itself (RFC 3339).
    pub expires: String,
    /// Where it is.
    pub state: CredentialState,
    /// Why it is not revoked yet (irrevocable only).
    pub reason: Option<String>,
    /// Since when (irrevocable only, RFC 3339).
    pub since: Option<String>,
    /// Revocation attempts so far.
    pub attempts: u32,
}

/// A lease as `custody leases` lists it: a running one, or one that ended
/// while its credentials are still being revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseListing {
    /// Its id.
    pub lease_id: String,
    /// `running`, `revoking` or `irrevocable`.
    pub state: String,
    /// Why its credentials are not revoked yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The running lease (absent once it ended).
    #[serde(flatten)]
    pub running: Option<RunningLease>,
    /// Its dynamic credentials not yet revoked.
    pub credentials: Vec<CredentialView>,
}

/// What a running lease adds to its listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunningLease {
    /// The grant it runs under.
    pub grant_id: String,
    /// The child's pid.
    pub pid: u32,
    /// The command.
    pub argv: Vec<String>,
    /// Who asked.
    pub requester: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it is killed (RFC 3339).
    pub deadline: String,
}

/// A finished run, as `run` answers it (a run still waiting answers
/// `status: pending` with its request id instead).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunResult {
    /// `finished`.
    pub status: String,
    /// The lease it ran under.
    pub lease_id: String,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Why it ended: `exited`, `deadline`, `revoked`, `locked`, `cancelled`,
    /// `shutdown`.
    pub reason: String,
    /// Masks applied, per variable (names only).
    pub mask_counts: BTreeMap<String, u64>,
    /// Masks applied in all.
    pub masked_count: u64,
    /// The tail of its masked stdout (absent when it was streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The tail of its masked stderr (absent when it was streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Whether a tail was cut.
    pub truncated: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// Files the run wrote that hold a secret value.
    pub leaks: Vec<RunLeak>,
    /// Its dynamic credentials, revoked (or not yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<SettledCredential>,
    /// What the post-run leak check read.
    pub leak_check: LeakCheck,
    /// What the lease's proxy did for its bound variables (absent when it
    /// used none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyReport>,
}

/// A lease's proxy, by name: where the bound values went, what was refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyReport {
    /// Bound variables and the destinations each may go to.
    pub bound: BTreeMap<String, Vec<String>>,
    /// Requests sent on.
    pub requests: u64,
    /// Requests each variable's value was put in.
    pub injected: BTreeMap<String, u64>,
    /// Requests refused for carrying a variable where it is not bound.
    pub blocked: Vec<ProxyBlock>,
}

impl ProxyReport {
    /// Counts one of the proxy's events.
    pub fn add(&mut self, event: &custody_core::audit::AuditEvent) {
        use custody_core::audit::AuditEvent;
        match event.clone() {
            AuditEvent::ProxyRequest { injected, .. } => {
                self.requests += 1;
                for name in injected {
                    *self.injected.entry(name).or_default() += 1;
                }
            }
            AuditEvent::ExfiltrationBlocked {
                destination,
                method,
                path,
                variables,
                ..
            } => self.blocked.push(ProxyBlock {
                destination,
                request: format!("{method} {path}"),
                variables,
            }),
            _ => {}
        }
    }
}

/// One refused request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyBlock {
    /// `https://host[:port]`.
    pub destination: String,
    /// Method and path.
    pub request: String,
    /// The variables it carried.
    pub variables: Vec<String>,
}

/// A file a run wrote that holds a secret value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunLeak {
    /// The file, relative to the run's working directory.
    pub path: String,
    /// The variable whose value it holds (a name).
    pub variable: String,
}

/// A dynamic credential at the end of its lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettledCredential {
    /// `TYPE:NAME`.
    pub source: String,
    /// Its public id.
    pub credential: String,
    /// `revoked` or `irrevocable`.
    pub state: String,
    /// Why it is not revoked yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the post-run leak check read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeakCheck {
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// A bound was reached.
    pub truncated: bool,
}

/// A grant in force, for `grants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantInfo {
    /// Its id (`g-…`).
    pub grant_id: String,
    /// The request it came from (`policy` when pre-approved).
    pub request_id: String,
    /// Who holds it.
    pub requester: String,
    /// The exact argv it covers.
    pub argv: Vec<String>,
    /// The exact working directory it covers.
    pub cwd: String,
    /// Environments it covers.
    pub environments: Vec<String>,
    /// Variables (`ENV/VAR`) it injects.
    pub variables: Vec<String>,
    /// When it ends (RFC 3339).
    pub expires_at: String,
    /// Runs left (`None`: unlimited until it expires).
    pub uses_left: Option<u32>,
}

/// What a `revoke` ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// Grants revoked.
    pub revoked_grants: Vec<String>,
    /// Running leases killed.
    pub revoked_leases: Vec<String>,
}

/// Where a request is, for `request_status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestState {
    /// The request.
    pub request_id: String,
    /// `pending`, `approved`, `denied`, `expired`, `cancelled` or `locked`.
    pub status: String,
    /// While pending: what the human runs to approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_hint: Option<String>,
    /// Once approved: the grant it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Once denied: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An approval, as `approve` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    /// The request approved.
    pub approved: String,
    /// The grant it made.
    pub grant_id: String,
    /// When the grant ends (RFC 3339).
    pub expires_at: String,
}

/// A dynamic source stored, as `source add` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceSaved {
    /// `TYPE:NAME`.
    pub source: String,
    /// New (`false`: it replaced one of the same name).
    pub created: bool,
}

/// A dynamic source removed, as `source rm` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRemoved {
    /// Its name.
    pub removed: String,
}
