//! The command source: a human-configured `mint` command prints a token,
//! a `revoke` command ends it. For `gh`, cloud CLIs and the like.
//!
//! Both run with `sh -c` in a clean environment (the broker's `PATH`,
//! `HOME`, `USER`, `LANG`, `TMPDIR`, plus `CUSTODY_*` facts). The token is
//! read from the mint command's stdout and handed to the revoke command in
//! `CUSTODY_TOKEN` and on stdin; it is never logged. A failed mint's error
//! carries the last lines of its stderr, masked (the token, if it printed
//! one, and the values the lease injects) and cut to printable text; the
//! revoke command's stderr is dropped.

use std::time::Duration;

use custody_core::sources::CommandSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::contain::{Command, Stdio};

/// Longest a mint or revoke command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes a mint command may print.
const MAX_TOKEN: usize = 64 * 1024;
/// Most bytes of a mint command's stderr kept (its tail).
const MAX_STDERR: usize = 4096;
/// Lines and characters of that tail an error carries.
const STDERR_LINES: usize = 3;
const STDERR_CHARS: usize = 300;
/// What the commands inherit from the broker's environment.
const INHERIT: &[&str] = &["PATH", "HOME", "USER", "LANG", "TMPDIR"];

/// Why a command failed: its exit status or the OS error class.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CommandFailure(pub String);

fn command(script: &str, facts: &[(&str, &str)]) -> Command {
    let mut c = Command::new("/bin/sh", "sh");
    c.arg("-c").arg(script);
    // In the broker's directory, as configured commands always ran.
    if let Ok(dir) = std::env::current_dir() {
        c.current_dir(dir);
    }
    for k in INHERIT {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v.as_encoded_bytes());
        }
    }
    for (k, v) in facts {
        c.env(k, v);
    }
    c.kill_on_drop(true);
    c
}

fn status_failure(what: &str, s: std::process::ExitStatus) -> CommandFailure {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => CommandFailure(format!("the {what} command exited with code {c}")),
        (None, Some(sig)) => {
            CommandFailure(format!("the {what} command was killed by signal {sig}"))
        }
        _ => CommandFailure(format!("the {what} command failed")),
    }
}

/// A mint that failed, and what it printed on stdout anyway (a token may
/// exist even though the command failed afterwards: it must be revoked).
pub struct MintFailure {
    /// What went wrong, with the tail of the command's stderr.
    pub failure: CommandFailure,
    /// Its stdout, when it printed something.
    pub printed: Option<custody_core::secret::Token>,
}

