//! The approval PIN, proven without being sent (`custody_core::pake`): the
//! connection makes a PIN exchange, then sends the request with a proof.
//! Every exchange counts as a wrong PIN until its proof checks, so wrong
//! PINs and guesses probed through exchanges meet the same lockout (five in
//! a row lock the vault, audited).

use custody_core::pake::PinSession;

use super::*;

/// A request's PIN proof checked out (made only by the connection handler,
/// after [`Broker::pin_confirmed`]).
#[derive(Debug)]
pub struct PinVerified(());

impl PinVerified {
    pub(crate) fn new() -> PinVerified {
        PinVerified(())
    }
}

/// The error for a request that needs the PIN and came without a proof.
pub(crate) fn pin_required() -> Error {
    Error::PinRequired(
        "this request needs the approval PIN, proven through a PIN exchange (use the custody CLI)"
            .into(),
    )
}

impl Broker {
    fn pin_checker(&self) -> Result<custody_core::vault::PinChecker, Error> {
        let st = self.state();
        st.vault
            .as_ref()
            .ok_or_else(Error::locked)?
            .pin_checker()
            .map_err(Error::from)
    }

    /// The verifier's public parameters.
    pub fn pin_challenge(&self) -> Result<PinParams, Error> {
        let params = self
            .pin_checker()?
            .public_params()
            .map_err(|e| Error::VaultDamaged(e.to_string()))?;
        Ok(PinParams { params })
    }

    /// Answers a PIN exchange; counts it as a wrong PIN until its proof
    /// arrives ([`pin_confirmed`](Self::pin_confirmed)).
    pub async fn pin_exchange(
        self: &Arc<Self>,
        cli_msg: &str,
    ) -> Result<(PinReply, PinSession), Error> {
        let msg = hex::decode(cli_msg).map_err(|_| bad("the PIN exchange message is not hex"))?;
        let checker = self.pin_checker()?;
        let spent = {
            let mut st = self.state();
            let spent = st.pin_failures >= self.cfg.max_pin_failures;
            if !spent {
                st.pin_failures += 1;
            }
            spent
        };
        if spent {
            self.lock(audit::LockReason::PinLockout).await;
            return Err(Error::locked());
        }
        let (reply, confirm, session) = checker.exchange(&msg).map_err(|e| bad(e.to_string()))?;
        Ok((
            PinReply {
                msg: hex::encode(reply),
                confirm: hex::encode(confirm),
            },
            session,
        ))
    }

    /// A nonce for a passphrase holder's proof; the session it keys
    /// counts as a wrong PIN until its proof arrives, like an exchange.
    pub async fn key_challenge(self: &Arc<Self>) -> Result<(KeyNonce, PinSession), Error> {
        let subkey = {
            let mut st = self.state();
            let subkey = st
                .vault()?
                .subkey(custody_core::crypto::Subkey::ChangeProof);
            if st.pin_failures >= self.cfg.max_pin_failures {
                None
            } else {
                st.pin_failures += 1;
                Some(subkey)
            }
        };
        let Some(subkey) = subkey else {
            self.lock(audit::LockReason::PinLockout).await;
            return Err(Error::locked());
        };
        let nonce: [u8; 32] =
            custody_core::crypto::random_array().map_err(|e| Error::Internal(e.to_string()))?;
        Ok((
            KeyNonce {
                nonce: hex::encode(nonce),
            },
            PinSession::from_vault_subkey(&subkey, &nonce),
        ))
    }

    /// A proof checked: the PIN was right.
    pub(crate) fn pin_confirmed(&self) {
        self.state().pin_failures = 0;
    }

    /// An exchange ended without a valid proof (a wrong PIN, a bad proof,
    /// or an exchange abandoned): audited; the lockout applies. Returns the
    /// error to answer with.
    pub async fn pin_failed(self: &Arc<Self>) -> Error {
        let (failures, out) = {
            let mut st = self.state();
            let failures = st.pin_failures;
            let out = failures >= self.cfg.max_pin_failures;
            st.audit_after(AuditEvent::PinFailure {
                attempt: failures,
                locked_out: out,
            });
            (failures, out)
        };
        if out {
            self.lock(audit::LockReason::PinLockout).await;
            return Error::Locked(format!(
                "wrong PIN {failures} times in a row: the vault is now locked; run `custody unlock`"
            ));
        }
        Error::WrongPin(format!(
            "wrong PIN ({failures} of {} attempts before the vault locks)",
            self.cfg.max_pin_failures
        ))
    }
}
