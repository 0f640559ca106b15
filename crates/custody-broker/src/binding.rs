//! What was approved is what runs (G11).
//!
//! A request names a program the way a shell would (`date`, `./deploy.sh`)
//! and an environment it runs with. Both are the requester's: an agent can
//! put its own `date` first in the `PATH` it passes, or edit `deploy.sh`
//! after the human read it. So at request time the broker resolves the
//! program with the environment the child will get, and binds into the
//! request (and the grant made from it):
//! - the program's absolute path and file identity (device, inode, size,
//!   modification and change times: the change time moves on every write,
//!   rename or `touch`, and no unprivileged process can set it back);
//! - the passed-through environment (`PATH`, `HOME`, …), shown to the
//!   approver where it differs from their own;
//! - the SHA-256 of every argument that names a regular file (the script an
//!   interpreter runs), up to [`MAX_HASHED_TOTAL`] bytes per request; larger
//!   files are bound by identity.
//!
//! Binding reads files, so it runs off the broker's state lock and its async
//! threads; files are opened without blocking (a FIFO swapped in cannot hang
//! it) and must be regular files once open.
//!
//! A grant covers a later run only if all of it is unchanged, and a run
//! starts only if the binding still holds just before the spawn (so an
//! edit between the request and the approval is caught too).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::protocol::RunSpec;

/// `PATH` when the requester passes none (what `execvp` uses).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Argument files larger than this are bound by identity, not content.
const MAX_HASHED: u64 = 8 << 20;
/// Most bytes hashed for one request (argument files past it are bound by
/// identity): a request naming one big file 4,096 times costs no more.
pub const MAX_HASHED_TOTAL: u64 = 64 << 20;

/// A file's identity: replaced, edited, renamed over or touched, it differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// An argument file, bound by content (or by identity when large).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileBinding {
    /// SHA-256 of the content, hex.
    Sha256(String),
    /// Too large to hash per run: its identity.
    Identity(FileId),
}

/// Everything a request binds besides argv, cwd and the variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// The program that runs: absolute path (as found, symlinks kept).
    pub program: PathBuf,
    /// Its identity (of the file the path leads to).
    pub program_id: Option<FileId>,
    /// The environment passed through to the child.
    pub passthrough: BTreeMap<String, String>,
    /// Arguments naming regular files under the working directory.
    pub files: BTreeMap<String, FileBinding>,
}

fn bad(msg: String) -> Error {
    Error::BadRequest(msg)
}

/// Resolves and binds `spec` (see the module docs).
pub fn bind(spec: &RunSpec) -> Result<Binding, Error> {
    let cwd = Path::new(&spec.cwd);
    let program = resolve_program(spec)?;
    let meta = std::fs::metadata(&program)
        .map_err(|_| bad(format!("'{}' cannot be read", program.display())))?;
    let mut files = BTreeMap::new();
    let mut budget = MAX_HASHED_TOTAL;
    for arg in spec.argv.iter().skip(1) {
        if files.contains_key(arg) {
            continue;
        }
        if let Some(b) = file_binding(cwd, arg, &mut budget) {
            files.insert(arg.clone(), b);
        }
    }
    Ok(Binding {
        program,
        program_id: Some(FileId::of(&meta)),
        passthrough: spec.passthrough.clone(),
        files,
    })
}

/// Whether `binding` still describes the files on disk (the broker makes
/// this check just before a spawn).
pub fn still_holds(spec: &RunSpec, binding: &Binding) -> bool {
    bind(spec).is_ok_and(|now| &now == binding)
}

/// `argv[0]` as `execvp` would find it with the child's `PATH`.
fn resolve_program(spec: &RunSpec) -> Result<PathBuf, Error> {
    let name = spec.argv.first().map(String::as_str).unwrap_or_default();
    let cwd = Path::new(&spec.cwd);
    if name.contains('/') {
        let p = cwd.join(name);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(bad(format!("'{name}' is not an executable file")))
        };
    }
    let path = spec
        .passthrough
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(DEFAULT_PATH);
    resolve_in(name, cwd, path).ok_or_else(|| {
        bad(format!(
            "command '{name}' not found in the PATH the command would run with"
        ))
    })
}

