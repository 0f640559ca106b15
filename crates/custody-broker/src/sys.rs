//! The only module with `unsafe`: keeping key material out of swap and out of
//! other processes' reach. Each block says why it is sound.
#![allow(unsafe_code)] // the one audited exception, see the crate root

/// Makes this process non-dumpable (same-user processes can no longer
/// ptrace it or read `/proc/PID/mem`) and turns core dumps off. Returns the
/// names of the protections that could not be applied.
pub fn harden_process() -> Vec<&'static str> {
    let mut failed = Vec::new();
    if rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .is_err()
    {
        failed.push("non-dumpable");
    }
    let zero = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if rustix::process::setrlimit(rustix::process::Resource::Core, zero).is_err() {
        failed.push("no core dumps");
    }
    failed
}

/// Locks the pages holding `bytes` into RAM so they are never swapped out.
/// Best effort: `RLIMIT_MEMLOCK` is often small, so only small key buffers
/// are locked, never the heap at large.
pub fn lock_in_memory(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: `mlock` only changes the paging attributes of the address range;
    // it does not read or write the memory. The range is a live borrowed slice
    // for the duration of the call, so it is valid, mapped memory. The lock
    // outlives the borrow harmlessly (unlocked pages are simply not pinned
    // any more once the allocation is freed and reused).
    unsafe { rustix::mm::mlock(bytes.as_ptr() as *mut core::ffi::c_void, bytes.len()).is_ok() }
}

/// Makes the process `cmd` starts a child subreaper, between its fork and
/// its exec (the attribute survives `execve`): see [`crate::contain`].
pub fn subreaper_before_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes one `prctl` system call
    // (no allocation, no lock, no access to the parent's memory) and
    // returns its result; `Pid::from_raw(1)` is a constant conversion.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(1))
                .map_err(std::io::Error::from)
        });
    }
}

/// Moves this process into new user and mount namespaces (`custody
/// agent`'s first stage), mapping this uid and gid to themselves, so files
/// keep their owners and capabilities inside reach nothing outside. Call
/// it while single-threaded (the kernel refuses a user namespace to a
/// multi-threaded process); then [`enter_agent_pid_namespace`].
pub fn enter_agent_user_namespace() -> std::io::Result<()> {
    use rustix::thread::UnshareFlags;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    // SAFETY: `unshare_unsafe` is unsafe because unsharing the file table or
    // filesystem attributes (`CLONE_FILES`, `CLONE_FS`) can break what other
    // threads assume about shared state. These flags create namespaces
    // only: the user and mount namespaces change what this process may name
    // and mount; no memory, file descriptor or thread-shared state changes,
    // and the caller is single-threaded (the kernel refuses otherwise).
    unsafe {
        rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS)?;
    }
    // A non-dumpable process's /proc/self files belong to root: the maps
    // can only be written while dumpable (the launcher holds no secret, and
    // stays dumpable).
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::Dumpable)?;
    let written = std::fs::write("/proc/self/setgroups", "deny")
        .and_then(|()| std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")))
        .and_then(|()| std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")));
    written?;
    // Mounts made here (the agent's /proc) stay here.
    use rustix::mount::MountPropagationFlags;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    Ok(())
}

/// Makes this process's next child PID 1 of a new PID namespace that holds
/// only the agent's processes: a fresh `/proc` there shows no other process
/// (no `/proc/PID/environ` of lease children or the human's shells). After
/// it, this process can start processes but no more threads.
pub fn enter_agent_pid_namespace() -> std::io::Result<()> {
    // SAFETY: as in `enter_agent_user_namespace`: `CLONE_NEWPID` creates a
    // namespace for children yet to be forked; it changes no memory, file
    // descriptor or state shared with this process's other threads.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }?;
    Ok(())
}

/// Has the process `cmd` starts mount, between its fork and its exec, a
/// `/proc` of its own PID namespace (`custody agent`: that child is PID 1
/// of the agent's namespace, and still holds the user namespace's
/// capabilities, which an exec as a non-root uid would drop). The mount
/// stays inside the agent's private mount namespace.
pub fn mount_proc_before_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes one `prctl` and one
    // `mount` system call;
    // its arguments are short literals that rustix converts to C strings
    // in a stack buffer (no allocation, no lock, no access to the parent's
    // memory), and it returns the call's result.
    unsafe {
        cmd.pre_exec(|| {
            use rustix::mount::MountFlags;
            // If the launcher dies before the agent's first process has
            // started, that process dies too (no agent without a launcher).
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)?;
            rustix::mount::mount(
                "proc",
                "/proc",
                "proc",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// Makes the process `cmd` starts, between its fork and its exec, the
/// leader of a session of its own whose controlling terminal is its stdin
/// (a lease on a pseudo-terminal, [`crate::pty`]). Its process group is its
/// pid, as with `process_group(0)`, which must not be set as well (a group
/// leader cannot start a session).
pub fn session_on_terminal_before_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes two system calls
    // (`setsid`, then `ioctl(0, TIOCSCTTY)`), with no allocation, lock or
    // access to the parent's memory, and returns their result. Fd 0 is
    // open for the hook's whole run: std has made it the terminal's child
    // end before running hooks, so borrowing it is sound.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin).map_err(std::io::Error::from)
        });
    }
}

/// Registers `fd` with the runtime's reactor (a lease's terminal master).
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that it alone closes, on
    // drop; the `AsyncFd` owns it from here until it is dropped, and
    // `OwnedFd::as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}
