//! What a broker operation fails with. Each kind has one stable wire code
//! ([`Error::code`], part of the public protocol: scripts and the MCP
//! server match on it); only the socket edge turns an error into a
//! [`WireError`]. Messages carry names, ids and the next step, never a
//! value.

use custody_core::vault::VaultError;

use crate::protocol::WireError;
use crate::sources::SourceError;

/// A broker error. New kinds may be added (`#[non_exhaustive]`); a kind's
/// code never changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or names something invalid (`bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// The requester may not do this (`forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// What the request names does not exist (`not_found`).
    #[error("{0}")]
    NotFound(String),
    /// What the request would create exists already (`exists`).
    #[error("{0}")]
    Exists(String),
    /// The vault is locked, or was locked while the request waited (`locked`).
    #[error("{0}")]
    Locked(String),
    /// A human denied the request (`denied`).
    #[error("{0}")]
    Denied(String),
    /// The requester cancelled, or went away (`cancelled`).
    #[error("{0}")]
    Cancelled(String),
    /// Nobody approved in time (`expired`).
    #[error("{0}")]
    Expired(String),
    /// What was approved changed before it ran (`changed`).
    #[error("{0}")]
    Changed(String),
    /// This needs the PIN, proven on the connection first (`pin_required`).
    #[error("{0}")]
    PinRequired(String),
    /// The PIN was wrong (`wrong_pin`).
    #[error("{0}")]
    WrongPin(String),
    /// Too many wrong PINs: wait (`rate_limited`).
    #[error("{0}")]
    RateLimited(String),
    /// The approving process is being traced (`traced`).
    #[error("{0}")]
    Traced(String),
    /// The change would remove a protection (`protected`).
    #[error("{0}")]
    Protected(String),
    /// The policy text does not parse or check (`policy_error`).
    #[error("{0}")]
    Policy(String),
    /// An audit record could not be written, so nothing was done
    /// (`audit_failed`).
    #[error("{0}")]
    AuditFailed(String),
    /// The audit log cannot be read (`audit_unreadable`).
    #[error("{0}")]
    AuditUnreadable(String),
    /// The audit log does not verify (`audit_damaged`).
    #[error("{0}")]
    AuditDamaged(String),
    /// A sealed record in the vault does not open (`vault_damaged`).
    #[error("{0}")]
    VaultDamaged(String),
    /// The command could not be started (`spawn_failed`).
    #[error("{0}")]
    SpawnFailed(String),
    /// A scan could not run (`scan_failed`).
    #[error("{0}")]
    ScanFailed(String),
    /// The client speaks another protocol version (`version`).
    #[error("{0}")]
    Version(String),
    /// A fault of the broker's own (`internal`).
    #[error("{0}")]
    Internal(String),
    /// From the vault: its code says which (see [`vault_code`]).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// From a dynamic source's driver.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl Error {
    /// The stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Exists(_) => "exists",
            Error::Locked(_) => "locked",
            Error::Denied(_) => "denied",
            Error::Cancelled(_) => "cancelled",
            Error::Expired(_) => "expired",
            Error::Changed(_) => "changed",
            Error::PinRequired(_) => "pin_required",
            Error::WrongPin(_) => "wrong_pin",
            Error::RateLimited(_) => "rate_limited",
            Error::Traced(_) => "traced",
            Error::Protected(_) => "protected",
            Error::Policy(_) => "policy_error",
            Error::AuditFailed(_) => "audit_failed",
            Error::AuditUnreadable(_) => "audit_unreadable",
            Error::AuditDamaged(_) => "audit_damaged",
            Error::VaultDamaged(_) => "vault_damaged",
            Error::SpawnFailed(_) => "spawn_failed",
            Error::ScanFailed(_) => "scan_failed",
            Error::Version(_) => "version",
            Error::Internal(_) => "internal",
            Error::Vault(e) => vault_code(e),
            Error::Source(e) => match e {
                SourceError::Malformed(_) | SourceError::WrongType { .. } => "bad_request",
                SourceError::NoSuchSource { .. } | SourceError::NotConfigured(_) => "not_found",
                SourceError::Vault(v) => vault_code(v),
                SourceError::Failed { .. } | SourceError::Revocation(_) => "source_failed",
                SourceError::Internal(_) => "internal",
            },
        }
    }

    /// The locked vault's error, with what to do.
    pub fn locked() -> Error {
        Error::Locked("the vault is locked: ask the user to run `custody unlock`".into())
    }
}

