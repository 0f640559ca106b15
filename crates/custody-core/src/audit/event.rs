//! What the broker records: one [`AuditEvent`] per line.
//!
//! Events carry names, ids, process ids, argv, working directories, counts
//! and times only. There is no value type here on purpose: nothing in this
//! module can hold a secret, so nothing can write one to the log (G1, G2).
//! Reasons are closed enums rather than free text, so an error message that
//! happens to quote a value cannot slip in through a `reason` field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One audited event. Serialized internally tagged: `{"type":"lease_end",...}`.
///
/// `argv` and `cwd` are recorded because they are exactly what the human
/// approved; they are not secret (custody injects values through the
/// environment or ephemeral files, never through argv).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEvent {
    /// The broker started and opened this chain.
    BrokerStart {
        /// The broker's process id.
        pid: u32,
        /// custody's version string.
        version: String,
    },
    /// The broker is shutting down cleanly.
    BrokerStop {
        /// The broker's process id.
        pid: u32,
    },
    /// An agent client connected and identified itself.
    SessionStart {
        /// Session id assigned by the broker.
        session_id: String,
        /// Client name as reported (e.g. `codex`), untrusted.
        client_name: String,
        /// Client version as reported, untrusted.
        client_version: String,
        /// Peer process id from the socket's credentials.
        pid: u32,
        /// Parent of the peer process, when known.
        parent_pid: Option<u32>,
    },
    /// A human started an agent under `custody agent` (the launcher
    /// registered its process before the agent ran).
    AgentStart {
        /// The name the human gave the agent (its policy name).
        name: String,
        /// The launcher's process id; every descendant is this agent.
        pid: u32,
        /// Whether the launcher applies the Landlock sandbox.
        sandboxed: bool,
        /// The protections the kernel enforces for it (`custody agent --check`).
        #[serde(default)]
        enforced: Vec<String>,
    },
    /// A session ended.
    SessionEnd {
        /// Session id.
        session_id: String,
    },
    /// An agent asked to run a command with some variables.
    Request {
        /// Request id.
        request_id: String,
        /// Who asked: session id or client name.
        requester: String,
        /// The exact command line that would run.
        argv: Vec<String>,
        /// The working directory it would run in.
        cwd: String,
        /// Environment names involved.
        environments: Vec<String>,
        /// Variable names requested (names only).
        variables: Vec<String>,
        /// Requested lifetime of the grant, in seconds.
        ttl_secs: u64,
    },
    /// A human approved a request.
    Approval {
        /// The request approved.
        request_id: String,
        /// What the approval covers.
        scope: ApprovalScope,
        /// Process id of the approving client (checked not to descend from an agent).
        approver_pid: u32,
    },
    /// A request was denied (by the human, by policy or by timeout).
    Denial {
        /// The request denied.
        request_id: String,
        /// Process id of the denying client, when a human denied it.
        approver_pid: Option<u32>,
        /// Why.
        reason: DenialReason,
    },
    /// A pending request expired before anyone decided.
    RequestExpired {
        /// The request.
        request_id: String,
    },
    /// A grant was created from an approval.
    Grant {
        /// Grant id.
        grant_id: String,
        /// The approved request.
        request_id: String,
        /// When the grant expires, RFC 3339 UTC.
        expires_at: String,
        /// How many leases it allows; `None` for unlimited within its lifetime.
        max_uses: Option<u32>,
    },
    /// A grant reached its expiry or use count.
    GrantExpired {
        /// Grant id.
        grant_id: String,
    },
    /// A child process started under a grant.
    LeaseStart {
        /// Lease id.
        lease_id: String,
        /// The grant used.
        grant_id: String,
        /// Child process id.
        pid: u32,
        /// Child process group id.
        pgid: u32,
        /// Hard deadline, RFC 3339 UTC.
        deadline: String,
    },
    /// A child process ended.
    LeaseEnd {
        /// Lease id.
        lease_id: String,
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Signal number, if it was killed by a signal.
        signal: Option<i32>,
        /// How many times each variable's value was masked in the output,
        /// keyed by variable name. Names and counts only.
        mask_counts: BTreeMap<String, u64>,
        /// Why it ended.
        reason: LeaseEndReason,
    },
    /// A restarted broker cleaned up what a crash left behind.
    Reaped {
        /// Lease id from the persisted lease table.
        lease_id: String,
        /// Process group killed, if one was still alive.
        pgid: Option<u32>,
        /// Ephemeral files removed.
        files_removed: u64,
        /// Dynamic credentials revoked at their source.
        credentials_revoked: u64,
    },
    /// A grant, lease or session was revoked.
    Revoke {
        /// What was revoked: a grant, lease or session id, or `all`.
        target: String,
        /// Who revoked it: `cli`, `mcp`, `broker`, or a session id.
        by: String,
    },
    /// The vault was locked (the broker dropped the key).
    Lock {
        /// Why.
        reason: LockReason,
    },
    /// The vault was unlocked. (A struct variant so that, like every other
    /// variant, it refuses unknown fields.)
    Unlock {},
    /// An environment or variable was created, changed or removed.
    VaultChange {
        /// What happened.
        action: VaultAction,
        /// Environment name.
        environment: String,
        /// Variable name, for variable-level changes.
        variable: Option<String>,
        /// Who made the change (`agent codex (pid …)`, `terminal session …`);
        /// absent in records written before it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A change to the vault was refused (nothing changed): too large, a
    /// name or description against the rules, a missing environment…
    VaultChangeRefused {
        /// What was tried.
        action: VaultAction,
        /// Environment name.
        environment: String,
        /// Variable name, for variable-level changes.
        variable: Option<String>,
        /// Who tried.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// Why, as an error code (`bad_request`, `not_found`, …).
        reason: String,
    },
    /// A wrong approval PIN was entered.
    PinFailure {
        /// Consecutive failures so far.
        attempt: u32,
        /// Whether this failure triggered a lockout.
        locked_out: bool,
    },
    /// The first record of a new chain that replaces a damaged or archived
    /// one (see `AuditChain::start_over`).
    ChainStart {
        /// Head of the previous chain as stored in the vault, if any.
        previous_seq: Option<u64>,
        /// Hash of the previous chain's last record (hex), if any.
        previous_hash: Option<String>,
        /// Why the chain was restarted.
        reason: ChainStartReason,
        /// For a repair: the first seq of the damaged log that did not
        /// verify (the records from there on are in the kept copy only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_bad_seq: Option<u64>,
    },
    /// Written on open after a crash left a torn last line: attests the exact
    /// bytes that were left in place between the last good record and this
    /// one, so verification can skip them while the evidence stays in the file.
    TornTail {
        /// Length of the skipped bytes, including the newline custody added.
        fragment_bytes: u64,
        /// SHA-256 (hex) of those bytes.
        fragment_sha256: String,
    },
    /// The post-run leak check found a variable's value (in some form) in a
    /// file the lease wrote under its working directory.
    LeakFound {
        /// The lease that wrote the file.
        lease_id: String,
        /// The file, relative to the lease's working directory (any value
        /// in the name itself is masked).
        path: String,
        /// The variable whose value was found. Name only.
        variable: String,
    },
    /// A lease's proxy sent a request on to its destination (a bound
    /// variable's value put in, or none). Never headers or bodies.
    ProxyRequest {
        /// The lease.
        lease_id: String,
        /// `https://host[:port]`.
        destination: String,
        /// Method.
        method: String,
        /// Path, without the query.
        path: String,
        /// The response's status.
        status: u16,
        /// Response body bytes.
        bytes: u64,
        /// Variables whose value was put in. Names only.
        injected: Vec<String>,
    },
    /// A lease's proxy refused a request that carried a bound variable's
    /// placeholder or value (in some form) to a destination it is not
    /// bound to.
    ExfiltrationBlocked {
        /// The lease.
        lease_id: String,
        /// `https://host[:port]`.
        destination: String,
        /// Method.
        method: String,
        /// Path, without the query.
        path: String,
        /// The variables it carried. Names only.
        variables: Vec<String>,
    },
    /// A dynamic source minted a credential for a lease.
    CredentialMinted {
        /// The lease it is for.
        lease_id: String,
        /// The source (`TYPE:NAME`).
        source: String,
        /// The credential's public id (a role name; never the secret).
        credential: String,
        /// When it expires at the source by itself, RFC 3339.
        expires: String,
    },
    /// A lease's credential was revoked at its source.
    CredentialRevoked {
        /// The lease it was for.
        lease_id: String,
        /// The source.
        source: String,
        /// The credential's public id.
        credential: String,
        /// Attempts it took.
        attempts: u32,
    },
    /// Revocation failed and is being retried: the credential lives until
    /// it succeeds or the source's own expiry ends it.
    CredentialIrrevocable {
        /// The lease it was for.
        lease_id: String,
        /// The source.
        source: String,
        /// The credential's public id.
        credential: String,
        /// Why (names and error classes only).
        reason: String,
    },
    /// A credential of this vault with no lease (left by a crash) was
    /// found at its source and revoked.
    CredentialReaped {
        /// The source.
        source: String,
        /// The credential's public id.
        credential: String,
    },
    /// The sealed policy was replaced (`custody policy apply|edit`).
    PolicyChange {
        /// SHA-256 (hex) of the policy text before, if one was sealed.
        previous_sha256: Option<String>,
        /// SHA-256 (hex) of the new policy text.
        sha256: String,
        /// Who applied it (`terminal session …`).
        by: String,
        /// Grants withdrawn because the new policy no longer makes or
        /// allows them.
        grants_withdrawn: Vec<String>,
    },
    /// An agent scanned files against the values it may see (`custody
    /// scan` from its process tree): what, how much, how many findings.
    AgentScan {
        /// Who (`agent codex (pid …)`).
        by: String,
        /// The path scanned (absolute).
        path: String,
        /// Bytes read.
        bytes: u64,
        /// Findings reported (by name and file only).
        findings: usize,
    },
    /// A lease record did not open under the vault key (edited, moved from
    /// another lease, or planted): nothing in it was acted on.
    LeaseRecordRejected {
        /// The id it was stored under.
        lease_id: String,
        /// Where it was found: `vault` or `file`.
        place: String,
    },
}

