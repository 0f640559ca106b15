//! The only module that touches cryptographic primitives.
//!
//! - Passphrase → Argon2id → key-encryption key (KEK), which wraps the random
//!   256-bit vault key.
//! - Subkeys for sealing, name indexing and the audit chain are derived from
//!   the vault key with HKDF-SHA256, salted with the vault id, so one key is
//!   never used for two purposes.
//! - Values, names and descriptions are sealed with XChaCha20-Poly1305 under a
//!   random 192-bit nonce; the caller passes associated data (AAD) that binds
//!   the record to its place in the vault.
//! - Names are looked up through a keyed hash (HMAC-SHA256), never stored in
//!   plaintext.
//!
//! Everything secret lives in [`Key`] or [`zeroize::Zeroizing`] buffers.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of every symmetric key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an XChaCha20 nonce, in bytes.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Length of a KDF salt, in bytes.
pub const SALT_LEN: usize = 16;
/// First byte of every sealed record: the format version.
pub const SEALED_RECORD_VERSION: u8 = 1;
/// Bytes a sealed record adds around its plaintext.
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Errors from the cryptographic layer. They never carry key or plaintext bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The record is shorter than its fixed overhead or has an unknown version byte.
    #[error("sealed record is malformed ({0})")]
    Malformed(&'static str),
    /// Authentication failed: wrong key, wrong associated data, or modified bytes.
    #[error("sealed record failed authentication")]
    Authentication,
    /// The KDF parameters are outside the range custody accepts.
    #[error("key-derivation parameters out of range: {0}")]
    KdfParams(String),
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
    /// A stored PIN hash could not be parsed.
    #[error("the stored PIN hash is malformed")]
    PinHash,
}

/// A 256-bit symmetric key. Zeroized on drop; `Debug` shows no bytes.
pub struct Key(SecretBox<[u8; KEY_LEN]>);

impl Key {
    /// Wraps raw key bytes. The caller's copy should be zeroized by the caller.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key(SecretBox::new(Box::new(bytes)))
    }

    /// A fresh random key from the operating system's RNG.
    pub fn random() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(Key::from_bytes(*bytes))
    }

    /// The key bytes, for the few callers that must hand them on (the broker).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    /// A copy of this key.
    pub fn duplicate(&self) -> Self {
        Key::from_bytes(*self.0.expose_secret())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

/// Fills `buf` from the operating system's RNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// `N` random bytes (for ids, salts and nonces: not secret by themselves).
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// Argon2id parameters, stored in the vault file so they can change over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB and 11 passes, about 0.5 s on the project's
    /// reference machine (2 cores; measured in docs/benchmarks.md), memory-hard
    /// so a copied vault file is expensive to attack offline (G7).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 11,
        parallelism: 1,
    };

    /// Deliberately weak parameters for tests and demos in throwaway vaults.
    /// Never the default; only reachable through `--insecure-fast-kdf`.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    /// Checks the parameters are in the range custody accepts. Parameters come
    /// from the vault file, so they are untrusted: a corrupt file must not make
    /// custody allocate terabytes or spin for hours.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if !(8..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(CryptoError::KdfParams(format!(
                "memory {} KiB not in 8 KiB..4 GiB",
                self.memory_kib
            )));
        }
        if !(1..=64).contains(&self.iterations) {
            return Err(CryptoError::KdfParams(format!(
                "iterations {} not in 1..64",
                self.iterations
            )));
        }
        if !(1..=16).contains(&self.parallelism) {
            return Err(CryptoError::KdfParams(format!(
                "parallelism {} not in 1..16",
                self.parallelism
            )));
        }
        Ok(())
    }

    fn argon2(&self) -> Result<Argon2<'static>, CryptoError> {
        self.validate()?;
        let params = Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Derives the key-encryption key from a passphrase.
pub fn derive_kek(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: &KdfParams,
) -> Result<Key, CryptoError> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    params
        .argon2()?
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(Key::from_bytes(*out))
}

/// Hashes an approval PIN into a PHC string (Argon2id, random salt).
pub fn hash_pin(pin: &[u8], params: &KdfParams) -> Result<String, CryptoError> {
    let salt_bytes: [u8; SALT_LEN] = random_array()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| CryptoError::PinHash)?;
    let hash = params
        .argon2()?
        .hash_password(pin, &salt)
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(hash.to_string())
}

