//! custody-mcp: the MCP server agents talk to (`custody mcp`).
//!
//! Agents *use* secrets through these tools without ever holding them: every
//! tool is a thin translation to a broker request over the Unix socket, and
//! the broker only ever answers with names, ids, decisions and masked output
//! (G1). The server speaks both MCP lifecycles rmcp serves on one stdio
//! connection: 2025-11-25 (`initialize`) and 2026-07-28 (`server/discover`,
//! per-request metadata). It logs to stderr only; stdout is the protocol.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod link;
mod runs;
mod schema;
mod server;
mod types;

use std::time::Duration;

use rmcp::ServiceExt;

pub use link::LinkError;
pub use schema::has_nonstandard_format;
pub use server::{CustodyMcp, McpConfig};
pub use types::*;

/// The tools this server offers (their names are a public interface; a
/// test checks this list against the server's).
pub const TOOL_NAMES: [&str; 9] = [
    "list_environments",
    "create_environment",
    "declare_variable",
    "generate_secret",
    "run",
    "request_status",
    "list_grants",
    "revoke_grant",
    "audit_tail",
];

/// Default time `run` waits for an approval before answering `pending`:
/// under the 60 s tool-call timeout most clients use.
pub const DEFAULT_APPROVAL_WAIT: Duration = Duration::from_secs(50);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The MCP session could not start (bad first message, closed stdin).
    #[error("the MCP session did not start: {0}")]
    Start(String),
    /// The session ended abnormally.
    #[error("the MCP session failed: {0}")]
    Run(String),
}

/// Serves MCP on stdin/stdout until the client closes the connection.
pub async fn serve_stdio(cfg: McpConfig) -> Result<(), ServeError> {
    let running = CustodyMcp::new(cfg)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| ServeError::Run(e.to_string()))?;
    Ok(())
}