/// Where `name` (no `/` in it) is found along `path`, as `execvp` would
/// find it from `cwd`.
pub fn resolve_in(name: &str, cwd: &Path, path: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = cwd.join(name);
        return is_executable(&p).then_some(p);
    }
    for dir in path.split(':') {
        // An empty entry means the current directory, as for execvp.
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = cwd.join(dir).join(name);
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binding of `arg` if it names a regular file (relative to `cwd`),
/// hashing at most what is left of `budget`.
fn file_binding(cwd: &Path, arg: &str, budget: &mut u64) -> Option<FileBinding> {
    use std::os::unix::fs::OpenOptionsExt;
    if arg.is_empty() || arg.starts_with('-') {
        return None;
    }
    // Non-blocking, so a FIFO (or a device) named here cannot hang the
    // broker; what counts is what the open descriptor is.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(cwd.join(arg))
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_HASHED || meta.len() > *budget {
        return Some(FileBinding::Identity(FileId::of(&meta)));
    }
    *budget -= meta.len();
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                read += n as u64;
                if read > MAX_HASHED {
                    // It grew while being read: bind what it is now.
                    return Some(FileBinding::Identity(FileId::of(&meta)));
                }
                hasher.update(&buf[..n]);
            }
            Err(_) => return None,
        }
    }
    Some(FileBinding::Sha256(hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn spec(dir: &Path, argv: &[&str], path: &str) -> RunSpec {
        RunSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: dir.to_string_lossy().into_owned(),
            environments: vec!["dev".into()],
            only: None,
            timeout_secs: 60,
            passthrough: [("PATH".to_owned(), path.to_owned())].into(),
            capture_limit: None,
            wait_secs: None,
            pty: None,
        }
    }

    #[test]
    fn programs_resolve_with_the_childs_path_and_scripts_bind_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(dir.path().join("deploy.sh"), "echo deploy\n").unwrap();
        let s = spec(dir.path(), &["sh", "deploy.sh"], "/usr/bin:/bin");
        let b = bind(&s).unwrap();
        assert!(
            b.program.ends_with("sh") && b.program.is_absolute(),
            "{b:?}"
        );
        assert!(matches!(
            b.files.get("deploy.sh"),
            Some(FileBinding::Sha256(_))
        ));
        assert!(still_holds(&s, &b));
        // The script is edited: the binding no longer holds.
        std::fs::write(dir.path().join("deploy.sh"), "echo pwned\n").unwrap();
        assert!(!still_holds(&s, &b));
        // An agent's own `sh` first in PATH resolves to it (and differs).
        let fake = bin.join("sh");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s2 = spec(
            dir.path(),
            &["sh", "deploy.sh"],
            &format!("{}:/usr/bin:/bin", bin.display()),
        );
        assert_eq!(bind(&s2).unwrap().program, fake);
        // Files anywhere are bound (a script outside the cwd too); flags and
        // FIFOs are not, and a FIFO does not block.
        let outside = tempfile::tempdir().unwrap();
        let script = outside.path().join("s.sh");
        std::fs::write(&script, "echo hi\n").unwrap();
        let s3 = spec(
            dir.path(),
            &["bash", script.to_str().unwrap(), "-n"],
            "/usr/bin:/bin",
        );
        assert_eq!(bind(&s3).unwrap().files.len(), 1);
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let s4 = spec(dir.path(), &["cat", "fifo"], "/usr/bin:/bin");
        assert!(bind(&s4).unwrap().files.is_empty());
        // Unknown programs are refused at request time.
        assert!(bind(&spec(dir.path(), &["no-such-program-x"], "/usr/bin")).is_err());
    }
}
