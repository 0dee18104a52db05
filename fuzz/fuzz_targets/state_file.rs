//! The gate state file is read at every start-up, after a crash, from a
//! disk that may hold anything: any text parses into records or refusals,
//! never a panic, and every record it accepts is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::monitor::gate::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        match Record::parse(line) {
            Ok(r) => {
                assert!(!r.name.is_empty());
                let _ = format!("{r:?}");
            }
            Err(Some(name)) => assert!(line.contains(&name)),
            Err(None) => {}
        }
    }
});
