//! What a client asks: the frame, the requests and their parts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who is on the other end, as the client says (the broker adds what the
/// kernel says: uid and pid).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    /// `cli`, `mcp`, or another front end.
    pub kind: String,
    /// Client program name (for MCP: the agent client's name, e.g. `codex`).
    pub name: String,
    /// Client program version.
    #[serde(default)]
    pub version: String,
}

/// A client's frame: an id and a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed in the response and events. Not 0.
    pub id: u64,
    /// Length of the secret frame that follows this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_len: Option<u32>,
    /// For a request that needs the PIN: the proof (hex) from the PIN
    /// exchange just made on this connection, over the request's exact
    /// JSON bytes (`custody_core::pake`). With it, the secret frame is
    /// sealed under the exchange's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_proof: Option<String>,
    /// What is asked.
    #[serde(flatten)]
    pub request: Request,
}

/// How long an approval holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "scope")]
pub enum ApprovalScope {
    /// This one run.
    Once,
    /// This exact command, for the given number of seconds.
    For {
        /// Seconds the grant lasts.
        secs: u64,
    },
}

/// What `revoke` targets. (The content key is `target_id`: `id` is the
/// frame's own id, and a revoke of a grant or lease by id would collide.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "target", content = "target_id")]
pub enum RevokeTarget {
    /// A grant (and its running leases).
    Grant(String),
    /// A running lease.
    Lease(String),
    /// Every grant and lease (of the caller's session, for an agent).
    All,
}

/// A run request: what to execute and with which secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSpec {
    /// The exact argv; no shell unless argv names one.
    pub argv: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// Environments whose variables are injected.
    pub environments: Vec<String>,
    /// Only these variables (default: all of the environments').
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// Hard deadline for the process, in seconds.
    pub timeout_secs: u64,
    /// Non-secret environment handed through from the requester (PATH,
    /// HOME, USER, LANG, TERM, TMPDIR).
    #[serde(default)]
    pub passthrough: BTreeMap<String, String>,
    /// Keep up to this many bytes (tail) of each masked stream in the final
    /// result (the MCP server wants it; the CLI streams and leaves it unset).
    #[serde(default)]
    pub capture_limit: Option<usize>,
    /// Answer `{status: "pending", request_id}` after this many seconds of
    /// waiting for approval, leaving the request pending (MCP clients time out
    /// tool calls). Unset: wait until decided.
    #[serde(default)]
    pub wait_secs: Option<u64>,
    /// Run on a pseudo-terminal of this size instead of pipes: the command
    /// sees a terminal on stdin, stdout and stderr, and its output is one
    /// stream, masked in the order it was written (sent as `stdout`). The
    /// requester may type into it with [`Request::RunInput`] and resize it
    /// with [`Request::RunResize`] while it runs. Unset: pipes, stdin
    /// `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<TermSize>,
}

