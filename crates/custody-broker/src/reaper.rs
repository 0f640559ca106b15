//! Lease records, so a broker that crashed (or was killed) can end what it
//! left running when it starts again (G5), and revoke what it minted (G10).
//!
//! Each running lease is recorded twice: sealed in the vault (AEAD under the
//! vault key, bound to the lease id: the authority, read at unlock) and as a
//! small JSON file in `$CUSTODY_HOME/leases/` (read when a broker starts,
//! before any key is there, only to kill what is still running). Files are
//! untrusted input: an agent can write them. So a file is only ever used to
//! kill the very process it names (pid and start time must match, pid > 1)
//! and to remove that lease's own directory (`RUNTIME/leases/ID`, nothing
//! else); its credentials are never read. Credentials, and processes whose
//! files were deleted, are handled at unlock from the sealed records.
//! Records hold pids, start times and paths: never values (a command token
//! in one is sealed with the vault's lease-token key).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use custody_core::vault::Vault;
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::lease::{group_alive, signal_group};
use crate::procs;

/// A running lease, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Lease id.
    pub id: String,
    /// The child's pid and process group.
    pub pid: u32,
    /// The child's start time (clock ticks since boot), against pid reuse.
    pub start_ticks: u64,
    /// Its ephemeral-file directory.
    pub dir: PathBuf,
    /// Its program (argv\[0\]), for the audit record.
    pub program: String,
    /// Dynamic credentials not yet revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynamic: Vec<crate::sources::Minted>,
}

/// Largest pid Linux hands out (`PID_MAX_LIMIT`).
const PID_MAX: u32 = 4_194_304;

