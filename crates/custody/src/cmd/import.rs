//! `custody import ENV FILE`: move a dotenv file's secrets into the vault.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use custody_core::dotenv;
use zeroize::Zeroizing;

use super::{Global, env_name};
use crate::access;
use crate::input::SecretInput;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The environment (created if it does not exist).
    env: String,
    /// The dotenv file.
    file: PathBuf,
    /// After a complete import, overwrite the file with random bytes and
    /// remove it. Refused when any line was skipped.
    #[arg(long)]
    shred: bool,
    /// Read the approval PIN from a line of stdin (after the passphrase
    /// line with `--passphrase-stdin`; before a value read from stdin).
    #[arg(long)]
    pin_stdin: bool,
}

pub fn run(g: &Global, secrets: &mut SecretInput, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let env = env_name(&a.env)?;
    let text = read_bounded(&a.file)?;
    let mut backend = access::open_to_change(g, secrets, a.pin_stdin)?;
    let tty = std::io::stderr().is_terminal();
    let outcome = backend.import(&env, &text, &mut |done, total| {
        if tty {
            eprint!("\rimporting into {env}: {done}/{total}");
        }
    })?;
    drop(text);
    if tty {
        eprintln!();
    }
    let report = outcome.report;
    let mut shredded = false;
    // Shredding the working copy leaves every committed copy in history.
    let in_git = a.shred && tracked_by_git(&a.file);
    if in_git {
        eprintln!(
            "warning: {} is tracked by git: its values stay in every commit that holds it, whatever happens to this copy; rotate them, and check with `custody scan --git-history`",
            crate::output::field(&a.file.display().to_string())
        );
    }
    if a.shred {
        if outcome.skipped.is_empty() {
            shred(&a.file)?;
            shredded = true;
        } else {
            eprintln!(
                "warning: not shredding {}: {} line(s) were skipped and may hold secrets; fix them and import again, or remove the file yourself",
                a.file.display(),
                outcome.skipped.len()
            );
        }
    }
    if g.json {
        let mut v = serde_json::to_value(&outcome)?;
        v["environment"] = env.as_str().into();
        v["imported"] = (report.created + report.updated).into();
        v["shredded"] = shredded.into();
        v["tracked_by_git"] = in_git.into();
        output::json(&v)?;
    } else {
        if outcome.environment_created {
            println!("Created environment {env}");
        }
        println!(
            "Imported {} variable(s) into {env} ({} new, {} updated); skipped {} line(s)",
            report.created + report.updated,
            report.created,
            report.updated,
            outcome.skipped.len()
        );
        for s in &outcome.skipped {
            println!("  skipped line {}: {}", s.line, s.reason);
        }
        if shredded {
            println!("Shredded and removed {}", a.file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether git tracks `path` (in the repository around it, if any).
fn tracked_by_git(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-files", "--error-unmatch", "--"])
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn read_bounded(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let max = dotenv::MAX_INPUT_LEN;
    let mut text = Zeroizing::new(Vec::new());
    file.take(max as u64 + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() > max {
        bail!(
            "{} is larger than {max} bytes; is it really a dotenv file?",
            path.display()
        );
    }
    Ok(text)
}

/// Overwrites the file in place with random bytes, syncs, then removes it.
/// On copy-on-write or journaling file systems and SSDs old blocks may
/// survive; this still removes the plaintext from the ordinary file system.
fn shred(path: &Path) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to shred it", path.display()))?;
    let len = f.metadata()?.len();
    let mut block = [0u8; 64 * 1024];
    f.seek(SeekFrom::Start(0))?;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        custody_core::crypto::fill_random(&mut block[..n])?;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}
