//! Fuzzes the lease records the reaper reads at start (files under
//! `$CUSTODY_HOME/leases`, sealed copies in the vault): untrusted bytes that
//! decide what gets killed and removed. Must never panic; a record it
//! accepts as valid names only a lease id's shape, a pid that could be a
//! child's, and at most that lease's own directory (never another path to
//! `remove_dir_all`); an accepted record writes back as itself.
#![no_main]

use std::path::Path;

use custody_broker::lease::lease_dir;
use custody_broker::reaper::{LeaseRecord, is_lease_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = Path::new("/run/user/1000/custody");
    let Some(rec) = LeaseRecord::from_bytes(data) else {
        return;
    };
    for id in [rec.id.clone(), "l-0123456789ab".to_owned()] {
        if rec.is_valid(&id, runtime) {
            assert!(is_lease_id(&id));
            assert!(rec.pid == 0 || (rec.pid > 1 && rec.pid <= 4_194_304));
            assert!(rec.dir.as_os_str().is_empty() || rec.dir == lease_dir(runtime, &id));
            assert!(!rec.dir.as_os_str().is_empty() || rec.dir == Path::new(""));
        }
    }
    let again = serde_json::to_vec(&rec).expect("a record serializes");
    if again.len() <= custody_broker::reaper::MAX_RECORD {
        assert_eq!(LeaseRecord::from_bytes(&again).as_ref(), Some(&rec));
    }
});
