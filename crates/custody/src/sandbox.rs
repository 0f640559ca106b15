//! The `custody agent` sandbox (G12): Landlock rules that keep an agent and
//! everything it starts away from custody's files, the human's credentials
//! and the human's shell setup, and signal/ptrace scoping that keeps it away
//! from the broker, the human's processes and lease children.
//!
//! Landlock only grants: a rule on a directory covers everything beneath
//! it. So read access is granted on `/` *entry by entry*, descending only
//! into the directories that lead to a hidden path, and skipping the hidden
//! paths themselves; directories on the way get only "list". Writes are
//! granted on the working directory, a private temp dir, the agent client's
//! own state dirs and `--allow-write` paths; devices on the few character
//! devices programs write to. A rule is only as good as the tree when the
//! agent starts: an entry created later beside a hidden path (say a new
//! file in `$HOME`) is not readable inside.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::{Deserialize, Serialize};

/// Files and directories under `$HOME` that hold raw credentials: never
/// readable inside the sandbox (documented in `docs/agents.md`).
pub const CREDENTIAL_PATHS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".config/hub",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
    ".kube",
    ".pgpass",
    ".my.cnf",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".terraform.d/credentials.tfrc.json",
    ".vault-token",
    ".password-store",
    ".local/share/keyrings",
];

/// Agent clients' own state directories under `$HOME`: only the launched
/// client's is writable inside the sandbox (created if missing).
pub const STATE_DIRS: &[&str] = &[".claude", ".codex", ".gemini", ".cursor"];

/// Character devices programs open for writing.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// The ABI this build knows; the kernel's own is found per feature (best
/// effort: what the kernel lacks is reported, never silently assumed).
const ABI_KNOWN: ABI = ABI::V10;

/// Where things are, for one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// `$HOME`, if set.
    pub home: Option<PathBuf>,
    /// Never readable or writable: `$CUSTODY_HOME`, the runtime dir and the
    /// credential files that exist.
    pub hidden: Vec<PathBuf>,
    /// Writable: the working directory, the private temp dir, state dirs
    /// and `--allow-write` paths.
    pub writable: Vec<PathBuf>,
    /// The broker's socket (the one Unix socket the agent may connect to
    /// where the kernel can restrict connecting).
    pub socket: PathBuf,
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// Read, list and execute, everything beneath.
    Read,
    /// List the directory's entries (and beneath: names only).
    List,
    /// Everything.
    Write,
    /// Open for reading and writing, truncate, ioctl (devices).
    Device,
    /// Connect to the Unix socket.
    Connect,
}

impl Grant {
    fn access(self) -> BitFlags<AccessFs> {
        match self {
            Grant::Read => AccessFs::from_read(ABI_KNOWN),
            Grant::List => AccessFs::ReadDir.into(),
            Grant::Write => AccessFs::from_all(ABI_KNOWN),
            Grant::Device => {
                AccessFs::ReadFile
                    | AccessFs::WriteFile
                    | AccessFs::Truncate
                    | AccessFs::IoctlDev
                    | AccessFs::ReadDir
            }
            Grant::Connect => AccessFs::ResolveUnix.into(),
        }
    }
}

/// The rules for one layout, in order.
#[derive(Debug)]
pub struct Plan {
    /// Path and what it gets.
    pub rules: Vec<(PathBuf, Grant)>,
}

