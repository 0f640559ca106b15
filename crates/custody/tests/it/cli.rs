//! CLI scenario tests: each starts from an empty temporary `CUSTODY_HOME`
//! and drives the real `custody` binary, the way a user's script would.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use custody_core::names::{EnvName, VarName};
use custody_core::vault::Vault;
use predicates::prelude::*;
use predicates::str::contains;

const PASS: &str = "test passphrase 1";
const PIN: &str = "135790";

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A fresh home with an initialised vault.
    fn new() -> Home {
        let h = Home::empty();
        h.init().success();
        h
    }

    fn empty() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn vault_path(&self) -> PathBuf {
        self.home().join("vault.db")
    }

    fn cmd(&self) -> Command {
        // In a session of its own: no controlling terminal, so a test never
        // prompts on (or waits for) the terminal the suite runs in.
        let mut c = Command::new("setsid");
        c.arg("-w").arg(assert_cmd::cargo::cargo_bin("custody"));
        // Both locations, always: without CUSTODY_RUNTIME_DIR a developer's
        // own unlocked broker (and its vault) would answer these tests.
        c.env("CUSTODY_HOME", self.home())
            .env("CUSTODY_RUNTIME_DIR", self.runtime())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .timeout(std::time::Duration::from_secs(60));
        c
    }

    fn init(&self) -> assert_cmd::assert::Assert {
        self.cmd()
            .args([
                "init",
                "--passphrase-stdin",
                "--pin-stdin",
                "--insecure-fast-kdf",
            ])
            .write_stdin(format!("{PASS}\n{PIN}\n"))
            .assert()
    }

    /// Runs a vault command with the passphrase on stdin, then `extra` stdin.
    fn run(&self, args: &[&str], extra: &str) -> assert_cmd::assert::Assert {
        self.cmd()
            .arg("--passphrase-stdin")
            .args(args)
            .write_stdin(format!("{PASS}\n{extra}"))
            .assert()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(&[&["--json"], args].concat(), "").success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    fn vault(&self) -> Vault {
        Vault::unlock(&self.vault_path(), PASS.as_bytes()).unwrap()
    }

    fn value(&self, env: &str, var: &str) -> Vec<u8> {
        let (_, v) = self
            .vault()
            .reveal(&EnvName::new(env).unwrap(), &VarName::new(var).unwrap())
            .unwrap();
        v.expose().to_vec()
    }

    /// Every file of the vault (main file, WAL, shared memory) concatenated.
    fn vault_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        // The vault and its journal; the audit log names environments and
        // variables by design, never values.
        for entry in fs::read_dir(self.home()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name() != Some(std::ffi::OsStr::new("audit.log")) {
                all.extend(fs::read(path).unwrap());
            }
        }
        all
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ----- init -------------------------------------------------------------

#[test]
fn init_creates_private_vault() {
    let h = Home::new();
    assert_eq!(mode(&h.home()), 0o700);
    assert_eq!(mode(&h.vault_path()), 0o600);
    let v = h.vault();
    assert!(v.verify_pin(PIN.as_bytes()).unwrap());
}

#[test]
fn init_json_reports_vault() {
    let h = Home::empty();
    let out = h
        .cmd()
        .args([
            "init",
            "--json",
            "--passphrase-stdin",
            "--pin-stdin",
            "--insecure-fast-kdf",
        ])
        .write_stdin(format!("{PASS}\n{PIN}\n"))
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["vault_id"].as_str().unwrap().len(), 32);
    assert_eq!(v["kdf"]["memory_kib"], 256);
}

#[test]
fn init_refuses_to_overwrite() {
    let h = Home::new();
    let before = fs::read(h.vault_path()).unwrap();
    h.init().failure().stderr(contains("already exists"));
    assert_eq!(fs::read(h.vault_path()).unwrap(), before);
}

#[test]
fn init_rejects_short_pin_and_passphrase() {
    let h = Home::empty();
    h.cmd()
        .args([
            "init",
            "--passphrase-stdin",
            "--pin-stdin",
            "--insecure-fast-kdf",
        ])
        .write_stdin(format!("{PASS}\n12345\n"))
        .assert()
        .failure()
        .stderr(contains("PIN must be at least 6"));
    h.cmd()
        .args([
            "init",
            "--passphrase-stdin",
            "--pin-stdin",
            "--insecure-fast-kdf",
        ])
        .write_stdin(format!("short\n{PIN}\n"))
        .assert()
        .failure()
        .stderr(contains("at least 8"));
    assert!(!h.vault_path().exists());
}

