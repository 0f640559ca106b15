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

/// Registers `fd` with the runtime's reactor (a lease's terminal master).
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that it alone closes, on
    // drop; the `AsyncFd` owns it from here until it is dropped, and
    // `OwnedFd::as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// A program, its arguments and its whole environment, made ready for
/// `execve` before anything is started: NUL-terminated strings and the
/// null-terminated pointer arrays into them. The environment holds the
/// lease's values: every string is zeroized when this is dropped.
pub struct ExecImage {
    program: std::ffi::CString,
    cwd: std::ffi::CString,
    // Owners of the bytes `argv` and `envp` point into: each string is a
    // separate heap buffer, so pushing more strings never moves one.
    _strings: Vec<zeroize::Zeroizing<Vec<u8>>>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecImage {
    /// `argv` includes the name the program sees as `argv[0]`; each `env`
    /// entry is `NAME=VALUE` (what `execve` takes), taken over and
    /// NUL-terminated where it is. A NUL in any of them is refused
    /// (`InvalidInput`).
    pub fn new(
        program: &std::path::Path,
        argv: impl IntoIterator<Item = Vec<u8>>,
        env: impl IntoIterator<Item = zeroize::Zeroizing<Vec<u8>>>,
        cwd: &std::path::Path,
    ) -> std::io::Result<ExecImage> {
        use std::os::unix::ffi::OsStrExt;
        let nul = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a NUL byte in argv, env or path",
            )
        };
        let c_path = |p: &std::path::Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| nul())
        };
        // Terminated in place: no second copy of a value, unless its buffer
        // has no room for the NUL (growing it would free the old buffer
        // unzeroized, so it is copied into a zeroized one instead).
        let terminated = |mut s: zeroize::Zeroizing<Vec<u8>>| {
            if s.contains(&0) {
                return Err(nul());
            }
            if s.len() == s.capacity() {
                let mut grown = zeroize::Zeroizing::new(Vec::with_capacity(s.len() + 1));
                grown.extend_from_slice(&s);
                s = grown;
            }
            s.push(0);
            Ok(s)
        };
        let args = argv
            .into_iter()
            .map(|a| terminated(zeroize::Zeroizing::new(a)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let vars = env
            .into_iter()
            .map(terminated)
            .collect::<std::io::Result<Vec<_>>>()?;
        let pointers = |strings: &[zeroize::Zeroizing<Vec<u8>>]| {
            let mut p: Vec<*const libc::c_char> =
                strings.iter().map(|s| s.as_ptr().cast()).collect();
            p.push(std::ptr::null());
            p
        };
        let (argv, envp) = (pointers(&args), pointers(&vars));
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecImage {
            program: c_path(program)?,
            cwd: c_path(cwd)?,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// Whom a spawned process leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leader {
    /// A process group of its own (its pid).
    Group,
    /// A session of its own whose controlling terminal is its stdin (a
    /// lease on a pseudo-terminal).
    SessionOnTerminal,
}

/// What the spawned child reads: prepared by the parent, read-only to the
/// child, which writes nothing but `error`.
struct ChildArgs<'a> {
    image: &'a ExecImage,
    stdio: [std::os::fd::RawFd; 3],
    leader: Leader,
    /// The `errno` of the step that failed (0: the exec happened).
    error: std::sync::atomic::AtomicI32,
}

/// Signals are 1 to 64 on Linux (`_NSIG` is 65).
const NSIG: libc::c_int = 65;

/// Stack of the child between `clone` and `execve`: a few system calls.
const CHILD_STACK: usize = 64 * 1024;

/// Starts `image` as a *child subreaper* (see [`crate::contain`]) without
/// copying this process: `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn`
/// does, where a `fork` would copy the broker's page tables and make every
/// later write fault (a `pre_exec` hook forces std into `fork`). In the
/// child, before `execve`: signal handlers back to their defaults and no
/// signal blocked (as std's spawn leaves them), its own process group or
/// session, `stdio` as fds 0–2, `cwd`, `PR_SET_CHILD_SUBREAPER`. Returns
/// the pid and a pidfd for it once the exec has happened; an error (with
/// the failed step's `errno`) if it did not, the child reaped.
///
/// `stdio` must be descriptors above 2 (the caller duplicates them there):
/// moving one onto 0–2 must not close another still to be moved.
pub fn spawn_subreaper(
    image: &ExecImage,
    stdio: [std::os::fd::BorrowedFd<'_>; 3],
    leader: Leader,
) -> std::io::Result<(u32, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::sync::atomic::Ordering;
    if stdio.iter().any(|fd| fd.as_raw_fd() <= 2) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "spawn: stdio descriptors must be above 2",
        ));
    }
    let args = ChildArgs {
        image,
        stdio: stdio.map(|fd| fd.as_raw_fd()),
        leader,
        error: std::sync::atomic::AtomicI32::new(0),
    };
    let stack = ChildStack::new()?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: `sigfillset`/`pthread_sigmask` write only the two local sets.
    // Every signal is blocked on this thread around `clone` so that no
    // handler of this process runs on the child (which shares its memory)
    // before the child has reset them; the old mask is restored right
    // after, whatever `clone` returned.
    //
    // `clone` with `CLONE_VM | CLONE_VFORK` runs `child_main` on `stack`
    // (a fresh mapping with a guard page, unmapped only after `clone`
    // returns) in the same address space, and suspends this thread until
    // the child has exec'd or exited: so `args`, `image` and `pidfd`
    // outlive every access the child makes. The child reads `args` and
    // `image` (not changed by anyone while this thread is suspended: they
    // are borrowed immutably here) and writes only `args.error` (atomic).
    // It calls only async-signal-safe functions, allocates nothing and
    // takes no lock (see `child_main`). `CLONE_PIDFD` has the kernel write
    // a new pidfd into `pidfd` (`parent_tid` is that out-pointer); it owns
    // nothing until `clone` succeeded.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            std::ptr::from_ref(&args).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        );
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    // SAFETY: `clone` succeeded with `CLONE_PIDFD`, so `pidfd` is a new
    // descriptor that nothing else owns.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) };
    let failed = args.error.load(Ordering::Acquire);
    if failed != 0 {
        // The child exited (`_exit(127)`) without exec: reap it here.
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
            rustix::process::WaitIdOptions::EXITED,
        );
        return Err(std::io::Error::from_raw_os_error(failed));
    }
    Ok((pid.unsigned_abs(), pidfd))
}

