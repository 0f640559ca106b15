//! Lease containment (G10): nothing a lease starts outlives it.
//!
//! Every process the broker starts is made a *child subreaper* before it
//! execs (`PR_SET_CHILD_SUBREAPER`, kept across `execve`): a descendant that
//! leaves with `setsid` or a double fork is re-parented to the lease's
//! process, not to init, so it stays inside the lease for as long as the
//! lease runs. The broker is a subreaper too, so when a lease's process
//! ends (or is killed at the deadline, on revoke or lock), whatever it left
//! is re-parented to the broker. The broker knows its own children (they
//! are registered here as they are spawned): any other child is a leftover
//! of a lease that ended, and [`sweep`] kills and reaps it.
//!
//! The registry lock is held across each spawn and each sweep, so a child
//! is never swept between its fork and its registration.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::{Pid, Signal};

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

/// Spawns `cmd` with its process made a subreaper before it execs, and
/// registers the child as the broker's own.
pub fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<(tokio::process::Child, Own)> {
    crate::sys::subreaper_before_exec(cmd);
    let mut reg = own();
    let child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    reg.insert(pid);
    Ok((child, Own(pid)))
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
