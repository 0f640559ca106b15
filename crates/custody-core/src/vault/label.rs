//! The plaintext inside a sealed label: name, description and kind.
//!
//! Layout: `version (1) ‖ kind (1) ‖ name_len (u16 BE) ‖ name ‖
//! description_len (u16 BE) ‖ description`, and for a dynamic variable
//! (kind 2) `‖ source_len (u16 BE) ‖ source`. Version 2 (a variable bound
//! to destinations, see [`crate::bound`]) adds `‖ count (1) ‖ (spec_len
//! (u16 BE) ‖ spec)*`; a label without bindings is still written as
//! version 1. A fixed binary layout rather
//! than JSON: listing 10,000 variables decodes 10,000 labels, and a small
//! exact decoder is easy to fuzz. Labels are authenticated before decoding,
//! but the decoder still treats its input as hostile.

use super::VarKind;
use crate::bound::Rule;

const LABEL_VERSION: u8 = 1;
/// A label with bindings.
const LABEL_VERSION_BOUND: u8 = 2;
/// Most destinations one variable is bound to.
pub const MAX_BINDINGS: usize = 32;

/// A decoded label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The environment's or variable's name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its kind (always `env` for an environment).
    pub kind: VarKind,
    /// The source of a dynamic variable (`TYPE:NAME`); `None` otherwise.
    pub source: Option<String>,
    /// Where a bound variable's value may go (empty: not bound).
    pub bindings: Vec<Rule>,
}

/// Why a label did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed label ({0})")]
pub struct LabelError(&'static str);

impl Label {
    /// Encodes the label. Lengths are bounded by the vault's own limits
    /// (names ≤ 128, descriptions ≤ 4096 bytes), far below `u16::MAX`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + self.description.len());
        out.push(if self.bindings.is_empty() {
            LABEL_VERSION
        } else {
            LABEL_VERSION_BOUND
        });
        out.push(match self.kind {
            VarKind::Env => 0,
            VarKind::File => 1,
            VarKind::Dynamic => 2,
        });
        let source = match self.kind {
            VarKind::Dynamic => Some(self.source.as_deref().unwrap_or_default()),
            _ => None,
        };
        let mut put = |field: &str| {
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        };
        for field in [self.name.as_str(), self.description.as_str()]
            .into_iter()
            .chain(source)
        {
            put(field);
        }
        if !self.bindings.is_empty() {
            let specs: Vec<String> = self
                .bindings
                .iter()
                .take(MAX_BINDINGS)
                .map(Rule::to_spec)
                .collect();
            out.push(u8::try_from(specs.len()).unwrap_or(u8::MAX));
            for spec in &specs {
                let len = u16::try_from(spec.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&spec.as_bytes()[..usize::from(len)]);
            }
        }
        out
    }

    /// Decodes a label, checking every length and rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Label, LabelError> {
        let mut r = Reader(bytes);
        let bound = match r.take(1)? {
            [LABEL_VERSION] => false,
            [LABEL_VERSION_BOUND] => true,
            _ => return Err(LabelError("unknown version")),
        };
        let kind = match r.take(1)? {
            [0] => VarKind::Env,
            [1] => VarKind::File,
            [2] => VarKind::Dynamic,
            _ => return Err(LabelError("unknown kind")),
        };
        let name = r.text()?;
        let description = r.text()?;
        let source = match kind {
            VarKind::Dynamic => Some(r.text()?),
            _ => None,
        };
        let mut bindings = Vec::new();
        if bound {
            let count = usize::from(r.take(1)?[0]);
            if count == 0 || count > MAX_BINDINGS {
                return Err(LabelError("binding count"));
            }
            for _ in 0..count {
                let rule = Rule::from_spec(&r.text()?).map_err(|_| LabelError("binding"))?;
                bindings.push(rule);
            }
        }
        if !r.0.is_empty() {
            return Err(LabelError("trailing bytes"));
        }
        Ok(Label {
            name,
            description,
            kind,
            source,
            bindings,
        })
    }
}

/// What is left of a label being decoded.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LabelError> {
        if self.0.len() < n {
            return Err(LabelError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// A `u16 BE` length, then that many bytes of UTF-8.
    fn text(&mut self) -> Result<String, LabelError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| LabelError("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let l = Label {
            name: "DB_URL".into(),
            description: "primary — db".into(),
            kind: VarKind::File,
            source: None,
            bindings: Vec::new(),
        };
        let d = Label {
            kind: VarKind::Dynamic,
            source: Some("postgres:main".into()),
            ..l.clone()
        };
        assert_eq!(Label::decode(&d.encode()).unwrap(), d);
        let bytes = l.encode();
        assert_eq!(Label::decode(&bytes).unwrap(), l);
        for cut in 0..bytes.len() {
            assert!(Label::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Label::decode(&trailing).is_err());
        let mut kind = bytes.clone();
        kind[1] = 9;
        assert!(Label::decode(&kind).is_err());
    }

    #[test]
    fn bindings_round_trip_as_version_two() {
        let rule = Rule::parse("https://api.stripe.com", None, &[], &["/v1/*".into()]).unwrap();
        let l = Label {
            name: "STRIPE_KEY".into(),
            description: String::new(),
            kind: VarKind::Env,
            source: None,
            bindings: vec![rule],
        };
        let bytes = l.encode();
        assert_eq!(bytes[0], LABEL_VERSION_BOUND);
        assert_eq!(Label::decode(&bytes).unwrap(), l);
        for cut in 0..bytes.len() {
            assert!(Label::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let unbound = Label {
            bindings: Vec::new(),
            ..l
        };
        assert_eq!(unbound.encode()[0], LABEL_VERSION);
    }
}
