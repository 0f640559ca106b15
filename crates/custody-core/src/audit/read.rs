//! Reading records for display: `custody audit [--since] [--follow]`.
//!
//! Readers parse lines; they do not authenticate them (no key needed).
//! `custody audit verify` is what proves the log intact.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::line::{LineReader, RawLine};
use super::record::parse_record;
use super::{AuditError, AuditRecord, Problem, parse_rfc3339};

/// Where `custody audit --since` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Records with this seq or later.
    Seq(u64),
    /// Records stamped at this time or later. Records whose time does not
    /// parse are shown (better an extra line than a hidden one).
    Time(SystemTime),
}

impl Since {
    /// Whether `record` is at or after this point.
    pub fn admits(&self, record: &AuditRecord) -> bool {
        match *self {
            Since::Seq(seq) => record.seq >= seq,
            Since::Time(t) => parse_rfc3339(&record.time).is_none_or(|rt| rt >= t),
        }
    }
}

/// Iterator over the records of a log file, in file order. Yields an error
/// item for each line that is not a record (and keeps going); yields a final
/// [`Problem::Torn`] error for an unterminated last line.
pub struct AuditReader<R = BufReader<File>> {
    lines: LineReader<R>,
    since: Option<Since>,
    failed: bool,
}

impl<R> std::fmt::Debug for AuditReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader").finish_non_exhaustive()
    }
}

/// Opens the log at `path` for reading from its start, keeping records
/// admitted by `since`.
pub fn read(path: &Path, since: Option<Since>) -> Result<AuditReader, AuditError> {
    let file = File::open(path).map_err(AuditError::io("open"))?;
    Ok(read_from(BufReader::new(file), since))
}

/// [`read`] over any byte stream (used by the fuzz target and tests).
pub fn read_from<R: BufRead>(reader: R, since: Option<Since>) -> AuditReader<R> {
    AuditReader {
        lines: LineReader::new(reader),
        since,
        failed: false,
    }
}

/// Turns one raw line into a record, an error, or nothing (filtered out).
fn convert(line: &RawLine<'_>, since: Option<Since>) -> Option<Result<AuditRecord, AuditError>> {
    let bad = |problem| {
        Some(Err(AuditError::BadLine {
            line: line.number,
            offset: line.offset,
            problem,
        }))
    };
    if line.too_long {
        return bad(Problem::LineTooLong);
    }
    if !line.terminated {
        return bad(Problem::Torn);
    }
    match parse_record(line.content()) {
        Ok(record) if since.is_none_or(|s| s.admits(&record)) => Some(Ok(record)),
        Ok(_) => None,
        Err(problem) => bad(problem),
    }
}

impl<R: BufRead> Iterator for AuditReader<R> {
    type Item = Result<AuditRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let line = match self.lines.next_line(true) {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(AuditError::io("read")(e)));
                }
            };
            if let Some(item) = convert(&line, self.since) {
                return Some(item);
            }
        }
    }
}

/// Follows the log like `tail -f`: yields existing records (filtered by
/// `since`), then new ones as they are appended, polling every
/// `poll_interval`. A partial last line is held back until its newline
/// arrives. If the file is replaced (new chain) or shrinks, reading restarts
/// from the new file's start after one [`AuditError::Io`] item saying so.
///
/// [`Iterator::next`] blocks until a record arrives (or an I/O error);
/// [`AuditFollower::try_next`] never blocks.
pub struct AuditFollower {
    path: PathBuf,
    lines: LineReader<BufReader<File>>,
    ino: u64,
    since: Option<Since>,
    poll_interval: Duration,
}

impl std::fmt::Debug for AuditFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditFollower")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Starts following the log at `path`; see [`AuditFollower`].
pub fn follow(
    path: &Path,
    since: Option<Since>,
    poll_interval: Duration,
) -> Result<AuditFollower, AuditError> {
    let (lines, ino) = open_follow(path)?;
    Ok(AuditFollower {
        path: path.to_path_buf(),
        lines,
        ino,
        since,
        poll_interval,
    })
}

fn open_follow(path: &Path) -> Result<(LineReader<BufReader<File>>, u64), AuditError> {
    let mut file = File::open(path).map_err(AuditError::io("open"))?;
    let ino = file.metadata().map_err(AuditError::io("stat"))?.ino();
    file.seek(SeekFrom::Start(0))
        .map_err(AuditError::io("seek"))?;
    Ok((LineReader::new(BufReader::new(file)), ino))
}

impl AuditFollower {
    /// The next record if one is complete now, else `None` (never blocks).
    pub fn try_next(&mut self) -> Option<Result<AuditRecord, AuditError>> {
        loop {
            match self.lines.next_line(false) {
                Ok(Some(line)) => {
                    if let Some(item) = convert(&line, self.since) {
                        return Some(item);
                    }
                }
                Ok(None) => return self.check_replaced(),
                Err(e) => return Some(Err(AuditError::io("read")(e))),
            }
        }
    }

    /// At the end of the data: restart if the path now names another file or
    /// the file shrank below what was read.
    fn check_replaced(&mut self) -> Option<Result<AuditRecord, AuditError>> {
        let meta = std::fs::metadata(&self.path).ok()?;
        if meta.ino() == self.ino && meta.len() >= self.lines.position() {
            return None;
        }
        match open_follow(&self.path) {
            Ok((lines, ino)) => {
                self.lines = lines;
                self.ino = ino;
                Some(Err(AuditError::Io {
                    op: "follow",
                    source: std::io::Error::other(
                        "the audit log was replaced or truncated; reading it from the start",
                    ),
                }))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for AuditFollower {
    type Item = Result<AuditRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.try_next() {
                return Some(item);
            }
            std::thread::sleep(self.poll_interval);
        }
    }
}