#[test]
fn init_without_terminal_names_the_flags() {
    let h = Home::empty();
    h.cmd()
        .args(["init"])
        .assert()
        .failure()
        .stderr(contains("--passphrase-stdin"));
    h.cmd()
        .args(["init", "--passphrase-stdin"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .failure()
        .stderr(contains("--pin-stdin"));
    h.cmd()
        .args(["init", "--passphrase-stdin", "--pin-stdin"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .failure()
        .stderr(contains("approval PIN"));
}

// ----- opening errors ---------------------------------------------------

#[test]
fn missing_vault_says_run_init() {
    let h = Home::empty();
    h.run(&["env", "ls"], "")
        .failure()
        .code(1)
        .stderr(contains("run `custody init`"));
}

#[test]
fn wrong_passphrase_exits_2_and_changes_nothing() {
    let h = Home::new();
    h.run(&["env", "create", "shop-dev"], "").success();
    let before = h.vault_bytes();
    h.cmd()
        .args(["--passphrase-stdin", "env", "create", "other"])
        .write_stdin("not the passphrase\n")
        .assert()
        .code(2)
        .stderr(contains("wrong passphrase").and(contains("not changed")));
    assert_eq!(h.vault_bytes(), before);
    assert_eq!(h.vault().environments().unwrap().len(), 1);
}

#[test]
fn no_passphrase_on_stdin_is_a_clear_error() {
    let h = Home::new();
    h.cmd()
        .args(["--passphrase-stdin", "env", "ls"])
        .write_stdin("")
        .assert()
        .failure()
        .stderr(contains("expected the passphrase"));
}

#[test]
fn garbage_vault_is_reported_not_overwritten() {
    let h = Home::new();
    let junk: Vec<u8> = (0..16384u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(h.vault_path(), &junk).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", h.vault_path().display()));
    }
    h.run(&["env", "ls"], "")
        .failure()
        .stderr(contains("not a readable custody vault").and(contains("backup")))
        .stderr(contains("panicked").not());
    assert_eq!(fs::read(h.vault_path()).unwrap(), junk);
}

#[test]
fn truncated_vault_is_reported() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    let dotenv: String = (0..300)
        .map(|i| format!("K{i}={}\n", "v".repeat(900)))
        .collect();
    fs::write(h.dir.path().join("big.env"), dotenv).unwrap();
    h.run(
        &[
            "import",
            "e",
            h.dir.path().join("big.env").to_str().unwrap(),
        ],
        "",
    )
    .success();
    let full = fs::read(h.vault_path()).unwrap();
    fs::write(h.vault_path(), &full[..full.len() / 2]).unwrap();
    h.run(&["ls", "e"], "")
        .failure()
        .stderr(contains("not a readable custody vault"))
        .stderr(contains("panicked").not());
}

#[test]
fn vault_from_a_newer_version_is_refused() {
    let h = Home::new();
    rusqlite::Connection::open(h.vault_path())
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let before = fs::read(h.vault_path()).unwrap();
    h.run(&["env", "ls"], "")
        .failure()
        .stderr(contains("newer custody").and(contains("upgrade")));
    assert_eq!(fs::read(h.vault_path()).unwrap(), before);
}

#[test]
fn invalid_names_show_the_rule() {
    let h = Home::new();
    h.run(&["env", "create", "Shop Prod"], "")
        .failure()
        .stderr(contains("invalid environment name").and(contains("[a-z0-9][a-z0-9._-]*")));
    h.run(&["env", "create", &"a".repeat(129)], "")
        .failure()
        .stderr(contains("1-128 characters"));
    h.run(&["env", "create", ""], "")
        .failure()
        .stderr(contains("(empty)"));
    h.run(&["env", "create", "shop"], "").success();
    h.run(&["set", "shop", "1BAD"], "value-value")
        .failure()
        .stderr(contains("invalid variable name").and(contains("[A-Za-z_][A-Za-z0-9_]*")));
    h.run(&["set", "shop", "BAD-NAME"], "value-value")
        .failure()
        .stderr(contains("invalid variable name"));
}

// ----- env --------------------------------------------------------------

#[test]
fn env_create_ls_describe_rm() {
    let h = Home::new();
    h.run(
        &[
            "env",
            "create",
            "shop-dev",
            "--description",
            "the shop, dev",
        ],
        "",
    )
    .success()
    .stdout(contains("Created environment shop-dev"));
    h.run(&["env", "create", "shop-dev"], "")
        .failure()
        .stderr(contains("already exists"));
    h.run(&["env", "create", "shop-prod"], "").success();
    h.run(&["env", "ls"], "").success().stdout(
        contains("shop-dev")
            .and(contains("the shop, dev"))
            .and(contains("shop-prod")),
    );
    let list = h.json(&["env", "ls"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "shop-dev");
    assert_eq!(list[0]["variable_count"], 0);

    h.run(
        &["set", "shop-dev", "API_TOKEN", "-d", "the api"],
        "tok-tok-tok-tok",
    )
    .success();
    h.run(&["env", "describe", "shop-dev"], "")
        .success()
        .stdout(
            contains("API_TOKEN")
                .and(contains("the api"))
                .and(contains("tok-tok").not()),
        );
    h.run(
        &["env", "describe", "shop-dev", "--description", "new words"],
        "",
    )
    .success();
    let d = h.json(&["env", "describe", "shop-dev"]);
    assert_eq!(d["environment"]["description"], "new words");
    assert_eq!(d["variables"][0]["name"], "API_TOKEN");

    h.run(&["env", "rm", "shop-dev"], "")
        .failure()
        .stderr(contains("--yes"));
    h.run(&["env", "rm", "shop-dev", "--yes"], "")
        .success()
        .stdout(contains("1 variable"));
    h.run(&["env", "rm", "shop-dev", "--yes"], "")
        .failure()
        .stderr(contains("does not exist").and(contains("custody env ls")));
    assert_eq!(h.json(&["env", "ls"]).as_array().unwrap().len(), 1);
}

// ----- set / generate / unset / ls -------------------------------------

#[test]
fn set_reads_stdin_and_strips_one_newline() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A"], "value-one\n")
        .success()
        .stdout(contains("Stored e/A"));
    assert_eq!(h.value("e", "A"), b"value-one");
    h.run(&["set", "e", "A"], "value-two\r\n")
        .success()
        .stdout(contains("Updated e/A"));
    assert_eq!(h.value("e", "A"), b"value-two");
    h.run(&["set", "e", "B", "--keep-newline"], "line1\nline2\n\n")
        .success();
    assert_eq!(h.value("e", "B"), b"line1\nline2\n\n");
    h.run(
        &["set", "e", "C", "--kind", "file", "-d", "tls key"],
        "-----BEGIN KEY-----\nabc\n",
    )
    .success();
    let ls = h.json(&["ls", "e"]);
    assert_eq!(ls[2]["kind"], "file");
    assert_eq!(ls[2]["description"], "tls key");
}

/// A plain `custody set` without --passphrase-stdin reads the whole of a
/// piped stdin as the value (the passphrase then needs a terminal).
#[test]
fn set_without_terminal_explains() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.cmd()
        .args(["set", "e", "A"])
        .write_stdin("value-value")
        .assert()
        .failure()
        .stderr(contains("--passphrase-stdin"));
}

#[test]
fn values_are_never_accepted_in_argv() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A", "supersecretvalue"], "")
        .failure()
        .stderr(contains("unexpected argument"));
    h.run(&["set", "e", "A", "--value", "supersecretvalue"], "")
        .failure();
}

#[test]
fn set_errors() {
    let h = Home::new();
    h.run(&["set", "nope", "A"], "value-value")
        .failure()
        .stderr(contains("environment 'nope' does not exist"));
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A"], "")
        .failure()
        .stderr(contains("empty value"));
    h.run(&["set", "e", "A"], "\n")
        .failure()
        .stderr(contains("empty value"));
    let big = "x".repeat(custody_core::vault::MAX_VALUE_LEN + 1);
    h.run(&["set", "e", "A"], &big)
        .failure()
        .stderr(contains("limit"));
}

#[test]
fn short_values_warn() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "PIN"], "1234")
        .success()
        .stderr(contains("too short to mask"));
    h.run(&["ls"], "")
        .success()
        .stderr(contains("e/PIN is shorter than 8 bytes"));
    assert_eq!(h.json(&["ls"])[0]["too_short_to_mask"], true);
}

