//! custody-broker: the daemon that holds the unlocked vault.
//!
//! Like ssh-agent, everything else is a thin client over a Unix socket
//! ([`protocol`], [`client`]). The broker checks who connects ([`server`]),
//! decides with policy, grants and human approvals ([`broker`], [`grants`]),
//! spawns and supervises the processes that receive secrets ([`lease`]),
//! masks their output, kills them on time, reaps what a crash left
//! ([`reaper`]) and audits everything. After each lease it checks the files
//! the lease wrote for its values, and it scans trees and git history for
//! every vault value ([`scan`]).
#![deny(missing_docs)]
// `unsafe` is denied everywhere but `sys`, the one audited module.
#![deny(unsafe_code)]

pub mod binding;
pub mod broker;
pub mod client;
pub mod contain;
pub mod daemon;
mod engines;
pub mod error;
pub mod grants;
pub mod lease;
mod ops;
pub mod paths;
pub mod procs;
pub mod protocol;
pub mod proxy;
pub mod pty;
pub mod reaper;
mod retry;
mod run;
pub mod scan;
mod scan_request;
pub mod server;
pub mod sources;
mod sys;

pub use sys::{enter_agent_pid_namespace, enter_agent_user_namespace, mount_proc_before_exec};

pub use broker::{Broker, BrokerConfig};
pub use client::{Client, ClientError};
pub use error::Error;

/// Hardens the calling process before it handles a secret: non-dumpable
/// (same-user processes can no longer ptrace it or read its memory) and no
/// core dumps. Returns the protections that could not be applied.
pub fn harden_process() -> Vec<&'static str> {
    sys::harden_process()
}
