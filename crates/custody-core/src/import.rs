//! Importing a dotenv file into an environment: the one implementation that
//! both the CLI's direct path and the broker use.
//!
//! Lines the parser rejects and values the vault would refuse are skipped up
//! front and reported by line number (never by value), so an import never
//! fails halfway through a batch because of one bad entry.

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::dotenv::{self, SkipReason};
use crate::names::EnvName;
use crate::vault::{ImportReport, MAX_VALUE_LEN, Vault, VaultError};

/// Variables per transaction: an interrupted import keeps a prefix of the
/// file, and each commit's fsync is shared by this many variables.
pub const BATCH: usize = 100;

/// A line that was not imported. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLine {
    /// 1-based line number where the entry starts.
    pub line: usize,
    /// Why (names the rule, never the value).
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportOutcome {
    /// Whether the environment had to be created.
    pub environment_created: bool,
    /// Variables created and updated.
    #[serde(flatten)]
    pub report: ImportReport,
    /// Lines not imported, by line number.
    pub skipped: Vec<SkippedLine>,
}

/// Parses `text` and imports it into `env` (created if missing), committing
/// every [`BATCH`] variables; `progress(done, total)` after each commit.
pub fn import_dotenv(
    vault: &mut Vault,
    env: &EnvName,
    text: &[u8],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImportOutcome, VaultError> {
    let parsed = dotenv::parse(text);
    // Values the vault would refuse are skipped like any other bad line:
    // too large to store, too large for a program's environment, or under
    // a name that changes how programs load.
    let refusal = |e: &dotenv::Entry| -> Option<String> {
        let len = e.value.expose_secret().len();
        if len > MAX_VALUE_LEN {
            Some(format!("value larger than {MAX_VALUE_LEN} bytes"))
        } else if e.name.as_str().len() + 1 + len > crate::names::MAX_ENV_STRING {
            Some(format!(
                "{} is too large for a program's environment (128 KiB): store it with `custody set --kind file`",
                e.name
            ))
        } else if crate::names::changes_how_programs_load(e.name.as_str()) {
            Some(format!(
                "{} changes how programs are found or loaded: every run would get it",
                e.name
            ))
        } else {
            None
        }
    };
    let (entries, refused): (Vec<_>, Vec<_>) = parsed
        .entries
        .into_iter()
        .partition(|e| refusal(e).is_none());
    let refused_lines: Vec<(usize, String)> = refused
        .iter()
        .map(|e| (e.line, refusal(e).unwrap_or_default()))
        .collect();
    let oversized_lines: Vec<usize> = refused_lines.iter().map(|(l, _)| *l).collect();
    drop(refused); // zeroizes the values
    let mut skipped: Vec<SkippedLine> = parsed
        .skipped
        .iter()
        .map(|s| SkippedLine {
            line: s.line,
            reason: match &s.reason {
                // The later value this one lost to was itself skipped.
                SkipReason::Duplicate { name, kept_line }
                    if oversized_lines.contains(kept_line) =>
                {
                    format!("{name} is set again on line {kept_line}, which was skipped")
                }
                r => r.to_string(),
            },
        })
        .chain(
            refused_lines
                .into_iter()
                .map(|(line, reason)| SkippedLine { line, reason }),
        )
        .collect();
    skipped.sort_by_key(|s| s.line);

    let environment_created = match vault.environment(env) {
        Ok(_) => false,
        Err(VaultError::NoSuchEnvironment(_)) => {
            vault.create_environment(env, "")?;
            true
        }
        Err(e) => return Err(e),
    };
    let total = entries.len();
    let report = vault.import(
        env,
        entries.iter().map(|e| (&e.name, e.value.expose_secret())),
        BATCH,
        |done| progress(done, total),
    )?;
    Ok(ImportOutcome {
        environment_created,
        report,
        skipped,
    })
}
