//! Process facts from `/proc`: parents (for the ancestry check that keeps an
//! agent from approving its own request, G3) and start times (so the reaper
//! never kills a process that merely reused a dead lease's pid).

use std::fs;

/// A small `/proc` file in one or two reads (`fs::read_to_string` asks
/// its size first, which `/proc` does not know, then grows from 32 bytes:
/// seven system calls for a `stat` line; the ancestry walk reads one per
/// ancestor on every request).
fn read_proc(path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    Some(buf)
}

/// [`read_proc`] of a text file.
fn read_proc_text(path: &str) -> Option<String> {
    String::from_utf8(read_proc(path)?).ok()
}

/// The parent pid and the start time (clock ticks since boot) of `pid`.
pub fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = read_proc_text(&format!("/proc/{pid}/stat"))?;
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
        let Some(text) = read_proc_text(&format!("/proc/{pid}/stat")) else {
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

/// When `pid` is a `custody agent` launcher (its executable is this
/// custody binary, its arguments `custody agent … -- CMD`): the agent's name
/// as the launcher's command line gives it (`--name`, else the command's
/// client, see [`custody_core::clients::for_command`]). Only a human's
/// process or an agent wrapping itself can be one, so the answer never
/// makes a process *less* of an agent.
pub fn launcher_name(pid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // The broker's own binary, looked up once: `/proc/self/exe` names the
    // file this process started from for its whole life.
    static OWN: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let own = OWN.get_or_init(|| {
        let m = fs::metadata("/proc/self/exe").ok()?;
        Some((m.dev(), m.ino()))
    });
    let exe = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    if Some((exe.dev(), exe.ino())) != *own {
        return None;
    }
    let raw = read_proc(&format!("/proc/{pid}/cmdline"))?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    if args.get(1) != Some(&&b"agent"[..]) {
        return None;
    }
    let opts: Vec<std::borrow::Cow<'_, str>> = args[2..]
        .iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect();
    // The launcher's own sandbox stages (`--sandbox-init`, and the `--check`
    // probes) are not launchers (the launcher is above them), wherever the
    // flag stands before `--`.
    if opts
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("--sandbox-") || a.starts_with("--probe-"))
    {
        return None;
    }
    let mut rest = opts.into_iter();
    while let Some(a) = rest.next() {
        if a == "--" {
            return rest.next().map(|c| custody_core::clients::for_command(&c));
        }
        if a == "--name" {
            return rest.next().map(|n| custody_core::clients::canonical(&n));
        }
        if let Some(n) = a.strip_prefix("--name=") {
            return Some(custody_core::clients::canonical(n));
        }
    }
    None
}

/// Whether `pid` is alive and still the process that started at `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|(_, s)| s == start)
}

/// The session id of `pid` (processes started from one terminal share it).
pub fn session_id(pid: u32) -> Option<u32> {
    let text = read_proc_text(&format!("/proc/{pid}/stat"))?;
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
