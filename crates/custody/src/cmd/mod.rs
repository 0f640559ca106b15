//! The subcommands: one file each, dispatched from [`Command`].

mod agent;
mod approve;
mod audit;
mod audit_view;
mod bind;
mod completions;
mod daemon;
mod demo;
mod env;
mod generate;
mod grants;
mod import;
mod init;
mod lazy;
mod leases;
mod lock;
mod ls;
mod mcp;
mod mcp_install;
mod passwd;
mod policy;
mod revoke;
mod run;
mod run_pty;
mod scan;
mod set;
mod source;
mod status;
mod unlock;
mod unset;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::input::SecretInput;
use lazy::Lazy;

/// custody: agents get access, never custody.
///
/// A local credential broker for AI coding agents. Values are never accepted
/// on the command line: they come from a hidden prompt or stdin.
#[derive(Debug, Parser)]
#[command(name = "custody", version, about, long_about = None, after_help = TOP_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Examples and environment, after the command list of `custody --help`.
const TOP_HELP: &str = "\
Examples:
  custody demo                                  a guided tour in a throwaway vault
  custody init && custody unlock                create the vault, start the broker
  custody env create shop-dev && custody set shop-dev API_KEY
  custody run -e shop-dev -- cargo test         run with secrets injected (after approval)
  custody mcp install claude                    connect an agent client over MCP
  custody agent -- claude                       start it in custody's sandbox
  custody approve                               approve what agents ask for (PIN)
  custody audit --since 1h                      who used what

Environment:
  CUSTODY_HOME         vault, audit log (default $XDG_DATA_HOME/custody, else ~/.local/share/custody)
  CUSTODY_RUNTIME_DIR  broker socket, lease files (default $XDG_RUNTIME_DIR/custody, else /tmp/custody-$UID)
  CUSTODY_MCP_APPROVAL_WAIT  how long `custody mcp` waits for an approval (default 50s)
  EDITOR               for `custody policy edit`

Scripts: --passphrase-stdin and --pin-stdin read secrets from stdin, one per line, in that order.
Exit codes: 0 ok (run: the command's code), 1 error, 2 wrong passphrase or PIN.";

/// Subcommands that never read the vault passphrase: `--passphrase-stdin`
/// is accepted there (scripts pass it everywhere) but not shown in their
/// help.
const NO_PASSPHRASE: &[&str] = &[
    "run",
    "approve",
    "deny",
    "grants",
    "leases",
    "revoke",
    "source",
    "lock",
    "status",
    "mcp",
    "agent",
    "demo",
    "completions",
    "man",
];

/// Subcommands that print nothing for machines: `--json` is accepted but
/// not shown in their help.
const NO_JSON: &[&str] = &["mcp", "demo", "daemon", "completions", "man"];

/// The command line as clap parses it, with the global options hidden
/// from the help of subcommands where they mean nothing.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let hide = |cmd: clap::Command, subs: &[&str], id: &'static str, long: &'static str| {
        subs.iter().fold(cmd, |c, sub| {
            c.mut_subcommand(*sub, |s| hidden_everywhere(s, id, long))
        })
    };
    let cmd = hide(
        Cli::command(),
        NO_PASSPHRASE,
        "passphrase_stdin",
        "passphrase-stdin",
    );
    hide(cmd, NO_JSON, "json", "json")
}

/// Gives `cmd` and all its subcommands a hidden flag of the global
/// option's id. Clap does not copy a global option into a command that
/// has one of that id, and hands its value up to [`Global`] as usual.
fn hidden_everywhere(cmd: clap::Command, id: &'static str, long: &'static str) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let flag = clap::Arg::new(id)
        .long(long)
        .action(clap::ArgAction::SetTrue)
        .hide(true);
    names.iter().fold(cmd.arg(flag), |c, n| {
        c.mut_subcommand(n.as_str(), |s| hidden_everywhere(s, id, long))
    })
}

/// Runs `work` on a thread of its own, on a single-threaded runtime (what
/// waiting for signals needs), and returns at once. If no runtime can be
/// built, nothing runs.
pub fn on_signal_thread<F>(work: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(work());
    });
}

