//! The integration tests of this crate, one binary (one link): each
//! module is one area.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

mod broker;
mod dynamic;
mod proxy;
mod scan;
