//! The broker's `scan` request: who may scan what, with which values, and
//! what the answer may say. The scanning itself is [`crate::scan`], which
//! knows nothing of the broker.

use std::path::PathBuf;
use std::sync::Arc;

use custody_core::mask::MaskingEngine;
use custody_core::scan::Detector;

use crate::Error;
use crate::scan::{
    Progress, WalkOptions, dynamic_variables, scan_git_history, scan_staged, scan_tree,
    vault_values,
};

/// Most findings a `scan` answer carries (the rest: `truncated`).
const MAX_FINDINGS: usize = 1000;

/// The broker's `scan` request: an engine of every vault value the caller
/// may see (policy visibility, as for listing), built here, then the scan
/// on a blocking thread. The values are revealed under the state lock and
/// the lock is dropped before the engine is built.
pub(crate) async fn handle(
    broker: &Arc<crate::Broker>,
    peer: &crate::broker::Peer,
    path: String,
    git_history: bool,
    staged: Option<Option<PathBuf>>,
    progress: Option<tokio::sync::mpsc::Sender<crate::protocol::Event>>,
) -> Result<serde_json::Value, crate::Error> {
    let root = PathBuf::from(&path);
    if !root.is_absolute() {
        return Err(Error::BadRequest(format!(
            "scan path '{path}' must be absolute"
        )));
    }
    if git_history && staged.is_some() {
        return Err(Error::BadRequest(
            "choose one of --git-history and --staged".into(),
        ));
    }
    let requester = broker.requester(peer);
    let client = requester.client_name().to_owned();
    let agent = match &requester {
        crate::grants::Requester::Agent { agent_pid, .. } => Some(*agent_pid),
        crate::grants::Requester::Terminal { .. } => None,
    };
    if let Some(pid) = agent {
        broker.scan_allowance(pid)?;
    }
    let policy = broker.policy();
    // An agent's scan covers only what it may run without a fresh approval
    // each time: never an always-approve environment (G14).
    let scope = |env: &str| {
        policy.visible(&client, env) && (agent.is_none() || !policy.always_approve(&client, env))
    };
    let (values, skipped_dynamic) =
        broker.with_vault(|v| Ok((vault_values(v, &scope)?, dynamic_variables(v, &scope)?)))?;
    let task = tokio::task::spawn_blocking(move || {
        let engine = MaskingEngine::new(values.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        drop(values);
        let det = Detector::new(Some(Arc::new(engine)), true);
        // At most ten updates a second; a slow reader misses some.
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let report = |files: u64, bytes: u64| {
            let (Some(tx), Ok(mut last)) = (&progress, last.try_lock()) else {
                return;
            };
            if last.elapsed() >= std::time::Duration::from_millis(100) {
                *last = std::time::Instant::now();
                let _ = tx.try_send(crate::protocol::Event::ScanProgress { files, bytes });
            }
        };
        let report: Progress<'_> = &report;
        if git_history {
            scan_git_history(&det, &root, Some(report))
        } else if let Some(index) = staged {
            scan_staged(&det, &root, index.as_deref())
        } else {
            scan_tree(&det, &root, &WalkOptions::tree(), Some(report))
        }
    });
    let mut report = task
        .await
        .map_err(|_| Error::Internal("the scan failed".into()))?
        .map_err(|e| Error::ScanFailed(e.to_string()))?;
    report.skipped_dynamic = skipped_dynamic;
    if let Some(pid) = agent {
        // Names and files only: a line (or a count per line) would tell
        // which of an agent's guesses matched. Audited, and counted.
        for f in &mut report.findings {
            f.line = None;
        }
        report
            .findings
            .dedup_by(|a, b| a.path == b.path && a.variable == b.variable && a.rule == b.rule);
        broker.scanned_by_agent(&requester, pid, &path, report.bytes, report.findings.len())?;
    }
    if report.findings.len() > MAX_FINDINGS {
        report.findings.truncate(MAX_FINDINGS);
        report.truncated = true;
    }
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    // Long paths could still overflow a frame: drop findings until it fits.
    while serde_json::to_vec(&v).map_or(0, |b| b.len()) > crate::protocol::MAX_FRAME - 1024 {
        report.findings.truncate(report.findings.len() / 2);
        report.truncated = true;
        v = serde_json::to_value(&report).unwrap_or_default();
    }
    Ok(v)
}
