//! Secrets at rest: walking trees and git objects for the detectors of
//! [`custody_core::scan`].
//!
//! Two users: the post-run leak check ([`leak_check`], after every lease,
//! with that lease's own masking engine) and `custody scan` (the broker's
//! `scan` request with an engine of every vault value, or the CLI in-process
//! when no broker runs). Values stay where the engine is built (G1/G2);
//! results carry paths, line numbers, commit ids and variable or rule names
//! only, and a vault value in a path is masked.
//!
//! # Leak check
//! Every regular file under the lease's working directory whose mtime is at
//! or after the lease's start, `.gitignore` **not** respected (a secret
//! written to an ignored file, `target/` or `node_modules/`, is still a leak
//! on disk), `.git/objects` skipped (compressed, and written by git itself),
//! symlinks not followed. Bounded: at most [`LEAK_MAX_FILES`] files read,
//! [`LEAK_MAX_BYTES`] bytes read and [`LEAK_MAX_ENTRIES`] directory entries
//! visited; past a bound the report says `truncated`.
//!
//! # Tree scan
//! `.gitignore`, `.ignore` and git's excludes respected (also outside a
//! repository), hidden files included (`.env`!), `.git` skipped (history is
//! `--git-history`'s job). Files are read in chunks into one reusable buffer
//! per walker thread, consecutive chunks overlapping by the longest pattern,
//! so a file of any size is scanned in bounded memory. Binary files are
//! scanned too: a key can sit in a binary, and the prefilter runs at memory
//! speed anyway.
//!
//! # Git
//! `--git-history`: every commit and blob reachable from any ref
//! (`git rev-list --objects --all`, contents through one
//! `git cat-file --batch`); blobs over [`GIT_MAX_BLOB`] are left out by
//! rev-list's own filter. A blob with a finding is attributed to the commit
//! that introduced it (`git log --find-object`). `--staged`: the blobs in the
//! index for the paths `git diff --cached` names (what the next commit
//! records). git runs as a child process; no libgit2.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use custody_core::mask::MaskingEngine;
use custody_core::names::{EnvName, VarName};
use custody_core::scan::{Detector, Finding, Hit};
use custody_core::vault::{Vault, VaultError};
use ignore::{WalkBuilder, WalkState};
use serde::Serialize;
use zeroize::Zeroizing;

mod git;
pub use git::{scan_git_history, scan_staged};

/// Most files the leak check reads.
pub const LEAK_MAX_FILES: u64 = 10_000;
/// Most bytes the leak check reads.
pub const LEAK_MAX_BYTES: u64 = 64 << 20;
/// Most directory entries the leak check visits (a lease run in `$HOME`
/// must not keep its result waiting on a walk of millions of files).
pub const LEAK_MAX_ENTRIES: u64 = 200_000;
/// Largest git blob `--git-history` reads.
pub const GIT_MAX_BLOB: u64 = 64 << 20;
/// Bytes scanned at once; larger files go in chunks.
const CHUNK: usize = 4 << 20;

/// What a walk or git scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// Findings, sorted by path.
    pub findings: Vec<Finding>,
    /// Files (or blobs) read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// A bound was reached: not everything was read.
    pub truncated: bool,
    /// Dynamic variables (`ENV/VAR`), not looked for: they have no stored
    /// value (each lease gets a fresh credential, revoked after).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_dynamic: Vec<String>,
}

/// The dynamic variables of the environments `visible` lets through.
pub fn dynamic_variables(
    vault: &Vault,
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, VaultError> {
    let mut out = Vec::new();
    for env in vault.environments()? {
        if !visible(&env.name) {
            continue;
        }
        for var in vault.variables(&EnvName::new(&env.name)?)? {
            if var.kind == custody_core::vault::VarKind::Dynamic {
                out.push(format!("{}/{}", env.name, var.name));
            }
        }
    }
    Ok(out)
}

/// Errors of a scan; names and paths only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The path to scan is missing or unreadable.
    #[error("cannot scan '{path}': {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// git could not be run, or failed.
    #[error("git {what} failed in '{path}' ({why}): is it a git repository, and is git installed?")]
    Git {
        /// The git command (`rev-list`, `cat-file`, …).
        what: &'static str,
        /// The repository.
        path: PathBuf,
        /// Exit status or I/O error, never git's output.
        why: String,
    },
}