#[test]
fn generate_stores_unseen_random_values() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    let out = h.run(&["generate", "e", "SESSION_KEY"], "").success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let v = h.value("e", "SESSION_KEY");
    assert_eq!(v.len(), 32);
    assert!(v.iter().all(u8::is_ascii_alphanumeric));
    assert!(!stdout.contains(std::str::from_utf8(&v).unwrap()));

    h.run(
        &[
            "generate",
            "e",
            "HEXKEY",
            "--length",
            "64",
            "--alphabet",
            "hex",
        ],
        "",
    )
    .success();
    let v = h.value("e", "HEXKEY");
    assert_eq!(v.len(), 64);
    assert!(
        v.iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    h.run(
        &[
            "generate",
            "e",
            "U",
            "--alphabet",
            "base64url",
            "--length",
            "40",
        ],
        "",
    )
    .success();
    assert!(
        h.value("e", "U")
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    h.run(&["generate", "e", "S", "--alphabet", "symbols"], "")
        .success();

    h.run(&["generate", "e", "TINY", "--length", "4"], "")
        .failure()
        .stderr(contains("between 8 and 4096"));
    h.run(&["generate", "e", "X", "--alphabet", "emoji"], "")
        .failure()
        .stderr(contains("invalid value"));
}

#[test]
fn unset_removes() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A"], "value-value").success();
    h.run(&["unset", "e", "A"], "")
        .success()
        .stdout(contains("Removed e/A"));
    h.run(&["unset", "e", "A"], "")
        .failure()
        .stderr(contains("variable 'A' does not exist").and(contains("custody ls e")));
    assert!(h.json(&["ls", "e"]).as_array().unwrap().is_empty());
}

