#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::lifecycle::*;
use super::*;

const PASS: &[u8] = b"correct horse battery staple";
const PIN: &[u8] = b"246810";

fn new_vault(dir: &tempfile::TempDir) -> Vault {
    Vault::create(
        &dir.path().join("v/vault.db"),
        PASS,
        PIN,
        KdfParams::INSECURE_FAST,
    )
    .unwrap()
}

fn env(n: &str) -> EnvName {
    EnvName::new(n).unwrap()
}

fn var(n: &str) -> VarName {
    VarName::new(n).unwrap()
}

fn value_of(v: &Vault, e: &str, n: &str) -> Vec<u8> {
    v.reveal(&env(e), &var(n)).unwrap().1.expose().to_vec()
}

#[test]
fn create_then_unlock_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("shop-dev"), "the shop, dev stage")
        .unwrap();
    let upd = VariableUpdate {
        description: Some("primary db".into()),
        kind: None,
        source: None,
        bindings: None,
    };
    assert!(
        v.set_variable(
            &env("shop-dev"),
            &var("DB_PASSWORD"),
            b"hunter2hunter2",
            &upd
        )
        .unwrap()
    );
    let path = v.path().to_owned();
    drop(v);
    let v = Vault::unlock(&path, PASS).unwrap();
    assert_eq!(value_of(&v, "shop-dev", "DB_PASSWORD"), b"hunter2hunter2");
    let vars = v.variables(&env("shop-dev")).unwrap();
    assert_eq!(vars.len(), 1);
    assert_eq!(vars[0].description, "primary db");
    assert!(vars[0].is_set && !vars[0].too_short_to_mask);
    assert_eq!(vars[0].version, 1);
}

#[test]
fn file_and_dir_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(v.path()), 0o600);
    assert_eq!(mode(v.path().parent().unwrap()), 0o700);
}

#[test]
fn wrong_passphrase_and_missing_vault() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_vault(&dir).path().to_owned();
    assert!(matches!(
        Vault::unlock(&path, b"nope"),
        Err(VaultError::WrongPassphrase)
    ));
    assert!(matches!(
        Vault::unlock(&dir.path().join("missing.db"), PASS),
        Err(VaultError::NotFound { .. })
    ));
}

#[test]
fn create_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_vault(&dir).path().to_owned();
    assert!(matches!(
        Vault::create(&path, b"other", PIN, KdfParams::INSECURE_FAST),
        Err(VaultError::AlreadyExists { .. })
    ));
    assert!(Vault::unlock(&path, PASS).is_ok());
}

#[test]
fn short_pin_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Vault::create(
        &dir.path().join("v.db"),
        PASS,
        b"12345",
        KdfParams::INSECURE_FAST,
    );
    assert!(matches!(r, Err(VaultError::PinTooShort { min: 6 })));
    assert!(!dir.path().join("v.db").exists());
}

#[test]
fn pin_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    assert!(v.verify_pin(PIN).unwrap());
    assert!(!v.verify_pin(b"000000").unwrap());
    v.change_pin(b"13579111").unwrap();
    assert!(v.verify_pin(b"13579111").unwrap());
    assert!(!v.verify_pin(PIN).unwrap());
}

#[test]
fn passphrase_change_rewraps_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("e"), "").unwrap();
    v.set_variable(
        &env("e"),
        &var("K"),
        b"value-value",
        &VariableUpdate::default(),
    )
    .unwrap();
    v.change_passphrase(b"new passphrase", KdfParams::INSECURE_FAST)
        .unwrap();
    let path = v.path().to_owned();
    drop(v);
    assert!(matches!(
        Vault::unlock(&path, PASS),
        Err(VaultError::WrongPassphrase)
    ));
    let v = Vault::unlock(&path, b"new passphrase").unwrap();
    assert_eq!(value_of(&v, "e", "K"), b"value-value");
}

#[test]
fn open_with_key_checks_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    let path = v.path().to_owned();
    let key = v.vault_key().duplicate();
    drop(v);
    assert!(Vault::open_with_key(&path, key).is_ok());
    assert!(matches!(
        Vault::open_with_key(&path, Key::from_bytes([0; 32])),
        Err(VaultError::WrongPassphrase)
    ));
}