/// How a tree is walked.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Honour `.gitignore`, `.ignore` and git's excludes.
    pub respect_ignores: bool,
    /// Skip the whole `.git` directory (otherwise only `.git/objects`).
    pub skip_git_dir: bool,
    /// Only files modified at or after this time.
    pub modified_since: Option<SystemTime>,
    /// Most files read.
    pub max_files: u64,
    /// Most bytes read.
    pub max_bytes: u64,
    /// Most directory entries visited.
    pub max_entries: u64,
    /// Walker threads (0: the walker's choice).
    pub threads: usize,
    /// Directories never entered (the broker's own home and runtime dir:
    /// written by the broker during every lease, never in plaintext).
    pub skip_dirs: Vec<PathBuf>,
    /// Directory names pruned below the root (never the root itself).
    pub skip_dir_names: &'static [&'static str],
}

impl WalkOptions {
    /// `custody scan`: ignores respected, `.git` skipped, no bounds.
    pub fn tree() -> WalkOptions {
        WalkOptions {
            respect_ignores: true,
            skip_git_dir: true,
            modified_since: None,
            max_files: u64::MAX,
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
            threads: 0,
            skip_dirs: Vec::new(),
            skip_dir_names: &[],
        }
    }

    /// The post-run leak check: see the module docs.
    pub fn leak_check(since: SystemTime) -> WalkOptions {
        WalkOptions {
            respect_ignores: false,
            skip_git_dir: false,
            modified_since: Some(since),
            max_files: LEAK_MAX_FILES,
            max_bytes: LEAK_MAX_BYTES,
            max_entries: LEAK_MAX_ENTRIES,
            // One thread: after a lease the tree is usually small and the
            // thread pool's start-up would dominate.
            threads: 1,
            skip_dirs: Vec::new(),
            // Dependency and build trees: tens of thousands of entries that
            // are regenerated from source, whose stat walk alone would cost
            // ~70 ms per run in a Rust checkout. A documented residual risk:
            // a secret baked into a build artefact there is not reported.
            skip_dir_names: LEAK_SKIP_DIR_NAMES,
        }
    }
}

/// Directories the post-run leak check does not descend into.
pub const LEAK_SKIP_DIR_NAMES: &[&str] = &["target", "node_modules"];

/// Progress callback: files and bytes read so far. Called often; throttle.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Reads `r` to its end (or `limit` bytes) in chunks through `buf`, and
/// returns one hit per variable or rule (first line), the bytes read and
/// whether `limit` cut it.
fn scan_stream(
    det: &Detector,
    name: &str,
    r: &mut dyn Read,
    buf: &mut Vec<u8>,
    limit: u64,
) -> std::io::Result<(Vec<Hit>, u64, bool)> {
    let overlap = det.overlap();
    let mut hits: Vec<Hit> = Vec::new();
    let mut line_base = 1u64;
    let mut total = 0u64;
    let mut cut = false;
    buf.clear();
    loop {
        let carried = buf.len();
        let want = CHUNK + overlap;
        buf.resize(want, 0);
        let mut filled = carried;
        let mut eof = false;
        while filled < want {
            let room = limit.saturating_sub(total).min((want - filled) as u64) as usize;
            if room == 0 {
                // At the limit: is there more?
                let mut probe = [0u8; 1];
                cut = matches!(r.read(&mut probe), Ok(n) if n > 0);
                eof = true;
                break;
            }
            match r.read(&mut buf[filled..filled + room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    filled += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(filled);
                    return Err(e);
                }
            }
        }
        buf.truncate(filled);
        if filled > carried {
            for h in det.scan(name, buf, line_base) {
                if !hits.iter().any(|x| x.what == h.what) {
                    hits.push(h);
                }
            }
        }
        if eof {
            break;
        }
        let keep_from = buf.len().saturating_sub(overlap);
        line_base += buf[..keep_from].iter().filter(|&&b| b == b'\n').count() as u64;
        buf.drain(..keep_from);
    }
    Ok((hits, total, cut))
}