impl AuditEvent {
    /// The event's `type` tag as written in the log, e.g. `lease_end`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::BrokerStart { .. } => "broker_start",
            AuditEvent::BrokerStop { .. } => "broker_stop",
            AuditEvent::SessionStart { .. } => "session_start",
            AuditEvent::SessionEnd { .. } => "session_end",
            AuditEvent::AgentStart { .. } => "agent_start",
            AuditEvent::Request { .. } => "request",
            AuditEvent::Approval { .. } => "approval",
            AuditEvent::Denial { .. } => "denial",
            AuditEvent::RequestExpired { .. } => "request_expired",
            AuditEvent::Grant { .. } => "grant",
            AuditEvent::GrantExpired { .. } => "grant_expired",
            AuditEvent::LeaseStart { .. } => "lease_start",
            AuditEvent::LeaseEnd { .. } => "lease_end",
            AuditEvent::Reaped { .. } => "reaped",
            AuditEvent::Revoke { .. } => "revoke",
            AuditEvent::Lock { .. } => "lock",
            AuditEvent::Unlock {} => "unlock",
            AuditEvent::VaultChange { .. } => "vault_change",
            AuditEvent::VaultChangeRefused { .. } => "vault_change_refused",
            AuditEvent::PinFailure { .. } => "pin_failure",
            AuditEvent::ChainStart { .. } => "chain_start",
            AuditEvent::TornTail { .. } => "torn_tail",
            AuditEvent::LeakFound { .. } => "leak_found",
            AuditEvent::ProxyRequest { .. } => "proxy_request",
            AuditEvent::ExfiltrationBlocked { .. } => "exfiltration_blocked",
            AuditEvent::CredentialMinted { .. } => "credential_minted",
            AuditEvent::CredentialRevoked { .. } => "credential_revoked",
            AuditEvent::CredentialIrrevocable { .. } => "credential_irrevocable",
            AuditEvent::CredentialReaped { .. } => "credential_reaped",
            AuditEvent::PolicyChange { .. } => "policy_change",
            AuditEvent::AgentScan { .. } => "agent_scan",
            AuditEvent::LeaseRecordRejected { .. } => "lease_record_rejected",
        }
    }
}