pub use crate::global::Global;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new vault (passphrase and approval PIN).
    Init(Lazy<init::InitArgs>),
    /// Change the vault passphrase (re-wraps the vault key only).
    Passwd(Lazy<passwd::PasswdArgs>),
    /// Create, list, describe and remove environments.
    #[command(subcommand)]
    Env(Lazy<env::EnvCommand>),
    /// Store a variable's value (hidden prompt, or stdin).
    Set(Lazy<set::SetArgs>),
    /// Bind a variable to the destinations its value may go to (a lease's
    /// proxy puts it in; the child holds a placeholder).
    Bind(Lazy<bind::BindArgs>),
    /// Dynamic sources: a PostgreSQL role or a command's token per lease.
    #[command(subcommand)]
    Source(source::SourceCommand),
    /// Store a random value that nobody sees.
    Generate(Lazy<generate::GenerateArgs>),
    /// The policy in force (sealed in the vault): show, apply, edit, check;
    /// list the agent clients policy can name.
    #[command(subcommand)]
    Policy(Lazy<policy::PolicyCommand>),
    /// Remove a variable.
    Unset(Lazy<unset::UnsetArgs>),
    /// List variables: names, kinds, descriptions; never values.
    Ls(Lazy<ls::LsArgs>),
    /// Import a dotenv file into an environment.
    Import(Lazy<import::ImportArgs>),
    /// Run the broker in the foreground.
    Daemon(Lazy<daemon::DaemonArgs>),
    /// Unlock the vault in the broker (starting the broker if needed).
    Unlock(Lazy<unlock::UnlockArgs>),
    /// Lock: forget the key, kill every lease, cancel pending requests.
    Lock(Lazy<lock::LockArgs>),
    /// Broker state: locked or not, sessions, requests, grants, leases.
    Status(Lazy<status::StatusArgs>),
    /// Run a command with an environment's secrets injected (after approval).
    Run(Lazy<run::RunArgs>),
    /// Approve pending requests (interactive queue, or one by id).
    Approve(Lazy<approve::ApproveArgs>),
    /// Deny a pending request.
    Deny(Lazy<approve::DenyArgs>),
    /// Grants in force.
    Grants(Lazy<grants::GrantsArgs>),
    /// Running leases.
    Leases(Lazy<leases::LeasesArgs>),
    /// Revoke a grant or lease (or --all): running processes are killed.
    Revoke(Lazy<revoke::RevokeArgs>),
    /// Read or verify the audit log.
    Audit(Lazy<audit::AuditArgs>),
    /// Serve the MCP tools on stdio for an agent client (`mcp install` adds
    /// custody to a client's config).
    Mcp(mcp::McpArgs),
    /// Find vault values and known token shapes in a tree, git history or
    /// the staged files; `--install-hook` adds a git pre-commit check.
    Scan(Lazy<scan::ScanArgs>),
    /// Print a shell completion script: bash, zsh, fish, elvish, powershell.
    Completions(Lazy<completions::CompletionsArgs>),
    /// Print the man page (roff): `custody man > ~/.local/share/man/man1/custody.1`.
    Man(Lazy<completions::ManArgs>),
    /// Start an agent client (claude, codex, gemini, a shell) inside the
    /// custody sandbox, identified by the name you give it.
    Agent(Lazy<agent::AgentArgs>),
    /// A guided tour in a throwaway vault: an agent over MCP, an approval,
    /// masked output, the audit trail.
    Demo(Lazy<demo::DemoArgs>),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut secrets = SecretInput::new();
    let g = &cli.global;
    match cli.command {
        Command::Init(Lazy(a)) => init::run(g, &mut secrets, a),
        Command::Passwd(Lazy(a)) => passwd::run(g, &mut secrets, a),
        Command::Env(Lazy(c)) => env::run(g, &mut secrets, c),
        Command::Set(Lazy(a)) => set::run(g, &mut secrets, a),
        Command::Bind(Lazy(a)) => bind::run(g, &mut secrets, a),
        Command::Generate(Lazy(a)) => generate::run(g, &mut secrets, a),
        Command::Policy(Lazy(c)) => policy::run(g, &mut secrets, c),
        Command::Source(c) => source::run(g, &mut secrets, c),
        Command::Unset(Lazy(a)) => unset::run(g, &mut secrets, a),
        Command::Ls(Lazy(a)) => ls::run(g, &mut secrets, a),
        Command::Import(Lazy(a)) => import::run(g, &mut secrets, a),
        Command::Daemon(Lazy(a)) => daemon::run(g, &mut secrets, a),
        Command::Unlock(Lazy(a)) => unlock::unlock(g, &mut secrets, a),
        Command::Lock(Lazy(a)) => lock::lock(g, &mut secrets, a),
        Command::Status(Lazy(a)) => status::status(g, &mut secrets, a),
        Command::Run(Lazy(a)) => run::run(g, &mut secrets, a),
        Command::Approve(Lazy(a)) => approve::approve(g, &mut secrets, a),
        Command::Deny(Lazy(a)) => approve::deny(g, &mut secrets, a),
        Command::Grants(Lazy(a)) => grants::grants(g, &mut secrets, a),
        Command::Leases(Lazy(a)) => leases::leases(g, &mut secrets, a),
        Command::Revoke(Lazy(a)) => revoke::revoke(g, &mut secrets, a),
        Command::Audit(Lazy(a)) => audit::run(g, &mut secrets, a),
        Command::Mcp(a) => mcp::run(g, &mut secrets, a),
        Command::Scan(Lazy(a)) => scan::run(g, &mut secrets, a),
        Command::Demo(Lazy(a)) => demo::run(g, &mut secrets, a),
        Command::Agent(Lazy(a)) => agent::run(g, &mut secrets, a),
        Command::Completions(Lazy(a)) => completions::completions(g, &mut secrets, a),
        Command::Man(Lazy(a)) => completions::man(g, &mut secrets, a),
    }
}

