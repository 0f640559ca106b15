//! Leases: one running process that holds secrets.
//!
//! The broker spawns the child itself (no shell unless argv names one) in its
//! own process group, with a clean environment: the requester's PATH, HOME,
//! USER, LANG, TERM and TMPDIR plus the injected variables. File-kind
//! variables become paths of 0600 files in a 0700 per-lease directory. stdout
//! and stderr go through the masking engine before anything leaves (G1). At
//! the deadline, on revocation or on lock the whole group gets SIGTERM, then
//! SIGKILL after a grace period (G5); when the child exits, whatever it left
//! behind in its group is ended the same way.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_core::mask::{MaskCounts, MaskingEngine};
use rustix::process::{Pid, Signal};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::contain::{Child, Command, Stdio};
use crate::protocol::{self, Event};

mod environment;
mod output;

pub use environment::{PASSTHROUGH, caller_environment, passthrough_for};
use output::pump;

/// How long the output pipes may stay open after the lease's process group
/// is gone before the broker looks for escaped descendants holding them.
const PIPES_CLOSE: Duration = Duration::from_millis(50);

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The process exited by itself.
    Exited,
    /// Its deadline passed.
    Deadline,
    /// Someone revoked it.
    Revoked,
    /// The vault was locked.
    Locked,
    /// The requester went away (cancelled).
    Cancelled,
    /// The broker is shutting down.
    Shutdown,
}

impl EndReason {
    /// The reason as text.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::Deadline => "deadline",
            EndReason::Revoked => "revoked",
            EndReason::Locked => "locked",
            EndReason::Cancelled => "cancelled",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// One secret for the child: how it is delivered and its bytes.
pub struct Injected {
    /// Variable name.
    pub name: String,
    /// `true`: write to a file and pass its path.
    pub as_file: bool,
    /// The value.
    pub value: custody_core::secret::Value,
}

/// Everything needed to start a lease.
pub struct LeasePlan {
    /// Lease id.
    pub id: String,
    /// The program, resolved and bound at request time (argv[0] is kept
    /// as the child's own name for itself).
    pub program: PathBuf,
    /// Exact argv.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Non-secret environment from the requester (filtered to [`PASSTHROUGH`]).
    pub passthrough: BTreeMap<String, String>,
    /// The secrets.
    pub injected: Vec<Injected>,
    /// Hard deadline from start.
    pub ttl: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How many bytes of each stream to keep for the final result (tail).
    pub capture_limit: usize,
    /// Masks the output.
    pub engine: Arc<MaskingEngine>,
    /// Parent of the per-lease directory (the runtime dir).
    pub runtime_dir: PathBuf,
    /// Run on a pseudo-terminal of this size instead of pipes ([`crate::pty`]).
    pub pty: Option<protocol::TermSize>,
    /// The lease's proxy, when it has bound variables.
    pub proxy: Option<ProxyEnv>,
}

/// What a child with bound variables is given to reach its proxy.
pub struct ProxyEnv {
    /// `http://custody:PASSWORD@127.0.0.1:PORT` (the lease's own).
    pub url: Zeroizing<String>,
    /// The lease CA (PEM), added to the child's CA bundle.
    pub ca_pem: String,
}

/// Variables naming the proxy (both cases: tools read one or the other).
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];

/// Variables naming a CA bundle file, across OpenSSL, Python, curl, git,
/// Node and the AWS SDKs.
const CA_VARS: [&str; 6] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
];

/// The platform's CA bundle (what the child would have trusted) and the
/// lease CA, in the lease's directory.
fn write_ca_bundle(dir: &Path, proxy: &ProxyEnv) -> std::io::Result<PathBuf> {
    crate::paths::ensure_private_dir(dir.parent().unwrap_or(dir))?;
    crate::paths::ensure_private_dir(dir)?;
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    let path = dir.join("custody-ca-bundle.pem");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&system)?;
    f.write_all(b"\n")?;
    f.write_all(proxy.ca_pem.as_bytes())?;
    Ok(path)
}

/// What a requester sends into its lease's terminal while it runs.
pub enum PtyInput {
    /// Typed bytes (they may be a password typed at a prompt: zeroized);
    /// `end`: then the requester's input ended.
    Typed {
        /// The bytes.
        bytes: Zeroizing<Vec<u8>>,
        /// Whether input ends after them.
        end: bool,
    },
    /// The requester's terminal changed size.
    Resize(protocol::TermSize),
}

