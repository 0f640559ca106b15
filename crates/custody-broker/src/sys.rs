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
