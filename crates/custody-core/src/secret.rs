//! Named secret types: a passphrase, a PIN, a value on its way into a child,
//! a credential a dynamic source minted. Each is zeroized on drop and has
//! no `Debug`, `Display`, `Serialize` or `Clone`: its bytes leave only
//! through [`Passphrase::expose`] (and the others'), by name, so a
//! `{:?}` of a struct holding one does not compile, and a copy is always
//! written out.
//!
//! ```compile_fail
//! let p = custody_core::secret::Passphrase::from_vec(b"hunter2".to_vec());
//! println!("{:?}", p); // no Debug
//! ```
//!
//! ```compile_fail
//! let p = custody_core::secret::Pin::from_vec(b"123456".to_vec());
//! let q = p.clone(); // no Clone
//! ```
//!
//! ```compile_fail
//! let v = custody_core::secret::Value::from_vec(b"sk_live_1".to_vec());
//! serde_json::to_string(&v).unwrap(); // no Serialize
//! ```
//!
//! ```compile_fail
//! let t = custody_core::secret::Token::from_vec(b"ghp_1".to_vec());
//! println!("{}", t); // no Display
//! ```

use zeroize::Zeroizing;

macro_rules! secret_bytes {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Zeroized on drop; no `Debug`, `Display`, `Serialize` or `Clone`.
        pub struct $name(Zeroizing<Vec<u8>>);

        impl $name {
            /// Takes ownership of bytes already in a zeroizing buffer (no
            /// copy).
            pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
                Self(bytes)
            }

            /// Takes ownership of `bytes` (no copy).
            pub fn from_vec(bytes: Vec<u8>) -> Self {
                Self(Zeroizing::new(bytes))
            }

            /// The bytes, for the one place that needs them.
            pub fn expose(&self) -> &[u8] {
                &self.0
            }

            /// The length in bytes.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether it is empty.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// The zeroizing buffer, moved on (no copy).
            pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
                self.0
            }
        }

        impl From<Zeroizing<Vec<u8>>> for $name {
            fn from(bytes: Zeroizing<Vec<u8>>) -> Self {
                Self(bytes)
            }
        }
    };
}

secret_bytes! {
    /// A vault passphrase, from a hidden prompt, stdin or the demo.
    Passphrase
}

secret_bytes! {
    /// An approval PIN.
    Pin
}

secret_bytes! {
    /// A secret value on its way into a child's environment or file (a
    /// stored value revealed, or a minted credential).
    Value
}

secret_bytes! {
    /// A credential a dynamic source minted: a command's token, a role's
    /// connection URL or password.
    Token
}

impl From<Token> for Value {
    /// A minted credential becomes one of the values a lease injects
    /// (moved, not copied).
    fn from(t: Token) -> Value {
        Value(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_without_copying_and_exposes_by_name() {
        let buf = Zeroizing::new(b"sk_live_value".to_vec());
        let at = buf.as_ptr();
        let t = Token::new(buf);
        assert_eq!(t.expose(), b"sk_live_value");
        let v: Value = t.into();
        assert_eq!(v.expose().as_ptr(), at, "the same buffer, not a copy");
        assert_eq!(v.len(), 13);
        assert!(!Pin::from_vec(b"1".to_vec()).is_empty());
    }
}