/// The child side of [`spawn_subreaper`]: runs on its own stack in the
/// parent's address space until `execve` replaces it. Async-signal-safe
/// libc calls only; no allocation, no lock, no panic path.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn_subreaper` keeps alive
    // (and unchanged) until this child has exec'd or exited.
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    // SAFETY: see `child_steps`; `_exit` ends only this child (its own
    // thread group) without running any of the parent's exit handlers.
    unsafe {
        let errno = child_steps(args);
        args.error.store(
            if errno == 0 { libc::EINVAL } else { errno },
            std::sync::atomic::Ordering::Release,
        );
        libc::_exit(127)
    }
}

/// Everything the child does before `execve`; returns the `errno` of the
/// step that failed (`execve` returns only on failure).
///
/// # Safety
/// Only in the child of [`spawn_subreaper`]'s `clone`, with every signal
/// blocked. Each call below is async-signal-safe and takes pointers only
/// to `args` (valid, see `child_main`) or to this stack.
unsafe fn child_steps(args: &ChildArgs<'_>) -> libc::c_int {
    // SAFETY: as for the function; the `sigaction` structs are local, and
    // `errno` is this thread's (the suspended parent's: nothing reads it).
    unsafe {
        let errno = || *libc::__errno_location();
        // The parent's handlers would run here, on memory it still uses:
        // back to the default action (ignored signals stay ignored, as
        // across `execve`, except SIGPIPE, which std's spawn restores).
        for sig in 1..NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue; // The C library's own signals: refused, left alone.
            }
            let ignored = old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE;
            if old.sa_sigaction != libc::SIG_DFL && !ignored {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                if libc::sigaction(sig, &dfl, std::ptr::null_mut()) != 0 {
                    return errno();
                }
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return libc::EINVAL;
        }
        let led = match args.leader {
            Leader::Group => libc::setpgid(0, 0),
            Leader::SessionOnTerminal => libc::setsid(),
        };
        if led < 0 {
            return errno();
        }
        for (target, &fd) in args.stdio.iter().enumerate() {
            // `dup2` leaves the copy without close-on-exec.
            if libc::dup2(fd, target as libc::c_int) < 0 {
                return errno();
            }
        }
        if args.leader == Leader::SessionOnTerminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return errno();
        }
        if libc::chdir(args.image.cwd.as_ptr()) < 0 {
            return errno();
        }
        // Nothing it starts can leave the lease (see `crate::contain`);
        // kept across `execve`.
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
            return errno();
        }
        libc::execve(
            args.image.program.as_ptr(),
            args.image.argv.as_ptr(),
            args.image.envp.as_ptr(),
        );
        errno()
    }
}

/// The child's stack: an anonymous mapping with a guard page below it.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> std::io::Result<ChildStack> {
        let page = rustix::param::page_size();
        let len = CHILD_STACK + page;
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks: it aliases nothing. Its lowest page is then made
        // inaccessible (an overflow faults instead of writing below).
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let stack = ChildStack { base, len };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// The stack's highest address (x86-64 and aarch64 stacks grow down;
    /// page-aligned, so 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping `base..base + len`.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used: the child that
        // ran on it has exec'd or exited (`CLONE_VFORK`).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}