/// What an approval covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalScope {
    /// A single run.
    Once,
    /// Any number of identical runs for this many seconds.
    ForSecs(u64),
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DenialReason {
    /// The human said no.
    Human,
    /// Policy forbids it.
    Policy,
    /// Nobody decided in time.
    Timeout,
    /// The approver descends from an agent client (G3).
    ApproverIsAgent,
    /// PIN attempts are locked out.
    PinLockout,
    /// The vault is locked.
    Locked,
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaseEndReason {
    /// The child exited on its own.
    Exited,
    /// The hard deadline passed and the process group was killed.
    Deadline,
    /// Revoked by `custody revoke`.
    Revoked,
    /// The vault was locked.
    Locked,
    /// The broker shut down.
    BrokerShutdown,
    /// The child could not be started.
    SpawnFailed,
}

/// Why the vault was locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LockReason {
    /// `custody lock`.
    Manual,
    /// Idle timeout.
    Idle,
    /// Too many wrong PINs.
    PinLockout,
    /// The broker is shutting down.
    Shutdown,
}

/// A change to the vault's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VaultAction {
    /// An environment was created.
    CreateEnvironment,
    /// An environment was removed.
    RemoveEnvironment,
    /// A variable was set (created or given a new version).
    SetVariable,
    /// A variable was removed.
    RemoveVariable,
    /// Variables were imported from a dotenv file.
    Import,
    /// The passphrase was changed.
    ChangePassphrase,
    /// An environment's description changed.
    DescribeEnvironment,
    /// An empty variable slot was declared (or its description/kind changed).
    DeclareVariable,
    /// A variable was given a generated value nobody saw.
    GenerateVariable,
    /// The approval PIN was changed.
    ChangePin,
    /// A dynamic source was added or replaced (`environment` holds its
    /// reference, `TYPE:NAME`).
    PutSource,
    /// A dynamic source was removed.
    RemoveSource,
    /// A variable's destinations (bindings) were set or cleared.
    BindVariable,
}

/// Why a new chain was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChainStartReason {
    /// A brand-new vault.
    NewVault,
    /// The human archived the old log (for example after verify failed).
    Archived,
    /// `custody audit repair`: the log did not verify; it was kept aside
    /// and this chain goes on from its last good record.
    Repaired,
}
