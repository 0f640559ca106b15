//! custody-core: the pure library under the custody credential broker.
//!
//! No async, no sockets, no processes. It holds the types, the only code that
//! touches cryptographic primitives ([`crypto`]), the encrypted vault
//! ([`vault`]), the streaming masking engine ([`mask`]) and the dotenv parser
//! used by `custody import` ([`dotenv`]), and the detectors of secrets at
//! rest used by `custody scan` and the post-run leak check ([`scan`]).
//!
//! Secret values only ever live in [`secrecy`] types that are zeroized on drop
//! and print as `[REDACTED]`; errors are built from names and ids only.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod audit;
pub mod bound;
pub mod clients;
pub mod crypto;
pub mod dotenv;
pub mod duration;
pub mod generate;
pub mod import;
pub mod mask;
pub mod names;
pub mod pake;
pub mod paths;
pub mod policy;
pub mod scan;
pub mod secret;
pub mod sources;
pub mod vault;

pub use secrecy;
