//! What the integration tests of every custody crate share: a temporary
//! home for a vault and a broker ([`Home`]), commands run in it without a
//! terminal and optionally as another user, stopping a broker, a throwaway
//! PostgreSQL server ([`pg`]). Dev-only: no crate depends on it outside its
//! tests and benches.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test support: a panic is the failure report

pub mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A temporary directory holding a custody home (`home/`), runtime
/// directory (`run/`) and a working directory (`work/`), owned by `uid`
/// when given (tests as root run attacks as an unprivileged user).
pub struct Home {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Who the commands run as (`None`: whoever runs the tests).
    pub uid: Option<u32>,
}

impl Home {
    /// A fresh directory with `work/` made (and everything owned by `uid`).
    pub fn new(uid: Option<u32>) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        if let Some(uid) = uid {
            let own = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
            own(dir.path());
            own(&dir.path().join("work"));
        }
        Home { dir, uid }
    }

    /// `CUSTODY_HOME`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `CUSTODY_RUNTIME_DIR`.
    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A working directory for the commands.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `program` in this home, as its user, in a session of its own: no
    /// controlling terminal, so a test never prompts on (or waits for) the
    /// terminal the suite runs in. The caller's `XDG_*` directories are
    /// left out so nothing leaks into the developer's own.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("setsid");
        c.arg("-w");
        if let Some(uid) = self.uid {
            c.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        c.arg(program)
            .env("CUSTODY_HOME", self.home())
            .env("CUSTODY_RUNTIME_DIR", self.runtime())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR");
        c
    }

    /// The pid of this home's broker, if one answers `custody --json status`.
    pub fn broker_pid(&self, custody: &Path) -> Option<u32> {
        let out = self
            .command(custody)
            .args(["--json", "status"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }

    /// Stops this home's broker, if one runs (see [`stop_process`]).
    pub fn stop_broker(&self, custody: &Path) {
        if let Some(pid) = self.broker_pid(custody) {
            stop_process(pid);
        }
    }
}

/// Sends SIGTERM to `pid` and waits up to 15 s for it to be gone.
pub fn stop_process(pid: u32) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let until = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether `needle` (not empty) occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
