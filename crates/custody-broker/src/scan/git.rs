//! Git: every blob reachable from any ref (`scan --git-history`), and the
//! blobs staged for the next commit (the pre-commit hook).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use custody_core::scan::{Detector, Finding, Hit};

use super::{GIT_MAX_BLOB, Progress, ScanError, ScanReport, scan_stream};

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(repo)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn git_output(repo: &Path, what: &'static str, args: &[&str]) -> Result<Vec<u8>, ScanError> {
    git_output_in(repo, None, what, args)
}

fn git_output_in(
    repo: &Path,
    index: Option<&Path>,
    what: &'static str,
    args: &[&str],
) -> Result<Vec<u8>, ScanError> {
    let err = |why: String| ScanError::Git {
        what,
        path: repo.to_owned(),
        why,
    };
    let mut cmd = git(repo);
    if let Some(index) = index {
        cmd.env("GIT_INDEX_FILE", index);
    }
    let out = cmd.args(args).output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(out.status.to_string()));
    }
    Ok(out.stdout)
}

/// Hits per object (id, path, hit), objects read, bytes read.
type ObjectHits = (Vec<(String, String, Hit)>, u64, u64);

/// Reads each object of `objects` (id, path) through one
/// `git cat-file --batch`, scanning blobs (and commit messages).
fn scan_objects(
    det: &Detector,
    repo: &Path,
    objects: Vec<(String, String)>,
    progress: Option<Progress<'_>>,
) -> Result<ObjectHits, ScanError> {
    let err = |why: String| ScanError::Git {
        what: "cat-file",
        path: repo.to_owned(),
        why,
    };
    let mut child = git(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
    let ids: Vec<String> = objects.iter().map(|(id, _)| id.clone()).collect();
    // Feed ids while reading answers, or both pipes fill and deadlock.
    let feeder = std::thread::spawn(move || {
        for id in ids {
            if writeln!(stdin, "{id}").is_err() {
                break;
            }
        }
    });
    let mut r = BufReader::with_capacity(1 << 20, stdout);
    let mut buf = Vec::new();
    let mut header = Vec::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut hits = Vec::new();
    for (id, path) in &objects {
        header.clear();
        r.read_until(b'\n', &mut header)
            .map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8_lossy(&header);
        let mut parts = text.split_ascii_whitespace();
        let (_, kind, size) = (parts.next(), parts.next(), parts.next());
        let Some(size) = size.and_then(|s| s.parse::<u64>().ok()) else {
            continue; // "<id> missing"
        };
        let mut body = (&mut r).take(size);
        if kind == Some("blob") || kind == Some("commit") {
            let (found, n, _) = scan_stream(det, path, &mut body, &mut buf, size)
                .map_err(|e| err(e.to_string()))?;
            files += 1;
            bytes += n;
            hits.extend(found.into_iter().map(|h| (id.clone(), path.clone(), h)));
            if let Some(p) = progress {
                p(files, bytes);
            }
        }
        std::io::copy(&mut body, &mut std::io::sink()).map_err(|e| err(e.to_string()))?;
        let mut lf = [0u8; 1];
        r.read_exact(&mut lf).map_err(|e| err(e.to_string()))?;
    }
    let _ = feeder.join();
    drop(r);
    let _ = child.wait();
    Ok((hits, files, bytes))
}

/// The commit that introduced object `id` (oldest one that changed it).
fn introducing_commit(repo: &Path, id: &str) -> Option<String> {
    let out = git_output(
        repo,
        "log",
        &[
            "log",
            "--all",
            "--reverse",
            "--format=%H",
            &format!("--find-object={id}"),
        ],
    )
    .ok()?;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .map(str::to_owned)
}

/// Scans every blob and commit reachable from any ref of the repository
/// at `repo`.
pub fn scan_git_history(
    det: &Detector,
    repo: &Path,
    progress: Option<Progress<'_>>,
) -> Result<ScanReport, ScanError> {
    let limit = format!("--filter=blob:limit={GIT_MAX_BLOB}");
    let list = git_output(
        repo,
        "rev-list",
        &["rev-list", "--objects", "--all", &limit],
    )?;
    let mut objects = Vec::new();
    for line in String::from_utf8_lossy(&list).lines() {
        let (id, path) = line.split_once(' ').unwrap_or((line, ""));
        if !id.is_empty() {
            objects.push((id.to_owned(), path.to_owned()));
        }
    }
    let (hits, files, bytes) = scan_objects(det, repo, objects, progress)?;
    let mut commits: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut findings = Vec::new();
    for (id, path, hit) in hits {
        let commit = if path.is_empty() {
            // A commit object (its message).
            Some(id.clone())
        } else {
            commits
                .entry(id.clone())
                .or_insert_with(|| introducing_commit(repo, &id))
                .clone()
        };
        let shown = if path.is_empty() {
            "(commit message)".to_owned()
        } else {
            det.display_path(&path)
        };
        findings.push(Finding::new(shown, hit, commit));
    }
    findings.sort();
    findings.dedup();
    Ok(ScanReport {
        findings,
        files,
        bytes,
        truncated: false,
        skipped_dynamic: Vec::new(),
    })
}

/// Scans what the next commit would record: the index's blobs of the paths
/// `git diff --cached` names. `index`: the index file git uses for this
/// commit, when not the default (a pre-commit hook's `GIT_INDEX_FILE`).
pub fn scan_staged(
    det: &Detector,
    repo: &Path,
    index: Option<&Path>,
) -> Result<ScanReport, ScanError> {
    let names = git_output_in(
        repo,
        index,
        "diff",
        &[
            "diff",
            "--cached",
            "--name-only",
            "-z",
            "--diff-filter=ACMR",
        ],
    )?;
    let staged: BTreeSet<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    if staged.is_empty() {
        return Ok(ScanReport::default());
    }
    let listing = git_output_in(repo, index, "ls-files", &["ls-files", "--stage", "-z"])?;
    let mut objects = Vec::new();
    for entry in listing.split(|&b| b == 0) {
        // "<mode> <id> <stage>\t<path>"
        let Some(tab) = entry.iter().position(|&b| b == b'\t') else {
            continue;
        };
        let (meta, path) = (&entry[..tab], &entry[tab + 1..]);
        if !staged.contains(path) {
            continue;
        }
        let meta = String::from_utf8_lossy(meta);
        if let Some(id) = meta.split(' ').nth(1) {
            objects.push((id.to_owned(), String::from_utf8_lossy(path).into_owned()));
        }
    }
    let (hits, files, bytes) = scan_objects(det, repo, objects, None)?;
    let mut findings: Vec<Finding> = hits
        .into_iter()
        .map(|(_, path, hit)| Finding::new(det.display_path(&path), hit, None))
        .collect();
    findings.sort();
    Ok(ScanReport {
        findings,
        files,
        bytes,
        truncated: false,
        skipped_dynamic: Vec::new(),
    })
}
