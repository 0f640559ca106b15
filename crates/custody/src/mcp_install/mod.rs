//! `custody mcp install`: where each agent client keeps its MCP server list,
//! what custody's entry in it looks like, and how that entry is merged into
//! an existing file. Pure: text in, text out; the command in
//! `cmd/mcp_install.rs` reads and writes the files.
//!
//! The merge owns only custody's entry, and inside it only `command`, `args`
//! and the `CUSTODY_HOME` / `CUSTODY_RUNTIME_DIR` variables of `env` (plus
//! `type` for Claude Code and `default_tools_approval_mode` for Codex). Claude
//! Code and Gemini CLI get a companion file with rules that let custody's tools
//! run without the client's own prompt (custody asks the human itself):
//! custody's entries in Claude Code's `permissions.allow`, and Gemini CLI's
//! `policies/custody.toml`, which is custody's alone. Every other key, server, comment (TOML) and key
//! order (JSON) is kept, so a user's own additions such as Codex's
//! `tool_timeout_sec` or Gemini's `trust` survive a re-install.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use toml_edit::{DocumentMut, InlineTable, Item, Table, TableLike, Value as Toml};

mod client_json;
mod codex_toml;

use client_json::{merge_json, parse_json, wrong_object};
use codex_toml::merge_toml;

/// The name of custody's entry in every client's server list.
pub const SERVER_NAME: &str = "custody";

/// The environment variables custody's entry may carry.
pub const MANAGED_ENV: [&str; 2] = ["CUSTODY_HOME", "CUSTODY_RUNTIME_DIR"];

/// An agent client that `custody mcp install` can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// OpenAI Codex CLI: `config.toml`, `[mcp_servers.custody]`.
    Codex,
    /// Anthropic Claude Code: `~/.claude.json` or `.mcp.json`, `mcpServers`.
    #[value(alias = "claude-code")]
    Claude,
    /// Google Gemini CLI: `settings.json`, `mcpServers`.
    #[value(alias = "gemini-cli")]
    Gemini,
    /// Cursor: `mcp.json`, `mcpServers`.
    Cursor,
}

/// Which of a client's config files to edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The user's own file under `$HOME`: every project sees the server.
    User,
    /// The file in the project directory (the current directory).
    Project,
}

impl Client {
    /// The name used on the command line and in `--json` output.
    pub fn id(self) -> &'static str {
        match self {
            Client::Codex => "codex",
            Client::Claude => "claude",
            Client::Gemini => "gemini",
            Client::Cursor => "cursor",
        }
    }

    /// The product name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Client::Codex => "Codex",
            Client::Claude => "Claude Code",
            Client::Gemini => "Gemini CLI",
            Client::Cursor => "Cursor",
        }
    }

    /// The command that starts the client, for `custody agent -- COMMAND`.
    pub fn command(self) -> &'static str {
        match self {
            Client::Codex => "codex",
            Client::Claude => "claude",
            Client::Gemini => "gemini",
            Client::Cursor => "cursor-agent",
        }
    }

    /// The config file for `scope`: under `home` for [`Scope::User`], under
    /// `project` for [`Scope::Project`].
    pub fn config_path(self, scope: Scope, home: &Path, project: &Path) -> PathBuf {
        match (self, scope) {
            (Client::Codex, Scope::User) => home.join(".codex/config.toml"),
            (Client::Codex, Scope::Project) => project.join(".codex/config.toml"),
            (Client::Claude, Scope::User) => home.join(".claude.json"),
            (Client::Claude, Scope::Project) => project.join(".mcp.json"),
            (Client::Gemini, Scope::User) => home.join(".gemini/settings.json"),
            (Client::Gemini, Scope::Project) => project.join(".gemini/settings.json"),
            (Client::Cursor, Scope::User) => home.join(".cursor/mcp.json"),
            (Client::Cursor, Scope::Project) => project.join(".cursor/mcp.json"),
        }
    }

    /// The dotted path of custody's entry inside the file, for messages.
    pub fn entry_key(self) -> &'static str {
        match self {
            Client::Codex => "mcp_servers.custody",
            _ => "mcpServers.custody",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::User => "user",
            Scope::Project => "project",
        })
    }
}

/// The custody server entry to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// Absolute path of the custody binary.
    pub command: String,
    /// Its arguments: `["mcp"]`.
    pub args: Vec<String>,
    /// The managed variables to set (names from [`MANAGED_ENV`]); a managed
    /// variable missing here is removed from an existing entry.
    pub env: BTreeMap<String, String>,
    /// Let the client call custody's tools without its own confirmation
    /// (Codex: `default_tools_approval_mode = "approve"` in the entry).
    /// custody asks the human for every run itself; without this, headless
    /// clients (`codex exec`) refuse every tool that is not read-only.
    pub approve_tools: bool,
}