#[test]
fn ls_shows_names_never_values() {
    let h = Home::new();
    for e in ["a-env", "b-env"] {
        h.run(&["env", "create", e], "").success();
        h.run(
            &["set", e, "DB_PASSWORD", "-d", "db"],
            "p4ssw0rd-very-secret",
        )
        .success();
    }
    let out = h.run(&["ls"], "").success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("a-env/DB_PASSWORD") && text.contains("b-env/DB_PASSWORD"));
    assert!(!text.contains("p4ssw0rd"));
    let json = h.json(&["ls", "b-env"]);
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["environment"], "b-env");
    assert_eq!(json[0]["is_set"], true);
    assert!(!json.to_string().contains("p4ssw0rd"));
}

// ----- import -----------------------------------------------------------

#[test]
fn import_reads_dotenv_syntax() {
    let h = Home::new();
    let file = h.dir.path().join(".env");
    fs::write(
        &file,
        "# comment\n\
         export API_TOKEN=tok_123456789\n\
         QUOTED=\"with \\\"quotes\\\" and\\nnewline\"\n\
         SINGLE='literal \\n here'\n\
         PEM=\"-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----\"\n\
         INLINE=value-here # a comment\n\
         bad-name=oops\n\
         \n",
    )
    .unwrap();
    let out = h.json(&["import", "shop", file.to_str().unwrap()]);
    assert_eq!(out["environment_created"], true);
    assert_eq!(out["imported"], 5);
    assert_eq!(out["skipped"].as_array().unwrap().len(), 1);
    assert_eq!(out["skipped"][0]["line"], 9);
    assert_eq!(h.value("shop", "API_TOKEN"), b"tok_123456789");
    assert_eq!(h.value("shop", "QUOTED"), b"with \"quotes\" and\nnewline");
    assert_eq!(h.value("shop", "SINGLE"), b"literal \\n here");
    assert_eq!(
        h.value("shop", "PEM"),
        b"-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----"
    );
    assert_eq!(h.value("shop", "INLINE"), b"value-here");
    assert!(file.exists(), "no --shred, the file stays");
    assert!(
        !out.to_string().contains("oops"),
        "skip reasons carry no values"
    );

    // A second import updates rather than duplicates.
    h.run(&["import", "shop", file.to_str().unwrap()], "")
        .success()
        .stdout(contains("0 new, 5 updated"));
}

#[test]
fn import_shred_removes_the_file() {
    let h = Home::new();
    let file = h.dir.path().join("secrets.env");
    fs::write(&file, "A=value-aaaa\nB=value-bbbb\n").unwrap();
    h.run(&["import", "e", file.to_str().unwrap(), "--shred"], "")
        .success()
        .stdout(contains("Shredded"));
    assert!(!file.exists());
    assert_eq!(h.value("e", "B"), b"value-bbbb");
}

#[test]
fn import_shred_refused_when_lines_were_skipped() {
    let h = Home::new();
    let file = h.dir.path().join("secrets.env");
    fs::write(&file, "A=value-aaaa\n9BAD=value-bbbb\n").unwrap();
    h.run(&["import", "e", file.to_str().unwrap(), "--shred"], "")
        .success()
        .stderr(contains("not shredding"));
    assert!(file.exists());
}