/// Verifies a PIN against a PHC string made by [`hash_pin`], in constant time.
pub fn verify_pin(pin: &[u8], phc: &str) -> Result<bool, CryptoError> {
    let parsed = PasswordHash::new(phc).map_err(|_| CryptoError::PinHash)?;
    // Parameters come from the stored hash; bound them like the vault KDF's.
    let params = Params::try_from(&parsed).map_err(|_| CryptoError::PinHash)?;
    KdfParams {
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        parallelism: params.p_cost(),
    }
    .validate()?;
    Ok(Argon2::default().verify_password(pin, &parsed).is_ok())
}

/// Purposes of the subkeys derived from the vault key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subkey {
    /// Seals values, names and descriptions.
    Seal,
    /// Keys the name index (HMAC).
    NameIndex,
    /// Keys the audit chain's record MACs.
    Audit,
    /// Keys the key-check value that lets the broker confirm a held key.
    KeyCheck,
    /// Seals a command source's token inside a lease record, so a broker
    /// restarted after a crash can still hand it to the revoke command.
    LeaseToken,
    /// Seals the approval PIN's verifier, so only a holder of the vault key
    /// can check a guess (no offline guessing from a copy of the file).
    PinVerifier,
    /// Keys the proof that a change comes from a holder of the passphrase
    /// (`crate::pake::PinSession::from_vault_subkey`).
    ChangeProof,
}

impl Subkey {
    fn info(self) -> &'static [u8] {
        match self {
            Subkey::Seal => b"custody v1 seal",
            Subkey::NameIndex => b"custody v1 name-index",
            Subkey::Audit => b"custody v1 audit",
            Subkey::KeyCheck => b"custody v1 key-check",
            Subkey::LeaseToken => b"custody v1 lease-token",
            Subkey::PinVerifier => b"custody v1 pin-verifier",
            Subkey::ChangeProof => b"custody v1 change-proof",
        }
    }
}

/// Derives a purpose-bound subkey from the vault key (HKDF-SHA256, salted
/// with the vault id).
pub fn derive_subkey(vault_key: &Key, vault_id: &[u8], purpose: Subkey) -> Key {
    let hk = Hkdf::<Sha256>::new(Some(vault_id), vault_key.expose());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's 255 × 32 output limit, so expand
    // cannot fail; the fallback keeps this function total anyway.
    if hk.expand(purpose.info(), out.as_mut()).is_err() {
        out.as_mut().fill(0);
    }
    Key::from_bytes(*out)
}

/// HMAC-SHA256 over length-prefixed parts, so `("ab","c")` and `("a","bc")`
/// never collide.
pub fn keyed_hash(key: &Key, parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail here.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key.expose()) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC's key-length check only fails for fixed-size MACs, never HMAC.
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

/// Seals `plaintext` under `key` with associated data `aad`.
///
/// Record layout: `version (1) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`.
pub fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    // Reserve room for the tag up front so the buffer never reallocates and
    // leaves a plaintext copy behind in freed memory.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(XNonce::from_slice(&nonce), aad, &mut *buf)
        .map_err(|_| CryptoError::Authentication)?;
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + plaintext.len());
    out.push(SEALED_RECORD_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// A parsed, not yet authenticated, sealed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedRecord<'a> {
    /// The random nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub body: &'a [u8],
}

impl<'a> SealedRecord<'a> {
    /// Parses the record layout without allocating. Bytes come from the vault
    /// file, so every length is checked before use.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CryptoError> {
        let (&version, rest) = bytes.split_first().ok_or(CryptoError::Malformed("empty"))?;
        if version != SEALED_RECORD_VERSION {
            return Err(CryptoError::Malformed("unknown version"));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("truncated"));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| CryptoError::Malformed("truncated"))?;
        Ok(SealedRecord { nonce, body })
    }

    /// Length of the plaintext this record holds.
    pub fn plaintext_len(&self) -> usize {
        self.body.len() - TAG_LEN
    }
}

/// Opens a record made by [`seal`] with the same key and associated data.
pub fn open(key: &Key, aad: &[u8], record: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let parsed = SealedRecord::decode(record)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let mut buf = Zeroizing::new(parsed.body.to_vec());
    cipher
        .decrypt_in_place(XNonce::from_slice(parsed.nonce), aad, &mut *buf)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(buf)
}

/// Constant-time equality for secret byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

// ---- Plain hashing (audit chain links) -------------------------------------
// Added for the audit chain: each record's `prev` is the SHA-256 of the
// previous complete line, so anyone can recompute a link with `sha256sum`.
// Not keyed and not framed: use `keyed_hash` wherever a secret or several
// parts are involved.