/// The paths under `home` to hide (those that exist), plus custody's own.
pub fn hidden_paths(home: Option<&Path>, custody: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = custody.to_vec();
    if let Some(h) = home {
        out.extend(CREDENTIAL_PATHS.iter().map(|p| h.join(p)));
    }
    // Canonical, existing paths only: the walk compares them with real
    // directory entries (a path that does not exist has nothing to hide).
    let mut out: Vec<PathBuf> = out
        .into_iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Checks the writable paths against the hidden ones and `$HOME`, and
/// builds the rules.
pub fn plan(layout: &Layout) -> anyhow::Result<Plan> {
    let home = layout
        .home
        .as_ref()
        .and_then(|h| std::fs::canonicalize(h).ok());
    for w in &layout.writable {
        if let Some(h) = layout
            .hidden
            .iter()
            .find(|h| h.starts_with(w) || w.starts_with(h))
        {
            bail!(
                "{} cannot be writable in the sandbox: it holds, or is inside, {}, which the agent must not reach",
                w.display(),
                h.display()
            );
        }
        if let Some(p) = never_writable(home.as_deref())
            .into_iter()
            .find(|p| p.starts_with(w))
        {
            bail!(
                "{} cannot be writable in the sandbox: it is (or holds) {}, where programs you run later come from",
                w.display(),
                p.display()
            );
        }
        if let Some(h) = &home
            && h.starts_with(w)
        {
            bail!(
                "{} cannot be writable in the sandbox: it is (or holds) your home directory, whose shell rc files and bin directories the agent must not change; start the agent in a project directory",
                w.display()
            );
        }
    }
    let mut rules = Vec::new();
    read_all_but(Path::new("/"), &layout.hidden, &mut rules)?;
    for d in DEVICES {
        if Path::new(d).exists() {
            rules.push((PathBuf::from(d), Grant::Device));
        }
    }
    if Path::new("/dev/shm").is_dir() {
        rules.push((PathBuf::from("/dev/shm"), Grant::Write));
    }
    for w in &layout.writable {
        rules.push((w.clone(), Grant::Write));
    }
    if layout.socket.exists() {
        rules.push((layout.socket.clone(), Grant::Connect));
    }
    Ok(Plan { rules })
}

/// Directories whose contents decide what the human runs later: the bin
/// directories on `PATH` and in `$HOME`, and `~/.config`. None may be made
/// writable (nor a directory holding one).
fn never_writable(home: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = home {
        for d in [".config", ".local/bin", "bin", ".cargo/bin"] {
            out.push(h.join(d));
        }
    }
    out.into_iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// Read on `dir`, or, when a hidden path lies beneath it, list on `dir` and
/// the same for each entry but the hidden ones.
fn read_all_but(
    dir: &Path,
    hidden: &[PathBuf],
    rules: &mut Vec<(PathBuf, Grant)>,
) -> anyhow::Result<()> {
    if !hidden.iter().any(|h| h.starts_with(dir) && h != dir) {
        rules.push((dir.to_path_buf(), Grant::Read));
        return Ok(());
    }
    rules.push((dir.to_path_buf(), Grant::List));
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if hidden.contains(&p) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            // A rule follows the link: never grant one that leads into a
            // hidden path (or above one; the real path is walked anyway).
            match std::fs::canonicalize(&p) {
                Ok(t) if !hidden.iter().any(|h| t.starts_with(h) || h.starts_with(&t)) => {
                    rules.push((p, Grant::Read));
                }
                _ => {}
            }
        } else if meta.is_dir() {
            read_all_but(&p, hidden, rules)?;
        } else {
            rules.push((p, Grant::Read));
        }
    }
    Ok(())
}

/// Most directory entries [`seal_sockets`] looks at.
const SEAL_SCAN_LIMIT: usize = 20_000;

