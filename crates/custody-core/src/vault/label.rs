//! The plaintext inside a sealed label: name, description and kind.
//!
//! Layout: `version (1) ‖ kind (1) ‖ name_len (u16 BE) ‖ name ‖
//! description_len (u16 BE) ‖ description`, and for a dynamic variable
//! (kind 2) `‖ source_len (u16 BE) ‖ source`. A fixed binary layout rather
//! than JSON: listing 10,000 variables decodes 10,000 labels, and a small
//! exact decoder is easy to fuzz. Labels are authenticated before decoding,
//! but the decoder still treats its input as hostile.

use super::VarKind;

const LABEL_VERSION: u8 = 1;

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
        out.push(LABEL_VERSION);
        out.push(match self.kind {
            VarKind::Env => 0,
            VarKind::File => 1,
            VarKind::Dynamic => 2,
        });
        let source = match self.kind {
            VarKind::Dynamic => Some(self.source.as_deref().unwrap_or_default()),
            _ => None,
        };
        for field in [self.name.as_str(), self.description.as_str()]
            .into_iter()
            .chain(source)
        {
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        }
        out
    }

    /// Decodes a label, checking every length and rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Label, LabelError> {
        let mut r = bytes;
        let mut take = |n: usize| -> Result<&[u8], LabelError> {
            if r.len() < n {
                return Err(LabelError("truncated"));
            }
            let (head, tail) = r.split_at(n);
            r = tail;
            Ok(head)
        };
        if take(1)? != [LABEL_VERSION] {
            return Err(LabelError("unknown version"));
        }
        let kind = match take(1)? {
            [0] => VarKind::Env,
            [1] => VarKind::File,
            [2] => VarKind::Dynamic,
            _ => return Err(LabelError("unknown kind")),
        };
        let mut text = || -> Result<String, LabelError> {
            let len = take(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            String::from_utf8(take(len)?.to_vec()).map_err(|_| LabelError("not UTF-8"))
        };
        let name = text()?;
        let description = text()?;
        let source = match kind {
            VarKind::Dynamic => Some(text()?),
            _ => None,
        };
        if !r.is_empty() {
            return Err(LabelError("trailing bytes"));
        }
        Ok(Label {
            name,
            description,
            kind,
            source,
        })
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
}
