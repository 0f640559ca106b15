//! `custody mcp install CLIENT [--project] [--dry-run]`: add (or bring up to
//! date) the custody MCP server in an agent client's config file. The merge
//! itself is in [`crate::mcp_install`]; this file finds the file, reads it
//! with a size cap, writes it atomically and reports what changed.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use serde_json::json;

use super::Global;
use crate::mcp_install::{self, Action, Client, Locations, Plan, Scope, ServerEntry};
use crate::output;

/// The largest config file read. `~/.claude.json` keeps per-project history
/// and grows to megabytes; anything past this is not a config we should
/// rewrite.
const MAX_CONFIG_LEN: u64 = 64 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The agent client to set up.
    #[arg(value_enum)]
    client: Client,
    /// Edit the project's config in the current directory (e.g. `.mcp.json`)
    /// instead of the user's (e.g. `~/.claude.json`).
    #[arg(long)]
    project: bool,
    /// Show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a snippet for the project's AGENTS.md / CLAUDE.md / GEMINI.md
    /// that tells the agent to use custody's tools and never ask for
    /// secrets; change nothing.
    #[arg(long)]
    agents_md: bool,
}

/// What an agent should know about custody, for its instructions file.
fn agents_md(client: Client) -> String {
    format!(
        "## Secrets: use custody\n\
\n\
This project's credentials are in custody. Never ask the user to paste a secret, never read\n\
`.env` files or shell history for one, and never print or write a value.\n\
\n\
- `list_environments` (custody's MCP tool) shows the environments and variable *names*.\n\
- To run something that needs a secret (tests, migrations, deploys), call custody's `run`\n\
  tool with the environment and the exact command; custody asks the user to approve it,\n\
  injects the values, and returns the output with every value masked as `[masked:NAME]`.\n\
- If `run` answers `pending`, call `request_status` with the request id; do not loop.\n\
- If a variable is missing, `declare_variable` it (or `generate_secret` for a random one)\n\
  and tell the user to set its value with `custody set ENV VAR`.\n\
- Do not try to read custody's files, its socket, or other processes' environments.\n\
\n\
The user starts this agent with `custody agent -- {}`.\n",
        client.command()
    )
}