/// Plain SHA-256 of `bytes` (not keyed, not framed).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key(7);
        let rec = seal(&k, b"aad", b"hello value").unwrap();
        assert_eq!(rec.len(), SEALED_OVERHEAD + 11);
        assert_eq!(&open(&k, b"aad", &rec).unwrap()[..], b"hello value");
    }

    #[test]
    fn wrong_key_aad_or_bytes_fail() {
        let k = key(7);
        let rec = seal(&k, b"aad", b"hello value").unwrap();
        assert_eq!(
            open(&key(8), b"aad", &rec),
            Err(CryptoError::Authentication)
        );
        assert_eq!(open(&k, b"aae", &rec), Err(CryptoError::Authentication));
        let mut flipped = rec.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(open(&k, b"aad", &flipped), Err(CryptoError::Authentication));
    }

    #[test]
    fn decode_rejects_short_and_unknown() {
        assert!(matches!(
            SealedRecord::decode(&[]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            SealedRecord::decode(&[1; 40]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(matches!(
            SealedRecord::decode(&[2; 80]),
            Err(CryptoError::Malformed(_))
        ));
        assert!(SealedRecord::decode(&[1; 41]).is_ok());
    }

    #[test]
    fn nonces_differ() {
        let k = key(1);
        assert_ne!(seal(&k, b"", b"x").unwrap(), seal(&k, b"", b"x").unwrap());
    }

    /// Known-answer test: HMAC-SHA256 (RFC 4231 test case 2) through our
    /// length-prefixing is different from plain HMAC, so check the primitive
    /// and the framing separately.
    #[test]
    fn keyed_hash_frames_parts() {
        let k = key(3);
        assert_ne!(
            keyed_hash(&k, &[b"ab", b"c"]),
            keyed_hash(&k, &[b"a", b"bc"])
        );
        assert_eq!(keyed_hash(&k, &[b"ab"]), keyed_hash(&k, &[b"ab"]));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Known-answer test for Argon2id: RFC 9106 §5.3.
    #[test]
    fn argon2id_rfc9106_vector() {
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .data(argon2::AssociatedData::new(&[4u8; 12]).unwrap())
            .output_len(32)
            .build()
            .unwrap();
        let argon = Argon2::new_with_secret(&[3u8; 8], Algorithm::Argon2id, Version::V0x13, params)
            .unwrap();
        let mut out = [0u8; 32];
        argon
            .hash_password_into(&[1u8; 32], &[2u8; 16], &mut out)
            .unwrap();
        assert_eq!(
            hex::encode(out),
            "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
        );
    }

    #[test]
    fn kek_depends_on_everything() {
        let p = KdfParams::INSECURE_FAST;
        let a = derive_kek(b"pass", &[1; 16], &p).unwrap();
        assert_eq!(
            a.expose(),
            derive_kek(b"pass", &[1; 16], &p).unwrap().expose()
        );
        assert_ne!(
            a.expose(),
            derive_kek(b"pasS", &[1; 16], &p).unwrap().expose()
        );
        assert_ne!(
            a.expose(),
            derive_kek(b"pass", &[2; 16], &p).unwrap().expose()
        );
    }

    #[test]
    fn kdf_params_bounded() {
        assert!(KdfParams::DEFAULT.validate().is_ok());
        let huge = KdfParams {
            memory_kib: u32::MAX,
            ..KdfParams::DEFAULT
        };
        assert!(huge.validate().is_err());
        let zero = KdfParams {
            iterations: 0,
            ..KdfParams::DEFAULT
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn pin_hash_verifies() {
        let phc = hash_pin(b"123456", &KdfParams::INSECURE_FAST).unwrap();
        assert!(verify_pin(b"123456", &phc).unwrap());
        assert!(!verify_pin(b"123457", &phc).unwrap());
        assert!(!phc.contains("123456"));
        assert!(verify_pin(b"123456", "garbage").is_err());
    }

    #[test]
    fn subkeys_are_distinct() {
        let k = key(9);
        let a = derive_subkey(&k, b"vault", Subkey::Seal);
        let b = derive_subkey(&k, b"vault", Subkey::NameIndex);
        let c = derive_subkey(&k, b"other", Subkey::Seal);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }

    #[test]
    fn key_debug_shows_no_bytes() {
        let k = key(0x41);
        let shown = format!("{k:?}");
        assert_eq!(shown, "Key([REDACTED])");
        assert!(!shown.contains("65") && !shown.contains("AAAA") && !shown.contains("4141"));
    }
}
