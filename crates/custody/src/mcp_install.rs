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

fn merge_toml(text: &str, entry: &ServerEntry) -> Result<Plan, InstallError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| InstallError::Malformed {
                format: "TOML",
                detail: toml_detail(text, &e),
            })?;
    let prefix = Client::Codex.entry_key();
    let root = doc.as_table_mut();
    if !root.contains_key("mcp_servers") {
        // Implicit: no empty `[mcp_servers]` header, only `[mcp_servers.custody]`.
        let mut t = Table::new();
        t.set_implicit(true);
        root.insert("mcp_servers", Item::Table(t));
    }
    let wrong = |key: &str| InstallError::WrongShape {
        key: key.to_owned(),
        kind: "table",
    };
    let servers = root
        .get_mut("mcp_servers")
        .ok_or_else(|| wrong("mcp_servers"))?;
    let mut changes = Vec::new();
    // `Item::get_mut` would insert the key: look it up through `TableLike`.
    let present = servers
        .as_table_like()
        .ok_or_else(|| wrong("mcp_servers"))?
        .contains_key(SERVER_NAME);
    let action = if present {
        let t = servers
            .as_table_like_mut()
            .and_then(|s| s.get_mut(SERVER_NAME))
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| wrong(prefix))?;
        update_toml_entry(t, entry, prefix, &mut changes)?;
        if changes.is_empty() {
            Action::Unchanged
        } else {
            Action::Updated
        }
    } else {
        let fields = toml_fields(entry);
        for (k, v) in &fields {
            added(&mut changes, prefix, k, render_toml(v));
        }
        match servers {
            Item::Table(t) => {
                let mut new = Table::new();
                new.set_dotted(t.is_dotted());
                for (k, v) in fields {
                    new.insert(&k, Item::Value(v));
                }
                t.insert(SERVER_NAME, Item::Table(new));
            }
            Item::Value(Toml::InlineTable(t)) => {
                let mut new = InlineTable::new();
                for (k, v) in fields {
                    new.insert(k, v);
                }
                t.insert(SERVER_NAME, Toml::InlineTable(new));
            }
            _ => return Err(wrong("mcp_servers")),
        }
        Action::Created
    };
    Ok(finish(action, changes, || doc.to_string()))
}

/// The entry's keys in the order a new entry is written.
fn toml_fields(entry: &ServerEntry) -> Vec<(String, Toml)> {
    let mut fields = vec![
        ("command".to_owned(), Toml::from(entry.command.as_str())),
        ("args".to_owned(), toml_array(&entry.args)),
    ];
    if entry.approve_tools {
        fields.push((CODEX_APPROVAL_KEY.to_owned(), Toml::from(CODEX_APPROVE)));
    }
    if !entry.env.is_empty() {
        let env: InlineTable = entry
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), Toml::from(v.as_str())))
            .collect();
        fields.push(("env".to_owned(), Toml::InlineTable(env)));
    }
    fields
}

fn toml_array(items: &[String]) -> Toml {
    Toml::Array(items.iter().map(String::as_str).collect())
}

fn update_toml_entry(
    t: &mut dyn TableLike,
    entry: &ServerEntry,
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    set_toml(
        t,
        prefix,
        "command",
        Toml::from(entry.command.as_str()),
        changes,
    );
    set_toml(t, prefix, "args", toml_array(&entry.args), changes);
    // Added when missing; a value the user chose is kept.
    if entry.approve_tools && !t.contains_key(CODEX_APPROVAL_KEY) {
        set_toml(
            t,
            prefix,
            CODEX_APPROVAL_KEY,
            Toml::from(CODEX_APPROVE),
            changes,
        );
    }
    let env_key = format!("{prefix}.env");
    match t.get_mut("env") {
        None => {
            if !entry.env.is_empty() {
                let env: InlineTable = entry
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), Toml::from(v.as_str())))
                    .collect();
                for (k, v) in env.iter() {
                    added(changes, &env_key, k, render_toml(v));
                }
                t.insert("env", Item::Value(Toml::InlineTable(env)));
            }
        }
        Some(item) => {
            let inline = item.is_inline_table();
            let env = item
                .as_table_like_mut()
                .ok_or_else(|| InstallError::WrongShape {
                    key: env_key.clone(),
                    kind: "table",
                })?;
            let before = changes.len();
            for name in MANAGED_ENV {
                match entry.env.get(name) {
                    Some(v) => set_toml(env, &env_key, name, Toml::from(v.as_str()), changes),
                    None => {
                        if let Some(old) = env.remove(name) {
                            changes.push(Change {
                                key: format!("{env_key}.{name}"),
                                old: Some(render_item(&old)),
                                new: None,
                            });
                        }
                    }
                }
            }
            if changes.len() > before {
                if env.is_empty() {
                    // Drop an env table that only our removals emptied.
                    t.remove("env");
                } else if inline {
                    // Re-space `{ A = "x" , B = "y"}` after a removal; a
                    // `[...env]` table keeps its layout and comments.
                    env.fmt();
                }
            }
        }
    }
    Ok(())
}

/// Sets `t[key] = new` unless it already holds that value; keeps the old
/// value's surrounding whitespace and trailing comment.
fn set_toml(
    t: &mut dyn TableLike,
    prefix: &str,
    key: &str,
    mut new: Toml,
    changes: &mut Vec<Change>,
) {
    match t.get_mut(key) {
        Some(Item::Value(old)) if same_toml(old, &new) => {}
        Some(item) => {
            let old = render_item(item);
            if let Item::Value(v) = item {
                *new.decor_mut() = v.decor().clone();
            }
            changes.push(Change {
                key: format!("{prefix}.{key}"),
                old: Some(old),
                new: Some(render_toml(&new)),
            });
            *item = Item::Value(new);
        }
        None => {
            added(changes, prefix, key, render_toml(&new));
            t.insert(key, Item::Value(new));
        }
    }
}