/// Whether `id` has the shape the broker gives lease ids (`l-` and 12
/// lowercase hex digits).
pub fn is_lease_id(id: &str) -> bool {
    id.strip_prefix("l-").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Largest lease record read from disk.
pub const MAX_RECORD: usize = 64 * 1024;

impl LeaseRecord {
    /// A record from bytes on disk or in the vault (untrusted input): one
    /// well-formed JSON record of at most [`MAX_RECORD`] bytes, or nothing.
    /// Check it with [`LeaseRecord::is_valid`] before acting on it.
    pub fn from_bytes(bytes: &[u8]) -> Option<LeaseRecord> {
        if bytes.len() > MAX_RECORD {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    /// Whether every field is one the broker could have written for lease
    /// `id` under `runtime_dir`: the id's shape, a pid that is no one's but
    /// a child's (or 0: none yet), and the lease's own directory (or none).
    pub fn is_valid(&self, id: &str, runtime_dir: &Path) -> bool {
        self.id == id
            && is_lease_id(id)
            && (self.pid == 0
                || (self.pid > 1 && self.pid <= PID_MAX && self.pid != std::process::id()))
            && (self.dir.as_os_str().is_empty()
                || self.dir == crate::lease::lease_dir(runtime_dir, id))
    }

    /// Kills the record's process group if the process is still the very
    /// one it names (pid and start time), and removes the lease's own
    /// directory. Returns whether it killed. Call only on a valid record.
    pub fn end(&self) -> bool {
        // Same pid and start time: our child, kill its group. No process with
        // that pid but the group still exists: the leader died and left
        // children behind; Linux never hands out a pid still used as a
        // process-group id, so those members can only be ours. A pid reused
        // by a different process means the old group is gone: touch nothing.
        let killed = self.pid > 1
            && (procs::same_process(self.pid, self.start_ticks)
                || (procs::stat(self.pid).is_none() && group_alive(self.pid)));
        if killed {
            signal_group(self.pid, Signal::KILL);
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        killed
    }
}

/// What the reaper did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The record.
    pub record: LeaseRecord,
    /// Whether its processes were still running (and were killed).
    pub killed: bool,
}

fn dir(home: &Path) -> PathBuf {
    home.join("leases")
}

/// Records a lease: sealed in the vault (when it is open) and as a file.
pub fn persist(home: &Path, vault: Option<&Vault>, rec: &LeaseRecord) -> std::io::Result<()> {
    if let Some(v) = vault {
        let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        v.put_lease_record(&rec.id, &json)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    persist_file(home, rec)
}

/// Writes a record's file atomically: a new file under a random name
/// (created exclusively, 0600: nothing planted in the directory is opened
/// or followed), then renamed over the record.
fn persist_file(home: &Path, rec: &LeaseRecord) -> std::io::Result<()> {
    let d = dir(home);
    crate::paths::ensure_private_dir(&d)?;
    let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let mut f = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(&d)?;
    f.write_all(&json)?;
    // No fsync: the record only has to survive a crash of the broker process,
    // and the page cache does. After a machine crash the lease's processes
    // are gone anyway (and dynamic credentials carry their own expiry).
    f.persist(d.join(format!("{}.json", rec.id)))
        .map(drop)
        .map_err(|e| e.error)
}

/// Removes a record, file and sealed copy (the lease ended normally).
pub fn forget(home: &Path, vault: Option<&Vault>, id: &str) {
    if let Some(v) = vault {
        let _ = v.remove_lease_record(id);
    }
    let _ = fs::remove_file(dir(home).join(format!("{id}.json")));
}

/// The sealed records of a just-unlocked vault: those that open and are
/// valid, and the ids of those that are not (edited, moved from another
/// lease, or planted in the vault file).
pub fn sealed_records(vault: &Vault, runtime_dir: &Path) -> (Vec<LeaseRecord>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (id, opened) in vault.lease_records().unwrap_or_default() {
        match opened.ok().and_then(|b| LeaseRecord::from_bytes(&b)) {
            Some(rec) if rec.is_valid(&id, runtime_dir) => good.push(rec),
            _ => bad.push(id),
        }
    }
    (good, bad)
}

/// One record, if it is readable, small and well-formed.
fn read_record(path: &Path) -> Option<LeaseRecord> {
    fs::read(path)
        .ok()
        .and_then(|b| LeaseRecord::from_bytes(&b))
}

/// What the reaper did when the broker started.
#[derive(Debug, Default)]
pub struct ReapReport {
    /// Records whose lease it ended.
    pub reaped: Vec<Reaped>,
    /// Files that were not records the broker could have written (their
    /// names): removed, nothing in them acted on.
    pub rejected: Vec<String>,
}

/// Ends what a previous broker left, from the files alone (no key yet): for
/// each valid record whose process is still the same process, kills its
/// group and removes its directory. Every file is removed: the sealed copy
/// in the vault, read at unlock, carries the credentials to revoke.
pub fn reap(home: &Path, runtime_dir: &Path) -> ReapReport {
    let mut out = ReapReport::default();
    let Ok(entries) = fs::read_dir(dir(home)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.extension().is_none_or(|e| e != "json") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let rec = read_record(&path).filter(|r| r.is_valid(&stem, runtime_dir));
        let _ = fs::remove_file(&path);
        let Some(rec) = rec else {
            out.rejected.push(stem.chars().take(64).collect());
            continue;
        };
        let killed = rec.end();
        out.reaped.push(Reaped {
            record: rec,
            killed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    /// A same-user agent knows its lease's id (`custody leases`) and can
    /// write in `$CUSTODY_HOME/leases`: a symlink planted where the record
    /// is written first must not make the broker overwrite the file it
    /// points at (the user's shell profile, say).
    #[test]
    fn attack_a_planted_symlink_never_redirects_a_lease_record() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let victim = dir.path().join("victim-profile");
        fs::write(&victim, "export PATH=/usr/bin\n").unwrap();
        let id = "l-0123456789ab";
        crate::paths::ensure_private_dir(&dir_of(&home)).unwrap();
        for name in [format!(".{id}.tmp"), format!(".{id}.json.tmp")] {
            std::os::unix::fs::symlink(&victim, dir_of(&home).join(name)).unwrap();
        }
        let rec = LeaseRecord {
            id: id.into(),
            pid: 0,
            start_ticks: 0,
            dir: PathBuf::new(),
            program: "true".into(),
            dynamic: Vec::new(),
        };
        persist(&home, None, &rec).unwrap();
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "export PATH=/usr/bin\n",
            "the record was written through the planted link"
        );
        let written = fs::read(dir_of(&home).join(format!("{id}.json"))).unwrap();
        assert_eq!(LeaseRecord::from_bytes(&written), Some(rec));
    }

    fn dir_of(home: &Path) -> PathBuf {
        dir(home)
    }
}
