//! The human-written policy file, `$CUSTODY_HOME/policy.toml`: per agent
//! client, which environments it can see, which always need a fresh
//! approval, the longest lease, and pre-approved exact commands.
//!
//! ```toml
//! [defaults]
//! max_ttl = "1h"                 # longest lease or grant, for every client
//! always_approve = ["*-prod"]    # every run in these needs a fresh approval
//!
//! [clients.codex]                # the agent client (canonical name, see `clients`); "cli" is `custody run`
//! environments = ["shop-*"]      # what it may see and use (default: all)
//! always_approve = ["shop-staging"]
//! max_ttl = "30m"
//! require_sandbox = true         # only ever under `custody agent` (also in [defaults])
//!
//! [[clients.codex.preapproved]]  # runs without asking, until `expires`
//! argv = ["cargo", "test"]
//! program = "/home/me/.cargo/bin/cargo"   # optional; default: argv[0] as the broker's PATH finds it
//! cwd = "/home/me/shop"
//! environments = ["shop-dev"]
//! expires = "2026-12-31T00:00:00Z"
//! ```
//!
//! Patterns are environment names where `*` matches any run of characters.
//! A missing file means: every environment visible, nothing pre-approved,
//! 1 hour maximum. Unknown keys are errors, so a typo never silently widens
//! access.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// File name of the policy inside the home directory.
pub const POLICY_FILE: &str = "policy.toml";
/// Longest lease when the policy does not say.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Largest policy file read.
const MAX_POLICY_LEN: u64 = 1 << 20;

/// A policy problem, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the policy {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid policy TOML.
    #[error("invalid policy {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (from the TOML parser, or ours).
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawRules,
    #[serde(default)]
    clients: BTreeMap<String, RawRules>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    environments: Option<Vec<String>>,
    #[serde(default)]
    always_approve: Vec<String>,
    max_ttl: Option<String>,
    require_sandbox: Option<bool>,
    #[serde(default)]
    preapproved: Vec<RawPreapproved>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreapproved {
    argv: Vec<String>,
    program: Option<String>,
    cwd: Option<String>,
    environments: Vec<String>,
    expires: String,
}

/// A pre-approved exact command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preapproved {
    /// Exact argv.
    pub argv: Vec<String>,
    /// The absolute path `argv[0]` must resolve to (`None`: wherever it
    /// resolves with the broker's own `PATH`, never the requester's).
    pub program: Option<String>,
    /// Exact cwd (`None`: any).
    pub cwd: Option<String>,
    /// Exact set of environments.
    pub environments: BTreeSet<String>,
    /// When it stops applying.
    pub expires: SystemTime,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    environments: Option<Vec<String>>,
    always_approve: Vec<String>,
    max_ttl: Option<Duration>,
    require_sandbox: Option<bool>,
    preapproved: Vec<Preapproved>,
}

/// The parsed policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    defaults: Rules,
    clients: BTreeMap<String, Rules>,
}

