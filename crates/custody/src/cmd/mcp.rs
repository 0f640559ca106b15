//! `custody mcp`: serve the MCP tools on stdin/stdout for an agent client
//! (Codex, Claude Code, Gemini CLI, Cursor start it as a stdio server).
//! `custody mcp install CLIENT` adds it to a client's config.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::Global;
use crate::input::SecretInput;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct McpArgs {
    #[command(subcommand)]
    command: Option<McpCommand>,
    /// How long `run` waits for an approval before answering "pending"
    /// with a request id; keep it under the client's tool-call timeout.
    #[arg(
        long,
        env = "CUSTODY_MCP_APPROVAL_WAIT",
        default_value = "50s",
        value_parser = super::duration_at_least_1s
    )]
    approval_wait: super::DurationArg,
}

#[derive(Debug, clap::Subcommand)]
enum McpCommand {
    /// Add (or update) custody in an agent client's MCP config.
    Install(super::Lazy<super::mcp_install::InstallArgs>),
}

pub fn run(g: &Global, _s: &mut SecretInput, a: McpArgs) -> anyhow::Result<ExitCode> {
    if let Some(McpCommand::Install(super::Lazy(i))) = a.command {
        return super::mcp_install::run(g, i);
    }
    let wait = a.approval_wait.value;
    let cfg = custody_mcp::McpConfig {
        socket: custody_broker::paths::socket_path(),
        approval_wait: wait,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(custody_mcp::serve_stdio(cfg))?;
    // stdin is at EOF: nothing blocks the runtime's shutdown.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
