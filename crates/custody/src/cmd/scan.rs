//! `custody scan`: find vault values (every form the masking engine knows)
//! and well-known token shapes in a tree, in git history, or in what is
//! staged; `--install-hook` makes that a git pre-commit check.
//!
//! Vault values are matched where they are: in the broker when it runs
//! unlocked (the `scan` request), else in this process after opening the
//! vault with the passphrase. Without a vault, or when no passphrase can be
//! asked for (a git hook has no terminal), only token shapes are checked,
//! and a warning says so. Findings name paths, lines, commits and variables
//! or rules, never the matched text.
//!
//! Exit status: 0 nothing found, 1 something found (a token shape counts:
//! a live key is a leak whether or not custody holds it; the hook blocks it
//! too, `git commit --no-verify` overrides once), 2 the scan could not run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use custody_broker::protocol::{Event, Request};
use custody_broker::scan::{self as walk, ScanReport, WalkOptions};
use custody_core::mask::MaskingEngine;
use custody_core::scan::{Detector, Finding};
use custody_core::secret::Passphrase;
use custody_core::vault::Vault;
use serde_json::Value;

use crate::access;
use crate::cmd::Global;
use crate::input::{self, SecretInput};

/// Marks a hook as custody's own (so reinstalling may overwrite it).
const HOOK_MARKER: &str = "# custody-pre-commit-hook";

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Directory (or repository) to scan.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Scan every blob and commit reachable from any ref, not the tree.
    #[arg(long, conflicts_with = "staged")]
    git_history: bool,
    /// Scan what is staged for the next commit (the pre-commit hook's mode).
    #[arg(long)]
    staged: bool,
    /// Install a git pre-commit hook that runs `custody scan --staged`.
    #[arg(long, conflicts_with_all = ["git_history", "staged"])]
    install_hook: bool,
    /// With --install-hook: replace a pre-commit hook that is not custody's.
    #[arg(long, requires = "install_hook")]
    force: bool,
}

/// Exit status when the scan could not run.
const EXIT_FAILED: u8 = 2;

