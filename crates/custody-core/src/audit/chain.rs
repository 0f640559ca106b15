//! The writer: [`AuditChain`] opens (and if needed recovers) the log and
//! appends records.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::encode_line;
use super::verify::{Failure, TornRegion, scan};
use super::{
    AuditError, AuditEvent, AuditHead, ChainStartReason, MAX_TORN_REGION, Problem, format_rfc3339,
};
use crate::crypto::{self, Key};

/// The open audit log, ready for appends. Holds the audit subkey and an
/// exclusive advisory lock on the file for as long as it lives.
///
/// `append` takes `&mut self`: one writer at a time. The broker shares it
/// between threads as `Mutex<AuditChain>` (it is `Send + Sync`); the lock
/// order is "audit, then vault" so the head stored in the vault never runs
/// ahead of the file.
pub struct AuditChain {
    path: PathBuf,
    file: File,
    key: Key,
    head: AuditHead,
    /// Length of the file as far as this writer knows (end of its last line).
    len: u64,
    /// A failed write could not be undone: refuse further appends.
    poisoned: bool,
    /// Records written by [`AuditChain::append_unsynced`] and not yet
    /// made durable (their head not yet handed out for the vault).
    unsynced: bool,
    /// The highest head handed out as durable (for the vault): a sync that
    /// finishes late never hands out an older one.
    durable: u64,
    /// Which chain this is in this process (a [`PendingSync`] from another,
    /// e.g. before a lock and unlock, names another file's head).
    id: u64,
}

/// Source of [`AuditChain`] ids.
static NEXT_CHAIN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A record written and not yet durable, with what makes it durable
/// without holding the chain: [`AuditChain::append_pending`]. Its
/// `fdatasync` runs on a thread of its own, alongside what the record
/// describes; the result is handed back with [`AuditChain::synced`].
pub struct PendingSync {
    file: File,
    head: AuditHead,
    chain: u64,
}

impl PendingSync {
    /// `fdatasync` (which also covers every record written since); the
    /// head that is now durable.
    pub fn sync(self) -> Result<SyncedHead, AuditError> {
        self.file.sync_data().map_err(AuditError::io("fdatasync"))?;
        Ok(SyncedHead {
            head: self.head,
            chain: self.chain,
        })
    }
}

/// A head made durable by [`PendingSync::sync`], for [`AuditChain::synced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncedHead {
    head: AuditHead,
    chain: u64,
}

impl Drop for AuditChain {
    /// Unsynced records are made durable before the file is let go (their
    /// head is not stored: the next `open` counts them after the head).
    fn drop(&mut self) {
        if self.unsynced && !self.poisoned {
            let _ = self.file.sync_data();
        }
    }
}