/// What the process did.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseOutcome {
    /// Lease id.
    pub lease_id: String,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, if killed.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: EndReason,
    /// Masks applied, per variable.
    pub mask_counts: MaskCounts,
    /// Total masks applied.
    pub masked_count: u64,
    /// Last `capture_limit` bytes of masked stdout (lossy UTF-8).
    pub stdout: String,
    /// Last `capture_limit` bytes of masked stderr (lossy UTF-8).
    pub stderr: String,
    /// Whether either capture was cut.
    pub truncated: bool,
    /// Wall time.
    pub duration_ms: u64,
}

/// Facts about a started process, for persistence and the reaper.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The child's pid (also its process group id).
    pub pid: u32,
    /// Its start time in clock ticks since boot (guards against pid reuse).
    pub start_ticks: u64,
}

/// Errors starting a lease; names only.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The program could not be started.
    #[error("could not start '{program}': {source}{hint}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// Why.
        source: std::io::Error,
        /// Which injected variable is the likely cause, and what to do.
        hint: String,
    },
    /// The per-lease directory or a secret file could not be made.
    #[error("could not prepare the lease directory: {0}")]
    Files(std::io::Error),
}

/// Sends `sig` to the whole process group `pgid`; a group that is already
/// gone is fine.
pub fn signal_group(pgid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Whether any process is left in group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    match Pid::from_raw(pgid as i32) {
        // Signal 0 checks existence without sending anything.
        Some(pid) => rustix::process::test_kill_process_group(pid).is_ok(),
        None => false,
    }
}

/// The per-lease directory of lease `id`.
pub fn lease_dir(runtime_dir: &Path, id: &str) -> PathBuf {
    runtime_dir.join("leases").join(id)
}

fn write_secret_files(
    dir: &Path,
    injected: &[Injected],
) -> std::io::Result<Vec<(String, PathBuf)>> {
    if !injected.iter().any(|i| i.as_file) {
        return Ok(Vec::new());
    }
    crate::paths::ensure_private_dir(dir.parent().unwrap_or(dir))?;
    crate::paths::ensure_private_dir(dir)?;
    let mut out = Vec::new();
    for inj in injected.iter().filter(|i| i.as_file) {
        let path = dir.join(&inj.name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(inj.value.expose())?;
        out.push((inj.name.clone(), path));
    }
    Ok(out)
}

/// Starts the process: writes its file-kind values into the lease's private
/// directory, then spawns it (its own process group, or its own session on
/// a pty). Returns the child to hand to [`supervise`], the facts the lease
/// record keeps (pid, start time) and the lease directory.
pub fn spawn(plan: &LeasePlan) -> Result<(Spawned, Started, PathBuf), LeaseError> {
    let dir = lease_dir(&plan.runtime_dir, &plan.id);
    let files = write_secret_files(&dir, &plan.injected).map_err(LeaseError::Files)?;
    let program = plan.argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&plan.program, &program);
    cmd.args(plan.argv.iter().skip(1)).current_dir(&plan.cwd);
    let master = match plan.pty {
        None => {
            cmd.stdout(Stdio::Piped).stderr(Stdio::Piped);
            None
        }
        Some(size) => {
            let opened = crate::pty::open(size).and_then(|(master, tty)| {
                cmd.stdin(Stdio::Fd(tty.try_clone()?))
                    .stdout(Stdio::Fd(tty.try_clone()?))
                    .stderr(Stdio::Fd(tty))
                    // A session of its own: its group is its pid, as with pipes.
                    .session_on_terminal();
                Ok(master)
            });
            let master = opened.map_err(|source| {
                let _ = std::fs::remove_dir_all(&dir);
                LeaseError::Spawn {
                    hint: " — no pseudo-terminal could be opened (run without --pty)".into(),
                    program: program.clone(),
                    source,
                }
            })?;
            Some(master)
        }
    };
    // Filtered for the requester at admission ([`passthrough_for`]).
    for (k, v) in &plan.passthrough {
        cmd.env(k, v);
    }
    // Copied into zeroized memory; gone once the child has exec'd.
    for inj in plan.injected.iter().filter(|i| !i.as_file) {
        cmd.env(&inj.name, inj.value.expose());
    }
    for (name, path) in &files {
        cmd.env(name, path.as_os_str().as_encoded_bytes());
    }
    if let Some(proxy) = &plan.proxy {
        let bundle = write_ca_bundle(&dir, proxy).map_err(LeaseError::Files)?;
        for name in PROXY_VARS {
            cmd.env(name, proxy.url.as_str());
        }
        // Everything goes through the proxy: no host is exempt.
        cmd.env_remove("NO_PROXY").env_remove("no_proxy");
        for name in CA_VARS {
            cmd.env(name, bundle.as_os_str().as_encoded_bytes());
        }
    }
    // The child is a subreaper: nothing it starts can leave the lease.
    // With `cmd` go this process's copies of the terminal's child end: the
    // master reads end of output once the lease's processes close theirs.
    let child = cmd.spawn().map_err(|source| {
        let _ = std::fs::remove_dir_all(&dir);
        LeaseError::Spawn {
            hint: spawn_hint(&source, &plan.injected),
            program: program.clone(),
            source,
        }
    })?;
    let pid = child.id();
    let start_ticks = crate::procs::stat(pid).map(|(_, s)| s).unwrap_or(0);
    Ok((Spawned { child, master }, Started { pid, start_ticks }, dir))
}

