//! Lease containment (G10): nothing a lease starts outlives it.
//!
//! Every process the broker starts ([`Command`]) is made a *child
//! subreaper* before it execs (`PR_SET_CHILD_SUBREAPER`, kept across
//! `execve`): a descendant that
//! leaves with `setsid` or a double fork is re-parented to the lease's
//! process, not to init, so it stays inside the lease for as long as the
//! lease runs. The broker is a subreaper too, so when a lease's process
//! ends (or is killed at the deadline, on revoke or lock), whatever it left
//! is re-parented to the broker. The broker knows its own children (they
//! are registered here as they are spawned): any other child is a leftover
//! of a lease that ended, and [`sweep`] kills and reaps it.
//!
//! The registry lock is held across each spawn and each sweep, so a child
//! is never swept between its `clone` and its registration.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use zeroize::Zeroizing;

use crate::sys::{ExecImage, Leader};

static OWN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Whether this process is a subreaper ([`enable`] succeeded): only then
/// are unknown children leftovers of leases (an embedding process, such as
/// a test, may have children of its own).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The last sweep found something (a killed process may need reaping).
static DIRTY: AtomicBool = AtomicBool::new(false);

fn own() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    OWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes this process a subreaper: orphans of its descendants come back to
/// it instead of init. Called once by the daemon. Returns whether it holds.
pub fn enable() -> bool {
    let ok = rustix::process::set_child_subreaper(Pid::from_raw(1)).is_ok();
    ENABLED.store(ok, Ordering::Relaxed);
    ok
}

/// Whether leftovers come back to this process (see [`enable`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where a spawned process's standard stream goes.
#[derive(Debug)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A pipe whose other end the [`Child`] holds.
    Piped,
    /// This descriptor (a pseudo-terminal's child end).
    Fd(OwnedFd),
}

/// A process to start inside a lease's containment: the broker's one way
/// to start anything (leases and the commands of dynamic sources). Unlike
/// `std`'s `Command`, it inherits no environment, takes the program by
/// absolute path (no `PATH` search: what runs is what was bound), keeps the
/// environment in zeroized memory, and starts the process without copying
/// the broker (`sys::spawn_subreaper`).
pub struct Command {
    program: PathBuf,
    argv: Vec<Vec<u8>>,
    /// `NAME=VALUE` entries by name (a later `env` replaces).
    env: BTreeMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    cwd: PathBuf,
    stdio: [Stdio; 3],
    leader: Leader,
    kill_on_drop: bool,
}

