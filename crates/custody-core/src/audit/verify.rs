//! Verifying a chain: MACs, seqs, links, torn-tail attestations and the head.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::line::{LineReader, RawLine};
use super::record::{check_line, parse_record};
use super::{AuditEvent, AuditHead, MAX_TORN_REGION, Problem, parse_hex32};
use crate::crypto::{self, Key};

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Number of records (torn fragments are not records).
    pub records: u64,
    /// The head of the file: last seq and the hash of its line.
    pub head: AuditHead,
    /// Valid records after the expected head (a crash between the append and
    /// the vault update leaves one); 0 when no head was given.
    pub records_after_head: u64,
    /// Torn writes left in place and attested by a `torn_tail` record.
    pub torn_regions: Vec<TornRegion>,
    /// Bytes verified (the file's length).
    pub bytes: u64,
}

/// Bytes a crash left in the file, sealed by a later `torn_tail` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornRegion {
    /// Byte offset where the torn bytes start.
    pub offset: u64,
    /// Their length, including the newline custody added.
    pub len: u64,
    /// Seq of the `torn_tail` record that attests them.
    pub attested_by: u64,
}

/// Why a chain did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read the audit log: {0}")]
    Io(#[from] io::Error),
    /// The first bad record.
    #[error("first bad record: seq {seq} (byte {offset}): {problem}")]
    Bad {
        /// The first seq that is bad or missing: one past the last good record.
        seq: u64,
        /// Byte offset where the bad line starts (or the file's end).
        offset: u64,
        /// What is wrong.
        problem: Problem,
    },
}

impl VerifyError {
    /// The first bad seq, unless the file could not be read at all.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            VerifyError::Io(_) => None,
            VerifyError::Bad { seq, .. } => Some(*seq),
        }
    }

    /// What is wrong, unless the file could not be read at all.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            VerifyError::Io(_) => None,
            VerifyError::Bad { problem, .. } => Some(problem),
        }
    }
}

/// Verifies the chain in the file at `path` with the audit subkey `key`
/// (`vault.subkey(Subkey::Audit)`), against the head stored in the vault,
/// if any. Reads the file once, holding at most [`MAX_TORN_REGION`] bytes
/// plus one line in memory; never panics on hostile bytes.
pub fn verify(
    path: &Path,
    key: &Key,
    expected: Option<&AuditHead>,
) -> Result<VerifyReport, VerifyError> {
    let file = File::open(path)?;
    verify_reader(BufReader::new(file), key, expected)
}

/// [`verify`] over any byte stream (used by the fuzz target and tests).
pub fn verify_reader<R: BufRead>(
    reader: R,
    key: &Key,
    expected: Option<&AuditHead>,
) -> Result<VerifyReport, VerifyError> {
    match scan(reader, key, expected)? {
        Ok(scan) => Ok(scan.report),
        Err(failure) => Err(failure.into_error()),
    }
}

/// The state after a scan that found no damage.
pub(crate) struct Scan {
    pub report: VerifyReport,
}

/// The first damage a scan found, with what `open` needs to decide whether
/// it is a torn tail it may seal.
pub(crate) struct Failure {
    pub seq: u64,
    pub offset: u64,
    pub problem: Problem,
    /// The last good record before the damage.
    pub head: AuditHead,
    /// Everything from `offset` to the end of the file, when it fit in
    /// [`MAX_TORN_REGION`] and the scan reached the end.
    pub region: Option<Vec<u8>>,
    /// Some line in the region carries a valid MAC.
    pub region_has_authentic_line: bool,
}

impl Failure {
    pub fn into_error(self) -> VerifyError {
        VerifyError::Bad {
            seq: self.seq,
            offset: self.offset,
            problem: self.problem,
        }
    }
}

/// Bytes after the last good record that may yet be attested by a
/// `torn_tail` record.
struct Suspect {
    seq: u64,
    offset: u64,
    problem: Problem,
    region: Vec<u8>,
    has_authentic_line: bool,
}