#[test]
fn environments_and_variables_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("b-env"), "second").unwrap();
    v.create_environment(&env("a-env"), "first").unwrap();
    assert!(matches!(
        v.create_environment(&env("a-env"), ""),
        Err(VaultError::EnvironmentExists(_))
    ));
    let names: Vec<_> = v
        .environments()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["a-env", "b-env"]);
    v.describe_environment(&env("a-env"), "changed").unwrap();
    assert_eq!(v.environment(&env("a-env")).unwrap().description, "changed");

    let none = VariableUpdate::default();
    assert!(
        v.declare_variable(&env("a-env"), &var("SLOT"), &none)
            .unwrap()
    );
    assert!(matches!(
        v.reveal(&env("a-env"), &var("SLOT")),
        Err(VaultError::NotSet { .. })
    ));
    v.set_variable(&env("a-env"), &var("SHORT"), b"abc", &none)
        .unwrap();
    let file = VariableUpdate {
        description: None,
        kind: Some(VarKind::File),
        source: None,
        bindings: None,
    };
    assert!(
        !v.set_variable(&env("a-env"), &var("SLOT"), b"now-it-is-set", &file)
            .unwrap()
    );
    let vars = v.variables(&env("a-env")).unwrap();
    assert_eq!(vars[0].name, "SHORT");
    assert!(vars[0].too_short_to_mask);
    assert_eq!(vars[1].kind, VarKind::File);
    assert_eq!(
        vars[1].version, 1,
        "versions count values; the empty slot was 0"
    );
    assert_eq!(v.environment(&env("a-env")).unwrap().variable_count, 2);

    v.unset_variable(&env("a-env"), &var("SHORT")).unwrap();
    assert!(matches!(
        v.unset_variable(&env("a-env"), &var("SHORT")),
        Err(VaultError::NoSuchVariable { .. })
    ));
    assert_eq!(v.remove_environment(&env("a-env")).unwrap(), 1);
    assert!(matches!(
        v.variables(&env("a-env")),
        Err(VaultError::NoSuchEnvironment(_))
    ));
}

#[test]
fn same_variable_name_in_two_environments_is_two_variables() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    for e in ["dev", "prod"] {
        v.create_environment(&env(e), "").unwrap();
        v.set_variable(
            &env(e),
            &var("TOKEN"),
            format!("token-for-{e}").as_bytes(),
            &none,
        )
        .unwrap();
    }
    assert_eq!(value_of(&v, "dev", "TOKEN"), b"token-for-dev");
    assert_eq!(value_of(&v, "prod", "TOKEN"), b"token-for-prod");
}

/// G2/G4 at rest: a ciphertext moved to another row must not open there.
#[test]
fn value_swapped_between_rows_fails_to_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    v.create_environment(&env("e"), "").unwrap();
    v.set_variable(&env("e"), &var("A"), b"value-of-a-123", &none)
        .unwrap();
    v.set_variable(&env("e"), &var("B"), b"value-of-b-456", &none)
        .unwrap();
    v.conn
        .execute_batch(
            "CREATE TEMP TABLE s AS SELECT id, sealed_value FROM variables;
             UPDATE variables SET sealed_value =
               (SELECT s.sealed_value FROM s WHERE s.id <> variables.id);",
        )
        .unwrap();
    let Err(err) = v.reveal(&env("e"), &var("A")) else {
        panic!("a value moved to another row opened");
    };
    assert!(matches!(err, VaultError::Tampered { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("value of e/A") && msg.contains("modified outside custody"));
    assert!(!msg.contains("value-of"));
}

#[test]
fn version_rollback_fails_to_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    v.create_environment(&env("e"), "").unwrap();
    v.set_variable(&env("e"), &var("A"), b"first-value-1", &none)
        .unwrap();
    let old: Vec<u8> = v
        .conn
        .query_row("SELECT sealed_value FROM variables", [], |r| r.get(0))
        .unwrap();
    v.set_variable(&env("e"), &var("A"), b"second-value-2", &none)
        .unwrap();
    v.conn
        .execute("UPDATE variables SET sealed_value = ?1", params![old])
        .unwrap();
    assert!(matches!(
        v.reveal(&env("e"), &var("A")),
        Err(VaultError::Tampered { .. })
    ));
}

