//! Config parsing: any text is either a typed `Config` or a list of
//! errors, each naming the file; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative paths in the text resolve
    // under it and find nothing, so the file system is never written.
    let path = Path::new("/nonexistent-postern-fuzz/postern.toml");
    match postern::config::parse_str(text, path) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            assert!(!config.actions.is_empty());
            assert!(config.daemon.state_dir.is_absolute());
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an Err carries at least one error");
            for e in &errors {
                assert_eq!(e.file, path);
                // Display never panics and always names the file.
                assert!(e.to_string().starts_with(path.to_str().unwrap_or("")));
                assert!(!e.message.is_empty());
            }
        }
    }
});