/// In the agent's private mount namespace (the caller entered it and holds
/// its capabilities): replaces every Unix socket that exists under `/tmp`,
/// `/run`, `/var/run`, `$XDG_RUNTIME_DIR`, `~/.ssh` and `~/.gnupg` by
/// `/dev/null` (a bind mount), except custody's runtime dir, and gives the
/// agent an empty `/dev/shm`. Connecting to a pathname socket is not
/// something Landlock restricts before ABI 9; without this an agent could
/// reach the human's tmux (`send-keys`), ssh-agent, D-Bus or `systemd
/// --user` (`systemd-run`) and start something outside its sandbox. Returns
/// how many sockets it sealed. Sockets created after the launch are not
/// covered (see `custody agent --check`).
pub fn seal_sockets(runtime_dir: &Path, home: Option<&Path>) -> usize {
    use std::os::unix::fs::FileTypeExt;
    let keep = std::fs::canonicalize(runtime_dir).unwrap_or_else(|_| runtime_dir.to_path_buf());
    let mut roots: Vec<(PathBuf, usize)> = vec![
        (PathBuf::from("/tmp"), 2),
        (PathBuf::from("/run"), 3),
        (PathBuf::from("/var/run"), 3),
    ];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        roots.push((PathBuf::from(x), 2));
    }
    if let Some(h) = home {
        roots.push((h.join(".ssh"), 1));
        roots.push((h.join(".gnupg"), 2));
    }
    let mut seen = 0;
    let mut sealed = 0;
    let mut stack: Vec<(PathBuf, usize)> = roots
        .into_iter()
        .filter_map(|(p, d)| std::fs::canonicalize(&p).ok().map(|c| (c, d)))
        .collect();
    let mut done = std::collections::BTreeSet::new();
    while let Some((dir, depth)) = stack.pop() {
        if dir.starts_with(&keep) || !done.insert(dir.clone()) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > SEAL_SCAN_LIMIT {
                return sealed;
            }
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_socket() && !p.starts_with(&keep) {
                if rustix::mount::mount_bind("/dev/null", &p).is_ok() {
                    sealed += 1;
                }
            } else if t.is_dir() && depth > 1 {
                stack.push((p, depth - 1));
            }
        }
    }
    // Shared memory shared with the human's processes: an empty one.
    let _ = rustix::mount::mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        None,
    );
    sealed
}

/// One protection and whether this kernel enforces it.
#[derive(Debug, Clone, Serialize)]
pub struct Protection {
    /// Short name (`status`, audit).
    pub name: &'static str,
    /// What it means.
    pub what: &'static str,
    /// What it needs.
    pub needs: &'static str,
    /// Whether this kernel enforces it.
    pub enforced: bool,
}

fn fs_supported(access: BitFlags<AccessFs>) -> bool {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(access)
        .and_then(|r| r.create())
        .is_ok()
}

fn scope_supported(scope: Scope) -> bool {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(scope)
        .and_then(|r| r.create())
        .is_ok()
}

/// What this kernel's Landlock enforces, feature by feature (each probed by
/// creating, never applying, a ruleset that requires it), and whether the
/// agent gets its own PID namespace and `/proc` (`namespaces`, probed by
/// the caller: it takes a child process).
pub fn probe(namespaces: bool) -> Vec<Protection> {
    let files = fs_supported(AccessFs::from_all(ABI::V1));
    vec![
        Protection {
            name: "files",
            what: "no read, write or execute of custody's files, credential files, or anything outside the writable paths",
            needs: "Landlock (Linux 5.13)",
            enforced: files,
        },
        Protection {
            name: "ptrace",
            what: "no ptrace, /proc/PID/mem or /proc/PID/exe of processes outside the sandbox (Landlock alone still lets /proc/PID/environ through: see processes)",
            needs: "Landlock (Linux 5.13)",
            enforced: files,
        },
        Protection {
            name: "processes",
            what: "a PID namespace and /proc of its own: no other process is visible (no /proc/PID/environ, maps or auxv of lease children or the human's shells)",
            needs: "user and PID namespaces for this user (a private /proc mount)",
            enforced: namespaces,
        },
        Protection {
            name: "refer",
            what: "no renaming or linking files into or out of the writable paths",
            needs: "Landlock ABI 2 (Linux 5.19)",
            enforced: fs_supported(AccessFs::Refer.into()),
        },
        Protection {
            name: "truncate",
            what: "no truncating files outside the writable paths",
            needs: "Landlock ABI 3 (Linux 6.2)",
            enforced: fs_supported(AccessFs::Truncate.into()),
        },
        Protection {
            name: "ioctl",
            what: "no ioctl on devices other than terminals and null-like devices",
            needs: "Landlock ABI 5 (Linux 6.10)",
            enforced: fs_supported(AccessFs::IoctlDev.into()),
        },
        Protection {
            name: "signals",
            what: "no signals to processes outside the sandbox (the broker, the launcher, lease children)",
            needs: "Landlock ABI 6 (Linux 6.12)",
            enforced: scope_supported(Scope::Signal),
        },
        Protection {
            name: "abstract-sockets",
            what: "no connecting to abstract Unix sockets outside the sandbox",
            needs: "Landlock ABI 6 (Linux 6.12)",
            enforced: scope_supported(Scope::AbstractUnixSocket),
        },
        Protection {
            name: "sockets-at-launch",
            what: "every Unix socket under /tmp, /run, $XDG_RUNTIME_DIR, ~/.ssh, ~/.gnupg when the agent starts (tmux, ssh-agent, D-Bus, systemd --user, docker) is /dev/null inside; /dev/shm is its own",
            needs: "user and mount namespaces for this user",
            enforced: namespaces,
        },
        Protection {
            name: "unix-sockets",
            what: "no connecting to pathname Unix sockets other than the broker's, also those created after the launch",
            needs: "Landlock ABI 9 (Linux 7.1)",
            enforced: fs_supported(AccessFs::ResolveUnix.into()),
        },
    ]
}