#[test]
fn newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    let path = v.path().to_owned();
    v.conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop(v);
    let before = fs::read(&path).unwrap();
    let err = Vault::unlock(&path, PASS).unwrap_err();
    assert!(
        matches!(err, VaultError::NewerFormat { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade custody"));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn garbage_empty_and_foreign_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let empty = dir.path().join("empty.db");
    fs::write(&empty, b"").unwrap();
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x);")
        .unwrap();
    for p in [&garbage, &empty, &foreign] {
        let before = fs::read(p).unwrap();
        let err = Vault::unlock(p, PASS).unwrap_err();
        assert!(
            matches!(err, VaultError::Corrupt { .. }),
            "{}: {err}",
            p.display()
        );
        assert_eq!(fs::read(p).unwrap(), before, "{} was modified", p.display());
    }
}

#[test]
fn truncated_vault_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    v.create_environment(&env("e"), "").unwrap();
    for i in 0..200 {
        v.set_variable(&env("e"), &var(&format!("V{i}")), &[b'x'; 2000], &none)
            .unwrap();
    }
    let path = v.path().to_owned();
    drop(v); // checkpoints the WAL into the main file
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() / 3]).unwrap();
    let res = Vault::unlock(&path, PASS).and_then(|v| v.variables(&env("e")).map(|_| ()));
    assert!(matches!(res, Err(VaultError::Corrupt { .. })), "{res:?}");
}

#[test]
fn import_commits_in_batches_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("e"), "").unwrap();
    v.set_variable(
        &env("e"),
        &var("K0"),
        b"old-value-0",
        &VariableUpdate::default(),
    )
    .unwrap();
    let names: Vec<VarName> = (0..25).map(|i| var(&format!("K{i}"))).collect();
    let values: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("value-{i:04}").into_bytes())
        .collect();
    let mut seen = Vec::new();
    let report = v
        .import(
            &env("e"),
            names.iter().zip(values.iter().map(Vec::as_slice)),
            10,
            |n| seen.push(n),
        )
        .unwrap();
    assert_eq!(
        report,
        ImportReport {
            created: 24,
            updated: 1
        }
    );
    assert_eq!(seen, [10, 20, 25]);
    assert_eq!(value_of(&v, "e", "K0"), b"value-0000");
}

#[test]
fn oversized_input_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("e"), "").unwrap();
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        v.set_variable(&env("e"), &var("K"), &big, &VariableUpdate::default()),
        Err(VaultError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        v.create_environment(&env("f"), &"d".repeat(MAX_DESCRIPTION_LEN + 1)),
        Err(VaultError::DescriptionTooLarge { .. })
    ));
}

#[test]
fn debug_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    v.create_environment(&env("e"), "").unwrap();
    v.set_variable(
        &env("e"),
        &var("K"),
        b"SUPERSECRETVALUE",
        &VariableUpdate::default(),
    )
    .unwrap();
    // A revealed value has no Debug at all (the compile_fail examples in
    // `crate::secret`); the vault and its key show none of it.
    let key_hex = hex::encode(v.vault_key().expose());
    for shown in [format!("{v:?}"), format!("{:?}", v.vault_key())] {
        assert!(!shown.contains("SUPERSECRETVALUE"), "{shown}");
        assert!(!shown.contains(&key_hex), "{shown}");
        assert!(!shown.contains("83, 85, 80"), "{shown}"); // "SUP" as a byte list
    }
}

