//! Property test: arbitrary input to the id and command parsers, judged at the HTTP edge's
//! mapping. Only acceptance or a 4xx with a reason; never a panic, never a 5xx.

use draw64::{
    domain::{Command, ImageId},
    http::error::ApiError,
};
use proptest::prelude::*;

fn judged(result: Result<(), ApiError>) {
    if let Err(e) = result {
        let status = e.status();
        assert!(status.is_client_error(), "{status} for {e}");
        assert!(!e.to_string().is_empty());
    }
}

/// Inputs near the valid shape find more edge cases than uniform noise.
fn command_like() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-300i64..300).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("1e400".to_owned()),
        Just("\"7\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
    ];
    let pixel = prop::collection::vec(number, 0..7).prop_map(|v| format!("[{}]", v.join(",")));
    let values = prop::collection::vec(pixel, 0..5).prop_map(|v| format!("[{}]", v.join(",")));
    let kind = prop_oneof![Just("draw"), Just("clear_canvas"), Just("erase"), Just("")];
    (kind, values, any::<bool>(), ".{0,4}").prop_map(|(kind, values, with_values, noise)| {
        let body = if with_values {
            format!(r#"{{"command":{{"command_type":"{kind}","values":{values}}}}}"#)
        } else {
            format!(r#"{{"command":{{"command_type":"{kind}"}}}}"#)
        };
        // Sometimes damage the JSON.
        if noise.is_empty() { body } else { format!("{}{noise}", &body[..body.len() / 2]) }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_a_command(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        judged(Command::parse_json(&bytes).map(drop).map_err(ApiError::from));
    }

    #[test]
    fn command_shaped_text(body in command_like()) {
        judged(Command::parse_json(body.as_bytes()).map(drop).map_err(ApiError::from));
    }

    #[test]
    fn any_text_as_an_image_id(raw in "\\PC{0,40}") {
        let result = ImageId::parse(&raw);
        if let Ok(id) = &result {
            prop_assert!(id.as_str().len() <= 30 && id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
        judged(result.map(drop).map_err(ApiError::from));
    }

    #[test]
    fn id_shaped_text(raw in "[a-zA-Z0-9._~-]{0,34}") {
        judged(ImageId::parse(&raw).map(drop).map_err(ApiError::from));
    }
}

/// What a client sends after the handshake, in the server's framing (masked or not, final or
/// fragment, any opcode, text that is a command or noise, a length that lies), as the fuzz
/// target `ws_frames` explores it with coverage; here, random but shaped.
fn frames_like() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        command_like().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
        Just(vec![0xff, 0xfe]),
    ];
    let frame = (0u8..16, any::<bool>(), any::<bool>(), payload, any::<[u8; 4]>(), 0u8..4).prop_map(
        |(opcode, fin, masked, payload, key, lie)| {
            let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
            let n = payload.len() + usize::from(lie);
            out.push((if masked { 0x80 } else { 0 }) | n.min(125) as u8);
            if masked {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            } else {
                out.extend_from_slice(&payload);
            }
            out
        },
    );
    prop::collection::vec(frame, 0..6).prop_map(|frames| frames.concat())
}

/// The client's bytes in, the server's discarded.
struct Wire(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_frames_after_the_handshake(bytes in frames_like()) {
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20)).max_frame_size(Some(1 << 20));
        let mut socket = WebSocket::from_raw_socket(Wire(std::io::Cursor::new(bytes)), Role::Server, Some(config));
        for _ in 0..64 {
            match socket.read() {
                Ok(tokio_tungstenite::tungstenite::Message::Text(text)) => {
                    judged(Command::parse_frame(text.as_bytes()).map(drop).map_err(ApiError::from));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