/// Applies `plan` to this thread (and so to what it execs): call it in a
/// single-threaded process right before `exec`. Fails unless the kernel
/// enforces at least the file rules.
pub fn apply(plan: &Plan) -> anyhow::Result<()> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_KNOWN))?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?
        .create()?;
    for (path, grant) in &plan.rules {
        // A path that vanished since the plan was made has nothing to grant.
        let Ok(fd) = PathFd::new(path) else {
            continue;
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, grant.access()))?;
    }
    let status = ruleset.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        bail!("this kernel does not enforce Landlock: the agent would run unsandboxed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        for d in [
            "home/.ssh",
            "home/.local/share/custody",
            "home/proj",
            "home/.config/x",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("home/.bashrc"), "").unwrap();
        std::os::unix::fs::symlink(
            root.join("home/.local/share/custody"),
            root.join("home/proj/link"),
        )
        .unwrap();
        std::os::unix::fs::symlink(root.join("home/.ssh"), root.join("home/sshlink")).unwrap();
        (t, root)
    }

    #[test]
    fn hidden_paths_get_no_rule_and_their_ancestors_only_list() {
        let (_t, root) = tree();
        let home = root.join("home");
        let hidden = hidden_paths(Some(&home), &[home.join(".local/share/custody")]);
        assert_eq!(
            hidden,
            vec![home.join(".local/share/custody"), home.join(".ssh")]
        );
        let mut rules = Vec::new();
        read_all_but(&home, &hidden, &mut rules).unwrap();
        let get = |p: &Path| {
            rules
                .iter()
                .filter(|(r, _)| r == p)
                .map(|(_, g)| *g)
                .collect::<Vec<_>>()
        };
        assert_eq!(get(&home), vec![Grant::List]);
        assert_eq!(get(&home.join(".local")), vec![Grant::List]);
        assert_eq!(get(&home.join(".local/share")), vec![Grant::List]);
        assert!(get(&home.join(".ssh")).is_empty());
        assert!(get(&home.join(".local/share/custody")).is_empty());
        assert_eq!(get(&home.join(".bashrc")), vec![Grant::Read]);
        assert_eq!(get(&home.join(".config")), vec![Grant::Read]);
        // A symlink to a hidden path gets nothing.
        assert!(get(&home.join("sshlink")).is_empty());
        // `proj` holds a link into custody's home: the walk does not enter
        // it (no hidden path beneath), but the rule on `proj` would follow
        // the link only through the hidden target's own hierarchy, which
        // has no rule; so `proj` is granted whole.
        assert_eq!(get(&home.join("proj")), vec![Grant::Read]);
    }

    #[test]
    fn writable_paths_may_not_hold_hidden_ones_or_home() {
        let (_t, root) = tree();
        let home = root.join("home");
        let hidden = hidden_paths(Some(&home), &[home.join(".local/share/custody")]);
        let layout = |w: PathBuf| Layout {
            home: Some(home.clone()),
            hidden: hidden.clone(),
            writable: vec![w],
            socket: root.join("nope.sock"),
        };
        for bad in [
            home.clone(),
            root.clone(),
            home.join(".local"),
            home.join(".ssh"),
        ] {
            assert!(plan(&layout(bad.clone())).is_err(), "{}", bad.display());
        }
        let ok = plan(&layout(home.join("proj"))).unwrap();
        assert!(ok.rules.contains(&(home.join("proj"), Grant::Write)));
    }
}
