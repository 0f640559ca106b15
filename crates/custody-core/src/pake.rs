//! The PIN never leaves the human's terminal: proving it to the broker with
//! a password-authenticated key exchange (SPAKE2 over Ed25519).
//!
//! Both sides hold the same password: the Argon2id hash of the PIN. The
//! broker has it inside its sealed PIN verifier; the CLI computes it from
//! the PIN the human types and the verifier's public parameters (salt and
//! costs), which the broker sends. The exchange gives both a shared key
//! only if the hashes match:
//!
//! 1. CLI → broker: its SPAKE2 message.
//! 2. broker → CLI: its message and a confirmation (a MAC under the key).
//!    The CLI checks it before sending anything else: a process that is not
//!    the broker (a fake socket) cannot make it, and learns nothing it could
//!    test PIN guesses against offline — one guess per exchange at most.
//! 3. CLI → broker: the request, with a proof (a MAC under the key over the
//!    request's exact bytes) and any secret payload sealed under the key. A
//!    relay in the middle can neither read the payload nor swap the request.
//!
//! Every exchange counts as a failed PIN attempt until its proof arrives,
//! so probing guesses through step 2 meets the same lockout as a wrong PIN.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, Params};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError, KdfParams, Key};

/// Identities bound into the exchange (both sides use the same).
const ID_CLI: &[u8] = b"custody cli";
const ID_BROKER: &[u8] = b"custody broker";

/// Why an exchange failed. Carries no secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PakeError {
    /// The parameters or a message are malformed.
    #[error("malformed PIN exchange ({0})")]
    Malformed(&'static str),
    /// The other side does not hold the same PIN hash: a wrong PIN, or a
    /// peer that is not the broker.
    #[error("the PIN exchange failed: wrong PIN, or the peer is not the custody broker")]
    Mismatch,
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The public part of a PHC verifier (`$argon2id$v=19$m=…,t=…,p=…$SALT`),
/// without its hash.
pub fn public_params(phc: &str) -> Result<String, PakeError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PakeError::Malformed("verifier"))?;
    let salt = parsed.salt.ok_or(PakeError::Malformed("verifier salt"))?;
    let params = Params::try_from(&parsed).map_err(|_| PakeError::Malformed("verifier costs"))?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt.as_str()
    ))
}

/// The raw hash inside a stored PHC verifier (the broker's password).
pub fn verifier_hash(phc: &str) -> Result<Zeroizing<Vec<u8>>, PakeError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PakeError::Malformed("verifier"))?;
    let hash = parsed.hash.ok_or(PakeError::Malformed("verifier hash"))?;
    Ok(Zeroizing::new(hash.as_bytes().to_vec()))
}

/// Most memory (KiB) and passes the CLI spends on a PIN hash: well above
/// what `custody init` uses (64 MiB, 11 passes), low enough that a fake
/// broker cannot stall the human's terminal for minutes.
const MAX_PIN_MEMORY_KIB: u32 = 256 * 1024;
const MAX_PIN_PASSES: u32 = 32;

/// The CLI's password: Argon2id of `pin` under the broker's public
/// parameters, whose costs are bounded (see [`MAX_PIN_MEMORY_KIB`]).
pub fn pin_hash(pin: &[u8], public: &str) -> Result<Zeroizing<Vec<u8>>, PakeError> {
    let parsed = PasswordHash::new(public).map_err(|_| PakeError::Malformed("parameters"))?;
    let salt = parsed.salt.ok_or(PakeError::Malformed("salt"))?;
    let params = Params::try_from(&parsed).map_err(|_| PakeError::Malformed("costs"))?;
    if params.m_cost() > MAX_PIN_MEMORY_KIB || params.t_cost() > MAX_PIN_PASSES {
        return Err(PakeError::Malformed("costs above the PIN limit"));
    }
    KdfParams {
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        parallelism: params.p_cost(),
    }
    .validate()?;
    let salt = SaltString::from_b64(salt.as_str()).map_err(|_| PakeError::Malformed("salt"))?;
    let params = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(crypto::KEY_LEN),
    )
    .map_err(|_| PakeError::Malformed("costs"))?;
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hashed = argon
        .hash_password(pin, &salt)
        .map_err(|_| PakeError::Malformed("costs"))?;
    let hash = hashed.hash.ok_or(PakeError::Malformed("hash"))?;
    Ok(Zeroizing::new(hash.as_bytes().to_vec()))
}

/// The CLI's side of an exchange in progress.
pub struct CliExchange {
    state: Spake2<Ed25519Group>,
}

impl CliExchange {
    /// Starts: returns the state and the message for the broker.
    pub fn start(hash: &[u8]) -> (CliExchange, Vec<u8>) {
        let (state, msg) = Spake2::<Ed25519Group>::start_a(
            &Password::new(hash),
            &Identity::new(ID_CLI),
            &Identity::new(ID_BROKER),
        );
        (CliExchange { state }, msg)
    }

    /// Finishes with the broker's message and confirmation: the session
    /// key, only if the broker proved it holds the same hash.
    pub fn finish(self, broker_msg: &[u8], confirm: &[u8]) -> Result<PinSession, PakeError> {
        let key = self
            .state
            .finish(broker_msg)
            .map_err(|_| PakeError::Malformed("broker message"))?;
        let session = PinSession::from_shared(&key)?;
        if !crypto::ct_eq(&session.mac(b"broker confirm", &[]), confirm) {
            return Err(PakeError::Mismatch);
        }
        Ok(session)
    }
}