#[test]
fn import_skips_oversized_values() {
    let h = Home::new();
    let file = h.dir.path().join("big.env");
    let max = custody_core::vault::MAX_VALUE_LEN;
    let big = "s3cr3t".repeat(max / 6 + 1);
    assert!(big.len() > max);
    let at_limit = "x".repeat(max);
    fs::write(
        &file,
        format!(
            "A=value-aaaa\n\
             BIG={big}\n\
             LIMIT={at_limit}\n\
             D=value-dddd\n\
             D=\"{big}\"\n\
             C=value-cccc\n"
        ),
    )
    .unwrap();

    // JSON: every oversized value is a skipped line; nothing else fails.
    let out = h.run(
        &["--json", "import", "e", file.to_str().unwrap(), "--shred"],
        "",
    );
    let out = out.success().stderr(contains("not shredding"));
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["imported"], 2, "{json}");
    assert_eq!(json["shredded"], false);
    let reason = format!("value larger than {max} bytes");
    // A value the vault could store but no program's environment can take
    // (over 128 KiB) is skipped too, saying how to store it.
    assert_eq!(
        json["skipped"],
        serde_json::json!([
            { "line": 2, "reason": reason },
            { "line": 3, "reason": "LIMIT is too large for a program's environment (128 KiB): store it with `custody set --kind file`" },
            { "line": 4, "reason": "D is set again on line 5, which was skipped" },
            { "line": 5, "reason": reason },
        ])
    );
    assert!(file.exists(), "--shred refused: lines were skipped");
    assert_eq!(h.value("e", "A"), b"value-aaaa");
    assert_eq!(h.value("e", "C"), b"value-cccc");
    let vault = h.vault();
    let env = EnvName::new("e").unwrap();
    for var in ["BIG", "D", "LIMIT"] {
        assert!(
            vault.reveal(&env, &VarName::new(var).unwrap()).is_err(),
            "{var} was not imported"
        );
    }
    drop(vault);

    // Human output says the same.
    h.run(&["import", "e", file.to_str().unwrap()], "")
        .success()
        .stdout(contains("skipped 4 line(s)"))
        .stdout(contains(format!(
            "skipped line 2: value larger than {max} bytes"
        )))
        .stdout(contains(format!(
            "skipped line 5: value larger than {max} bytes"
        )))
        .stdout(contains("s3cr3t").not());
}

#[test]
fn import_missing_file_is_clear() {
    let h = Home::new();
    h.run(&["import", "e", "/nonexistent/.env"], "")
        .failure()
        .stderr(contains("opening /nonexistent/.env"));
}

// ----- passwd -----------------------------------------------------------

#[test]
fn passwd_rewraps() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A"], "value-value").success();
    h.run(&["passwd"], "a brand new passphrase\n").success();
    h.run(&["env", "ls"], "").code(2);
    h.cmd()
        .args(["--passphrase-stdin", "ls", "e"])
        .write_stdin("a brand new passphrase\n")
        .assert()
        .success()
        .stdout(contains("e/A"));
    let v = Vault::unlock(&h.vault_path(), b"a brand new passphrase").unwrap();
    let (_, value) = v
        .reveal(&EnvName::new("e").unwrap(), &VarName::new("A").unwrap())
        .unwrap();
    assert_eq!(value.expose(), b"value-value");
    h.cmd()
        .args(["--passphrase-stdin", "passwd"])
        .write_stdin("a brand new passphrase\nshort\n")
        .assert()
        .failure()
        .stderr(contains("at least 8"));
}

// ----- at rest ----------------------------------------------------------

