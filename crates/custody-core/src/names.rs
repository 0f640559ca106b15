//! Environment and variable names: the rules, checked once at the edge.
//!
//! Names are not secret (the agent sees them by design), but they are still
//! sealed at rest so a copied vault file reveals nothing about the user's
//! infrastructure. Validated names are typed so the rest of the code never
//! handles an unchecked one.

use std::fmt;

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The rule for environment names, as shown to users.
pub const ENV_NAME_RULE: &str = "1-128 characters matching [a-z0-9][a-z0-9._-]*";
/// The rule for variable names, as shown to users.
pub const VAR_NAME_RULE: &str = "1-128 characters matching [A-Za-z_][A-Za-z0-9_]*";

/// A name that broke its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// An environment name broke [`ENV_NAME_RULE`].
    #[error("invalid environment name {shown}: use {ENV_NAME_RULE} (e.g. shop-dev)")]
    Environment {
        /// The offending name, quoted and shortened for display.
        shown: String,
    },
    /// A variable name broke [`VAR_NAME_RULE`].
    #[error("invalid variable name {shown}: use {VAR_NAME_RULE} (e.g. DATABASE_URL)")]
    Variable {
        /// The offending name, quoted and shortened for display.
        shown: String,
    },
}

/// Quotes a rejected name for an error message, bounded in length and with
/// control characters escaped so it cannot mangle a terminal.
fn shown(raw: &str) -> String {
    if raw.is_empty() {
        return "(empty)".to_owned();
    }
    let mut s: String = raw.chars().take(40).flat_map(char::escape_debug).collect();
    if raw.chars().count() > 40 {
        s.push('…');
    }
    format!("'{s}'")
}

/// A valid environment name, e.g. `shop-prod`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    /// Checks `raw` against [`ENV_NAME_RULE`].
    pub fn new(raw: &str) -> Result<Self, NameError> {
        let b = raw.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_NAME_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(EnvName(raw.to_owned()))
        } else {
            Err(NameError::Environment { shown: shown(raw) })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid variable name, e.g. `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VarName(String);

impl VarName {
    /// Checks `raw` against [`VAR_NAME_RULE`].
    pub fn new(raw: &str) -> Result<Self, NameError> {
        if is_valid_var_name(raw) {
            Ok(VarName(raw.to_owned()))
        } else {
            Err(NameError::Variable { shown: shown(raw) })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `raw` satisfies [`VAR_NAME_RULE`].
pub fn is_valid_var_name(raw: &str) -> bool {
    let b = raw.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for VarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["shop-dev", "a", "0", "x.y_z-1", &"a".repeat(128)] {
            assert!(EnvName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Shop", "-x", ".x", "a b", "a/b", "é", &"a".repeat(129)] {
            let err = EnvName::new(bad).unwrap_err().to_string();
            assert!(err.contains(ENV_NAME_RULE), "{err}");
        }
    }

    #[test]
    fn var_names() {
        for ok in ["A", "_", "DATABASE_URL", "a1", &"A".repeat(128)] {
            assert!(VarName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A.B", "Ä", &"A".repeat(129)] {
            let err = VarName::new(bad).unwrap_err().to_string();
            assert!(err.contains(VAR_NAME_RULE), "{err}");
        }
    }

    #[test]
    fn shown_is_bounded_and_escaped() {
        let err = VarName::new(&format!("\x1b[31m{}", "x".repeat(100)))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\x1b'));
        assert!(err.len() < 200);
        assert!(
            EnvName::new("")
                .unwrap_err()
                .to_string()
                .contains("(empty)")
        );
    }
}

/// Variables that change how programs load or what they run, rather than
/// carrying a credential: an agent that declares one and gets a human to
/// fill it in (or generates it) steers every command that variable reaches.
/// Agents may not declare or generate these (documented in
/// `docs/threat-model.md`); a human may, knowingly.
pub const LOADER_VARIABLES: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "PATH",
    "IFS",
    "CDPATH",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "HOME",
    "TMPDIR",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_EXEC_PATH",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "GCONV_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "GIT_PAGER",
    "GIT_EDITOR",
    "GIT_EXTERNAL_DIFF",
    "GIT_PROXY_COMMAND",
    "GIT_TEMPLATE_DIR",
    "LESSOPEN",
    "LESSCLOSE",
    "MANPAGER",
    "BROWSER",
    "SHELL",
    "ZDOTDIR",
    "XDG_CONFIG_HOME",
    "KUBECONFIG",
    "AWS_CONFIG_FILE",
    "RUSTC",
    "CC",
    "CXX",
    "LD",
    "MAKEFLAGS",
];

/// Name prefixes of the same kind: the dynamic loader's (`LD_PRELOAD`,
/// `LD_LIBRARY_PATH`, …, and macOS's `DYLD_*`), glibc's tunables and
/// malloc hooks, git's per-invocation config (`GIT_CONFIG_KEY_0`, …), npm's
/// config (`NPM_CONFIG_SCRIPT_SHELL`, …) and cargo's runners and wrappers.
pub const LOADER_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    "GLIBC_",
    "MALLOC_",
    "GIT_CONFIG_",
    "NPM_CONFIG_",
    "CARGO_TARGET_",
    "CARGO_BUILD_",
];

/// Longest `NAME=value` string Linux passes in a program's environment
/// (`MAX_ARG_STRLEN`, 32 pages of 4 KiB).
pub const MAX_ENV_STRING: usize = 128 * 1024;

/// Whether `name` is a [`LOADER_VARIABLES`] entry or starts with one of the
/// [`LOADER_PREFIXES`] (case-insensitively: some tools read either).
pub fn changes_how_programs_load(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    LOADER_VARIABLES.contains(&upper.as_str())
        || LOADER_PREFIXES.iter().any(|p| upper.starts_with(p))
}

#[cfg(test)]
mod loader_tests {
    use super::*;

    #[test]
    fn loader_variables_are_recognised_and_credentials_are_not() {
        for n in [
            "LD_PRELOAD",
            "ld_library_path",
            "BASH_ENV",
            "PATH",
            "NODE_OPTIONS",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_KEY_0",
            "DYLD_INSERT_LIBRARIES",
        ] {
            assert!(changes_how_programs_load(n), "{n}");
        }
        for n in [
            "DATABASE_URL",
            "STRIPE_API_KEY",
            "GITHUB_TOKEN",
            "ENVIRONMENT",
            "PATHFINDER_KEY",
            "HOMEPAGE_TOKEN",
        ] {
            assert!(!changes_how_programs_load(n), "{n}");
        }
    }
}