/// Scans the whole stream. The outer `Result` is for I/O errors only.
pub(crate) fn scan<R: BufRead>(
    reader: R,
    key: &Key,
    expected: Option<&AuditHead>,
) -> io::Result<Result<Scan, Failure>> {
    let mut lines = LineReader::new(reader);
    let mut head = AuditHead::GENESIS;
    let mut records = 0u64;
    let mut torn_regions = Vec::new();
    let mut suspect: Option<Suspect> = None;
    let fail = |head: AuditHead, seq: u64, offset: u64, problem: Problem| Failure {
        seq,
        offset,
        problem,
        head,
        region: None,
        region_has_authentic_line: false,
    };
    if expected.is_some_and(|h| h.seq == 0 && h.hash != [0; 32]) {
        return Ok(Err(fail(head, 1, 0, Problem::HeadMismatch)));
    }

    while let Some(line) = lines.next_line(true)? {
        if let Some(s) = suspect.as_mut() {
            if let Some(seq) = torn_tail_attests(key, &line, &head, &s.region) {
                torn_regions.push(TornRegion {
                    offset: s.offset,
                    len: s.region.len() as u64,
                    attested_by: seq,
                });
                suspect = None;
                records += 1;
                head = AuditHead {
                    seq,
                    hash: crypto::sha256(line.bytes),
                };
                if let Some(problem) = head_problem(expected, &head) {
                    return Ok(Err(fail(head, seq, line.offset, problem)));
                }
                continue;
            }
            if line.too_long || s.region.len() + line.bytes.len() > MAX_TORN_REGION {
                // Too much to be a crash's torn tail: report the first damage.
                return Ok(Err(fail(head, s.seq, s.offset, s.problem.clone())));
            }
            s.region.extend_from_slice(line.bytes);
            s.has_authentic_line |= check_line(key, line.content()).is_ok();
            continue;
        }

        match check_next(key, &line, &head) {
            Ok(()) => {
                records += 1;
                head = AuditHead {
                    seq: head.seq + 1,
                    hash: crypto::sha256(line.bytes),
                };
                if let Some(problem) = head_problem(expected, &head) {
                    return Ok(Err(fail(head, head.seq, line.offset, problem)));
                }
            }
            Err(problem) => {
                if line.too_long {
                    return Ok(Err(fail(head, head.seq + 1, line.offset, problem)));
                }
                // Keep the bytes: a `torn_tail` record may follow that
                // attests them (see the module docs).
                // An authentic line (even one missing only its newline) is
                // a record, not crash debris: never seal it as torn.
                let authentic = check_line(key, line.content()).is_ok();
                suspect = Some(Suspect {
                    seq: head.seq + 1,
                    offset: line.offset,
                    problem,
                    region: line.bytes.to_vec(),
                    has_authentic_line: authentic,
                });
            }
        }
    }
    let bytes = lines.position();
    if let Some(s) = suspect {
        return Ok(Err(Failure {
            seq: s.seq,
            offset: s.offset,
            problem: s.problem,
            head,
            region: Some(s.region),
            region_has_authentic_line: s.has_authentic_line,
        }));
    }
    let mut records_after_head = 0;
    if let Some(exp) = expected {
        if exp.seq > head.seq {
            return Ok(Err(fail(
                head,
                head.seq + 1,
                bytes,
                Problem::Truncated { head_seq: exp.seq },
            )));
        }
        records_after_head = head.seq - exp.seq;
    }
    Ok(Ok(Scan {
        report: VerifyReport {
            records,
            head,
            records_after_head,
            torn_regions,
            bytes,
        },
    }))
}

/// Checks that `line` is the authentic record following `head`.
fn check_next(key: &Key, line: &RawLine<'_>, head: &AuditHead) -> Result<(), Problem> {
    if line.too_long {
        return Err(Problem::LineTooLong);
    }
    if !line.terminated {
        return Err(Problem::Torn);
    }
    let checked = check_line(key, line.content())?;
    if checked.seq != head.seq + 1 {
        return Err(Problem::SeqMismatch { found: checked.seq });
    }
    if checked.prev != head.hash {
        return Err(Problem::BrokenLink);
    }
    Ok(())
}

/// The problem, if the record just accepted is the expected head's seq but
/// hashes differently.
fn head_problem(expected: Option<&AuditHead>, head: &AuditHead) -> Option<Problem> {
    match expected {
        Some(exp) if exp.seq == head.seq && exp.hash != head.hash => Some(Problem::HeadMismatch),
        _ => None,
    }
}

/// If `line` is an authentic `torn_tail` record following `head` that attests
/// exactly `region`, its seq.
fn torn_tail_attests(
    key: &Key,
    line: &RawLine<'_>,
    head: &AuditHead,
    region: &[u8],
) -> Option<u64> {
    check_next(key, line, head).ok()?;
    let record = parse_record(line.content()).ok()?;
    let AuditEvent::TornTail {
        fragment_bytes,
        fragment_sha256,
    } = record.event
    else {
        return None;
    };
    let attested = parse_hex32(&fragment_sha256)?;
    (fragment_bytes == region.len() as u64 && attested == crypto::sha256(region))
        .then_some(record.seq)
}