pub fn run(g: &Global, secrets: &mut SecretInput, a: ScanArgs) -> anyhow::Result<ExitCode> {
    if a.install_hook {
        return install_hook(&a.path, a.force);
    }
    let root = std::fs::canonicalize(&a.path)
        .with_context(|| format!("cannot scan '{}'", a.path.display()))?;
    // Read once: the broker needs no passphrase, but a locked one sends
    // the scan back here, which does.
    let passphrase = if g.passphrase_stdin {
        Some(secrets.passphrase()?)
    } else {
        None
    };
    let report = match scan_in_broker(&root, &a)? {
        Some(r) => r,
        None => match scan_here(g, passphrase, &root, &a) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("custody: error: {e:#}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        },
    };
    print_report(g, &report)?;
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Asks the running, unlocked broker. `None`: no broker, or it is locked.
fn scan_in_broker(root: &Path, a: &ScanArgs) -> anyhow::Result<Option<ScanReport>> {
    let Some(mut client) = access::broker()? else {
        return Ok(None);
    };
    let bar = ProgressLine::new();
    if bar.on {
        eprint!("\rscanning in the broker…");
    }
    let res = client.call_streaming(
        Request::Scan {
            path: root.display().to_string(),
            git_history: a.git_history,
            staged: a.staged,
            index_file: index_file(),
            progress: bar.on,
        },
        &mut |event| {
            if let Event::ScanProgress { files, bytes } = event {
                bar.show(files, bytes);
            }
        },
    );
    bar.clear();
    match res {
        Ok(v) => Ok(Some(from_json(v)?)),
        Err(e) if e.code() == Some("locked") => {
            eprintln!("custody: the broker is locked; scanning here instead");
            Ok(None)
        }
        Err(e) => Err(access::broker_err(e)),
    }
}

fn from_json(v: Value) -> anyhow::Result<ScanReport> {
    let findings = v["findings"]
        .as_array()
        .ok_or_else(|| anyhow!("unexpected answer from the broker"))?
        .iter()
        .map(|f| Finding {
            path: f["path"].as_str().unwrap_or_default().to_owned(),
            line: f["line"].as_u64(),
            variable: f["variable"].as_str().map(str::to_owned),
            rule: f["rule"].as_str().and_then(rule_name),
            commit: f["commit"].as_str().map(str::to_owned),
        })
        .collect();
    Ok(ScanReport {
        findings,
        files: v["files"].as_u64().unwrap_or(0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        truncated: v["truncated"].as_bool().unwrap_or(false),
        skipped_dynamic: v["skipped_dynamic"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
    })
}

/// The static name of a rule the broker reported.
fn rule_name(name: &str) -> Option<&'static str> {
    custody_core::scan::RULES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
}

/// The engine of every vault value, opened here with the passphrase; `None`
/// (with a warning) when there is no vault or no way to ask.
fn engine_here(
    g: &Global,
    passphrase: Option<Passphrase>,
    hook: bool,
) -> anyhow::Result<Option<(MaskingEngine, Vec<String>)>> {
    let path = access::vault_path()?;
    if !path.exists() {
        if !g.json {
            eprintln!("custody: no vault (run `custody init`): checking token shapes only");
        }
        return Ok(None);
    }
    let passphrase = if let Some(p) = passphrase {
        p
    } else if input::has_tty() {
        input::prompt_passphrase("Vault passphrase: ", "--passphrase-stdin")?
    } else if hook {
        // A commit hook never lets a commit through unchecked.
        anyhow::bail!(
            "commit blocked: the staged files could not be checked for vault values (the broker is locked and there is no terminal to ask for the passphrase). Run `custody unlock` and commit again, or skip the check knowingly with `git commit --no-verify`"
        );
    } else {
        eprintln!(
            "custody: warning: vault values NOT checked (no broker unlocked, no terminal for the passphrase): run `custody unlock`; checking token shapes only"
        );
        return Ok(None);
    };
    let vault = Vault::unlock(&path, passphrase.expose())?;
    let values = walk::vault_values(&vault, &|_| true)?;
    let dynamic = walk::dynamic_variables(&vault, &|_| true)?;
    drop(vault);
    Ok(Some((
        MaskingEngine::new(values.iter().map(|(n, v)| (n.as_str(), v.as_slice()))),
        dynamic,
    )))
}

fn scan_here(
    g: &Global,
    passphrase: Option<Passphrase>,
    root: &Path,
    a: &ScanArgs,
) -> anyhow::Result<ScanReport> {
    let (engine, skipped_dynamic) = match engine_here(g, passphrase, a.staged)? {
        Some((e, d)) => (Some(Arc::new(e)), d),
        None => (None, Vec::new()),
    };
    let det = Detector::new(engine, true);
    let bar = ProgressLine::new();
    let progress = |files: u64, bytes: u64| bar.show(files, bytes);
    let progress: Option<walk::Progress<'_>> = bar.on.then_some(&progress);
    let report = if a.git_history {
        walk::scan_git_history(&det, root, progress)
    } else if a.staged {
        walk::scan_staged(&det, root, index_file().as_deref().map(Path::new))
    } else {
        walk::scan_tree(&det, root, &WalkOptions::tree(), progress)
    };
    bar.clear();
    let mut report = report?;
    report.skipped_dynamic = skipped_dynamic;
    Ok(report)
}

/// The index a pre-commit hook must read (`git commit -a` and
/// `git commit PATH` stage into a temporary one), made absolute.
fn index_file() -> Option<String> {
    let raw = std::env::var_os("GIT_INDEX_FILE")?;
    let path = PathBuf::from(raw);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    Some(path.display().to_string())
}

/// A `\r` progress line on stderr, at most ten updates a second.
struct ProgressLine {
    on: bool,
    start: Instant,
    last: Mutex<Instant>,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            on: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, files: u64, bytes: u64) {
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed() < Duration::from_millis(100) {
            return;
        }
        *last = Instant::now();
        let mut err = std::io::stderr().lock();
        let mib = bytes as f64 / (1024.0 * 1024.0);
        let secs = self.start.elapsed().as_secs_f64();
        let _ = write!(
            err,
            "\r\x1b[2Kscanning: {files} files, {mib:.1} MiB ({:.0} MiB/s, {secs:.0} s)",
            mib / secs.max(0.001)
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

fn print_report(g: &Global, r: &ScanReport) -> anyhow::Result<()> {
    if g.json {
        return crate::output::json(r);
    }
    let mut out = std::io::stdout().lock();
    for f in &r.findings {
        let mut place = crate::output::field(&f.path);
        if let Some(l) = f.line {
            place.push_str(&format!(":{l}"));
        }
        if let Some(c) = &f.commit {
            place = format!("{} {place}", c.get(..12).unwrap_or(c));
        }
        match (&f.variable, f.rule) {
            (Some(v), _) => writeln!(out, "{place}: value of {v}")?,
            (None, Some(rule)) => writeln!(out, "{place}: {rule} (token shape)")?,
            (None, None) => {}
        }
    }
    if !r.skipped_dynamic.is_empty() {
        eprintln!(
            "custody: not looked for (dynamic, minted per lease, no stored value): {}",
            r.skipped_dynamic
                .iter()
                .map(|v| crate::output::field(v))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mib = r.bytes as f64 / (1024.0 * 1024.0);
    let summary = format!(
        "{} finding(s) in {} file(s), {mib:.1} MiB{}",
        r.findings.len(),
        r.files,
        if r.truncated { " (truncated)" } else { "" }
    );
    if r.findings.is_empty() {
        writeln!(out, "{summary}")?;
    } else {
        eprintln!("{summary}: rotate what leaked; values are never shown");
    }
    Ok(())
}

/// The hook: custody's absolute path when it is still there, else `custody`
/// on PATH.
fn hook_text() -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "custody".into());
    format!(
        "#!/bin/sh\n{HOOK_MARKER}\n# Installed by `custody scan --install-hook`: blocks a commit whose staged\n# files carry a vault value or a known token shape. Bypass once with\n# `git commit --no-verify`.\ncustody={}\n[ -x \"$custody\" ] || custody=custody\nexec \"$custody\" scan --staged .\n",
        shlex::try_quote(&exe).unwrap_or_else(|_| "custody".into())
    )
}

fn install_hook(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "--path-format=absolute", "--git-path", "hooks"])
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "'{}' is not in a git repository: run `git init` first, or pass the repository's path",
            path.display()
        );
    }
    let hooks = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::create_dir_all(&hooks)
        .with_context(|| format!("cannot create '{}'", hooks.display()))?;
    let hook = hooks.join("pre-commit");
    if let Ok(existing) = std::fs::read_to_string(&hook)
        && !existing.contains(HOOK_MARKER)
        && !force
    {
        bail!(
            "'{}' exists and is not custody's: add `custody scan --staged` to it yourself, or pass --force to replace it",
            hook.display()
        );
    }
    std::fs::write(&hook, hook_text())
        .with_context(|| format!("cannot write '{}'", hook.display()))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make '{}' executable", hook.display()))?;
    println!("installed {}", hook.display());
    Ok(ExitCode::SUCCESS)
}
