//! A throwaway PostgreSQL server for tests, from the machine's binaries.
//!
//! `initdb` + `pg_ctl` in a temp dir (as the `postgres` user through
//! `runuser` when the tests run as root, since initdb refuses root), on a
//! free loopback port, password (SCRAM) authentication over TCP, so a
//! minted role's password is really checked. Stopped with `-m immediate`
//! on drop. Shared by the broker's and the CLI's tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The admin role's password (test-only).
pub const ADMIN_PASSWORD: &str = "pg-admin-pw-8f3a61c2";

/// A running test server.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL server binaries (initdb, pg_ctl) are needed for these tests")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Pg {
    /// Initialises and starts a server.
    pub fn start() -> Pg {
        let dir = tempfile::Builder::new()
            .prefix("cpg")
            .tempdir()
            .expect("temp dir");
        let pg = Pg {
            bin: bindir(),
            port: free_port(),
            dir,
        };
        let pwfile = pg.dir.path().join("pw");
        std::fs::write(&pwfile, ADMIN_PASSWORD).expect("pwfile");
        if is_root() {
            let uid = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("postgres user")
            };
            let (u, g) = (uid("-u"), uid("-g"));
            for p in [pg.dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(u), Some(g)).expect("chown to postgres");
            }
        }
        let data = pg.data();
        let out = pg.as_owner(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server binary as the data directory's owner.
    fn as_owner(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        c.args(args)
            .current_dir(self.dir.path())
            .output()
            .expect(tool)
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {} -c fsync=off -c max_connections=50",
            self.dir.path().display(),
            self.port
        );
        let log = self.dir.path().join("log");
        let out = self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-o",
                &opts,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (connections are cut, nothing is flushed).
    pub fn down(&self) {
        let _ = self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The admin connection URL (what a user stores in the vault).
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// `psql` on the server's binaries.
    pub fn psql_path(&self) -> PathBuf {
        self.bin.join("psql")
    }

    /// Runs `sql` as the admin; the unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new(self.psql_path())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atqc",
                sql,
            ])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether role `name` exists.
    pub fn role_exists(&self, name: &str) -> bool {
        self.sql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{name}'"
        )) == "1"
    }

    /// Sessions of role `name`.
    pub fn sessions_of(&self, name: &str) -> u32 {
        self.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{name}'"
        ))
        .parse()
        .unwrap_or(0)
    }

    /// Roles whose name starts with `prefix`.
    pub fn roles_like(&self, prefix: &str) -> Vec<String> {
        self.sql(&format!(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{prefix}') ORDER BY 1"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// The directory the server lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.down();
    }
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