/// A started lease process, registered as the broker's own child.
pub struct Spawned {
    child: Child,
    master: Option<Arc<crate::pty::Master>>,
}

/// Names the injected variable a failed start most likely comes from: a
/// value too long for the environment (`E2BIG`), or a `PATH` (or loader
/// variable) that replaced the one programs are found with.
fn spawn_hint(err: &std::io::Error, injected: &[Injected]) -> String {
    let env = injected.iter().filter(|i| !i.as_file);
    if err.raw_os_error() == Some(7) {
        let big: Vec<String> = env
            .filter(|i| i.name.len() + 1 + i.value.len() > custody_core::names::MAX_ENV_STRING)
            .map(|i| format!("{} ({} KiB)", i.name, i.value.len() / 1024))
            .collect();
        if !big.is_empty() {
            return format!(
                " — {} too large for a program's environment (at most 128 KiB each): store it with `custody set ENV VAR --kind file` (the program gets a file path)",
                big.join(", ")
            );
        }
        return String::new();
    }
    let loaders: Vec<&str> = env
        .filter(|i| custody_core::names::changes_how_programs_load(&i.name))
        .map(|i| i.name.as_str())
        .collect();
    if loaders.is_empty() {
        String::new()
    } else {
        format!(
            " — the injected {} changes how programs are found or loaded: rename the variable (or remove it with `custody unset`)",
            loaders.join(", ")
        )
    }
}