/// Codex's per-server setting for tool confirmations, and the value that
/// leaves them to custody.
pub const CODEX_APPROVAL_KEY: &str = "default_tools_approval_mode";
const CODEX_APPROVE: &str = "approve";

/// A second file some clients need so that custody's tools run without the
/// client's own confirmation prompt (custody asks the human itself): Claude
/// Code's permission rules, Gemini CLI's policy rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    /// `settings.json`: `permissions.allow` gets `mcp__custody__TOOL`.
    ClaudePermissions,
    /// `policies/custody.toml`: one `allow` rule per tool (the whole file is
    /// custody's).
    GeminiPolicy,
}

impl Client {
    /// The companion file for `scope`, if this client needs one there.
    /// Gemini CLI reads policy files from the user's directory only.
    pub fn companion(
        self,
        scope: Scope,
        home: &Path,
        project: &Path,
    ) -> Option<(Companion, PathBuf)> {
        match (self, scope) {
            (Client::Claude, Scope::User) => Some((
                Companion::ClaudePermissions,
                home.join(".claude/settings.json"),
            )),
            (Client::Claude, Scope::Project) => Some((
                Companion::ClaudePermissions,
                project.join(".claude/settings.json"),
            )),
            (Client::Gemini, Scope::User) => Some((
                Companion::GeminiPolicy,
                home.join(".gemini/policies/custody.toml"),
            )),
            _ => None,
        }
    }
}

/// Merges the companion's rules for `tools` into `existing`.
pub fn plan_companion(
    companion: Companion,
    existing: Option<&str>,
    tools: &[&str],
) -> Result<Plan, InstallError> {
    match companion {
        Companion::ClaudePermissions => merge_claude_permissions(existing, tools),
        Companion::GeminiPolicy => {
            let text = gemini_policy(tools);
            let action = match existing {
                None => Action::Created,
                Some(old) if old == text => Action::Unchanged,
                Some(_) => Action::Updated,
            };
            let changes = tools
                .iter()
                .map(|t| Change {
                    key: format!("rule {SERVER_NAME}/{t}"),
                    old: None,
                    new: Some("allow".into()),
                })
                .collect();
            let changes = if action == Action::Unchanged {
                Vec::new()
            } else {
                changes
            };
            Ok(finish(action, changes, || text))
        }
    }
}

/// Gemini CLI's policy rules for custody's tools.
fn gemini_policy(tools: &[&str]) -> String {
    let mut text = String::from(
        "# Written by `custody mcp install gemini` (it rewrites this file).\n\
         # custody asks you to approve every run itself (PIN, exact command), so\n\
         # Gemini CLI runs custody's tools without a prompt of its own; headless\n\
         # `gemini -p` does not offer tools without an allow rule at all.\n",
    );
    for t in tools {
        text.push_str(&format!(
            "\n[[rule]]\nmcpName = \"{SERVER_NAME}\"\ntoolName = \"{t}\"\ndecision = \"allow\"\npriority = 100\n"
        ));
    }
    text
}

/// Adds `mcp__custody__TOOL` to `permissions.allow` in a Claude Code
/// settings file; every other key and rule stays.
fn merge_claude_permissions(existing: Option<&str>, tools: &[&str]) -> Result<Plan, InstallError> {
    let mut root = parse_json(existing)?;
    let wrong = wrong_object;
    let allow = root
        .as_object_mut()
        .ok_or_else(|| wrong("(the top level)"))?
        .entry("permissions")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| wrong("permissions"))?
        .entry("allow")
        .or_insert_with(|| Json::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| InstallError::WrongShape {
            key: "permissions.allow".into(),
            kind: "array",
        })?;
    let mut changes = Vec::new();
    for t in tools {
        let rule = Json::from(format!("mcp__{SERVER_NAME}__{t}"));
        if !allow.contains(&rule) {
            changes.push(Change {
                key: "permissions.allow".into(),
                old: None,
                new: Some(rule.to_string()),
            });
            allow.push(rule);
        }
    }
    let action = match (existing.is_some(), changes.is_empty()) {
        (_, true) => Action::Unchanged,
        (false, false) => Action::Created,
        (true, false) => Action::Updated,
    };
    Ok(finish(action, changes, || {
        let mut s = serde_json::to_string_pretty(&root).unwrap_or_default();
        s.push('\n');
        s
    }))
}

