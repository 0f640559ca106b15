//! The tamper-evident audit chain (guarantee G6).
//!
//! The broker appends one JSON line per event to `$CUSTODY_HOME/audit.log`
//! ([`AUDIT_FILE`]). Each line is MAC'd with the vault's audit subkey and
//! linked to the previous line by its SHA-256, and the chain's head (last
//! seq and hash) is kept in the vault, so editing, deleting, reordering,
//! inserting or truncating records is detected by [`verify`], which names the
//! first bad seq. Records hold names, ids, pids, argv, cwd and counts only:
//! there is no value type in this module ([`AuditEvent`]).
//!
//! # Line format
//!
//! ```text
//! {"seq":N,"time":"2026-05-17T09:30:00.042Z","prev":"<64 hex>","event":{"type":"…",…},"mac":"<64 hex>"}\n
//! ```
//!
//! - `seq` starts at 1 and increases by exactly 1 per line.
//! - `time` is RFC 3339 UTC with milliseconds ([`format_rfc3339`]).
//! - `prev` is the lowercase hex SHA-256 of the previous complete line,
//!   **including its trailing newline** (so `sed -n 1p audit.log | sha256sum`
//!   recomputes a link), or 64 zeros for seq 1.
//! - `event` is an [`AuditEvent`], internally tagged by `type`.
//! - `mac` is lowercase hex `keyed_hash(audit_subkey, ["custody audit v1",
//!   U])` (HMAC-SHA256 over length-prefixed parts, see
//!   [`crate::crypto::keyed_hash`]), where `U` is the canonical record without
//!   its mac: the compact JSON `{"seq":…,"time":…,"prev":…,"event":…}`
//!   exactly as written, i.e. the line's bytes before `,"mac":"` followed by
//!   `}`. The verifier authenticates those raw bytes; it never re-serializes.
//! - Fields appear in exactly this order, the line is compact JSON (no raw
//!   newline can occur inside it) and at most [`MAX_LINE_LEN`] bytes long
//!   including the newline. Longer lines are rejected, never buffered.
//!
//! The audit subkey is `vault.subkey(Subkey::Audit)`: HKDF from the vault
//! key, salted with the vault id, so each vault's chain has its own key.
//!
//! # Head
//!
//! [`AuditChain::append`] returns the new [`AuditHead`] `(seq, hash of the
//! last line)`; the broker stores it in the vault's `meta` table **after**
//! the append returns (log first, vault second). [`AuditChain::open`] and
//! [`verify`] take the head the vault holds as `expected`:
//! - the record with `expected.seq` must hash to `expected.hash`;
//! - a file that ends before `expected.seq` is truncated (first bad seq =
//!   one past the last record present);
//! - valid records *after* the expected head are accepted and counted in
//!   [`VerifyReport::records_after_head`]: a crash between the append and the
//!   vault update leaves exactly that, and forging them needs the key.
//!
//! # Writes and crashes
//!
//! The file is opened with `O_APPEND`, mode 0600, and an exclusive advisory
//! lock (`flock`) so a second broker cannot interleave lines. Each record is
//! one `write` of the whole line followed by `fdatasync`; [`AuditChain::append`]
//! returns an error whenever either fails, and the caller must then refuse the
//! operation it was about to perform (fail closed). If a write fails part-way,
//! the writer truncates its own partial bytes; if even that fails, the chain
//! is poisoned and every later append fails until it is reopened.
//!
//! One kind of record is written behind: [`AuditChain::append_unsynced`]
//! (the broker uses it for `lease_end` and `proxy_request`, which record what
//! already happened and which nothing waits on) writes the line without `fdatasync`; it is
//! in the file at once and durable at the next durable append or
//! [`AuditChain::sync`] (the broker syncs within a second). Its head goes to
//! the vault only once it is durable, so a machine crash that takes an
//! unsynced record away leaves records *missing after* the vault's head,
//! never a head that names a lost record (which would read as truncation).
//!
//! A crash can still leave a **torn last line** (no trailing newline). Such a
//! file fails [`verify`] at that seq. [`AuditChain::open`] does not truncate it
//! (it is evidence): when the bytes after the last good record are torn, no
//! larger than [`MAX_TORN_REGION`], and contain no line with a valid MAC, it
//! leaves them in place, ends them with a newline and appends an
//! [`AuditEvent::TornTail`] record that attests their length and SHA-256.
//! [`verify`] then skips exactly those bytes and lists them in
//! [`VerifyReport::torn_regions`]. Any other damage makes `open` fail with
//! [`AuditError::Broken`]: a human runs `custody audit verify`, archives the
//! file, and a new chain starts with [`AuditChain::start_over`].
//!
//! # Reading
//!
//! [`read`] and [`follow`] parse records for display (`custody audit
//! [--since] [--follow]`) without the key: they do not authenticate anything;
//! [`verify`] does.
//!
//! Non-features: no rotation or compaction (archive the file and
//! `start_over`), no multi-process writers, no encryption of the log (it
//! holds no values; it is readable by its owner only).