/// The last lines of a failed command's stderr, for its error: `mask`ed,
/// printable ASCII only (anything else is `?`), at most [`STDERR_LINES`]
/// lines and [`STDERR_CHARS`] characters. `None` when it printed nothing.
fn stderr_tail(raw: &[u8], mask: &custody_core::mask::MaskingEngine) -> Option<String> {
    let (masked, _) = mask.mask_all(raw);
    let text: String = String::from_utf8_lossy(&masked)
        .chars()
        .map(|c| {
            if c == '\n' || (' '..='~').contains(&c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" | ");
    if tail.is_empty() {
        return None;
    }
    let cut: String = tail.chars().take(STDERR_CHARS).collect();
    Some(if cut.len() < tail.len() {
        format!("{cut}…")
    } else {
        cut
    })
}

/// Runs the mint command; returns the token (stdout, without the trailing
/// newline). `mask` names the values its stderr must not show (the lease's
/// other values); the token it printed is masked too.
pub async fn mint(
    source: &CommandSource,
    lease_id: &str,
    ttl_secs: u64,
    expires: &str,
    mask: &[(&str, &[u8])],
) -> Result<custody_core::secret::Token, MintFailure> {
    let fail = |failure: CommandFailure| MintFailure {
        failure,
        printed: None,
    };
    let ttl = ttl_secs.to_string();
    let mut cmd = command(
        &source.mint,
        &[
            ("CUSTODY_LEASE_ID", lease_id),
            ("CUSTODY_TTL_SECONDS", &ttl),
            ("CUSTODY_EXPIRES_AT", expires),
        ],
    );
    cmd.stdout(Stdio::Piped).stderr(Stdio::Piped);
    let mut child = cmd.spawn().map_err(|e| {
        fail(CommandFailure(format!(
            "cannot start the mint command ({})",
            e.kind()
        )))
    })?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| fail(CommandFailure("the mint command has no stdout".into())))?;
    let mut err = child
        .stderr
        .take()
        .ok_or_else(|| fail(CommandFailure("the mint command has no stderr".into())))?;
    // Its stderr, read alongside (its tail kept), so a chatty command never
    // blocks on a full pipe.
    let errors = async move {
        let mut kept = Zeroizing::new(Vec::new());
        let mut buf = Zeroizing::new([0u8; 4096]);
        while let Ok(n) = err.read(&mut buf[..]).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > MAX_STDERR {
                let cut = kept.len() - MAX_STDERR;
                kept.drain(..cut);
            }
        }
        kept
    };
    let run = async {
        let mut token = Zeroizing::new(Vec::new());
        let mut buf = Zeroizing::new([0u8; 4096]);
        loop {
            let n = out
                .read(&mut buf[..])
                .await
                .map_err(|e| CommandFailure(format!("reading the token failed ({})", e.kind())))?;
            if n == 0 {
                break;
            }
            if token.len() + n > MAX_TOKEN {
                return Err(CommandFailure(format!(
                    "the mint command printed more than {MAX_TOKEN} bytes"
                )));
            }
            token.extend_from_slice(&buf[..n]);
        }
        let status = child
            .wait()
            .await
            .map_err(|e| CommandFailure(format!("the mint command failed ({})", e.kind())))?;
        Ok((token, status))
    };
    let (ran, stderr) = tokio::time::timeout(COMMAND_TIMEOUT, async { tokio::join!(run, errors) })
        .await
        .map_err(|_| fail(CommandFailure("the mint command timed out".into())))?;
    let (mut token, status) = ran.map_err(fail)?;
    while token.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        token.pop();
    }
    if status.success() && !token.is_empty() {
        return Ok(token.into());
    }
    let failure = if status.success() {
        CommandFailure("the mint command printed no token".into())
    } else {
        status_failure("mint", status)
    };
    let engine = custody_core::mask::MaskingEngine::new(
        mask.iter()
            .copied()
            .chain((!token.is_empty()).then_some(("TOKEN", token.as_slice()))),
    );
    let failure = match stderr_tail(&stderr, &engine) {
        Some(tail) => CommandFailure(format!("{}: {tail}", failure.0)),
        None => CommandFailure(format!("{} (nothing on stderr)", failure.0)),
    };
    Err(MintFailure {
        failure,
        printed: (!token.is_empty()).then(|| token.into()),
    })
}

/// Runs the revoke command for `token` (none configured: nothing to do, the
/// token ends at its own TTL).
pub async fn revoke(source: &CommandSource, token: &[u8]) -> Result<(), CommandFailure> {
    let Some(script) = &source.revoke else {
        return Ok(());
    };
    let text = std::str::from_utf8(token)
        .map_err(|_| CommandFailure("the token is not UTF-8; it cannot be passed on".into()))?;
    let mut cmd = command(script, &[("CUSTODY_TOKEN", text)]);
    cmd.stdin(Stdio::Piped);
    let mut child = cmd
        .spawn()
        .map_err(|e| CommandFailure(format!("cannot start the revoke command ({})", e.kind())))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that ignores stdin closes it early: not an error.
            let _ = stdin.write_all(token).await;
        }
        child
            .wait()
            .await
            .map_err(|e| CommandFailure(format!("the revoke command failed ({})", e.kind())))
    };
    let status = tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| CommandFailure("the revoke command timed out".into()))??;
    if status.success() {
        Ok(())
    } else {
        Err(status_failure("revoke", status))
    }
}