/// The parts of the installing environment that decide where custody's
/// files are. Paths are absolute; unset or empty variables are `None`.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// `$CUSTODY_HOME`.
    pub custody_home: Option<PathBuf>,
    /// `$CUSTODY_RUNTIME_DIR`.
    pub custody_runtime_dir: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// The real user id (the `/tmp/custody-$UID` default).
    pub uid: u32,
}

/// What went wrong; the caller adds the file's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The existing file does not parse. `detail` is the parser's position
    /// and reason, never a quote of the file (it may hold other servers'
    /// tokens).
    #[error("is not valid {format} ({detail})")]
    Malformed {
        /// "TOML" or "JSON".
        format: &'static str,
        /// Where and why.
        detail: String,
    },
    /// A key on the way to custody's entry holds something other than a
    /// table / object.
    #[error("`{key}` is not a {kind}")]
    WrongShape {
        /// The dotted key.
        key: String,
        /// "table" or "object".
        kind: &'static str,
    },
    /// A location variable is not UTF-8, so it cannot be written to a
    /// text config.
    #[error("{var} is not valid UTF-8; config files hold text")]
    NotUtf8 {
        /// The variable (or "the custody binary's path").
        var: String,
    },
}

/// What the merge did to custody's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The entry was added (the file may be new too).
    Created,
    /// An existing, different entry was brought up to date.
    Updated,
    /// The entry was already right; nothing to write.
    Unchanged,
}

impl Action {
    /// The word used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One managed key that changed, with values rendered in the file's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key, e.g. `mcp_servers.custody.command`.
    pub key: String,
    /// The old value; `None` when the key was added.
    pub old: Option<String>,
    /// The new value; `None` when the key was removed.
    pub new: Option<String>,
}

/// The result of merging custody's entry into a file's text.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What happened to the entry.
    pub action: Action,
    /// The managed keys that changed (empty when unchanged).
    pub changes: Vec<Change>,
    /// The file's new text; `None` when nothing changed.
    pub new_text: Option<String>,
}

/// The `env` the entry should carry: the managed variables whose value in
/// the installing environment differs from what custody would find in a
/// cleared environment (Codex keeps only HOME, PATH, USER and a few more),
/// plus any that are set explicitly. Then `custody mcp` under the agent
/// reaches the same vault and broker socket as the human's `custody`.
pub fn server_env(loc: &Locations) -> Result<BTreeMap<String, String>, InstallError> {
    let mut env = BTreeMap::new();
    let default_home = loc.home.as_ref().map(|h| h.join(".local/share/custody"));
    let home = match (&loc.custody_home, &loc.xdg_data_home) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(x)) => Some(x.join("custody")).filter(|p| Some(p) != default_home.as_ref()),
        (None, None) => None,
    };
    let default_runtime = PathBuf::from(format!("/tmp/custody-{}", loc.uid));
    let runtime = match (&loc.custody_runtime_dir, &loc.xdg_runtime_dir) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(x)) => Some(x.join("custody")).filter(|p| *p != default_runtime),
        (None, None) => None,
    };
    for (name, value) in MANAGED_ENV.into_iter().zip([home, runtime]) {
        if let Some(p) = value {
            let s = p.to_str().ok_or_else(|| InstallError::NotUtf8 {
                var: name.to_owned(),
            })?;
            env.insert(name.to_owned(), s.to_owned());
        }
    }
    Ok(env)
}

/// Merges `entry` into `existing` (the file's text, `None` when there is no
/// file) in `client`'s format.
pub fn plan(
    client: Client,
    existing: Option<&str>,
    entry: &ServerEntry,
) -> Result<Plan, InstallError> {
    match client {
        Client::Codex => merge_toml(existing.unwrap_or(""), entry),
        _ => merge_json(client, existing, entry),
    }
}

// ---------------------------------------------------------------------------
// TOML (Codex): toml_edit keeps comments, whitespace and key order.

// ---------------------------------------------------------------------------

fn added(changes: &mut Vec<Change>, prefix: &str, key: &str, new: String) {
    changes.push(Change {
        key: format!("{prefix}.{key}"),
        old: None,
        new: Some(new),
    });
}

fn finish(action: Action, changes: Vec<Change>, text: impl FnOnce() -> String) -> Plan {
    let new_text = (action != Action::Unchanged).then(text);
    Plan {
        action,
        changes,
        new_text,
    }
}

#[cfg(test)]
mod tests;