/// A terminal's size, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Everything a client can ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// First frame: protocol version and client identity.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The client.
        client: ClientInfo,
    },
    /// Broker state: locked/unlocked, counts.
    Status,
    /// Unlock with the passphrase in the secret frame.
    Unlock,
    /// Zeroize the key, kill every lease, cancel pending requests.
    Lock,
    /// Create an environment.
    EnvCreate {
        /// Its name.
        name: String,
        /// Its description.
        #[serde(default)]
        description: String,
    },
    /// List environments.
    EnvList,
    /// Every environment the client may see, each with its variables' names,
    /// descriptions, kinds and whether they are set: an agent's whole view
    /// of the vault in one answer ([`CatalogEnvironment`]s). Never values.
    Catalog,
    /// Show (and optionally re-describe) an environment.
    EnvDescribe {
        /// Its name.
        name: String,
        /// New description.
        #[serde(default)]
        description: Option<String>,
    },
    /// Remove an environment.
    EnvRemove {
        /// Its name.
        name: String,
    },
    /// Set a value (the secret frame).
    Set {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// New description.
        #[serde(default)]
        description: Option<String>,
        /// New kind (`env`/`file`).
        #[serde(default)]
        kind: Option<custody_core::vault::VarKind>,
        /// Destinations the value is bound to (`None` keeps them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bindings: Option<Vec<custody_core::bound::Rule>>,
    },
    /// Bind an existing variable to destinations (an empty list unbinds):
    /// humans only, with the PIN.
    Bind {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// The destinations; they replace the current ones.
        bindings: Vec<custody_core::bound::Rule>,
    },
    /// Declare an empty slot.
    Declare {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// Description.
        #[serde(default)]
        description: Option<String>,
        /// Kind.
        #[serde(default)]
        kind: Option<custody_core::vault::VarKind>,
        /// For kind `dynamic`: the source, `TYPE:NAME` (humans only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// Generate a random value nobody sees.
    Generate {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// Length.
        length: usize,
        /// Alphabet.
        alphabet: custody_core::generate::Alphabet,
        /// Description.
        #[serde(default)]
        description: Option<String>,
        /// Kind.
        #[serde(default)]
        kind: Option<custody_core::vault::VarKind>,
    },
    /// Add or replace a dynamic source (humans only).
    SourceAdd {
        /// The definition.
        source: custody_core::sources::SourceDef,
    },
    /// List the dynamic sources.
    SourceList,
    /// Remove a dynamic source (humans only).
    SourceRemove {
        /// Its name.
        name: String,
    },
    /// Remove a variable.
    Unset {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
    },
    /// List variables (of one environment, or all).
    List {
        /// Environment filter.
        #[serde(default)]
        env: Option<String>,
    },
    /// Import a dotenv file (the secret frame holds the file's bytes).
    Import {
        /// Environment (created if missing).
        env: String,
    },
    /// Register an agent session (the MCP server does this at start).
    RegisterSession {
        /// Agent client name (from the MCP handshake).
        client_name: String,
        /// Agent client version.
        #[serde(default)]
        client_version: String,
        /// The agent client's pid (the MCP server's parent).
        parent_pid: u32,
        /// Working directory of the session.
        #[serde(default)]
        cwd: String,
    },
    /// `custody agent`: the launcher (a human's process) registers itself
    /// before its agent runs; every process descending from it is that
    /// agent (humans only).
    AgentLaunch {
        /// The agent's name (its policy name after `clients::canonical`).
        name: String,
        /// Whether the launcher applies the Landlock sandbox.
        sandboxed: bool,
        /// The protections this kernel enforces, for `status` and the audit.
        #[serde(default)]
        enforced: Vec<String>,
    },
    /// Run a command with secrets injected.
    Run(RunSpec),
    /// During a `run` on a pseudo-terminal, on the same connection: bytes
    /// typed into it (base64), or the end of input. Not answered.
    RunInput {
        /// The bytes, base64.
        #[serde(default)]
        data: String,
        /// The requester's input ended: the terminal's end-of-file
        /// character follows the bytes.
        #[serde(default)]
        eof: bool,
    },
    /// During a `run` on a pseudo-terminal, on the same connection: the
    /// requester's terminal changed size. Not answered.
    RunResize(TermSize),
    /// Approve a pending request (PIN in the secret frame).
    Approve {
        /// The request.
        request_id: String,
        /// For how long.
        #[serde(flatten)]
        scope: ApprovalScope,
    },
    /// The PIN verifier's public parameters (Argon2id costs and salt), to
    /// start a PIN exchange.
    PinChallenge,
    /// A PIN exchange: the CLI's SPAKE2 message (hex). Answered with the
    /// broker's message and confirmation (`msg`, `confirm`, hex).
    PinExchange {
        /// The CLI's message, hex.
        msg: String,
    },
    /// Instead of a PIN exchange: a nonce (`nonce`, hex) for a proof keyed
    /// by the vault's change-proof subkey, which the CLI derives from the
    /// passphrase (`--passphrase-stdin` scripts).
    KeyChallenge,
    /// The CLI found the exchange failed (wrong PIN, or not the broker):
    /// counted as a wrong PIN, answered with the `wrong_pin` error.
    PinAbort,
    /// The sealed policy's text (humans only).
    PolicyShow,
    /// Replace the sealed policy (humans only; the PIN in the secret frame).
    PolicyApply {
        /// The new policy, TOML.
        text: String,
    },
    /// Deny a pending request.
    Deny {
        /// The request.
        request_id: String,
    },
    /// Pending requests.
    Pending,
    /// Follow a request: its state, or its result once finished.
    RequestStatus {
        /// The request.
        request_id: String,
    },
    /// Cancel one of the caller's own pending requests.
    Cancel {
        /// The request.
        request_id: String,
    },
    /// Active grants.
    Grants,
    /// Running leases.
    Leases,
    /// Revoke a grant, a lease or everything.
    Revoke(RevokeTarget),
    /// Receive pushed events (pending requests, lease ends) until closed.
    Watch,
    /// Verify the audit chain.
    AuditVerify,
    /// Scan a tree (or git history, or the staged blobs) for every vault
    /// value and for token shapes. Findings name paths and variables or
    /// rules, never the text.
    Scan {
        /// Absolute path of the tree (or of the repository).
        path: String,
        /// Scan every blob reachable from any ref instead of the tree.
        #[serde(default)]
        git_history: bool,
        /// Scan the blobs staged for the next commit instead of the tree.
        #[serde(default)]
        staged: bool,
        /// With `staged`: the index git uses for this commit (a hook's
        /// `GIT_INDEX_FILE`; `git commit -a` stages into a temporary one).
        #[serde(default)]
        index_file: Option<String>,
        /// Send [`Event::ScanProgress`] events while it runs (a terminal's
        /// progress line).
        #[serde(default)]
        progress: bool,
    },
    /// The last audit records that concern the caller (for an agent: its
    /// sessions, its requests and their decisions, grants and leases),
    /// oldest first.
    AuditTail {
        /// Most records returned (capped at [`MAX_AUDIT_TAIL`]).
        #[serde(default = "default_audit_tail")]
        limit: usize,
    },
}

/// Most records one `audit_tail` returns.
pub const MAX_AUDIT_TAIL: usize = 500;

fn default_audit_tail() -> usize {
    50
}