/// Parses an environment name at the edge, with the rule in the error.
pub fn env_name(raw: &str) -> anyhow::Result<custody_core::names::EnvName> {
    Ok(custody_core::names::EnvName::new(raw)?)
}

/// Parses a variable name at the edge, with the rule in the error.
pub fn var_name(raw: &str) -> anyhow::Result<custody_core::names::VarName> {
    Ok(custody_core::names::VarName::new(raw)?)
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Injected as an environment variable.
    Env,
    /// Delivered as the path of an ephemeral 0600 file.
    File,
}

impl From<KindArg> for custody_core::vault::VarKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Env => custody_core::vault::VarKind::Env,
            KindArg::File => custody_core::vault::VarKind::File,
        }
    }
}

/// An argv as one shell-like line for display (quoted where needed).
/// Whether an argv should be shown one element per line: an element holds a
/// hidden character, a line break or a quote, is empty, or is long.
pub fn argv_is_unusual(argv: &serde_json::Value) -> bool {
    argv.as_array().into_iter().flatten().any(|x| {
        let s = x.as_str().unwrap_or_default();
        s.is_empty()
            || s.chars().count() > 80
            || crate::output::has_hidden(s)
            || s.contains(['\'', '"', '\\'])
    })
}

/// An argv for the approval screen: one shell-like line, or, when any
/// element is unusual ([`argv_is_unusual`]), one element per line, each
/// escaped, so no element can pass for another or for the rest of the
/// screen.
pub fn argv_block(argv: &serde_json::Value, indent: &str) -> String {
    if !argv_is_unusual(argv) {
        return argv_line(argv);
    }
    let mut out = String::from("(one argument per line, escaped)");
    for (i, x) in argv.as_array().into_iter().flatten().enumerate() {
        out.push_str(&format!(
            "\n{indent}[{i}] {}",
            crate::output::field(x.as_str().unwrap_or_default())
        ));
    }
    out
}

/// A duration argument (`30s`, `10m`, `1h`, …): its value, and the text as
/// given, for messages.
#[derive(Debug, Clone)]
pub struct DurationArg {
    /// The duration.
    pub value: std::time::Duration,
    /// As the user wrote it.
    pub text: String,
}

/// Clap's parser for [`DurationArg`]: a bad one is a usage error, with the
/// flag named.
pub fn duration_arg(s: &str) -> Result<DurationArg, String> {
    custody_core::duration::parse(s)
        .map(|value| DurationArg {
            value,
            text: s.to_owned(),
        })
        .ok_or_else(|| "not a duration like 30s, 10m or 1h".to_owned())
}

/// [`duration_arg`], at least a second (the MCP server's approval wait).
pub fn duration_at_least_1s(s: &str) -> Result<DurationArg, String> {
    duration_arg(s)
        .ok()
        .filter(|d| d.value >= std::time::Duration::from_secs(1))
        .ok_or_else(|| "not a duration of at least 1s, like 50s or 2m".to_owned())
}

/// An argv (JSON) as one shell-like line: see [`argv_words`].
pub fn argv_line(argv: &serde_json::Value) -> String {
    let words: Vec<&str> = argv
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    argv_words(&words)
}

/// An argv as one shell-like line: each element quoted for a POSIX shell
/// (`shlex`), then its control characters escaped
/// ([`crate::output::field`]), which shell quoting cannot do.
pub fn argv_words(argv: &[impl AsRef<str>]) -> String {
    argv.iter()
        .map(|s| {
            let s = s.as_ref();
            // A NUL cannot be in an argument; shown escaped all the same.
            let quoted = shlex::try_quote(s).unwrap_or(std::borrow::Cow::Borrowed(s));
            crate::output::field(&quoted)
        })
        .collect::<Vec<_>>()
        .join(" ")
}