/// G2: `strings` over every vault file finds no name and no value.
#[test]
fn vault_files_hold_no_name_and_no_value() {
    let h = Home::new();
    let names = [
        "zebra-payments-prod",
        "STRIPE_LIVE_SECRET_KEY",
        "GITHUB_DEPLOY_TOKEN",
    ];
    let values = ["sk_live_51HxQ9fLr8y7VqK", "ghp_R4nd0mT0k3nV4lu3xyz"];
    h.run(&["env", "create", names[0], "-d", "describes-zebra"], "")
        .success();
    h.run(&["set", names[0], names[1]], values[0]).success();
    h.run(&["set", names[0], names[2]], values[1]).success();
    h.run(&["generate", names[0], "GENERATED_THING"], "")
        .success();
    let generated = h.value(names[0], "GENERATED_THING");

    // Check both while the WAL still holds the writes and after checkpoint.
    let bytes = h.vault_bytes();
    let mut needles: Vec<Vec<u8>> = names
        .iter()
        .chain(&values)
        .map(|s| s.as_bytes().to_vec())
        .collect();
    needles.push(b"describes-zebra".to_vec());
    needles.push(b"GENERATED_THING".to_vec());
    needles.push(generated);
    for needle in &needles {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == &needle[..]),
            "found {:?} in the vault files",
            String::from_utf8_lossy(needle)
        );
        // Also as UTF-16LE, which `strings -el` would find.
        let wide: Vec<u8> = needle.iter().flat_map(|&b| [b, 0]).collect();
        assert!(!bytes.windows(wide.len()).any(|w| w == &wide[..]));
    }
    // The `strings` view: printable runs of ≥ 8 chars mention none of them.
    let runs = printable_runs(&bytes, 8);
    for needle in &needles {
        let n = String::from_utf8_lossy(needle);
        assert!(!runs.iter().any(|r| r.contains(&*n)));
    }
}

