//! Any bytes as a WebSocket command frame or a PUT body: a command or a refusal with a
//! reason, never a panic; an accepted command relays as JSON that parses back to itself.
#![no_main]

use draw64::domain::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((command, _traceparent)) = Command::parse_frame(data) {
        let mut relayed = String::new();
        command.write_json(&mut relayed);
        let wrapped = format!(r#"{{"command":{relayed}}}"#);
        assert_eq!(Command::parse_json(wrapped.as_bytes()).ok(), Some(command), "{wrapped}");
    } else {
        let _ = Command::parse_json(data);
    }
});
