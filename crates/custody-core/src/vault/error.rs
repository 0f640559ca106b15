//! Errors from the vault. Built from paths, names and ids; never a value.

use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::names::NameError;

/// What went wrong with the vault, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No vault file at the expected path.
    #[error("no vault at {}: run `custody init` first", path.display())]
    NotFound {
        /// Where the vault was looked for.
        path: PathBuf,
    },
    /// `init` found a vault already there.
    #[error("a vault already exists at {}; refusing to overwrite it (remove it yourself if you really mean to start over)", path.display())]
    AlreadyExists {
        /// The existing vault.
        path: PathBuf,
    },
    /// The passphrase did not unwrap the vault key.
    #[error("wrong passphrase (the vault was not changed)")]
    WrongPassphrase,
    /// The file is not a custody vault, or SQLite found it damaged.
    #[error("{} is not a readable custody vault ({detail}); it was not modified: restore it from a backup", path.display())]
    Corrupt {
        /// The vault file.
        path: PathBuf,
        /// What was found wrong (never file contents).
        detail: String,
    },
    /// The file was written by a newer custody.
    #[error("{} was written by a newer custody (vault format {found}; this build reads up to {supported}): upgrade custody", path.display())]
    NewerFormat {
        /// The vault file.
        path: PathBuf,
        /// The format version in the file.
        found: i64,
        /// The newest format this build understands.
        supported: i64,
    },
    /// A stored record failed authentication: moved, swapped or edited bytes.
    #[error(
        "the stored {what} failed authentication: the vault file was modified outside custody; restore it from a backup"
    )]
    Tampered {
        /// Which record, by name (e.g. `value of shop-dev/DB_PASSWORD`).
        what: String,
    },
    /// No such environment.
    #[error("environment '{0}' does not exist: see `custody env ls`")]
    NoSuchEnvironment(String),
    /// The environment name is taken.
    #[error("environment '{0}' already exists")]
    EnvironmentExists(String),
    /// No such variable in that environment.
    #[error("variable '{var}' does not exist in environment '{env}': see `custody ls {env}`")]
    NoSuchVariable {
        /// The environment.
        env: String,
        /// The variable.
        var: String,
    },
    /// The variable is declared but has no value yet.
    #[error(
        "variable '{var}' in environment '{env}' has no value yet: set it with `custody set {env} {var}`"
    )]
    NotSet {
        /// The environment.
        env: String,
        /// The variable.
        var: String,
    },
    /// The variable is dynamic: minted per lease by `source`, never stored.
    /// The broker asks the source instead of the vault.
    #[error(
        "variable '{var}' in environment '{env}' is minted per lease by source '{from}'; it has no stored value"
    )]
    Dynamic {
        /// The environment.
        env: String,
        /// The variable.
        var: String,
        /// The source, `TYPE:NAME` (not `source`: thiserror reserves it).
        from: String,
    },
    /// A value was given for a dynamic variable.
    #[error(
        "variable '{var}' in environment '{env}' is dynamic (minted per lease): it takes no value; change its kind first"
    )]
    DynamicHasNoValue {
        /// The environment.
        env: String,
        /// The variable.
        var: String,
    },
    /// A value over the size limit.
    #[error("value is {len} bytes; the limit is {max} bytes")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A description holding a control character (or a bidi embedding,
    /// override or isolate), which could rewrite what a terminal shows.
    #[error(
        "description holds a control character (U+{code:04X}); descriptions may hold any text but no controls"
    )]
    DescriptionControl {
        /// The first offending character's code point.
        code: u32,
    },
    /// A variable that would make every run of its environment fail.
    #[error("refusing '{var}' in environment '{env}': {why}")]
    BreaksEveryRun {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// Bindings that cannot apply to this variable.
    #[error("cannot bind '{var}' in environment '{env}': {why}")]
    NotBindable {
        /// Environment.
        env: String,
        /// Variable.
        var: String,
        /// Why.
        why: String,
    },
    /// A description over the size limit.
    #[error("description is {len} bytes; the limit is {max} bytes")]
    DescriptionTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name broke its rule.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The approval PIN is too short.
    #[error("the approval PIN must be at least {min} characters")]
    PinTooShort {
        /// The minimum length.
        min: usize,
    },
    /// An error from the cryptographic layer.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An error from SQLite that is not corruption (locked, disk full, ...).
    #[error("vault storage error: {0}")]
    Storage(String),
    /// A file-system error around the vault.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
