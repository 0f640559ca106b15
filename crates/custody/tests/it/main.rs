//! The integration tests of this crate, one binary (one link): each
//! module is one area.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

mod bound;
mod broker_cli;
mod cli;
mod mcp_install;
mod same_user;
mod sandbox;
mod scan_cli;