/// The wire code of a vault error (also the reason a refusal is audited with).
pub fn vault_code(e: &VaultError) -> &'static str {
    match e {
        VaultError::NotFound { .. } => "no_vault",
        VaultError::WrongPassphrase => "wrong_passphrase",
        VaultError::NoSuchEnvironment(_) | VaultError::NoSuchVariable { .. } => "not_found",
        VaultError::EnvironmentExists(_) => "exists",
        VaultError::NotSet { .. } => "not_set",
        VaultError::Name(_)
        | VaultError::ValueTooLarge { .. }
        | VaultError::DescriptionTooLarge { .. }
        | VaultError::DescriptionControl { .. }
        | VaultError::BreaksEveryRun { .. }
        | VaultError::NotBindable { .. }
        | VaultError::PinTooShort { .. } => "bad_request",
        VaultError::Tampered { .. } | VaultError::Corrupt { .. } => "vault_damaged",
        _ => "vault_error",
    }
}

/// The socket edge: what the client is sent.
impl From<Error> for WireError {
    fn from(e: Error) -> WireError {
        WireError::new(e.code(), e.to_string())
    }
}

/// A broker result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (scripts and the MCP server match on
    /// them): one per kind, unchanged.
    #[test]
    fn every_kind_keeps_its_wire_code() {
        let m = || String::from("m");
        let kinds = [
            (Error::BadRequest(m()), "bad_request"),
            (Error::Forbidden(m()), "forbidden"),
            (Error::NotFound(m()), "not_found"),
            (Error::Exists(m()), "exists"),
            (Error::Locked(m()), "locked"),
            (Error::Denied(m()), "denied"),
            (Error::Cancelled(m()), "cancelled"),
            (Error::Expired(m()), "expired"),
            (Error::Changed(m()), "changed"),
            (Error::PinRequired(m()), "pin_required"),
            (Error::WrongPin(m()), "wrong_pin"),
            (Error::RateLimited(m()), "rate_limited"),
            (Error::Traced(m()), "traced"),
            (Error::Protected(m()), "protected"),
            (Error::Policy(m()), "policy_error"),
            (Error::AuditFailed(m()), "audit_failed"),
            (Error::AuditUnreadable(m()), "audit_unreadable"),
            (Error::AuditDamaged(m()), "audit_damaged"),
            (Error::VaultDamaged(m()), "vault_damaged"),
            (Error::SpawnFailed(m()), "spawn_failed"),
            (Error::ScanFailed(m()), "scan_failed"),
            (Error::Version(m()), "version"),
            (Error::Internal(m()), "internal"),
            (
                Error::Vault(VaultError::WrongPassphrase),
                "wrong_passphrase",
            ),
            (
                Error::Vault(VaultError::EnvironmentExists("prod".into())),
                "exists",
            ),
            (
                Error::Source(SourceError::NotConfigured("pg".into())),
                "not_found",
            ),
            (
                Error::Source(SourceError::Malformed("x".into())),
                "bad_request",
            ),
        ];
        for (e, code) in kinds {
            assert_eq!(e.code(), code, "{e:?}");
            let message = e.to_string();
            let wire = WireError::from(e);
            assert_eq!((wire.code.as_str(), wire.message), (code, message));
        }
    }

    #[test]
    fn the_locked_error_says_what_to_do() {
        let wire = WireError::from(Error::locked());
        assert_eq!(wire.code, "locked");
        assert!(wire.message.contains("custody unlock"), "{}", wire.message);
    }
}