impl Command {
    /// `program` (an absolute path), seen by itself as `arg0`; empty
    /// environment, `/` as its directory, stdio to `/dev/null`, a process
    /// group of its own.
    pub fn new(program: impl Into<PathBuf>, arg0: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.into(),
            argv: vec![arg0.as_ref().as_bytes().to_vec()],
            env: BTreeMap::new(),
            cwd: PathBuf::from("/"),
            stdio: [Stdio::Null, Stdio::Null, Stdio::Null],
            leader: Leader::Group,
            kill_on_drop: false,
        }
    }

    /// One more argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.argv.push(arg.as_ref().as_bytes().to_vec());
        self
    }

    /// More arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets `name` to `value` (bytes: a value need not be UTF-8).
    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<[u8]>) -> &mut Command {
        let name = name.as_ref().as_bytes();
        let value = value.as_ref();
        // Room for the NUL `execve` needs: terminated in place, not copied.
        let mut entry = Zeroizing::new(Vec::with_capacity(name.len() + 1 + value.len() + 1));
        entry.extend_from_slice(name);
        entry.push(b'=');
        entry.extend_from_slice(value);
        self.env.insert(name.to_vec(), entry);
        self
    }

    /// Removes `name` from the environment.
    pub fn env_remove(&mut self, name: impl AsRef<OsStr>) -> &mut Command {
        self.env.remove(name.as_ref().as_bytes());
        self
    }

    /// The directory it starts in.
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Command {
        self.cwd = dir.into();
        self
    }

    /// Its stdin.
    pub fn stdin(&mut self, s: Stdio) -> &mut Command {
        self.stdio[0] = s;
        self
    }

    /// Its stdout.
    pub fn stdout(&mut self, s: Stdio) -> &mut Command {
        self.stdio[1] = s;
        self
    }

    /// Its stderr.
    pub fn stderr(&mut self, s: Stdio) -> &mut Command {
        self.stdio[2] = s;
        self
    }

    /// A session of its own on the terminal its stdin is (instead of a
    /// process group of its own).
    pub fn session_on_terminal(&mut self) -> &mut Command {
        self.leader = Leader::SessionOnTerminal;
        self
    }

    /// Kill it (`SIGKILL`) if the [`Child`] is dropped before it ended.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Command {
        self.kill_on_drop = kill;
        self
    }

    /// Starts it as a child subreaper (nothing it starts can leave it),
    /// registered as the broker's own child.
    pub fn spawn(self) -> std::io::Result<Child> {
        if !self.program.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "spawn: the program must be an absolute path",
            ));
        }
        let image = ExecImage::new(&self.program, self.argv, self.env.into_values(), &self.cwd)?;
        let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
        let mut theirs = Vec::with_capacity(3);
        for (i, s) in self.stdio.into_iter().enumerate() {
            let fd = match s {
                Stdio::Null => rustix::fs::open(
                    "/dev/null",
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?,
                Stdio::Fd(fd) => fd,
                Stdio::Piped => {
                    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                    let (child_end, our_end) = if i == 0 { (read, write) } else { (write, read) };
                    ours[i] = Some(our_end);
                    child_end
                }
            };
            // Above 2, so moving one onto 0–2 in the child never closes
            // another (a broker started with a closed stdin gets 0 here).
            theirs.push(if fd.as_raw_fd() <= 2 {
                rustix::io::fcntl_dupfd_cloexec(&fd, 3)?
            } else {
                fd
            });
        }
        let stdio = [theirs[0].as_fd(), theirs[1].as_fd(), theirs[2].as_fd()];
        let mut reg = own();
        let (pid, pidfd) = crate::sys::spawn_subreaper(&image, stdio, self.leader)?;
        reg.insert(pid);
        drop(reg);
        drop(image);
        // The child's ends are the child's now: ours go (a pipe reads its
        // end of file once only the child's copies are left).
        drop(theirs);
        let Ok(pidfd) = crate::sys::async_fd(pidfd) else {
            // Not ours to supervise: it goes (not reaped yet, so the pid
            // is still its own); the next sweep reaps it.
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
            drop(Own(pid));
            mark_dirty();
            return Err(std::io::Error::other("spawn: cannot watch the child"));
        };
        // Killed if anything below fails.
        let mut child = Child {
            pid,
            pidfd,
            stdin: None,
            stdout: None,
            stderr: None,
            status: None,
            kill_on_drop: true,
            _own: Own(pid),
        };
        let [stdin, stdout, stderr] = ours;
        child.stdin = stdin.map(pipe::Sender::from_owned_fd).transpose()?;
        child.stdout = stdout.map(pipe::Receiver::from_owned_fd).transpose()?;
        child.stderr = stderr.map(pipe::Receiver::from_owned_fd).transpose()?;
        child.kill_on_drop = self.kill_on_drop;
        Ok(child)
    }
}

/// A process started by [`Command::spawn`]: waited for through its pidfd
/// (never by pid, so a recycled pid is never mistaken for it).
pub struct Child {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    /// Its stdin's other end, when [`Stdio::Piped`].
    pub stdin: Option<pipe::Sender>,
    /// Its stdout's other end, when [`Stdio::Piped`].
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr's other end, when [`Stdio::Piped`].
    pub stderr: Option<pipe::Receiver>,
    status: Option<ExitStatus>,
    kill_on_drop: bool,
    _own: Own,
}