/// The broker's side: answers the CLI's message. Returns its message, its
/// confirmation and the session key (which holds only if the CLI's proof
/// later checks).
pub fn broker_exchange(
    hash: &[u8],
    cli_msg: &[u8],
) -> Result<(Vec<u8>, [u8; 32], PinSession), PakeError> {
    let (state, msg) = Spake2::<Ed25519Group>::start_b(
        &Password::new(hash),
        &Identity::new(ID_CLI),
        &Identity::new(ID_BROKER),
    );
    let key = state
        .finish(cli_msg)
        .map_err(|_| PakeError::Malformed("cli message"))?;
    let session = PinSession::from_shared(&key)?;
    let confirm = session.mac(b"broker confirm", &[]);
    Ok((msg, confirm, session))
}

/// A key both sides share after an exchange. No `Debug`; zeroized on drop.
pub struct PinSession {
    mac_key: Key,
    seal_key: Key,
}

impl PinSession {
    fn from_shared(shared: &[u8]) -> Result<PinSession, PakeError> {
        let shared = Zeroizing::new(shared.to_vec());
        let root = Key::from_bytes(
            shared
                .as_slice()
                .try_into()
                .map_err(|_| PakeError::Malformed("key length"))?,
        );
        Ok(PinSession::from_root(&root))
    }

    fn from_root(root: &Key) -> PinSession {
        let derive = |label: &[u8]| Key::from_bytes(crypto::keyed_hash(root, &[label]));
        PinSession {
            mac_key: derive(b"custody pin mac"),
            seal_key: derive(b"custody pin seal"),
        }
    }

    /// A session keyed by the vault's change-proof subkey and a nonce the
    /// broker chose: how a holder of the passphrase proves a change (the
    /// CLI derives the subkey by opening the vault file with it). Like a
    /// PIN exchange, a process posing as the broker learns nothing from it.
    pub fn from_vault_subkey(subkey: &Key, nonce: &[u8]) -> PinSession {
        let root = Key::from_bytes(crypto::keyed_hash(subkey, &[b"change proof", nonce]));
        PinSession::from_root(&root)
    }

    fn mac(&self, purpose: &[u8], data: &[u8]) -> [u8; 32] {
        crypto::keyed_hash(&self.mac_key, &[purpose, data])
    }

    /// The proof that goes with `request` (its exact bytes).
    pub fn proof(&self, request: &[u8]) -> [u8; 32] {
        self.mac(b"request", request)
    }

    /// Whether `proof` is the proof for `request`.
    pub fn check(&self, request: &[u8], proof: &[u8]) -> bool {
        crypto::ct_eq(&self.proof(request), proof)
    }

    /// Seals a secret payload for `request`.
    pub fn seal(&self, request: &[u8], secret: &[u8]) -> Result<Vec<u8>, PakeError> {
        Ok(crypto::seal(&self.seal_key, request, secret)?)
    }

    /// Opens a payload sealed by [`seal`](Self::seal) for `request`.
    pub fn open(&self, request: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, PakeError> {
        crypto::open(&self.seal_key, request, sealed).map_err(|_| PakeError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn verifier(pin: &[u8]) -> String {
        crypto::hash_pin(pin, &KdfParams::INSECURE_FAST).unwrap()
    }

    fn exchange(pin: &[u8], phc: &str) -> Result<(PinSession, PinSession), PakeError> {
        let public = public_params(phc).unwrap();
        assert!(
            !public.contains(&phc[phc.rfind('$').unwrap() + 1..]),
            "the hash leaked"
        );
        let (cli, msg_a) = CliExchange::start(&pin_hash(pin, &public)?);
        let (msg_b, confirm, broker) = broker_exchange(&verifier_hash(phc)?, &msg_a)?;
        Ok((cli.finish(&msg_b, &confirm)?, broker))
    }

    #[test]
    fn the_right_pin_agrees_on_a_key_and_proofs_bind_the_request() {
        let phc = verifier(b"424242");
        let (cli, broker) = exchange(b"424242", &phc).unwrap();
        let req = br#"{"op":"approve","request_id":"r-1"}"#;
        assert!(broker.check(req, &cli.proof(req)));
        assert!(!broker.check(br#"{"op":"approve","request_id":"r-2"}"#, &cli.proof(req)));
        let sealed = cli.seal(req, b"value").unwrap();
        assert_eq!(broker.open(req, &sealed).unwrap().as_slice(), b"value");
        assert!(broker.open(b"other", &sealed).is_err());
    }

    #[test]
    fn a_wrong_pin_or_a_fake_broker_fails_at_the_cli() {
        let phc = verifier(b"424242");
        assert!(matches!(
            exchange(b"000000", &phc),
            Err(PakeError::Mismatch)
        ));
        // A fake broker: it knows the public parameters (anyone can), not
        // the hash; it cannot confirm.
        let public = public_params(&phc).unwrap();
        let (cli, msg_a) = CliExchange::start(&pin_hash(b"424242", &public).unwrap());
        let (msg_b, confirm, _) =
            broker_exchange(b"a guess of the hash 32 bytes....", &msg_a).unwrap();
        assert!(matches!(
            cli.finish(&msg_b, &confirm),
            Err(PakeError::Mismatch)
        ));
    }

    #[test]
    fn a_fake_broker_cannot_make_the_cli_spend_unbounded_memory() {
        let huge = "$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA";
        assert!(pin_hash(b"424242", huge).is_err());
    }
}
