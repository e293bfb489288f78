//! Any text as an image id: accepted ids are what the rules say, nothing panics.
#![no_main]

use draw64::domain::ImageId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = ImageId::parse(text) {
        assert!(!id.as_str().is_empty() && id.as_str().len() <= 30);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
});