fn printable_runs(bytes: &[u8], min: usize) -> Vec<String> {
    bytes
        .split(|b| !(b.is_ascii_graphic() || *b == b' '))
        .filter(|r| r.len() >= min)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

/// An import killed with SIGKILL leaves a vault that opens, and either all
/// of the file with its audit record or none of it and no record: a direct
/// import is one audited change, as the broker's is (it used to leave a
/// prefix of the file, and no record at all).
#[test]
fn kill_during_import_leaves_all_or_nothing_as_audited() {
    let h = Home::new();
    h.run(&["env", "create", "big"], "").success();
    let file = h.dir.path().join("big.env");
    let dotenv: String = (0..10_000)
        .map(|i| format!("VAR_{i:05}=value-{i:05}-padding\n"))
        .collect();
    fs::write(&file, dotenv).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("custody");
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 40, 120, 400, 2000] {
        let mut child = std::process::Command::new(&bin)
            .env("CUSTODY_HOME", h.home())
            .env("CUSTODY_RUNTIME_DIR", h.runtime())
            .env_remove("XDG_RUNTIME_DIR")
            .args([
                "--passphrase-stdin",
                "import",
                "big",
                file.to_str().unwrap(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{PASS}").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL (it may have finished already)
        child.wait().unwrap();

        let v = h.vault();
        let k = v.variables(&EnvName::new("big").unwrap()).unwrap().len();
        let log = fs::read_to_string(h.home().join("audit.log")).unwrap_or_default();
        let imports = log.matches("\"action\":\"import\"").count();
        assert!(k == 0 || k == 10_000, "a partial import survived: {k}");
        assert_eq!(
            imports,
            usize::from(k == 10_000),
            "the audit disagrees: {k} variables"
        );
        outcomes.push(k);
        if k == 10_000 {
            break;
        }
    }
    // The early kills stopped it, the late ones let it finish.
    assert_eq!(outcomes.first(), Some(&0), "{outcomes:?}");
}

/// Regression (the harness set `CUSTODY_HOME` but not `CUSTODY_RUNTIME_DIR`):
/// the broker these tests start, and every broker they talk to, lives in the
/// test's own runtime directory, never at the default location where a
/// developer's own unlocked broker (and vault) answers.
#[test]
fn cli_harness_uses_its_own_runtime_dir_not_the_developers_broker() {
    let h = Home::new();
    h.cmd()
        .args(["unlock", "--passphrase-stdin"])
        .write_stdin(format!("{PASS}\n"))
        .assert()
        .success();
    let status = h.cmd().args(["--json", "status"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    let pid = v["pid"].as_u64();
    let own_socket = h.runtime().join("broker.sock").exists();
    // Stop the broker before asserting, so a failure leaves nothing running.
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    assert!(
        own_socket,
        "the broker's socket is not in the test's runtime dir"
    );
    assert_eq!(v["locked"], false, "{v}");
    assert_eq!(
        v["vault"].as_str(),
        Some(h.vault_path().to_str().unwrap()),
        "the broker that answered serves another vault: {v}"
    );
}

/// `custody policy check` names the client each table applies to and warns
/// about a table no client will ever match (the docs once said `gemini`).
#[test]
fn policy_check_maps_handshake_names_and_warns_about_unknown_clients() {
    let h = Home::new();
    fs::write(
        h.home().join("policy.toml"),
        "[clients.codex-mcp-client]\nmax_ttl = \"30m\"\n[clients.gemini]\nmax_ttl = \"5m\"\n[clients.cli]\nmax_ttl = \"2h\"\n",
    )
    .unwrap();
    let out = h
        .cmd()
        .args(["--json", "policy", "check"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let names: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["policy_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli", "codex", "gemini"]);
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("[clients.gemini]"), "{warnings}");
    assert!(!warnings.contains("codex"), "{warnings}");
    let out = h.cmd().args(["policy", "clients"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("gemini-cli-mcp-client"), "{text}");
    // A broken file is an error that names it.
    fs::write(h.home().join("policy.toml"), "[clients.x]\nbogus = 1\n").unwrap();
    h.cmd()
        .args(["policy", "check"])
        .assert()
        .failure()
        .stderr(contains("policy.toml"));
}

/// First hour, item 14: `custody --json ls | head` (and the table) end
/// quietly when the reader goes away: no "Broken pipe" error or panic.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let h = Home::new();
    let dotenv: String = (0..1500)
        .map(|i| format!("VARIABLE_NUMBER_{i:04}=value-{i:04}-abcdefghijklmnop\n"))
        .collect();
    let file = h.home().join("many.env");
    fs::write(&file, dotenv).unwrap();
    h.run(&["import", "big", file.to_str().unwrap()], "")
        .success();
    for args in ["--json ls", "ls"] {
        let script = format!(
            "printf '%s\\n' '{PASS}' | '{}' --passphrase-stdin {args} | head -c 100 >/dev/null; echo \"rc=${{PIPESTATUS[1]}}\" >&2",
            assert_cmd::cargo::cargo_bin("custody").display()
        );
        let out = std::process::Command::new("setsid")
            .args(["-w", "bash", "-c", &script])
            .env("CUSTODY_HOME", h.home())
            .env("CUSTODY_RUNTIME_DIR", h.runtime())
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim(), "rc=141", "{args}: {err}");
    }
}

/// First hour, item 14: the stdin size limit names the value limit the
/// vault enforces (the two messages used to disagree).
#[test]
fn size_limit_messages_agree() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    let huge = "x".repeat(600 * 1024);
    let out = h.run(&["set", "e", "BIG"], &huge).failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("524288"), "{err}");
    let big = "x".repeat(530 * 1024);
    let out = h.run(&["set", "e", "BIG"], &big).failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("524288"), "{err}");
}

/// First hour, item 14: the top-level help shows examples and the
/// environment variables custody reads.
#[test]
fn top_level_help_has_examples_and_environment() {
    let h = Home::empty();
    let out = h.cmd().arg("--help").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "Examples:",
        "custody run -e shop-dev -- cargo test",
        "custody agent -- claude",
        "Environment:",
        "CUSTODY_HOME",
        "CUSTODY_RUNTIME_DIR",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // Every subcommand's own help works (required arguments do not stop it).
    for sub in ["run", "agent", "set", "audit", "scan"] {
        h.cmd().args([sub, "--help"]).assert().success();
    }
}

/// First hour, item 14: a subcommand's help shows only the global options
/// that mean something there (`run` never reads the passphrase, `mcp`
/// prints nothing for machines), while scripts that pass them anyway still
/// work, before or after the subcommand.
#[test]
fn global_options_show_only_where_they_mean_something() {
    let h = Home::empty();
    let help = |args: &[&str]| {
        let out = h.cmd().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    for sub in [
        &["run"][..],
        &["approve"],
        &["agent"],
        &["source", "add", "postgres"],
    ] {
        let text = help(sub);
        assert!(!text.contains("--passphrase-stdin"), "{sub:?}:\n{text}");
        assert!(text.contains("-h, --help"), "{sub:?}:\n{text}");
    }
    for sub in [&["mcp"][..], &["completions"], &["man"], &["demo"]] {
        let text = help(sub);
        assert!(!text.contains("--json"), "{sub:?}:\n{text}");
    }
    for sub in [&["ls"][..], &["set"], &["env", "create"], &["unlock"]] {
        let text = help(sub);
        assert!(
            text.contains("--passphrase-stdin") && text.contains("--json"),
            "{sub:?}:\n{text}"
        );
    }
    assert!(help(&["run"]).contains("--json"));
    // Still accepted where hidden, and still meaning what they did.
    h.cmd()
        .args(["completions", "bash", "--json", "--passphrase-stdin"])
        .assert()
        .success();
    h.cmd()
        .args(["status", "--passphrase-stdin", "--json"])
        .assert()
        .success()
        .stdout(contains("\"running\": false"));
}

/// A bad duration is a usage error (exit 2) that names the flag, before
/// anything runs or connects: every duration flag goes through one parser.
#[test]
fn a_bad_duration_is_a_usage_error_naming_the_flag() {
    let h = Home::empty();
    for (args, flag) in [
        (&["run", "--timeout", "5x", "--", "true"][..], "--timeout"),
        (&["approve", "r-1", "--for", "soon"], "--for"),
        (&["daemon", "--idle-lock", "8 parsecs"], "--idle-lock"),
        (&["mcp", "--approval-wait", "0s"], "--approval-wait"),
        (
            &[
                "source", "add", "command", "gh", "--mint", "true", "--ttl", "1 month",
            ],
            "--ttl",
        ),
    ] {
        let out = h.cmd().args(args).assert().code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains(flag) && err.contains("not a duration"),
            "{args:?}:\n{err}"
        );
    }
}

/// First hour, item 15: completion scripts and a man page, generated from
/// the CLI's own definitions.
#[test]
fn completions_and_man_page_are_generated() {
    let h = Home::empty();
    for (shell, marker) in [
        ("bash", "_custody()"),
        ("zsh", "#compdef custody"),
        ("fish", "complete -c custody"),
    ] {
        let out = h.cmd().args(["completions", shell]).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(
            text.contains(marker),
            "{shell}: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            text.contains("approve") && text.contains("agent"),
            "{shell}"
        );
    }
    let out = h.cmd().arg("man").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.starts_with(".ie") || text.contains(".TH custody"),
        "{}",
        &text[..200]
    );
    assert!(
        text.contains("CUSTODY_HOME"),
        "the man page lacks the environment"
    );
}