/// Shared state of one parallel walk.
struct Walk<'a> {
    det: &'a Detector,
    opts: &'a WalkOptions,
    root: &'a Path,
    files: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
    truncated: AtomicBool,
    findings: Mutex<Vec<Finding>>,
    progress: Option<Progress<'a>>,
}

impl Walk<'_> {
    fn visit(&self, entry: &ignore::DirEntry, buf: &mut Vec<u8>) -> WalkState {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.opts.max_entries {
            self.truncated.store(true, Ordering::Relaxed);
            return WalkState::Quit;
        }
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            return WalkState::Continue;
        }
        if let Some(since) = self.opts.modified_since {
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            if modified.is_none_or(|m| m < since) {
                return WalkState::Continue;
            }
        }
        if self.files.fetch_add(1, Ordering::Relaxed) >= self.opts.max_files {
            self.truncated.store(true, Ordering::Relaxed);
            return WalkState::Quit;
        }
        let left = self
            .opts
            .max_bytes
            .saturating_sub(self.bytes.load(Ordering::Relaxed));
        if left == 0 {
            self.truncated.store(true, Ordering::Relaxed);
            return WalkState::Quit;
        }
        let rel = entry.path().strip_prefix(self.root).unwrap_or(entry.path());
        let name = rel.to_string_lossy();
        let mut hits = Vec::new();
        for var in self.det.variables_in_name(&name) {
            hits.push(Hit {
                what: custody_core::scan::What::Variable(var),
                line: None,
            });
        }
        // A file that vanished or cannot be read is skipped, not an error:
        // the tree changes under a walk.
        if let Ok(mut f) = std::fs::File::open(entry.path())
            && let Ok((found, n, cut)) = scan_stream(self.det, &name, &mut f, buf, left)
        {
            let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
            if cut {
                self.truncated.store(true, Ordering::Relaxed);
            }
            for h in found {
                if !hits.iter().any(|x| x.what == h.what) {
                    hits.push(h);
                }
            }
            if let Some(p) = self.progress {
                p(self.files.load(Ordering::Relaxed), total);
            }
        }
        if !hits.is_empty() {
            let shown = self.det.display_path(&name);
            let mut out = self.findings.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                hits.into_iter()
                    .map(|h| Finding::new(shown.clone(), h, None)),
            );
        }
        WalkState::Continue
    }
}

/// Walks `root` and scans every file it selects.
pub fn scan_tree(
    det: &Detector,
    root: &Path,
    opts: &WalkOptions,
    progress: Option<Progress<'_>>,
) -> Result<ScanReport, ScanError> {
    let meta = std::fs::metadata(root).map_err(|source| ScanError::Path {
        path: root.to_owned(),
        source,
    })?;
    let walk = Walk {
        det,
        opts,
        root: if meta.is_dir() {
            root
        } else {
            root.parent().unwrap_or(root)
        },
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        entries: AtomicU64::new(0),
        truncated: AtomicBool::new(false),
        findings: Mutex::new(Vec::new()),
        progress,
    };
    let respect = opts.respect_ignores;
    let skip_git_dir = opts.skip_git_dir;
    let skip_dirs = opts.skip_dirs.clone();
    let skip_names = opts.skip_dir_names;
    let mut builder = WalkBuilder::new(root);
    builder
        .hidden(false)
        .follow_links(false)
        .git_ignore(respect)
        .git_global(respect)
        .git_exclude(respect)
        .ignore(respect)
        .parents(respect)
        .require_git(false)
        .threads(opts.threads)
        .filter_entry(move |e| {
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            if !is_dir {
                return true;
            }
            if skip_dirs.iter().any(|d| d == e.path()) {
                return false;
            }
            if e.depth() > 0 && skip_names.iter().any(|n| e.file_name() == *n) {
                return false;
            }
            let name = e.file_name();
            if skip_git_dir {
                return name != ".git";
            }
            !(name == "objects"
                && e.path()
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|p| p == ".git"))
        });
    if opts.threads == 1 {
        // Sequential: no thread pool to start, which is most of the cost of
        // a small tree (the post-run leak check runs after every lease).
        let mut buf = Vec::new();
        for entry in builder.build() {
            let Ok(e) = entry else { continue };
            // `visit` only continues or quits; pruning is in filter_entry.
            if let WalkState::Quit = walk.visit(&e, &mut buf) {
                break;
            }
        }
    } else {
        builder.build_parallel().run(|| {
            let walk = &walk;
            let mut buf = Vec::new();
            Box::new(move |entry| match entry {
                Ok(e) => walk.visit(&e, &mut buf),
                Err(_) => WalkState::Continue,
            })
        });
    }
    let mut findings = walk
        .findings
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    findings.sort();
    Ok(ScanReport {
        findings,
        files: walk.files.into_inner().min(opts.max_files),
        bytes: walk.bytes.into_inner(),
        truncated: walk.truncated.into_inner(),
        skipped_dynamic: Vec::new(),
    })
}

