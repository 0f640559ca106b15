//! The policy in force: sealed in the vault, parsed once at unlock, replaced
//! only by a human with the PIN (`custody policy apply|edit`). A
//! `policy.toml` on disk is only an input to `apply`; the agent can write
//! that file, so the broker never reads it as policy (G9).

use super::*;

/// Lowercase hex SHA-256 of a policy text (names it in audit records).
fn digest(text: &str) -> String {
    custody_core::crypto::sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Broker {
    /// The policy sealed in a just-opened vault, and a note when the
    /// `policy.toml` beside it is not what is in force.
    pub(super) fn sealed_policy(&self, vault: &Vault) -> Result<(Policy, Option<String>), Error> {
        let sealed = vault.policy_text().map_err(Error::from)?;
        let policy = match &sealed {
            Some(text) => Policy::parse(text).map_err(|e| {
                Error::Policy(format!("the sealed policy does not parse ({e}); apply a corrected one with `custody policy apply FILE`"))
            })?,
            None => Policy::default(),
        };
        let file = self.cfg.home.join(custody_core::policy::POLICY_FILE);
        let on_disk = std::fs::read(&file).ok();
        let note = match (on_disk, &sealed) {
            (None, _) => None,
            (Some(disk), Some(text)) if disk == text.as_bytes() => None,
            (Some(_), Some(_)) => Some(format!(
                "{} differs from the policy sealed in the vault and is NOT in force: review it, then `custody policy apply {}` (or delete it)",
                file.display(),
                file.display()
            )),
            (Some(_), None) => Some(format!(
                "{} is NOT in force: custody reads only the policy sealed in the vault (the defaults until one is applied); review it, then `custody policy apply {}`",
                file.display(),
                file.display()
            )),
        };
        Ok((policy, note))
    }

    /// The sealed policy's text, for `custody policy show` (humans only: it
    /// tells which commands run without asking).
    pub fn policy_show(&self, requester: &Requester) -> Result<PolicyShown, Error> {
        if matches!(requester, Requester::Agent { .. }) {
            return Err(Error::Forbidden(
                "agents cannot read the policy: ask the user".into(),
            ));
        }
        let text = self.with_vault(|v| v.policy_text())?;
        Ok(match text {
            Some(t) => PolicyShown {
                sealed: true,
                sha256: Some(digest(&t)),
                text: t.as_str().to_owned(),
            },
            None => PolicyShown {
                sealed: false,
                sha256: None,
                text: String::new(),
            },
        })
    }

    /// Replaces the sealed policy: humans only, with the PIN; the text must
    /// parse. Grants the new policy would not make or allow are withdrawn
    /// at once, each audited.
    pub async fn policy_apply(
        self: &Arc<Self>,
        peer: &Peer,
        text: String,
        verified: Option<super::pin::PinVerified>,
    ) -> Result<PolicyApplied, Error> {
        let requester = self.requester(peer);
        if matches!(requester, Requester::Agent { .. }) || peer.session.is_some() {
            return Err(Error::Forbidden(
                "agents cannot change the policy: ask the user".into(),
            ));
        }
        if text.len() > custody_core::vault::MAX_POLICY_TEXT {
            return Err(bad("the policy is larger than 256 KiB"));
        }
        let policy = Policy::parse(&text).map_err(|e| bad(format!("invalid policy: {e}")))?;
        verified.ok_or_else(super::pin::pin_required)?;
        let mut st = self.state();
        let previous = st.vault()?.policy_text().map_err(Error::from)?;
        let sha256 = digest(&text);
        let previous_sha256 = previous.as_deref().map(|t| digest(t));
        if previous_sha256.as_deref() == Some(sha256.as_str()) {
            return Ok(PolicyApplied {
                applied: false,
                unchanged: true,
                sha256,
                grants_withdrawn: None,
            });
        }
        // Grants made by pre-approval rules go (a rule that still stands
        // makes a new one at the next run); so do approvals the new policy
        // no longer allows (an environment hidden from the client, or one
        // whose every run now needs a fresh approval).
        let withdrawn: Vec<String> = st
            .grants
            .iter()
            .filter(|(_, g)| {
                let client = g.requester.client_name();
                g.request_id == "policy"
                    || g.scope
                        .environments
                        .iter()
                        .any(|e| !policy.visible(client, e) || policy.always_approve(client, e))
            })
            .map(|(id, _)| id.clone())
            .collect();
        st.audit(AuditEvent::PolicyChange {
            previous_sha256,
            sha256: sha256.clone(),
            by: requester.describe(),
            grants_withdrawn: withdrawn.clone(),
        })?;
        st.vault()?.set_policy_text(&text).map_err(Error::from)?;
        for id in &withdrawn {
            st.grants.remove(id);
        }
        st.policy = Arc::new(policy);
        Ok(PolicyApplied {
            applied: true,
            unchanged: false,
            sha256,
            grants_withdrawn: Some(withdrawn),
        })
    }
}
