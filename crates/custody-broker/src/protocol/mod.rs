//! The broker's wire protocol.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes, at
//! most [`MAX_FRAME`]. A frame is a JSON object, except a *secret frame*: a
//! request whose `secret_len` is set is followed by one raw frame of exactly
//! that many bytes (a passphrase, a PIN, a value). Secret bytes never pass
//! through serde, so no serializable type ever holds one; they are read
//! straight into a zeroizing buffer.
//!
//! The first frame on a connection is `hello` with [`PROTOCOL_VERSION`].
//! Requests carry an `id`; the broker answers each with one response frame
//! (`{"id", "ok": ...}` or `{"id", "error": {"code", "message"}}`) and may
//! send event frames before it (`{"id", "event": ...}`: output chunks of a
//! run, a pending approval) or at any time to a watcher (`id` 0).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

mod views;
pub use views::*;

/// Version spoken by this build; `hello` with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame, in bytes. A longer announced length gets an error frame and
/// the connection is closed before anything is allocated.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The connection closed (cleanly, between frames).
    #[error("connection closed")]
    Closed,
    /// An I/O error (including a close in the middle of a frame).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that is not the JSON expected here.
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn check_len(len: u32) -> Result<usize, FrameError> {
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(usize::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Reads one frame (blocking). The buffer is zeroizing: it may be a secret.
pub fn read_frame(r: &mut impl Read) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = check_len(u32::from_be_bytes(len))?;
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Writes one frame (blocking).
pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    check_len(len)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (async).
pub async fn read_frame_async(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = check_len(u32::from_be_bytes(len))?;
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame (async).
pub async fn write_frame_async(
    w: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    check_len(len)?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

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

/// An error as sent on the wire: a stable code and a message built from
/// names and ids only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// Stable machine-readable code (`locked`, `denied`, `bad_request`, ...).
    pub code: String,
    /// One line for a human, saying what to do.
    pub message: String,
}

impl WireError {
    /// Builds an error.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        WireError {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// One environment of a [`Request::Catalog`] answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEnvironment {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Whether policy asks for a fresh approval for every run in it.
    pub always_approve: bool,
    /// Its variables, sorted by name.
    pub variables: Vec<CatalogVariable>,
}

/// One variable of a [`CatalogEnvironment`]: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogVariable {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// How it reaches a child (`env`, `file`).
    pub kind: String,
    /// Whether a value is stored.
    pub is_set: bool,
}

/// A frame from the broker.
///
/// Serialized untagged (the key — `ok`, `error` or `event` — says which);
/// deserialized through [`WireFrame`], because serde's untagged enums buffer
/// the whole frame in an intermediate tree first, which doubled the cost of a
/// 1,000-variable listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, try_from = "WireFrame")]
pub enum ServerFrame {
    /// The answer to request `id`.
    Ok {
        /// The request id.
        id: u64,
        /// The result.
        ok: serde_json::Value,
    },
    /// The failure of request `id` (id 0: the connection itself).
    Err {
        /// The request id.
        id: u64,
        /// What went wrong.
        error: WireError,
    },
    /// Something that happened while request `id` runs (0: pushed to a watcher).
    Event {
        /// The request id.
        id: u64,
        /// The event.
        event: Event,
    },
}

/// The shape of any broker frame, read in one pass (see [`ServerFrame`]).
#[derive(Deserialize)]
struct WireFrame {
    id: u64,
    #[serde(default, deserialize_with = "present")]
    ok: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    event: Option<Event>,
}

/// A present `ok` key is an answer even when its value is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl TryFrom<WireFrame> for ServerFrame {
    type Error = &'static str;

    fn try_from(f: WireFrame) -> Result<Self, Self::Error> {
        match (f.ok, f.error, f.event) {
            (Some(ok), None, None) => Ok(ServerFrame::Ok { id: f.id, ok }),
            (None, Some(error), None) => Ok(ServerFrame::Err { id: f.id, error }),
            (None, None, Some(event)) => Ok(ServerFrame::Event { id: f.id, event }),
            _ => Err("a broker frame carries exactly one of ok, error, event"),
        }
    }
}

/// Pushed events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A run waits for approval.
    Pending {
        /// The pending request's id.
        request_id: String,
        /// Hint for the human.
        approve_hint: String,
        /// On the `watch` stream: everything an approver is shown, so a
        /// queue needs no second request (unset on a run's own events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Box<PendingRequest>>,
    },
    /// The request was approved and the process started.
    Started {
        /// The lease.
        lease_id: String,
    },
    /// A chunk of masked output.
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The masked bytes, base64 (output may be binary).
        data: String,
    },
    /// A lease ended.
    LeaseEnded {
        /// The lease.
        lease_id: String,
        /// Why (`exited`, `deadline`, `revoked`, `locked`).
        reason: String,
    },
    /// The vault was locked.
    Locked,
    /// A scan asked with `progress`: how far it got (at most ten a second).
    ScanProgress {
        /// Files (or blobs) read so far.
        files: u64,
        /// Bytes read so far.
        bytes: u64,
    },
}

/// Encodes bytes for an [`Event::Output`].
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes an [`Event::Output`]'s data.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn frames_round_trip_and_cap() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").unwrap();
        let mut r = &buf[..];
        assert_eq!(&read_frame(&mut r).unwrap()[..], b"{\"a\":1}");
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));

        let mut big = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(b"xx");
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        let torn = [0, 0, 0, 9, b'x'];
        assert!(matches!(read_frame(&mut &torn[..]), Err(FrameError::Io(_))));
    }

    #[test]
    fn requests_serialize_as_documented() {
        let f = ClientFrame {
            id: 3,
            secret_len: Some(6),
            pin_proof: None,
            request: Request::Approve {
                request_id: "r1".into(),
                scope: ApprovalScope::For { secs: 900 },
            },
        };
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":3,"secret_len":6,"op":"approve","request_id":"r1","scope":"for","secs":900})
        );
        let back: ClientFrame = serde_json::from_value(json).unwrap();
        assert!(matches!(back.request, Request::Approve { .. }));
        let revoke = ClientFrame {
            id: 4,
            secret_len: None,
            pin_proof: None,
            request: Request::Revoke(RevokeTarget::Grant("g-1".into())),
        };
        let json = serde_json::to_value(&revoke).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":4,"op":"revoke","target":"grant","target_id":"g-1"})
        );
        let back: ClientFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back.id, 4);
        assert!(matches!(back.request, Request::Revoke(RevokeTarget::Grant(g)) if g == "g-1"));
        let bad: Result<ClientFrame, _> = serde_json::from_str(r#"{"id":1,"op":"nope"}"#);
        assert!(bad.is_err());
    }
}
