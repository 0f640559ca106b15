//! Process facts from `/proc`: parents (for the ancestry check that keeps an
//! agent from approving its own request, G3) and start times (so the reaper
//! never kills a process that merely reused a dead lease's pid).

use std::fs;

/// The parent pid and the start time (clock ticks since boot) of `pid`.
pub fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or
    // parentheses itself: parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... starttime(22) → indices 0, 1, 19.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The children of `parent` (pid, whether it is a zombie), from a scan of
/// `/proc` (this kernel may lack `/proc/PID/task/TID/children`).
pub fn children_of(parent: u32) -> Vec<(u32, bool)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push((pid, state == Some("Z")));
        }
    }
    out
}

/// Deepest process chain walked: a bound against a pid cycle from a racing
/// /proc.
pub const MAX_DEPTH: usize = 256;

/// `pid` and its ancestors up to (and including) pid 1, nearest first.
/// Bounded, so a pid cycle from a racing /proc cannot loop forever.
pub fn ancestry(pid: u32) -> Vec<u32> {
    let mut chain = vec![pid];
    let mut cur = pid;
    for _ in 0..MAX_DEPTH {
        match stat(cur) {
            Some((ppid, _)) if ppid != 0 && ppid != cur => {
                chain.push(ppid);
                cur = ppid;
            }
            _ => break,
        }
    }
    chain
}

/// Whether `pid` is alive and still the process that started at `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|(_, s)| s == start)
}

/// The session id of `pid` (processes started from one terminal share it).
pub fn session_id(pid: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // state ppid pgrp session → index 3.
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// The process tracing this one (`TracerPid` in `/proc/self/status`), and
/// its command name, if any. A tracer can read every byte this process
/// reads, so custody reads no secret while one is attached.
pub fn tracer_of_self() -> Option<(u32, String)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let pid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    if pid == 0 {
        return None;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    Some((pid, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ancestry_reaches_init_or_container_root() {
        let me = std::process::id();
        let chain = ancestry(me);
        assert_eq!(chain[0], me);
        assert!(chain.len() >= 2, "{chain:?}");
        let (_, start) = stat(me).expect("own stat");
        assert!(same_process(me, start));
        assert!(!same_process(me, start + 1));
        assert!(session_id(me).is_some());
    }
}