/// What [`AuditChain::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// The file did not exist and was created.
    pub created: bool,
    /// Records in the file (after any recovery record was added).
    pub records: u64,
    /// Valid records after the expected head (the vault missed the last
    /// update before a crash); store the new head to catch up.
    pub records_after_head: u64,
    /// A torn tail left by a crash was sealed with a `torn_tail` record now.
    pub sealed_torn_tail: Option<TornRegion>,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditChain")
            .field("path", &self.path)
            .field("head", &self.head)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl AuditChain {
    /// Opens the log at `path` (normally `$CUSTODY_HOME/audit.log`), creating
    /// it (0600) if missing, with the audit subkey `key` and the head the
    /// vault holds (`None` only for a vault that never stored one).
    ///
    /// Verifies the whole file first. A torn tail left by a crash is sealed
    /// (see the module docs); any other damage, or a file shorter than the
    /// expected head, is [`AuditError::Broken`]: the broker must not start.
    /// Another process holding the log is [`AuditError::Busy`].
    ///
    /// Returns the chain and what was found; store
    /// [`AuditChain::head`] in the vault when `records_after_head` or
    /// `sealed_torn_tail` says the head moved.
    pub fn open(
        path: &Path,
        key: &Key,
        expected: Option<&AuditHead>,
    ) -> Result<(AuditChain, OpenReport), AuditError> {
        let existed = check_not_symlink(path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(AuditError::io("open"))?;
        let mut chain = AuditChain::locked(path, file, key)?;
        if !existed {
            sync_parent(path)?;
        }
        let outcome =
            scan(BufReader::new(&chain.file), key, expected).map_err(AuditError::io("read"))?;
        let mut report = OpenReport {
            created: !existed,
            records: 0,
            records_after_head: 0,
            sealed_torn_tail: None,
        };
        match outcome {
            Ok(scan) => {
                chain.head = scan.report.head;
                chain.len = scan.report.bytes;
                report.records = scan.report.records;
                report.records_after_head = scan.report.records_after_head;
            }
            Err(failure) => {
                let region = chain.seal_torn_tail(failure, expected)?;
                report.records = chain.head.seq;
                report.records_after_head = expected.map_or(0, |e| chain.head.seq - e.seq);
                report.sealed_torn_tail = Some(region);
            }
        }
        // What was there at open is the caller's to store (the report says
        // so); a pending sync from a chain before this one never hands out
        // a head at or below it.
        chain.durable = chain.head.seq;
        Ok((chain, report))
    }

    /// Starts a new chain at `path`, which must not exist (the human archived
    /// the old log). Its first record is [`AuditEvent::ChainStart`], naming
    /// the previous head the vault held, if any. Store the returned chain's
    /// head in the vault.
    pub fn start_over(
        path: &Path,
        key: &Key,
        previous: Option<&AuditHead>,
        reason: ChainStartReason,
        first_bad_seq: Option<u64>,
    ) -> Result<AuditChain, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => AuditError::Exists {
                    path: path.to_path_buf(),
                },
                _ => AuditError::Io {
                    op: "create",
                    source: e,
                },
            })?;
        let mut chain = AuditChain::locked(path, file, key)?;
        sync_parent(path)?;
        chain.append(&AuditEvent::ChainStart {
            previous_seq: previous.map(|h| h.seq),
            previous_hash: previous.map(AuditHead::hash_hex),
            reason,
            first_bad_seq,
        })?;
        Ok(chain)
    }

    fn locked(path: &Path, file: File, key: &Key) -> Result<AuditChain, AuditError> {
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(AuditError::Busy {
                    path: path.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(AuditError::io("lock")(e)),
        }
        // The file is ours: tighten a mode someone loosened.
        let meta = file.metadata().map_err(AuditError::io("stat"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(AuditError::io("chmod"))?;
        }
        Ok(AuditChain {
            path: path.to_path_buf(),
            file,
            key: key.duplicate(),
            head: AuditHead::GENESIS,
            len: 0,
            poisoned: false,
            unsynced: false,
            durable: 0,
            id: NEXT_CHAIN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The current head: store it in the vault after each append.
    pub fn head(&self) -> AuditHead {
        self.head
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` stamped with the current time, durably (write +
    /// fdatasync), and returns the new head. On any error nothing may be
    /// assumed logged: the caller refuses the operation (fail closed).
    pub fn append(&mut self, event: &AuditEvent) -> Result<AuditHead, AuditError> {
        self.append_at(event, SystemTime::now())
    }

    /// [`append`](Self::append) with an explicit timestamp (for tests and for
    /// events the broker timed itself).
    pub fn append_at(
        &mut self,
        event: &AuditEvent,
        time: SystemTime,
    ) -> Result<AuditHead, AuditError> {
        let line = self.next_line(event, time)?;
        self.write_durably(&line)?;
        self.advance(&line);
        self.durable = self.head.seq;
        Ok(self.head)
    }

    /// The line that follows the head (refused once poisoned).
    fn next_line(&self, event: &AuditEvent, time: SystemTime) -> Result<Vec<u8>, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        encode_line(
            &self.key,
            self.head.seq + 1,
            &format_rfc3339(time),
            &self.head.hash,
            event,
        )
    }

    /// The head after `line`, the record just written.
    fn advance(&mut self, line: &[u8]) {
        self.head = AuditHead {
            seq: self.head.seq + 1,
            hash: crypto::sha256(line),
        };
    }

    /// Appends `event` with one `write` and no `fdatasync`: for records of
    /// what has already happened and that nothing waits on (a lease's end).
    /// The record is in the file at once (readers see it), and durable at
    /// the next [`append`](Self::append) or [`sync`](Self::sync), whichever
    /// comes first; the head to store in the vault is handed out only then,
    /// so the vault never names a record a machine crash could still take
    /// away (a lost unsynced tail is not truncation: the records after the
    /// vault's head are the ones that may go). A failed write is an error,
    /// as for `append`.
    pub fn append_unsynced(&mut self, event: &AuditEvent) -> Result<(), AuditError> {
        let line = self.next_line(event, SystemTime::now())?;
        self.write_line(&line)?;
        self.unsynced = true;
        self.advance(&line);
        Ok(())
    }

    /// Makes the records [`append_unsynced`](Self::append_unsynced) wrote
    /// durable; returns the head to store in the vault, or `None` when
    /// there was nothing to sync. A failed `fdatasync` poisons the chain.
    pub fn sync(&mut self) -> Result<Option<AuditHead>, AuditError> {
        if !self.unsynced {
            return Ok(None);
        }
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(AuditError::io("fdatasync")(e));
        }
        self.unsynced = false;
        self.durable = self.head.seq;
        Ok(Some(self.head))
    }

    /// Appends `event` as [`append_unsynced`](Self::append_unsynced) does
    /// (in the file at once, one `write`), and returns what makes it
    /// durable off this chain's lock: for a record that must be durable
    /// before a result is given, but not before the work it describes
    /// starts (a lease's start: the `fdatasync` runs alongside the child).
    /// Hand [`PendingSync::sync`]'s result to [`synced`](Self::synced).
    pub fn append_pending(&mut self, event: &AuditEvent) -> Result<PendingSync, AuditError> {
        // The second descriptor first: nothing is written that could not
        // be made durable this way.
        let file = self.file.try_clone().map_err(AuditError::io("dup"))?;
        self.append_unsynced(event)?;
        Ok(PendingSync {
            file,
            head: self.head,
            chain: self.id,
        })
    }

    /// Takes back a [`PendingSync`]'s result: the head to store in the
    /// vault (`None` when a later one was handed out already), or the
    /// error, which poisons the chain as a failed `fdatasync` here would.
    ///
    /// A head from another chain (this one was opened since) is that
    /// chain's file's: none is handed out. An error poisons this chain
    /// whichever it came from: the disk under the log failed a sync. On a
    /// chain already poisoned, a successful sync is an error too (Linux
    /// reports a write-back error once per open file, which the pending
    /// sync shares with the chain: the first to sync got it).
    pub fn synced(
        &mut self,
        result: Result<SyncedHead, AuditError>,
    ) -> Result<Option<AuditHead>, AuditError> {
        let head = match result {
            Ok(s) if s.chain != self.id => return Ok(None),
            // Poisoned since (a failed `fdatasync` elsewhere): the error
            // was reported on the file once, to that caller; this sync's
            // success says nothing about the record.
            Ok(_) if self.poisoned => return Err(AuditError::Poisoned),
            Ok(s) => s.head,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        if head.seq == self.head.seq {
            self.unsynced = false;
        }
        if head.seq <= self.durable {
            return Ok(None);
        }
        self.durable = head.seq;
        Ok(Some(head))
    }

    /// Whether some record waits for [`sync`](Self::sync).
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// One write of `bytes`, rolled back to the previous length if it
    /// fails (poisoned if even that fails).
    fn write_line(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        if let Err(e) = self.file.write_all(bytes) {
            if self.file.set_len(self.len).is_err() {
                self.poisoned = true;
            }
            return Err(AuditError::io("write")(e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// One write of `bytes` then fdatasync. A failed write is rolled back to
    /// the previous length; if that fails too, or fdatasync fails (the data's
    /// fate is then unknown), the chain is poisoned.
    /// The `fdatasync` also makes every unsynced record before it durable.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        self.write_line(bytes)?;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(AuditError::io("fdatasync")(e));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Seals a torn tail found by `open`, or returns the damage as
    /// [`AuditError::Broken`].
    fn seal_torn_tail(
        &mut self,
        failure: Failure,
        expected: Option<&AuditHead>,
    ) -> Result<TornRegion, AuditError> {
        let sealable = match &failure.region {
            Some(region) => {
                region.last().is_some_and(|&b| b != b'\n')
                    && region.len() < MAX_TORN_REGION
                    && !failure.region_has_authentic_line
                    && !matches!(
                        failure.problem,
                        Problem::HeadMismatch | Problem::Truncated { .. }
                    )
                    && expected.is_none_or(|e| e.seq <= failure.head.seq)
            }
            None => false,
        };
        let Some(region) = failure.region.as_ref().filter(|_| sealable) else {
            return Err(AuditError::Broken(failure.into_error()));
        };
        // The attested bytes are the fragment plus the newline added here.
        let mut attested = region.clone();
        attested.push(b'\n');
        self.head = failure.head;
        self.len = failure.offset + region.len() as u64;
        let seq = self.head.seq + 1;
        let event = AuditEvent::TornTail {
            fragment_bytes: attested.len() as u64,
            fragment_sha256: hex::encode(crypto::sha256(&attested)),
        };
        let time = format_rfc3339(SystemTime::now());
        let line = encode_line(&self.key, seq, &time, &self.head.hash, &event)?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.push(b'\n');
        bytes.extend_from_slice(&line);
        self.write_durably(&bytes)?;
        self.head = AuditHead {
            seq,
            hash: crypto::sha256(&line),
        };
        Ok(TornRegion {
            offset: failure.offset,
            len: attested.len() as u64,
            attested_by: seq,
        })
    }
}

/// Refuses symlinks and non-files; returns whether the path exists.
fn check_not_symlink(path: &Path) -> Result<bool, AuditError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(true),
        Ok(_) => Err(AuditError::NotAFile {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(AuditError::io("stat")(e)),
    }
}

/// Makes a newly created file's directory entry durable.
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(AuditError::io("sync directory"))
}
