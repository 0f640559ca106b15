//! The approval PIN: checked against the sealed verifier off the async
//! threads; wrong PINs in a row lock the vault (audited). Approvals and
//! every human-only change go through [`Broker::check_pin`].

use super::*;

impl Broker {
    /// The verifier, taken under the lock (cheap; the check itself is slow).
    pub(crate) fn pin_checker(&self) -> Result<custody_core::vault::PinChecker, WireError> {
        let st = self.state();
        st.vault
            .as_ref()
            .ok_or_else(locked)?
            .pin_checker()
            .map_err(vault_error)
    }

    /// Checks `pin`. A wrong one is audited and counts toward the lockout;
    /// a right one resets the count.
    pub(crate) async fn check_pin(
        self: &Arc<Self>,
        checker: custody_core::vault::PinChecker,
        pin: Zeroizing<Vec<u8>>,
    ) -> Result<(), WireError> {
        let ok = tokio::task::spawn_blocking(move || checker.verify(&pin))
            .await
            .map_err(|_| WireError::new("internal", "PIN check failed"))?;
        if ok {
            self.state().pin_failures = 0;
            return Ok(());
        }
        let (failures, out) = {
            let mut st = self.state();
            st.pin_failures += 1;
            let failures = st.pin_failures;
            let out = failures >= self.cfg.max_pin_failures;
            let _ = st.audit(AuditEvent::PinFailure {
                attempt: failures,
                locked_out: out,
            });
            (failures, out)
        };
        if out {
            self.lock(audit::LockReason::PinLockout).await;
            return Err(WireError::new(
                "locked",
                format!(
                    "wrong PIN {failures} times in a row: the vault is now locked; run `custody unlock`"
                ),
            ));
        }
        Err(WireError::new(
            "wrong_pin",
            format!(
                "wrong PIN ({failures} of {} attempts before the vault locks)",
                self.cfg.max_pin_failures
            ),
        ))
    }
}