/// Listings are kept between calls; they must still show every change, made
/// through this connection or through another one (a second process).
#[test]
fn kept_listings_follow_changes_from_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = new_vault(&dir);
    let path = a.path().to_owned();
    let none = VariableUpdate::default();
    a.create_environment(&env("app"), "").unwrap();
    a.declare_variable(&env("app"), &var("ONE"), &none).unwrap();
    let listed = |v: &Vault| -> Vec<(String, bool, String)> {
        v.variables(&env("app"))
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.is_set, i.description))
            .collect()
    };
    let one = |set: bool, d: &str| ("ONE".to_owned(), set, d.to_owned());
    assert_eq!(listed(&a), [one(false, "")]);
    assert_eq!(listed(&a), [one(false, "")], "a kept listing is the same");

    a.set_variable(&env("app"), &var("ONE"), b"kept-listing-v1", &none)
        .unwrap();
    assert_eq!(listed(&a), [one(true, "")], "this connection's write");

    let mut b = Vault::unlock(&path, PASS).unwrap();
    let described = VariableUpdate {
        description: Some("from b".into()),
        kind: None,
        source: None,
        bindings: None,
    };
    b.declare_variable(&env("app"), &var("ONE"), &described)
        .unwrap();
    b.declare_variable(&env("app"), &var("TWO"), &none).unwrap();
    let two = ("TWO".to_owned(), false, String::new());
    assert_eq!(
        listed(&a),
        [one(true, "from b"), two.clone()],
        "another connection's writes"
    );

    b.unset_variable(&env("app"), &var("ONE")).unwrap();
    assert_eq!(
        listed(&a),
        std::slice::from_ref(&two),
        "another connection's removal"
    );

    // A change undone (its audit record failed, say) leaves no listing
    // made in between behind.
    let undone: std::result::Result<(), VaultError> = a.atomically(|v| {
        v.declare_variable(&env("app"), &var("GONE"), &none)?;
        assert_eq!(listed(v).len(), 2, "seen inside the change");
        Err(VaultError::Storage("the audit record failed".into()))
    });
    assert!(undone.is_err());
    assert_eq!(
        listed(&a),
        std::slice::from_ref(&two),
        "a change rolled back"
    );

    // What is not a variable or an environment keeps the listing; it is
    // still right afterwards.
    a.put_lease_record("l-000000000001", b"{}").unwrap();
    assert_eq!(listed(&a), [two]);
}

/// Every file of the vault (main, WAL, shared memory) concatenated.
fn all_vault_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Attack class 4, "offline PIN guessing": a same-user agent reads the vault
/// files and looks for the PIN's Argon2id verifier to guess against, never
/// meeting the broker's 5-try lockout. The verifier is sealed under a vault
/// subkey: no `$argon2` string anywhere, and the sealed blob opens only with
/// the vault key. The right PIN still verifies.
#[test]
fn attack_offline_pin_guessing_finds_no_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    assert!(v.verify_pin(PIN).unwrap());
    assert!(!v.verify_pin(b"135790").unwrap());
    v.change_pin(b"975310").unwrap();
    assert!(v.verify_pin(b"975310").unwrap());
    drop(v);
    let bytes = all_vault_bytes(&dir.path().join("v"));
    assert!(
        !holds(&bytes, b"$argon2"),
        "a PIN verifier is readable in the vault files"
    );
}

/// Format 2 → 3: a vault whose PIN verifier is a plaintext Argon2id hash
/// (as older builds wrote it) gets it sealed at the first open with the key,
/// and no copy is left in the file or its log.
#[test]
fn a_plaintext_pin_verifier_is_sealed_at_the_first_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    let path = v.path().to_owned();
    let phc = v.pin_phc().unwrap().to_string();
    let (kdf, salt) = (
        v.kdf_params().unwrap(),
        meta(&v.conn, &path, "kdf_salt").unwrap(),
    );
    let kek = crypto::derive_kek(PASS, salt.as_slice().try_into().unwrap(), &kdf).unwrap();
    let legacy_wrap = crypto::seal(
        &kek,
        &aad(LEGACY_WRAP_LABEL, &[&v.vault_id]),
        v.vault_key.expose(),
    )
    .unwrap();
    drop(v);
    {
        // Rewrite the file the way format 2 stored the PIN and wrapped the key.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("DELETE FROM meta WHERE key = 'sealed_pin'", [])
            .unwrap();
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('pin_hash', ?1)",
            params![phc.as_bytes()],
        )
        .unwrap();
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'wrapped_key'",
            params![legacy_wrap],
        )
        .unwrap();
        c.execute_batch("PRAGMA user_version = 2; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    assert!(holds(&all_vault_bytes(&dir.path().join("v")), b"$argon2"));
    let v = Vault::unlock(&path, PASS).unwrap();
    assert!(v.verify_pin(PIN).unwrap());
    assert!(!v.verify_pin(b"000000").unwrap());
    drop(v);
    assert!(
        !holds(&all_vault_bytes(&dir.path().join("v")), b"$argon2"),
        "the plaintext verifier survived the migration"
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, FORMAT_VERSION);
}