mod chain;
mod event;
mod line;
mod read;
mod record;
mod time;
mod verify;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use chain::{AuditChain, OpenReport, PendingSync, SyncedHead};
pub use event::{
    ApprovalScope, AuditEvent, ChainStartReason, DenialReason, LeaseEndReason, LockReason,
    VaultAction,
};
pub use read::{AuditFollower, AuditReader, Since, follow, read, read_from};
pub use record::AuditRecord;
pub use time::{format_rfc3339, parse_rfc3339};
pub use verify::{TornRegion, VerifyError, VerifyReport, verify, verify_reader};

/// File name of the audit log inside `$CUSTODY_HOME`.
pub const AUDIT_FILE: &str = "audit.log";

/// Longest line accepted, in bytes, including the trailing newline.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Largest torn tail that [`AuditChain::open`] will seal with a
/// [`AuditEvent::TornTail`] record, in bytes. A crash tears at most one
/// line per crash; anything larger is treated as damage, not a crash.
pub const MAX_TORN_REGION: usize = 4 * MAX_LINE_LEN;

/// The head of the chain: the last record's seq and the SHA-256 of its line
/// (newline included). Serializes as `{"seq":N,"hash":"<64 hex>"}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditHead {
    /// Seq of the last record (0 for an empty chain).
    pub seq: u64,
    /// SHA-256 of the last line (all zeros for an empty chain).
    pub hash: [u8; 32],
}

impl AuditHead {
    /// The head of an empty chain: seq 0, hash all zeros.
    pub const GENESIS: AuditHead = AuditHead {
        seq: 0,
        hash: [0; 32],
    };

    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl fmt::Debug for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuditHead {{ seq: {}, hash: {} }}",
            self.seq,
            self.hash_hex()
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadRepr {
    seq: u64,
    hash: String,
}

impl Serialize for AuditHead {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HeadRepr {
            seq: self.seq,
            hash: self.hash_hex(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditHead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = HeadRepr::deserialize(d)?;
        let hash = parse_hex32(&repr.hash)
            .ok_or_else(|| serde::de::Error::custom("hash is not 64 lowercase hex digits"))?;
        Ok(AuditHead {
            seq: repr.seq,
            hash,
        })
    }
}

/// Parses exactly 64 lowercase hex digits.
fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// What is wrong with one record (or with the end of the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The line is longer than [`MAX_LINE_LEN`].
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    /// The last line has no trailing newline: a torn write.
    #[error("torn last line (no trailing newline)")]
    Torn,
    /// The line is not a well-formed record.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: the record was modified, forged, or written
    /// under another vault's key.
    #[error("bad MAC (record modified, forged, or written with another key)")]
    BadMac,
    /// The record's seq is not the one expected at this position: a record
    /// was deleted, duplicated or moved.
    #[error("expected seq here but found seq {found} (record missing, duplicated or moved)")]
    SeqMismatch {
        /// The seq the line carries.
        found: u64,
    },
    /// The record's `prev` is not the hash of the line before it.
    #[error("prev does not match the hash of the previous line")]
    BrokenLink,
    /// The file ends before the head stored in the vault.
    #[error("file ends before the stored head (seq {head_seq}): records were truncated")]
    Truncated {
        /// Seq of the head stored in the vault.
        head_seq: u64,
    },
    /// The record at the stored head's seq hashes differently.
    #[error("record does not match the head stored in the vault")]
    HeadMismatch,
}

/// Errors from opening, appending to and reading the audit log. Built from
/// paths, seqs and offsets only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O operation failed.
    #[error("audit log: {op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a regular file (a symlink, a directory...).
    #[error("audit log {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: std::path::PathBuf,
    },
    /// Another process holds the log's write lock (is another broker running?).
    #[error("audit log {} is locked by another process (is another broker running?)", path.display())]
    Busy {
        /// The path.
        path: std::path::PathBuf,
    },
    /// [`AuditChain::start_over`] found a file where the new chain should go.
    #[error("audit log {} already exists: archive it first", path.display())]
    Exists {
        /// The path.
        path: std::path::PathBuf,
    },
    /// The existing chain is damaged; [`AuditChain::open`] refuses to append.
    #[error("audit log is damaged: {0}; run `custody audit verify`")]
    Broken(#[source] VerifyError),
    /// The event serializes to a line longer than [`MAX_LINE_LEN`].
    #[error("audit record of {len} bytes exceeds the {MAX_LINE_LEN}-byte limit")]
    RecordTooLarge {
        /// The line's length.
        len: usize,
    },
    /// An earlier write failed and could not be undone; reopen the chain.
    #[error("audit log is in an unknown state after a failed write; reopen it")]
    Poisoned,
    /// A line could not be read as a record (reader only; no key involved).
    #[error("audit log line {line} (byte {offset}): {problem}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// Byte offset of the line's start.
        offset: u64,
        /// What is wrong.
        problem: Problem,
    },
}

impl AuditError {
    fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
        move |source| AuditError::Io { op, source }
    }
}
