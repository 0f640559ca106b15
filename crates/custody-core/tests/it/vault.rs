//! Vault integration tests through the public API only.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use custody_core::crypto::KdfParams;
use custody_core::names::{EnvName, VarName};
use custody_core::vault::{VariableUpdate, Vault};

fn value_for(e: usize, v: usize) -> Vec<u8> {
    // Distinct, binary-containing values of varying length.
    let mut out = format!("env{e}-var{v}-").into_bytes();
    out.extend((0..(v % 97)).map(|i| (i * 31 + e) as u8));
    out
}

/// 1,000 variables across 10 environments survive a close and re-open,
/// each with its own value, description and kind.
#[test]
fn round_trip_1000_variables_across_10_environments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let mut v = Vault::create(&path, b"passphrase-1", b"123456", KdfParams::INSECURE_FAST).unwrap();
    for e in 0..10 {
        let env = EnvName::new(&format!("env-{e}")).unwrap();
        v.create_environment(&env, &format!("environment {e}"))
            .unwrap();
        for i in 0..100 {
            let var = VarName::new(&format!("VAR_{i:03}")).unwrap();
            let upd = VariableUpdate {
                description: Some(format!("description {e}/{i}")),
                kind: None,
                source: None,
                bindings: None,
            };
            v.set_variable(&env, &var, &value_for(e, i), &upd).unwrap();
        }
    }
    drop(v);

    let v = Vault::unlock(&path, b"passphrase-1").unwrap();
    let envs = v.environments().unwrap();
    assert_eq!(envs.len(), 10);
    let mut total = 0;
    for (e, info) in envs.iter().enumerate() {
        assert_eq!(info.name, format!("env-{e}"));
        assert_eq!(info.description, format!("environment {e}"));
        assert_eq!(info.variable_count, 100);
        let env = EnvName::new(&info.name).unwrap();
        let vars = v.variables(&env).unwrap();
        for (i, var) in vars.iter().enumerate() {
            assert_eq!(var.name, format!("VAR_{i:03}"));
            assert_eq!(var.description, format!("description {e}/{i}"));
            let (_, value) = v.reveal(&env, &VarName::new(&var.name).unwrap()).unwrap();
            assert_eq!(value.expose(), &value_for(e, i)[..]);
            total += 1;
        }
    }
    assert_eq!(total, 1000);
}
