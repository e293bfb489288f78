//! Any bytes as what a client sends after the handshake: the server's WebSocket framing (as
//! Draw64 configures it: 1 MiB messages and frames) and then the command parser on every text
//! message. Frames, fragments, control frames and garbage; never a panic.
#![no_main]

use std::io::{Cursor, Read, Write};

use draw64::domain::Command;
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// The client's bytes in, the server's discarded.
struct Wire(Cursor<Vec<u8>>);

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20)).max_frame_size(Some(1 << 20));
    let mut socket = WebSocket::from_raw_socket(Wire(Cursor::new(data.to_vec())), Role::Server, Some(config));
    // Each read consumes input, so this ends; the bound is a second guard.
    for _ in 0..10_000 {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let _ = Command::parse_frame(text.as_bytes());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
});
