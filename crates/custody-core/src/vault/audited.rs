//! The one path for a vault change and its audit record (G6), used by the
//! broker and by the CLI's direct path (the vault file, no broker).
//!
//! The change runs in a savepoint; its [`AuditEvent`] is appended to the
//! chain before the savepoint is released, so a change that cannot be
//! audited is rolled back (fail closed). The chain's new head is then stored
//! in the vault. A change that fails is recorded as refused
//! ([`AuditEvent::VaultChangeRefused`]); whether that record could be
//! written is handed back, never dropped.

use std::path::Path;

use super::{Vault, VaultError};
use crate::audit::{AuditChain, AuditError, AuditEvent, AuditHead};
use crate::crypto::Subkey;

/// Why an audited change did not happen (or did, without its head stored).
#[derive(Debug)]
pub enum ChangeError<E> {
    /// The change failed and nothing changed. `recorded` says whether its
    /// refusal reached the audit log.
    Refused {
        /// The change's own error.
        error: E,
        /// The refusal record's fate: why it could not be written, if it
        /// could not (paths and codes, never a value).
        recorded: Result<(), String>,
    },
    /// The audit log could not be written: the change was rolled back.
    Audit(AuditError),
    /// The change and its record were written, but the vault could not
    /// store the log's new head (the next open finds the record after it).
    Head(VaultError),
}

/// What the savepoint's closure fails with.
enum Inner<E> {
    Change(E),
    Audit(AuditError),
}

impl<E: From<VaultError>> From<VaultError> for Inner<E> {
    fn from(e: VaultError) -> Self {
        Inner::Change(E::from(e))
    }
}

/// Makes the change `f` and appends `event` as one: see the module docs.
/// `reason` names a failure for the refusal record (an error code, never a
/// value).
pub fn change<T, E: From<VaultError>>(
    vault: &mut Vault,
    chain: &mut AuditChain,
    event: AuditEvent,
    reason: impl FnOnce(&E) -> String,
    f: impl FnOnce(&mut Vault) -> Result<T, E>,
) -> Result<T, ChangeError<E>> {
    let done = vault.atomically(|v| -> Result<(T, AuditHead), Inner<E>> {
        let out = f(v).map_err(Inner::Change)?;
        let head = chain.append(&event).map_err(Inner::Audit)?;
        Ok((out, head))
    });
    match done {
        Ok((out, head)) => {
            vault.set_audit_head(&head).map_err(ChangeError::Head)?;
            Ok(out)
        }
        Err(Inner::Audit(e)) => Err(ChangeError::Audit(e)),
        Err(Inner::Change(error)) => {
            let recorded = match event {
                AuditEvent::VaultChange {
                    action,
                    environment,
                    variable,
                    by,
                } => chain
                    .append(&AuditEvent::VaultChangeRefused {
                        action,
                        environment,
                        variable,
                        by,
                        reason: reason(&error),
                    })
                    .map_err(|e| e.to_string())
                    .and_then(|head| vault.set_audit_head(&head).map_err(|e| e.to_string())),
                _ => Ok(()),
            };
            Err(ChangeError::Refused { error, recorded })
        }
    }
}

/// Opens the audit chain at `path` for `vault` (its audit subkey, the head
/// it holds), storing the head again if the log moved past it (records a
/// broker appended after its last store, or a sealed torn tail).
pub fn open_chain(vault: &Vault, path: &Path) -> Result<AuditChain, OpenError> {
    let head = vault.audit_head().map_err(OpenError::Vault)?;
    let key = vault.subkey(Subkey::Audit);
    let (chain, _report) = AuditChain::open(path, &key, head.as_ref()).map_err(OpenError::Audit)?;
    if head != Some(chain.head()) {
        vault
            .set_audit_head(&chain.head())
            .map_err(OpenError::Vault)?;
    }
    Ok(chain)
}

/// Why [`open_chain`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The log does not verify, or another process holds it.
    #[error("{0}")]
    Audit(AuditError),
    /// The vault could not give or store the head.
    #[error("{0}")]
    Vault(VaultError),
}