/// Architecture issue, G6: the direct path (the vault file, no broker)
/// changed the vault without any audit record, so a same-user process
/// holding the passphrase could rewrite secrets while the broker was down
/// and leave no trace. Now every direct change, and every refused one, is
/// in the chain with the broker's own, and the chain still verifies (and a
/// broker started later opens it).
#[test]
fn direct_changes_are_audited_like_the_brokers() {
    let h = Home::new();
    h.run(&["env", "create", "e"], "").success();
    h.run(&["set", "e", "A"], "value-value").success();
    h.run(&["generate", "e", "G"], "").success();
    h.run(&["unset", "e", "A"], "").success();
    // Refused: a name that is not a variable name.
    h.run(&["set", "e", "NOT A NAME"], "x").failure();
    h.run(&["set", "e", "LD_PRELOAD"], "/tmp/evil.so").failure();
    let log = fs::read_to_string(h.home().join("audit.log")).expect("no audit log");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect();
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["variable"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = |t: &str, a: &str, v: &str| (t.to_owned(), a.to_owned(), v.to_owned());
    for w in [
        want("vault_change", "create_environment", ""),
        want("vault_change", "set_variable", "A"),
        want("vault_change", "generate_variable", "G"),
        want("vault_change", "remove_variable", "A"),
        want("vault_change_refused", "set_variable", "LD_PRELOAD"),
    ] {
        assert!(seen.contains(&w), "{w:?} not in {seen:?}");
    }
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "vault_change")
            .all(|e| e["by"] == "terminal (vault file, no broker)"),
        "{events:?}"
    );
    assert!(!log.contains("value-value") && !log.contains("evil.so"));
    // The chain verifies with the vault's audit key, from the head the
    // vault stored.
    let v = h.vault();
    let head = v.audit_head().unwrap().expect("no head stored");
    let key = v.subkey(custody_core::crypto::Subkey::Audit);
    let (chain, _) =
        custody_core::audit::AuditChain::open(&h.home().join("audit.log"), &key, Some(&head))
            .unwrap();
    assert_eq!(chain.head(), head);
}

/// Durations are read by jiff's friendly parser: the compact and the
/// spelled-out forms mean the same (a day is 24 hours); a bare number and
/// calendar units stay refused ([`a_bad_duration_is_a_usage_error_naming_the_flag`]).
#[test]
fn spelled_out_durations_are_accepted() {
    let h = Home::empty();
    // Parsing happens before anything connects: without a broker the
    // command gets past its arguments and fails for that reason instead.
    for d in ["1h30m", "1h 30m", "90 minutes", "PT90M"] {
        let out = h
            .cmd()
            .args(["approve", "r-1", "--for", d])
            .assert()
            .failure();
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(!err.contains("not a duration"), "{d}:\n{err}");
    }
}