/// Review finding: an agent that can write `vault.db` plants a plaintext
/// verifier of a PIN it chose (and makes the file look like format 2). It is
/// never adopted: only a key wrapped the legacy way, which needs the
/// passphrase, marks a vault whose plaintext verifier may be sealed.
#[test]
fn attack_a_planted_plaintext_pin_verifier_is_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    let path = v.path().to_owned();
    let planted = crypto::hash_pin(b"000000", &KdfParams::INSECURE_FAST).unwrap();
    drop(v);
    for downgrade in [false, true] {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('pin_hash', ?1)",
            params![planted.as_bytes()],
        )
        .unwrap();
        if downgrade {
            c.execute("DELETE FROM meta WHERE key = 'sealed_pin'", [])
                .unwrap();
            c.execute_batch("PRAGMA user_version = 2;").unwrap();
        }
        drop(c);
        let v = Vault::unlock(&path, PASS).unwrap();
        assert!(
            !v.verify_pin(b"000000").unwrap_or(false),
            "the planted PIN was adopted (downgrade: {downgrade})"
        );
        if !downgrade {
            assert!(v.verify_pin(PIN).unwrap());
        }
    }
}

/// Attack class 8, "forged lease records", at the vault: a sealed lease
/// record opens only under the id it was sealed for, so copying one row
/// to another id (or editing its bytes) yields a rejected record, never a
/// record the broker acts on. Planted policy text does not open either.
#[test]
fn attack_moved_or_edited_sealed_records_do_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_vault(&dir);
    v.put_lease_record("l-000000000001", br#"{"id":"l-000000000001"}"#)
        .unwrap();
    v.set_policy_text("[defaults]\nmax_ttl = \"1h\"\n").unwrap();
    let c = rusqlite::Connection::open(v.path()).unwrap();
    c.execute(
        "INSERT INTO leases (id, sealed_record) SELECT 'l-000000000002', sealed_record FROM leases",
        [],
    )
    .unwrap();
    let records = v.lease_records().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records[0].1.is_ok(), "the genuine record");
    assert!(records[1].1.is_err(), "a record moved to another id opened");
    c.execute(
        "UPDATE meta SET value = CAST('planted' AS BLOB) WHERE key = 'sealed_policy'",
        [],
    )
    .unwrap();
    assert!(matches!(v.policy_text(), Err(VaultError::Tampered { .. })));
    v.remove_lease_record("l-000000000002").unwrap();
    assert_eq!(v.lease_records().unwrap().len(), 1);
}

/// The same-user agent edits the vault file so that one name points at
/// another's row: the index columns are keyed hashes it cannot compute, but
/// it can swap them. Approving `dev/DATABASE_URL` (or `TEST_KEY`) must never
/// inject prod's URL (or `PROD_KEY`): the name sealed in the row's label is
/// checked against the name asked for.
#[test]
fn attack_swapped_name_indexes_never_reveal_another_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    for e in ["dev", "prod"] {
        v.create_environment(&env(e), "").unwrap();
        v.set_variable(
            &env(e),
            &var("DATABASE_URL"),
            format!("postgres://{e}-database-url").as_bytes(),
            &none,
        )
        .unwrap();
    }
    v.set_variable(&env("dev"), &var("TEST_KEY"), b"sk_test_harmless_1", &none)
        .unwrap();
    v.set_variable(&env("dev"), &var("PROD_KEY"), b"sk_live_precious_2", &none)
        .unwrap();
    let c = rusqlite::Connection::open(v.path()).unwrap();
    // Two variables of one environment trade names.
    let idx = |e: &str, n: &str| -> Vec<u8> {
        let env_id = v.env_id(&env(e)).unwrap();
        v.var_index(&env_id, &var(n)).to_vec()
    };
    let (test_idx, prod_idx) = (idx("dev", "TEST_KEY"), idx("dev", "PROD_KEY"));
    c.execute(
        "UPDATE variables SET name_index = x'00' WHERE name_index = ?1",
        params![test_idx],
    )
    .unwrap();
    c.execute(
        "UPDATE variables SET name_index = ?1 WHERE name_index = ?2",
        params![test_idx, prod_idx],
    )
    .unwrap();
    c.execute(
        "UPDATE variables SET name_index = ?1 WHERE name_index = x'00'",
        params![prod_idx],
    )
    .unwrap();
    // A run's reveal finds rows by their authenticated labels, not the
    // index: it gets TEST_KEY's own value (or a refusal), never PROD_KEY's.
    match &v.reveal_many(&env("dev"), &[var("TEST_KEY")]).unwrap()[0] {
        Ok((_, value)) => assert_eq!(value.expose(), b"sk_test_harmless_1"),
        Err(e) => assert!(matches!(e, VaultError::Tampered { .. }), "{e}"),
    }
    match v.reveal(&env("dev"), &var("TEST_KEY")) {
        Ok((_, value)) => panic!(
            "TEST_KEY revealed {:?}",
            String::from_utf8_lossy(value.expose())
        ),
        Err(e) => assert!(matches!(e, VaultError::Tampered { .. }), "{e}"),
    }
    // Nor does a change or a removal land on the other row.
    assert!(matches!(
        v.set_variable(&env("dev"), &var("TEST_KEY"), b"sk_test_new_value_3", &none),
        Err(VaultError::Tampered { .. })
    ));
    assert!(matches!(
        v.unset_variable(&env("dev"), &var("TEST_KEY")),
        Err(VaultError::Tampered { .. })
    ));
    // Two environments trade names.
    let env_idx = |e: &str| v.env_index(&env(e)).to_vec();
    let (dev_idx, prod_env_idx) = (env_idx("dev"), env_idx("prod"));
    c.execute(
        "UPDATE environments SET name_index = x'00' WHERE name_index = ?1",
        params![dev_idx],
    )
    .unwrap();
    c.execute(
        "UPDATE environments SET name_index = ?1 WHERE name_index = ?2",
        params![dev_idx, prod_env_idx],
    )
    .unwrap();
    c.execute(
        "UPDATE environments SET name_index = ?1 WHERE name_index = x'00'",
        params![prod_env_idx],
    )
    .unwrap();
    match v.reveal(&env("dev"), &var("DATABASE_URL")) {
        Ok((_, value)) => panic!(
            "dev/DATABASE_URL revealed {:?}",
            String::from_utf8_lossy(value.expose())
        ),
        Err(e) => assert!(matches!(e, VaultError::Tampered { .. }), "{e}"),
    }
    // The listing says so too, instead of showing prod's variables as dev's.
    assert!(matches!(
        v.variables(&env("dev")),
        Err(VaultError::Tampered { .. })
    ));
}