impl Child {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for it to end and reaps it; again after that, the same
    /// status. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Reaps it if it has ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            let id = WaitId::PidFd(self.pidfd.get_ref().as_fd());
            let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            self.status = rustix::process::waitid(id, opts)?.as_ref().map(exit_status);
        }
        Ok(self.status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            if self.kill_on_drop {
                let _ = rustix::process::pidfd_send_signal(self.pidfd.get_ref(), Signal::KILL);
            }
            // No longer the broker's own: the next sweep reaps it (and
            // kills it, if still running).
            mark_dirty();
        }
    }
}

/// `waitid`'s answer as the status `std` reports.
fn exit_status(s: &rustix::process::WaitIdStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let raw = match (s.exit_status(), s.terminating_signal()) {
        (Some(code), _) => (code & 0xff) << 8,
        (None, Some(sig)) => sig | if s.dumped() { 0x80 } else { 0 },
        (None, None) => 0,
    };
    ExitStatus::from_raw(raw)
}

/// A registered child; dropping it (once the child is reaped) forgets it.
#[derive(Debug)]
pub struct Own(u32);

impl Drop for Own {
    fn drop(&mut self) {
        own().remove(&self.0);
    }
}

/// Kills every child of this process that the broker did not start itself
/// (leftovers re-parented from ended leases) and reaps those already dead.
/// Returns how many it signalled or reaped; `0` means nothing is left.
pub fn sweep() -> usize {
    if !enabled() {
        return 0;
    }
    let me = std::process::id();
    let reg = own();
    let mut n = 0;
    for (pid, zombie) in crate::procs::children_of(me) {
        if reg.contains(&pid) {
            continue;
        }
        let Some(p) = Pid::from_raw(pid as i32) else {
            continue;
        };
        if !zombie {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
        // Reap it if it is dead by now (a killed one may take a moment:
        // the next sweep reaps it). Only this pid: tokio reaps its own.
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
        n += 1;
    }
    DIRTY.store(n > 0, Ordering::Relaxed);
    n
}

/// Asks the next [`sweep_if_dirty`] to sweep (a lease just ended: whatever
/// it left is the broker's now).
pub fn mark_dirty() {
    DIRTY.store(true, Ordering::Relaxed);
}

/// Sweeps again only if the last sweep found something (for the broker's
/// periodic tick: an idle broker does not scan `/proc`).
pub fn sweep_if_dirty() {
    if DIRTY.load(Ordering::Relaxed) {
        sweep();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh", "sh");
        c.arg("-c").arg(script);
        c
    }

    async fn output(mut child: Child) -> (String, ExitStatus) {
        let mut out = Vec::new();
        let mut pipe = child.stdout.take().expect("stdout piped");
        pipe.read_to_end(&mut out).await.expect("read stdout");
        let out = String::from_utf8_lossy(&out).into_owned();
        (out, child.wait().await.expect("wait"))
    }

    /// The child gets exactly the argv, environment (bytes, later `env`
    /// wins, removals), directory and streams it was given.
    #[tokio::test]
    async fn starts_exactly_what_was_given() {
        let dir = tempfile::tempdir().unwrap();
        // Its argv[0] (from /proc), `$0`, its directory, its environment.
        let script = "printf '%s|%s|%s|%s|' \"$(cut -d '' -f1 /proc/$$/cmdline)\" \"$0\" \"$(pwd)\" \"$(env | sort | tr '\\n' ,)\"; echo err >&2; exit 7";
        let mut c = Command::new("/bin/sh", "custody-test");
        c.arg("-c").arg(script);
        c.arg("one two")
            .env("A", "1")
            .env("B", b"\xffbytes")
            .env("A", "2")
            .env("GONE", "x")
            .env_remove("GONE")
            .current_dir(dir.path())
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
        let mut child = c.spawn().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        let (out, status) = output(child).await;
        let cwd = dir.path().canonicalize().unwrap();
        assert!(
            out.starts_with(&format!("custody-test|one two|{}|", cwd.display())),
            "{out}"
        );
        // `sh` adds PWD (and may add SHLVL); nothing of the parent's.
        assert!(out.contains("A=2,"), "{out}");
        assert!(out.contains("B=\u{fffd}bytes,"), "{out}");
        assert!(!out.contains("GONE") && !out.contains("A=1"), "{out}");
        assert!(
            !out.contains("PATH="),
            "the parent's environment leaked: {out}"
        );
        assert_eq!(err, "err\n");
        assert_eq!(status.code(), Some(7));
    }

    /// A program that cannot be started is an error with its `errno`, and
    /// leaves nothing behind.
    #[tokio::test]
    async fn a_failed_exec_is_an_error_and_leaves_no_child() {
        let before = own().len();
        let e = Command::new("/nonexistent/program", "program")
            .spawn()
            .err()
            .expect("no such program");
        assert_eq!(e.raw_os_error(), Some(libc_enoent()));
        assert_eq!(own().len(), before, "a failed start stays registered");
        let e = Command::new("relative", "relative").spawn().err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let mut c = sh("true");
        c.env("NUL", b"a\0b");
        assert_eq!(
            c.spawn().err().unwrap().kind(),
            std::io::ErrorKind::InvalidInput
        );
    }

    fn libc_enoent() -> i32 {
        std::io::Error::from(std::io::ErrorKind::NotFound)
            .raw_os_error()
            .unwrap_or(2)
    }

    /// The broker's signal handlers are not the child's: a `SIGTERM` the
    /// broker handles still ends the child, no signal is blocked in it, and
    /// SIGPIPE is back to its default (what std's spawn does).
    #[tokio::test]
    async fn the_child_has_default_signals_and_none_blocked() {
        let mut handled = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler in this process");
        // Straight to programs that leave their mask alone (a shell
        // clears it at start).
        let mut c = Command::new("/bin/grep", "grep");
        c.args(["-E", "^Sig(Blk|Ign)", "/proc/self/status"])
            .stdout(Stdio::Piped);
        let (seen, _) = output(c.spawn().unwrap()).await;
        assert!(seen.contains("SigBlk:\t0000000000000000"), "{seen}");
        let ign = seen
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .expect("SigIgn");
        assert_eq!(ign & (1 << (13 - 1)), 0, "SIGPIPE ignored in the child");
        let mut sleep = Command::new("/bin/sleep", "sleep");
        sleep.arg("30");
        let mut child = sleep.spawn().unwrap();
        rustix::process::kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM)
            .unwrap();
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15), "{status:?}");
        // The handler stays this process's (and did not fire for the child's).
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), handled.recv())
                .await
                .is_err()
        );
    }

    /// The attack containment stops: a double fork leaves the lease's
    /// process, and its orphan must come back to that process (a
    /// subreaper), not to init.
    #[tokio::test]
    async fn an_orphan_of_the_child_comes_back_to_it() {
        let mut c = sh("(sleep 30 & echo $! > \"$0.pid\"); sleep 0.2; \
             awk '/^PPid/{print $2}' /proc/$(cat \"$0.pid\")/status; echo $$; kill $(cat \"$0.pid\")");
        let dir = tempfile::tempdir().unwrap();
        c.current_dir(dir.path()).stdout(Stdio::Piped);
        // `$0` is the pid file's stem: `sh -c script NAME` sets it.
        c.arg(dir.path().join("orphan"));
        let (out, status) = output(c.spawn().unwrap()).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(
            lines[0], lines[1],
            "the orphan's parent is not the child: {out}"
        );
        assert!(status.success());
    }

    /// A child dropped while it runs is killed when asked, and reaped by
    /// the next sweep either way.
    #[tokio::test]
    async fn a_dropped_child_is_killed_when_asked() {
        let mut c = sh("exec sleep 30");
        c.kill_on_drop(true);
        let child = c.spawn().unwrap();
        let pid = child.id();
        drop(child);
        let pid = Pid::from_raw(pid as i32).unwrap();
        let reaped = crate::retry::poll_until(
            std::time::Instant::now() + std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(10),
            || {
                // This test process is not a subreaper (no sweep here): it
                // reaps the killed child itself.
                matches!(
                    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
                    Ok(Some(_))
                )
            },
        )
        .await;
        assert!(reaped, "the dropped child still runs");
    }
}
