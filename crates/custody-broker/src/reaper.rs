//! Lease records on disk, so a broker that crashed (or was killed) can end
//! what it left running when it starts again (G5).
//!
//! One small JSON file per running lease in `$CUSTODY_HOME/leases/`, written
//! atomically (temp file + rename) before the lease is reported started and
//! removed when it ends. They hold pids, start times and paths: never values.
//! A lease with dynamic credentials keeps its record until they are revoked
//! (a command token in it is sealed with the vault's lease-token key).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

/// Persists a record (atomically).
pub fn persist(home: &Path, rec: &LeaseRecord) -> std::io::Result<()> {
    let d = dir(home);
    crate::paths::ensure_private_dir(&d)?;
    let tmp = d.join(format!(".{}.tmp", rec.id));
    let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    // No fsync: the record only has to survive a crash of the broker process,
    // and the page cache does. After a machine crash the lease's processes
    // are gone anyway (and dynamic credentials carry their own expiry).
    fs::rename(&tmp, d.join(format!("{}.json", rec.id)))
}

/// Removes a record (the lease ended normally).
pub fn forget(home: &Path, id: &str) {
    let _ = fs::remove_file(dir(home).join(format!("{id}.json")));
}

/// Records that still hold dynamic credentials (read at unlock).
pub fn dynamic_leftovers(home: &Path) -> Vec<LeaseRecord> {
    let Ok(entries) = fs::read_dir(dir(home)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| read_record(&e.path()))
        .filter(|r| !r.dynamic.is_empty())
        .collect()
}

/// One record, if it is readable, small and well-formed.
fn read_record(path: &Path) -> Option<LeaseRecord> {
    fs::read(path)
        .ok()
        .filter(|b| b.len() <= 64 * 1024)
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Ends everything a previous broker left: for each record whose process is
/// still the same process (pid and start time match), kills its group;
/// removes its directory and the record. Unreadable records are removed.
pub fn reap(home: &Path) -> Vec<Reaped> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir(home)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(rec) = read_record(&path) else {
            let _ = fs::remove_file(&path);
            continue;
        };
        if rec.pid == 0 && !rec.dynamic.is_empty() {
            // Reaped before; waits for an unlock to revoke its credentials.
            continue;
        }
        // Same pid and start time: our child, kill its group. No process with
        // that pid but the group still exists: the leader died and left
        // children behind; Linux never hands out a pid still used as a
        // process-group id, so those members can only be ours. A pid reused
        // by a different process means the old group is gone: touch nothing.
        let killed = rec.pid > 1
            && (procs::same_process(rec.pid, rec.start_ticks)
                || (procs::stat(rec.pid).is_none() && group_alive(rec.pid)));
        if killed {
            signal_group(rec.pid, Signal::KILL);
        }
        if rec.dir.starts_with("/") && rec.dir.components().count() > 2 {
            let _ = fs::remove_dir_all(&rec.dir);
        }
        if rec.dynamic.is_empty() {
            let _ = fs::remove_file(&path);
        } else {
            // The processes are gone; the credentials are revoked at the next
            // unlock (the vault holds what revoking them needs).
            let kept = LeaseRecord {
                pid: 0,
                start_ticks: 0,
                dir: PathBuf::new(),
                ..rec.clone()
            };
            let _ = persist(home, &kept);
        }
        out.push(Reaped {
            record: rec,
            killed,
        });
    }
    out
}