fn same_toml(a: &Toml, b: &Toml) -> bool {
    match (a, b) {
        (Toml::String(x), Toml::String(y)) => x.value() == y.value(),
        (Toml::Array(x), Toml::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_toml(p, q))
        }
        _ => false,
    }
}

fn render_toml(v: &Toml) -> String {
    v.clone().decorated("", "").to_string()
}

fn render_item(item: &Item) -> String {
    match item {
        Item::Value(v) => render_toml(v),
        Item::Table(_) => "(a table)".to_owned(),
        Item::ArrayOfTables(_) => "(an array of tables)".to_owned(),
        Item::None => "(nothing)".to_owned(),
    }
}

/// "line L, column C: reason", without the parser's quote of the line.
fn toml_detail(text: &str, e: &toml_edit::TomlError) -> String {
    let reason = e.message().lines().next().unwrap_or("parse error").trim();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {reason}")
        }
        None => reason.to_owned(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

// ---------------------------------------------------------------------------
// JSON (Claude Code, Gemini CLI, Cursor): serde_json with preserve_order
// keeps key order; the file is re-printed with two-space indentation.

/// A JSON config's text as a tree (no file, or an empty one: an empty
/// object).
fn parse_json(existing: Option<&str>) -> Result<Json, InstallError> {
    match existing {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str::<Json>(text).map_err(|e| InstallError::Malformed {
                format: "JSON",
                // serde_json's message names the position, never the text.
                detail: e.to_string(),
            })
        }
        _ => Ok(Json::Object(Map::new())),
    }
}

fn wrong_object(key: &str) -> InstallError {
    InstallError::WrongShape {
        key: key.to_owned(),
        kind: "object",
    }
}

fn merge_json(
    client: Client,
    existing: Option<&str>,
    entry: &ServerEntry,
) -> Result<Plan, InstallError> {
    let mut root = parse_json(existing)?;
    let wrong = wrong_object;
    let prefix = client.entry_key();
    let servers = root
        .as_object_mut()
        .ok_or_else(|| wrong("(the top level)"))?
        .entry("mcpServers")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| wrong("mcpServers"))?;
    let mut changes = Vec::new();
    let action = if let Some(existing) = servers.get_mut(SERVER_NAME) {
        let obj = existing.as_object_mut().ok_or_else(|| wrong(prefix))?;
        update_json_entry(client, obj, entry, prefix, &mut changes)?;
        if changes.is_empty() {
            Action::Unchanged
        } else {
            Action::Updated
        }
    } else {
        let mut obj = Map::new();
        if client == Client::Claude {
            obj.insert("type".into(), Json::from("stdio"));
        }
        obj.insert("command".into(), Json::from(entry.command.as_str()));
        obj.insert("args".into(), Json::from(entry.args.clone()));
        if !entry.env.is_empty() {
            let env: Map<String, Json> = entry
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                .collect();
            obj.insert("env".into(), Json::Object(env));
        }
        for (k, v) in &obj {
            added(&mut changes, prefix, k, v.to_string());
        }
        servers.insert(SERVER_NAME.into(), Json::Object(obj));
        Action::Created
    };
    Ok(finish(action, changes, || {
        // Serializing a `Value` cannot fail (all keys are strings).
        let mut s = serde_json::to_string_pretty(&root).unwrap_or_default();
        s.push('\n');
        s
    }))
}

fn update_json_entry(
    client: Client,
    obj: &mut Map<String, Json>,
    entry: &ServerEntry,
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    // Claude Code reads a missing `type` as stdio; only a different one
    // (an "http" entry under our name) is corrected.
    if client == Client::Claude && obj.get("type").is_some_and(|t| t != "stdio") {
        set_json(obj, prefix, "type", Json::from("stdio"), changes);
    }
    set_json(
        obj,
        prefix,
        "command",
        Json::from(entry.command.as_str()),
        changes,
    );
    set_json(obj, prefix, "args", Json::from(entry.args.clone()), changes);
    let env_key = format!("{prefix}.env");
    if !obj.contains_key("env") && entry.env.is_empty() {
        return Ok(());
    }
    let env = obj
        .entry("env")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| InstallError::WrongShape {
            key: env_key.clone(),
            kind: "object",
        })?;
    let before = changes.len();
    for name in MANAGED_ENV {
        match entry.env.get(name) {
            Some(v) => set_json(env, &env_key, name, Json::from(v.as_str()), changes),
            None => {
                if let Some(old) = env.shift_remove(name) {
                    changes.push(Change {
                        key: format!("{env_key}.{name}"),
                        old: Some(old.to_string()),
                        new: None,
                    });
                }
            }
        }
    }
    if changes.len() > before && env.is_empty() {
        obj.shift_remove("env");
    }
    Ok(())
}

fn set_json(
    obj: &mut Map<String, Json>,
    prefix: &str,
    key: &str,
    new: Json,
    changes: &mut Vec<Change>,
) {
    let old = obj.get(key);
    if old == Some(&new) {
        return;
    }
    changes.push(Change {
        key: format!("{prefix}.{key}"),
        old: old.map(Json::to_string),
        new: Some(new.to_string()),
    });
    // `insert` on an existing key keeps its position (preserve_order).
    obj.insert(key.to_owned(), new);
}

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
#[path = "mcp_install_tests.rs"]
mod tests;