/// `reveal_many` answers each variable exactly as `reveal` does, in the
/// order asked, duplicates included.
#[test]
fn reveal_many_answers_like_reveal() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = new_vault(&dir);
    let none = VariableUpdate::default();
    v.create_environment(&env("e"), "").unwrap();
    for i in 0..40 {
        v.set_variable(
            &env("e"),
            &var(&format!("V{i}")),
            format!("value-number-{i}").as_bytes(),
            &none,
        )
        .unwrap();
    }
    let file = VariableUpdate {
        kind: Some(VarKind::File),
        ..VariableUpdate::default()
    };
    v.set_variable(&env("e"), &var("CERT"), b"-----BEGIN CERT-----", &file)
        .unwrap();
    let dynamic = VariableUpdate {
        kind: Some(VarKind::Dynamic),
        source: Some("postgres:main".into()),
        ..VariableUpdate::default()
    };
    v.declare_variable(&env("e"), &var("DB"), &dynamic).unwrap();
    v.declare_variable(&env("e"), &var("LATER"), &none).unwrap();
    let asked: Vec<VarName> = ["V7", "CERT", "DB", "LATER", "MISSING", "V39", "V7"]
        .iter()
        .map(|n| var(n))
        .collect();
    let many = v.reveal_many(&env("e"), &asked).unwrap();
    assert_eq!(many.len(), asked.len());
    let shown = |r: &Result<(VarKind, crate::vault::SecretValue)>| match r {
        Ok((k, value)) => format!("{k:?}={}", String::from_utf8_lossy(value.expose())),
        Err(e) => e.to_string(),
    };
    for (name, got) in asked.iter().zip(&many) {
        assert_eq!(shown(got), shown(&v.reveal(&env("e"), name)), "{name}");
    }
    assert_eq!(shown(&many[0]), "Env=value-number-7");
    assert_eq!(shown(&many[1]), "File=-----BEGIN CERT-----");
    assert!(matches!(many[2], Err(VaultError::Dynamic { .. })));
    assert!(matches!(many[3], Err(VaultError::NotSet { .. })));
    assert!(matches!(many[4], Err(VaultError::NoSuchVariable { .. })));
    assert!(matches!(
        v.reveal_many(&env("nope"), &asked),
        Err(VaultError::NoSuchEnvironment(_))
    ));
}
