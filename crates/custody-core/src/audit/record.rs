//! Encoding one record as a line, and authenticating a line.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::{AuditError, AuditEvent, MAX_LINE_LEN, Problem, parse_hex32};
use crate::crypto::{self, Key};

/// Domain separation for the record MAC (first part of the keyed hash).
const MAC_DOMAIN: &[u8] = b"custody audit v1";
/// The bytes between the canonical record and the MAC's hex digits.
const MAC_OPEN: &[u8] = b",\"mac\":\"";
/// The bytes after the MAC's hex digits.
const MAC_CLOSE: &[u8] = b"\"}";
/// Length of the `,"mac":"<64 hex>"}` suffix of every line.
const MAC_SUFFIX_LEN: usize = MAC_OPEN.len() + 64 + MAC_CLOSE.len();

/// One parsed audit record, as [`read`](super::read) yields it. Not
/// authenticated by itself: [`verify`](super::verify) checks MACs and links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the record was written, RFC 3339 UTC.
    pub time: String,
    /// Hex SHA-256 of the previous line (64 zeros for seq 1).
    pub prev: String,
    /// What happened.
    pub event: AuditEvent,
    /// Hex HMAC-SHA256 of the record without this field.
    pub mac: String,
}

/// The record without its MAC, in the field order of the line format.
#[derive(Serialize)]
struct Unsigned<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    event: &'a AuditEvent,
}

/// The envelope the verifier needs; `event` is checked for JSON syntax only,
/// so a record written by a newer custody with a new event type still
/// verifies.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    seq: u64,
    #[allow(dead_code)] // parsed for shape only: the MAC already covers it
    time: IgnoredAny,
    prev: String,
    #[allow(dead_code)] // parsed for shape only: the MAC already covers it
    event: IgnoredAny,
    #[allow(dead_code)] // parsed for shape only: checked from the raw bytes
    mac: IgnoredAny,
}

/// What the verifier learns from an authentic line.
pub(crate) struct Checked {
    pub seq: u64,
    pub prev: [u8; 32],
}

/// Builds the complete line (with newline) for a record.
pub(crate) fn encode_line(
    key: &Key,
    seq: u64,
    time: &str,
    prev: &[u8; 32],
    event: &AuditEvent,
) -> Result<Vec<u8>, AuditError> {
    let prev = hex::encode(prev);
    let unsigned = serde_json::to_vec(&Unsigned {
        seq,
        time,
        prev: &prev,
        event,
    })
    .map_err(|e| AuditError::Io {
        op: "serialize record",
        source: e.into(),
    })?;
    let len = unsigned.len() + MAC_SUFFIX_LEN; // "}" replaced by the suffix, plus "\n"
    if len > MAX_LINE_LEN {
        return Err(AuditError::RecordTooLarge { len });
    }
    let mac = crypto::keyed_hash(key, &[MAC_DOMAIN, &unsigned]);
    let Some((b'}', body)) = unsigned.split_last() else {
        return Err(AuditError::Io {
            op: "serialize record",
            source: std::io::Error::other("record is not a JSON object"),
        });
    };
    let mut line = Vec::with_capacity(len);
    line.extend_from_slice(body);
    line.extend_from_slice(MAC_OPEN);
    line.extend_from_slice(hex::encode(mac).as_bytes());
    line.extend_from_slice(MAC_CLOSE);
    line.push(b'\n');
    Ok(line)
}

/// Authenticates one line (content without the newline) and extracts its
/// seq and prev. Order: shape of the MAC suffix, MAC, then JSON.
pub(crate) fn check_line(key: &Key, content: &[u8]) -> Result<Checked, Problem> {
    if content.len() < MAC_SUFFIX_LEN + 2 || content.first() != Some(&b'{') {
        return Err(Problem::Malformed("not a record line"));
    }
    let (body, suffix) = content.split_at(content.len() - MAC_SUFFIX_LEN);
    let (open, rest) = suffix.split_at(MAC_OPEN.len());
    let (mac_hex, close) = rest.split_at(64);
    if open != MAC_OPEN || close != MAC_CLOSE {
        return Err(Problem::Malformed("line does not end with the mac field"));
    }
    let mac_hex = std::str::from_utf8(mac_hex).map_err(|_| Problem::Malformed("mac is not hex"))?;
    let mac = parse_hex32(mac_hex).ok_or(Problem::Malformed("mac is not 64 lowercase hex"))?;
    let mut unsigned = Vec::with_capacity(body.len() + 1);
    unsigned.extend_from_slice(body);
    unsigned.push(b'}');
    let expected = crypto::keyed_hash(key, &[MAC_DOMAIN, &unsigned]);
    if !crypto::ct_eq(&expected, &mac) {
        return Err(Problem::BadMac);
    }
    let env: Envelope = serde_json::from_slice(content)
        .map_err(|_| Problem::Malformed("authentic line is not a valid record"))?;
    let prev = parse_hex32(&env.prev).ok_or(Problem::Malformed("prev is not 64 lowercase hex"))?;
    Ok(Checked { seq: env.seq, prev })
}

/// Parses a line as a typed record, without authenticating it.
pub(crate) fn parse_record(content: &[u8]) -> Result<AuditRecord, Problem> {
    serde_json::from_slice(content).map_err(|e| {
        Problem::Malformed(match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "not valid JSON"
            }
            _ => "not a known record (unknown event type or fields)",
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn line_round_trip_and_shape() {
        let key = Key::from_bytes([5; 32]);
        let line = encode_line(
            &key,
            7,
            "2026-01-01T00:00:00.000Z",
            &[1; 32],
            &AuditEvent::Unlock {},
        )
        .unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.starts_with("{\"seq\":7,\"time\":\"2026-01-01T00:00:00.000Z\",\"prev\":\"0101")
        );
        assert!(text.contains(",\"event\":{\"type\":\"unlock\"},\"mac\":\""));
        assert!(text.ends_with("\"}\n"));
        let content = &line[..line.len() - 1];
        let checked = check_line(&key, content).unwrap();
        assert_eq!((checked.seq, checked.prev), (7, [1; 32]));
        let rec = parse_record(content).unwrap();
        assert_eq!(rec.event, AuditEvent::Unlock {});
        assert_eq!(
            check_line(&Key::from_bytes([6; 32]), content).err(),
            Some(Problem::BadMac)
        );
    }
}