pub fn run(g: &Global, a: InstallArgs) -> anyhow::Result<ExitCode> {
    let client = a.client;
    if a.agents_md {
        print!("{}", agents_md(client));
        return Ok(ExitCode::SUCCESS);
    }
    let scope = if a.project {
        Scope::Project
    } else {
        Scope::User
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let home = non_empty_env("HOME").map(PathBuf::from);
    let path = match (scope, &home) {
        (Scope::User, None) => bail!(
            "HOME is not set, so {}'s user config cannot be found: set HOME, or use --project",
            client.title()
        ),
        (_, home) => client.config_path(scope, home.as_deref().unwrap_or(&cwd), &cwd),
    };

    let home_dir = home.clone();
    let entry = server_entry(&cwd, home)?;
    let target = resolve_symlink(&path)?;
    let existing = read_config(&target)?;
    let plan = mcp_install::plan(client, existing.as_deref(), &entry).map_err(|e| {
        anyhow!(
            "{} {e}; fix it or move it aside, then run again (the file was not changed)",
            path.display()
        )
    })?;
    if let (false, Some(text)) = (a.dry_run, &plan.new_text) {
        write_atomic(&target, text.as_bytes())
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    // The rules that let custody's tools run without the client's own prompt.
    let companion = match client.companion(scope, home_dir.as_deref().unwrap_or(&cwd), &cwd) {
        None => None,
        Some((kind, path)) => {
            let target = resolve_symlink(&path)?;
            let existing = read_config(&target)?;
            let plan = mcp_install::plan_companion(kind, existing.as_deref(), &custody_mcp::TOOL_NAMES)
                .map_err(|e| {
                    anyhow!(
                        "{} {e}; fix it or move it aside, then run again (custody's server entry was written; this file was not changed)",
                        path.display()
                    )
                })?;
            if let (false, Some(text)) = (a.dry_run, &plan.new_text) {
                write_atomic(&target, text.as_bytes())
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
            Some((path, existing.is_none(), plan))
        }
    };

    if g.json {
        let changes: Vec<_> = plan
            .changes
            .iter()
            .map(|c| json!({"key": c.key, "old": c.old, "new": c.new}))
            .collect();
        output::json(&json!({
            "client": client.id(),
            "scope": scope.to_string(),
            "path": path.display().to_string(),
            "action": plan.action.as_str(),
            "dry_run": a.dry_run,
            "changes": changes,
            "launcher": format!("custody agent -- {}", client.command()),
            "companion": companion.as_ref().map(|(p, _, plan)| json!({
                "path": p.display().to_string(),
                "action": plan.action.as_str(),
                "changes": plan.changes.iter().map(|c| json!({"key": c.key, "old": c.old, "new": c.new})).collect::<Vec<_>>(),
            })),
        }))?;
    } else {
        print_summary(client, scope, &path, existing.is_none(), a.dry_run, &plan);
        if let Some((p, new_file, plan)) = &companion {
            print_companion(client, p, *new_file, a.dry_run, plan);
        }
        print_notes(client, scope);
    }
    Ok(ExitCode::SUCCESS)
}

/// The entry for this custody binary and this environment's locations.
fn server_entry(cwd: &Path, home: Option<PathBuf>) -> anyhow::Result<ServerEntry> {
    let exe = std::env::current_exe().context("cannot find the path of the custody binary")?;
    let command = exe
        .to_str()
        .ok_or_else(|| anyhow!("the custody binary's path {} is not UTF-8", exe.display()))?
        .to_owned();
    // Relative values would be resolved against the agent's directory, not
    // ours: write them absolute.
    let abs = |name: &str| non_empty_env(name).map(|v| cwd.join(v));
    let loc = Locations {
        custody_home: abs("CUSTODY_HOME"),
        custody_runtime_dir: abs("CUSTODY_RUNTIME_DIR"),
        xdg_data_home: abs("XDG_DATA_HOME"),
        xdg_runtime_dir: abs("XDG_RUNTIME_DIR"),
        home,
        uid: rustix::process::getuid().as_raw(),
    };
    Ok(ServerEntry {
        command,
        args: vec!["mcp".to_owned()],
        env: mcp_install::server_env(&loc)?,
        approve_tools: true,
    })
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// Follows a symlinked config (dotfile managers link `~/.codex/config.toml`
/// into a repository) so the rename replaces the file, not the link.
fn resolve_symlink(path: &Path) -> anyhow::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).with_context(|| {
            format!(
                "{} is a symlink to a file that cannot be reached",
                path.display()
            )
        }),
        _ => Ok(path.to_owned()),
    }
}

/// The file's text, or `None` when it does not exist.
fn read_config(path: &Path) -> anyhow::Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() > MAX_CONFIG_LEN {
        bail!(
            "{} is larger than {} MiB; not a config custody will rewrite",
            path.display(),
            MAX_CONFIG_LEN >> 20
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_LEN {
        bail!(
            "{} grew past {} MiB while being read",
            path.display(),
            MAX_CONFIG_LEN >> 20
        );
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        anyhow!(
            "{} is not UTF-8 text; the file was not changed",
            path.display()
        )
    })
}

/// Writes `text` to `path` through a temporary file in the same directory
/// and a rename, so a reader sees the old file or the new one, never half.
/// Keeps an existing file's permissions (a new file is 0600); creates
/// missing parent directories 0700.
fn write_atomic(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let perms = fs::metadata(path).ok().map(|m| m.permissions());
    let mut tmp = tempfile::Builder::new()
        .prefix(".custody-install-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text)?;
    if let Some(p) = perms {
        tmp.as_file().set_permissions(p)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable; a directory that cannot be opened
    // for syncing (some network file systems) still has the new file.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn print_summary(
    client: Client,
    scope: Scope,
    path: &Path,
    new_file: bool,
    dry_run: bool,
    plan: &Plan,
) {
    let whose = format!("{}'s {scope} config {}", client.title(), path.display());
    let key = client.entry_key();
    let line = match (plan.action, dry_run) {
        (Action::Unchanged, _) => {
            println!("{whose}: {key} is already up to date");
            return;
        }
        (Action::Created, false) => format!("Added {key} to {whose}"),
        (Action::Created, true) => format!("Would add {key} to {whose}"),
        (Action::Updated, false) => format!("Updated {key} in {whose}"),
        (Action::Updated, true) => format!("Would update {key} in {whose}"),
    };
    let file_note = if new_file { " (new file)" } else { "" };
    println!("{line}{file_note}:");
    for c in &plan.changes {
        if let Some(old) = &c.old {
            println!("  - {} = {old}", c.key);
        }
        if let Some(new) = &c.new {
            println!("  + {} = {new}", c.key);
        }
    }
    if dry_run {
        println!("Dry run: nothing was written.");
    } else {
        println!(
            "Restart {} to load it; `custody status` lists the agent session once it connects.",
            client.title()
        );
    }
}

fn print_companion(client: Client, path: &Path, new_file: bool, dry_run: bool, plan: &Plan) {
    let what = format!(
        "{}'s rules for custody's tools in {}",
        client.title(),
        path.display()
    );
    match (plan.action, dry_run) {
        (Action::Unchanged, _) => println!("{what}: already up to date"),
        (_, true) => println!("Would write {what}:"),
        (_, false) => println!("Wrote {what}{}:", if new_file { " (new file)" } else { "" }),
    }
    for c in &plan.changes {
        if let Some(new) = &c.new {
            println!("  + {} = {new}", c.key);
        }
    }
}

/// What the human should know about the client beyond the files.
fn print_notes(client: Client, scope: Scope) {
    println!(
        "custody asks you to approve every run itself (PIN, exact command), so {} calls custody's tools without a prompt of its own (the others only list, declare empty slots or generate values nobody sees, as policy allows).",
        client.title()
    );
    println!(
        "Start it in custody's sandbox, so its shell cannot reach custody's files, your credential files or other processes: custody agent -- {}",
        client.command()
    );
    match (client, scope) {
        (Client::Gemini, Scope::Project) => println!(
            "Gemini CLI reads its allow rules from your user directory only: run `custody mcp install gemini` without --project too, or headless `gemini -p` will not offer custody's tools."
        ),
        (Client::Gemini, _) => println!(
            "Gemini CLI uses MCP servers only in a trusted folder: trust the project when Gemini asks (or `/permissions`); for one headless run, GEMINI_CLI_TRUST_WORKSPACE=true."
        ),
        _ => {}
    }
}