/// One leak: a variable's value in a file a lease wrote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Leak {
    /// The file, relative to the lease's cwd (values in the name masked).
    pub path: String,
    /// The variable.
    pub variable: String,
}

/// What the leak check did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeakReport {
    /// The leaks, sorted.
    pub leaks: Vec<Leak>,
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// A bound was reached.
    pub truncated: bool,
}

/// The post-run leak check (see the module docs).
pub fn leak_check(
    engine: Arc<MaskingEngine>,
    cwd: &Path,
    since: SystemTime,
    skip_dirs: Vec<PathBuf>,
) -> LeakReport {
    if engine.pattern_count() == 0 {
        // No value long enough to match: nothing to look for.
        return LeakReport::default();
    }
    let det = Detector::new(Some(engine), false);
    let opts = WalkOptions {
        skip_dirs,
        ..WalkOptions::leak_check(since)
    };
    match scan_tree(&det, cwd, &opts, None) {
        Ok(r) => LeakReport {
            leaks: r
                .findings
                .into_iter()
                .filter_map(|f| {
                    Some(Leak {
                        variable: f.variable?,
                        path: f.path,
                    })
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            files: r.files,
            bytes: r.bytes,
            truncated: r.truncated,
        },
        // The cwd vanished: nothing left on disk to leak.
        Err(_) => LeakReport::default(),
    }
}

/// `(environment/VARIABLE, value)` pairs; the values are wiped on drop.
pub type NamedValues = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Every set value of every environment `visible` accepts, named
/// `environment/VARIABLE`, for an engine that scans for all of them.
pub fn vault_values(
    vault: &Vault,
    visible: &dyn Fn(&str) -> bool,
) -> Result<NamedValues, VaultError> {
    let mut out = Vec::new();
    for env in vault.environments()? {
        if !visible(&env.name) {
            continue;
        }
        let e = EnvName::new(&env.name)?;
        for var in vault.variables(&e)? {
            // A dynamic variable has no stored value (it is minted per
            // lease, and revoked after): nothing to look for.
            if !var.is_set || var.kind == custody_core::vault::VarKind::Dynamic {
                continue;
            }
            let v = VarName::new(&var.name)?;
            let (_, value) = vault.reveal(&e, &v)?;
            out.push((format!("{}/{}", env.name, var.name), value.into_inner()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn a_value_across_a_chunk_boundary_is_found_with_its_line() {
        let value = b"s3cr3t-VALUE_0123456789abcdefXYZ";
        let det = Detector::new(
            Some(Arc::new(MaskingEngine::new([("V", &value[..])]))),
            false,
        );
        let mut data = vec![b'\n'; CHUNK - 10];
        data.extend_from_slice(value);
        data.extend_from_slice(b"\nmore\n");
        let mut buf = Vec::new();
        let (hits, n, cut) = scan_stream(&det, "f", &mut &data[..], &mut buf, u64::MAX).unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(!cut);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].line, Some((CHUNK - 10) as u64 + 1));
        let (_, n, cut) = scan_stream(&det, "f", &mut &data[..], &mut buf, 100).unwrap();
        assert_eq!((n, cut), (100, true));
    }
}