/// Runs a spawned child to its end: output masked and forwarded, deadline and
/// stop signal enforced, the group cleaned up, the lease directory removed.
pub async fn supervise(
    plan: LeasePlan,
    spawned: Spawned,
    started: Started,
    dir: PathBuf,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<Option<EndReason>>,
    input: mpsc::Receiver<PtyInput>,
) -> LeaseOutcome {
    let t0 = Instant::now();
    let pgid = started.pid;
    let Spawned { mut child, master } = spawned;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = match &master {
        // One stream, in the order the child wrote it, sent as stdout.
        Some(m) => Some(tokio::spawn(pump(
            crate::pty::Reader(Arc::clone(m)),
            "stdout",
            plan.engine.clone(),
            events.clone(),
            plan.capture_limit,
        ))),
        None => stdout.map(|s| {
            tokio::spawn(pump(
                s,
                "stdout",
                plan.engine.clone(),
                events.clone(),
                plan.capture_limit,
            ))
        }),
    };
    let typing = master.map(|m| tokio::spawn(type_into(m, input)));
    let err_task = stderr.map(|s| {
        tokio::spawn(pump(
            s,
            "stderr",
            plan.engine.clone(),
            events.clone(),
            plan.capture_limit,
        ))
    });
    // Secrets are in the child now; drop our copies.
    drop(plan.injected);

    let deadline = tokio::time::sleep(plan.ttl);
    tokio::pin!(deadline);
    let mut reason = EndReason::Exited;
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = &mut deadline => { reason = EndReason::Deadline; None }
        r = wait_stop(&mut stop) => { reason = r; None }
    };
    let status = match status {
        Some(s) => Some(s),
        None => {
            signal_group(pgid, Signal::TERM);
            match tokio::time::timeout(plan.grace, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    signal_group(pgid, Signal::KILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    // Whatever the child left in its group (background jobs, grandchildren)
    // holds the same secrets: end it too. Grandchildren also keep the pipes
    // open, so this is what lets the output pumps see EOF.
    if group_alive(pgid) {
        signal_group(pgid, Signal::TERM);
        let until = Instant::now() + plan.grace;
        let gone =
            crate::retry::poll_until(until, Duration::from_millis(20), || !group_alive(pgid)).await;
        if !gone {
            signal_group(pgid, Signal::KILL);
        }
    }
    // Reaped: its pid is no longer ours to keep.
    drop(child);
    // What it started outside its group (`setsid`, double forks) was
    // re-parented to it (a subreaper) and, now that it is gone, to the
    // broker. One that holds the output open would keep the lease going
    // past its end: when the pipes stay open, sweep at once; otherwise the
    // broker's next tick (within a second) sweeps, off the run's path
    // (daemons close their output).
    let pumps = async {
        let mut out = Vec::new();
        for task in [out_task, err_task] {
            out.push(match task {
                Some(t) => t.await.ok(),
                None => None,
            });
        }
        out
    };
    tokio::pin!(pumps);
    let results = match tokio::time::timeout(PIPES_CLOSE, &mut pumps).await {
        Ok(r) => {
            crate::contain::mark_dirty();
            r
        }
        Err(_) => {
            let _ = tokio::task::spawn_blocking(crate::contain::sweep).await;
            // Without containment (no subreaper), an escaped process keeps
            // the pipes: the lease still ends, its late output is dropped.
            tokio::time::timeout(plan.grace, &mut pumps)
                .await
                .unwrap_or_default()
        }
    };
    let mut counts = MaskCounts::new();
    let mut truncated = false;
    let mut captured = [String::new(), String::new()];
    for (i, r) in results.into_iter().enumerate() {
        if let Some((c, tail)) = r {
            for (k, v) in c {
                *counts.entry(k).or_insert(0) += v;
            }
            truncated |= tail.cut;
            if let Some(slot) = captured.get_mut(i) {
                *slot = String::from_utf8_lossy(&tail.buf).into_owned();
            }
        }
    }
    if let Some(t) = typing {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    let [stdout, stderr] = captured;
    LeaseOutcome {
        lease_id: plan.id,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        reason,
        masked_count: counts.values().sum(),
        mask_counts: counts,
        stdout,
        stderr,
        truncated,
        duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Writes what the requester sends into the lease's terminal until the
/// requester stops sending (or the lease ends and this task is aborted).
async fn type_into(master: Arc<crate::pty::Master>, mut input: mpsc::Receiver<PtyInput>) {
    while let Some(i) = input.recv().await {
        let done = match i {
            PtyInput::Typed { bytes, end } => match master.write_all(&bytes).await {
                Ok(()) if end => master.end_input().await,
                other => other,
            },
            PtyInput::Resize(size) => master.resize(size),
        };
        if done.is_err() {
            return;
        }
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Option<EndReason>>) -> EndReason {
    loop {
        if let Some(r) = *stop.borrow_and_update() {
            return r;
        }
        if stop.changed().await.is_err() {
            // The broker dropped the sender: treat as shutdown.
            return EndReason::Shutdown;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(name: &str, len: usize) -> Injected {
        Injected {
            name: name.into(),
            as_file: false,
            value: custody_core::secret::Value::from_vec(vec![b'v'; len]),
        }
    }

    /// A run that cannot start names the variable behind it (an older
    /// vault may hold what `set` now refuses).
    #[test]
    fn a_failed_start_names_the_variable_behind_it() {
        let e2big = std::io::Error::from_raw_os_error(7);
        let hint = spawn_hint(
            &e2big,
            &[injected("SMALL", 10), injected("CERT", 200 * 1024)],
        );
        assert!(
            hint.contains("CERT (200 KiB)") && hint.contains("--kind file"),
            "{hint}"
        );
        assert!(!hint.contains("SMALL"), "{hint}");
        let enoent = std::io::Error::from_raw_os_error(2);
        let hint = spawn_hint(&enoent, &[injected("LD_PRELOAD", 10)]);
        assert!(hint.contains("LD_PRELOAD"), "{hint}");
        assert_eq!(spawn_hint(&enoent, &[injected("TOKEN", 10)]), "");
    }
}