/// `*` glob over environment names.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Policy {
    /// Reads the policy file; a missing file is the default policy.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Policy::default()),
            Err(source) => {
                return Err(PolicyError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let mut text = String::new();
        file.take(MAX_POLICY_LEN)
            .read_to_string(&mut text)
            .map_err(|source| PolicyError::Io {
                path: shown.clone(),
                source,
            })?;
        Policy::parse(&text).map_err(|message| PolicyError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let defaults = rules(raw.defaults, "defaults")?;
        let mut clients = BTreeMap::new();
        for (name, r) in raw.clients {
            let parsed = rules(r, &format!("clients.{name}"))?;
            // Tables are keyed by canonical client names, so a table written
            // for `codex-mcp-client` and one for `codex` are the same client.
            let key = crate::clients::canonical_policy_name(&name);
            if clients.insert(key.clone(), parsed).is_some() {
                return Err(format!(
                    "clients.{name}: another table already holds the rules of client '{key}' (the same client under another name)"
                ));
            }
        }
        Ok(Policy { defaults, clients })
    }

    fn client(&self, client: &str) -> Option<&Rules> {
        self.clients.get(client).or_else(|| self.clients.get("*"))
    }

    /// The client tables' names (canonical), for `custody policy check`.
    pub fn client_names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// Whether `client` may see and use `env`.
    pub fn visible(&self, client: &str, env: &str) -> bool {
        let list = self
            .client(client)
            .and_then(|r| r.environments.as_ref())
            .or(self.defaults.environments.as_ref());
        list.is_none_or(|l| l.iter().any(|p| glob(p, env)))
    }

    /// Whether every run of `client` in `env` needs a fresh, single-use approval.
    pub fn always_approve(&self, client: &str, env: &str) -> bool {
        let hit = |r: &Rules| r.always_approve.iter().any(|p| glob(p, env));
        hit(&self.defaults) || self.client(client).is_some_and(hit)
    }

    /// The longest lease or grant for `client`.
    pub fn max_ttl(&self, client: &str) -> Duration {
        self.client(client)
            .and_then(|r| r.max_ttl)
            .or(self.defaults.max_ttl)
            .unwrap_or(DEFAULT_MAX_TTL)
    }

    /// Whether `client` may only ever use custody from inside a
    /// `custody agent` sandbox (`require_sandbox`, per client or in
    /// `[defaults]`; the client's own table wins).
    pub fn require_sandbox(&self, client: &str) -> bool {
        self.client(client)
            .and_then(|r| r.require_sandbox)
            .or(self.defaults.require_sandbox)
            .unwrap_or(false)
    }

    /// The pre-approval covering exactly this command for `client` at `now`,
    /// if any. Never for environments that always need approval.
    pub fn preapproved(
        &self,
        client: &str,
        argv: &[String],
        cwd: &str,
        environments: &BTreeSet<String>,
        now: SystemTime,
    ) -> Option<&Preapproved> {
        if environments.iter().any(|e| self.always_approve(client, e)) {
            return None;
        }
        self.client(client)
            .into_iter()
            .chain(std::iter::once(&self.defaults))
            .flat_map(|r| r.preapproved.iter())
            .find(|p| {
                p.argv == argv
                    && p.cwd.as_deref().is_none_or(|c| c == cwd)
                    && &p.environments == environments
                    && now < p.expires
            })
    }
}

fn rules(raw: RawRules, at: &str) -> Result<Rules, String> {
    let max_ttl = raw
        .max_ttl
        .map(|t| {
            crate::duration::parse(&t)
                .ok_or_else(|| format!("{at}.max_ttl: '{t}' is not a duration like 30m or 1h"))
        })
        .transpose()?;
    let mut pre = Vec::new();
    for (i, p) in raw.preapproved.into_iter().enumerate() {
        if p.argv.is_empty() {
            return Err(format!("{at}.preapproved[{i}]: argv is empty"));
        }
        let expires = crate::audit::parse_rfc3339(&p.expires).ok_or_else(|| {
            format!(
                "{at}.preapproved[{i}].expires: '{}' is not a UTC time like 2026-12-31T00:00:00Z",
                p.expires
            )
        })?;
        if let Some(prog) = &p.program
            && !prog.starts_with('/')
        {
            return Err(format!(
                "{at}.preapproved[{i}].program: '{prog}' is not an absolute path"
            ));
        }
        pre.push(Preapproved {
            argv: p.argv,
            program: p.program,
            cwd: p.cwd,
            environments: p.environments.into_iter().collect(),
            expires,
        });
    }
    Ok(Rules {
        environments: raw.environments,
        always_approve: raw.always_approve,
        max_ttl,
        require_sandbox: raw.require_sandbox,
        preapproved: pre,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    const EXAMPLE: &str = r#"
[defaults]
max_ttl = "1h"
always_approve = ["*-prod"]

[clients.codex]
environments = ["shop-*"]
always_approve = ["shop-staging"]
max_ttl = "30m"

[[clients.codex.preapproved]]
argv = ["cargo", "test"]
cwd = "/home/me/shop"
environments = ["shop-dev"]
expires = "2099-12-31T00:00:00Z"

[[clients.codex.preapproved]]
argv = ["make", "deploy"]
environments = ["shop-prod"]
expires = "2099-12-31T00:00:00Z"
"#;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn example_policy() {
        let p = Policy::parse(EXAMPLE).unwrap();
        assert!(p.visible("codex", "shop-dev"));
        assert!(!p.visible("codex", "billing-dev"));
        assert!(
            p.visible("claude", "billing-dev"),
            "other clients: all visible"
        );
        assert!(p.always_approve("codex", "shop-prod"));
        assert!(p.always_approve("claude", "x-prod"));
        assert!(p.always_approve("codex", "shop-staging"));
        assert!(!p.always_approve("claude", "shop-staging"));
        assert_eq!(p.max_ttl("codex"), Duration::from_secs(1800));
        assert_eq!(p.max_ttl("claude"), Duration::from_secs(3600));

        let argv = vec!["cargo".to_string(), "test".to_string()];
        let now = SystemTime::now();
        assert!(
            p.preapproved("codex", &argv, "/home/me/shop", &set(&["shop-dev"]), now)
                .is_some()
        );
        assert!(
            p.preapproved("codex", &argv, "/elsewhere", &set(&["shop-dev"]), now)
                .is_none()
        );
        assert!(
            p.preapproved(
                "codex",
                &argv[..1],
                "/home/me/shop",
                &set(&["shop-dev"]),
                now
            )
            .is_none()
        );
        assert!(
            p.preapproved("claude", &argv, "/home/me/shop", &set(&["shop-dev"]), now)
                .is_none()
        );
        let deploy = vec!["make".to_string(), "deploy".to_string()];
        assert!(
            p.preapproved("codex", &deploy, "/", &set(&["shop-prod"]), now)
                .is_none(),
            "always-approve environments are never pre-approved"
        );
    }

    #[test]
    fn expired_preapproval_does_not_apply() {
        let p = Policy::parse(
            "[[clients.cli.preapproved]]\nargv=[\"true\"]\nenvironments=[\"e\"]\nexpires=\"2000-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        assert!(
            p.preapproved(
                "cli",
                &["true".to_string()],
                "/",
                &set(&["e"]),
                SystemTime::now()
            )
            .is_none()
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (text, needle) in [
            ("[defaults]\nmax_ttl = \"soon\"", "defaults.max_ttl"),
            ("[defaults]\nmax_tll = \"1h\"", "unknown field"),
            (
                "[[clients.x.preapproved]]\nargv=[]\nenvironments=[]\nexpires=\"2099-01-01T00:00:00Z\"",
                "argv is empty",
            ),
            (
                "[[clients.x.preapproved]]\nargv=[\"a\"]\nenvironments=[]\nexpires=\"tomorrow\"",
                "not a UTC time",
            ),
            ("not toml [", ""),
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let missing = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap();
        assert!(missing.visible("any", "thing"));
        assert_eq!(missing.max_ttl("any"), DEFAULT_MAX_TTL);
    }

    /// The documented example in docs/ must stay valid.
    #[test]
    fn documented_example_parses() {
        let text = include_str!("../../../docs/policy.example.toml");
        let p = Policy::parse(text).unwrap();
        assert!(p.visible("codex", "shop-dev") && !p.visible("codex", "billing"));
        assert!(p.always_approve("cli", "shop-prod"));
        assert_eq!(p.max_ttl("cli"), Duration::from_secs(7200));
    }

    #[test]
    fn globs() {
        assert!(glob("*", "x"));
        assert!(glob("a*", "abc"));
        assert!(glob("*-prod", "shop-prod"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[test]
    fn require_sandbox_per_client_and_by_default() {
        let p = Policy::parse("[clients.codex]\nrequire_sandbox = true\n").unwrap();
        assert!(p.require_sandbox("codex"));
        assert!(!p.require_sandbox("claude-code"));
        let p = Policy::parse(
            "[defaults]\nrequire_sandbox = true\n[clients.mine]\nrequire_sandbox = false\n",
        )
        .unwrap();
        assert!(p.require_sandbox("claude-code"));
        assert!(!p.require_sandbox("mine"));
        assert!(!Policy::default().require_sandbox("codex"));
    }
}
