//! A WebSocket client for the `users` scenario's thousand readers, each reading every event of
//! its image (a million frames a second in all, on the two cores the server also uses). The
//! frames are tungstenite's (`FrameHeader` parses and formats them); what is left out is the
//! per-message machinery of a general client — a message object, a UTF-8 check, a waker and a
//! lock per frame, the read buffer zero-filled before every read — which made the load tool
//! spend as much CPU per event as the server under test. It speaks just what the scenario needs:
//! unfragmented text frames both ways; a ping is kept for the caller to answer with `pong` (a
//! client that only listens must, or the server drops it as silent after two ping intervals;
//! one that sends keeps the connection alive anyway); close ends the read.

use std::io::Cursor;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tokio_tungstenite::tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

/// Read in pieces this large (events are about a hundred bytes; a read takes what is waiting).
const READ_CHUNK: usize = 64 * 1024;

/// Largest frame accepted from the server.
const MAX_FRAME: usize = 1 << 20;

pub struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The payload of the last ping not yet answered.
    ping: Option<Vec<u8>>,
}

pub struct Writer {
    half: OwnedWriteHalf,
    frame: Vec<u8>,
}

/// Opens `ws://{host}{path}` on `addr`: the upgrade request, then a `101` answer or an error.
pub async fn connect(addr: std::net::SocketAddr, host: &str, path: &str) -> Result<(Reader, Writer), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("websocket: {e}"))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        key()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("websocket: {e}"))?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut end = 0;
    let head = loop {
        if end == buf.len() {
            return Err("websocket: handshake answer too large".into());
        }
        let n = stream.read(&mut buf[end..]).await.map_err(|e| format!("websocket: {e}"))?;
        if n == 0 {
            return Err("websocket: closed during the handshake".into());
        }
        end += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(len)) if answer.code == Some(101) => break len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(format!("websocket: HTTP {} instead of 101", answer.code.unwrap_or(0)));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("websocket: bad handshake answer: {e}")),
        }
    };
    let (read, write) = stream.into_split();
    Ok((
        Reader { half: read, buf, start: head, end, ping: None },
        Writer { half: write, frame: Vec::with_capacity(256) },
    ))
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64.
fn key() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: [u8; 16] = fastrand::u128(..).to_le_bytes();
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Reader {
    /// The payload of the next text frame; `None` when the server closed the connection.
    pub async fn next_text(&mut self) -> Result<Option<&[u8]>, String> {
        loop {
            let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
            let need = match FrameHeader::parse(&mut cursor).map_err(|e| format!("websocket: {e}"))? {
                Some((header, len)) => {
                    let len =
                        usize::try_from(len).ok().filter(|l| *l <= MAX_FRAME).ok_or("websocket: frame over 1 MiB")?;
                    let at = self.start + cursor.position() as usize;
                    if self.end - at >= len {
                        self.start = at + len;
                        match header.opcode {
                            OpCode::Data(Data::Text) => return Ok(Some(&self.buf[at..at + len])),
                            OpCode::Control(Control::Close) => return Ok(None),
                            OpCode::Control(Control::Ping) => self.ping = Some(self.buf[at..at + len].to_vec()),
                            _ => {}
                        }
                        continue;
                    }
                    at + len - self.start
                }
                None => self.end - self.start + 1,
            };
            if !self.fill(need).await? {
                return Ok(None);
            }
        }
    }

    /// The payload of a ping received since the last call, to answer with `Writer::pong`.
    pub fn take_ping(&mut self) -> Option<Vec<u8>> {
        self.ping.take()
    }

    /// Reads once, with room for `need` unread bytes; false at the end of the stream.
    async fn fill(&mut self, need: usize) -> Result<bool, String> {
        if self.buf.len() - self.start < need.max(READ_CHUNK / 4) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need || self.end == self.buf.len() {
            self.buf.resize(self.buf.len().max(need) + READ_CHUNK, 0);
        }
        let n = self.half.read(&mut self.buf[self.end..]).await.map_err(|e| format!("websocket: {e}"))?;
        self.end += n;
        Ok(n > 0)
    }
}

impl Writer {
    /// One text frame, masked as a client's must be.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), String> {
        self.send(OpCode::Data(Data::Text), text).await
    }

    /// The answer to a ping, with its payload.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), String> {
        self.send(OpCode::Control(Control::Pong), payload).await
    }

    /// A close frame, then no more writing.
    pub async fn close(&mut self) {
        let _ = self.send(OpCode::Control(Control::Close), &[]).await;
        let _ = self.half.shutdown().await;
    }

    async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), String> {
        let mask = fastrand::u32(..).to_ne_bytes();
        let header = FrameHeader { opcode, mask: Some(mask), ..FrameHeader::default() };
        self.frame.clear();
        header.format(payload.len() as u64, &mut self.frame).map_err(|e| format!("websocket: {e}"))?;
        self.frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.half.write_all(&self.frame).await.map_err(|e| format!("websocket: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: unmasked, as a server sends them.
    fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader { opcode, ..FrameHeader::default() }.format(payload.len() as u64, &mut out).unwrap();
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn frames_split_anywhere_come_out_whole_and_sends_are_masked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = vec![b'x'; 3 * READ_CHUNK];
        let expected = big.clone();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                socket.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap();
            assert!(request.starts_with("GET /ws/images/a HTTP/1.1\r\n"), "{request}");
            assert!(request.contains("Sec-WebSocket-Key: "), "{request}");
            // The answer and the first frames in one write, the rest in 7-byte pieces.
            let mut out =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
            out.extend(frame(OpCode::Data(Data::Text), b"first"));
            out.extend(frame(OpCode::Control(Control::Ping), b"p"));
            out.extend(frame(OpCode::Data(Data::Text), b"second"));
            out.extend(frame(OpCode::Data(Data::Text), &big));
            out.extend(frame(OpCode::Control(Control::Close), b""));
            let (first, rest) = out.split_at(120);
            socket.write_all(first).await.unwrap();
            for piece in rest.chunks(7) {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
            }
            // The client's frames: masked, and unmasked they are what it sent.
            for (opcode, want) in [(0x8a, &b"p"[..]), (0x81, &b"hello"[..])] {
                let mut head = [0u8; 6];
                socket.read_exact(&mut head).await.unwrap();
                assert_eq!(head[0], opcode);
                assert_eq!(usize::from(head[1]), 0x80 | want.len(), "masked, {} bytes", want.len());
                let mut payload = vec![0u8; want.len()];
                socket.read_exact(&mut payload).await.unwrap();
                let mask = [head[2], head[3], head[4], head[5]];
                let got: Vec<u8> = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
                assert_eq!(got, want);
            }
        });
        let (mut reader, mut writer) = connect(addr, "h", "/ws/images/a").await.unwrap();
        assert_eq!(reader.next_text().await.unwrap(), Some(&b"first"[..]));
        assert_eq!(reader.next_text().await.unwrap(), Some(&b"second"[..]));
        assert_eq!(reader.next_text().await.unwrap(), Some(&expected[..]));
        assert_eq!(reader.next_text().await.unwrap(), None, "close ends the stream");
        assert_eq!(reader.take_ping().as_deref(), Some(&b"p"[..]), "the ping waits for an answer");
        assert_eq!(reader.take_ping(), None);
        writer.pong(b"p").await.unwrap();
        writer.send_text(b"hello").await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_an_error_naming_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            socket.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        });
        let err = connect(addr, "h", "/ws/images/a").await.err().unwrap();
        assert!(err.contains("HTTP 403 instead of 101"), "{err}");
    }

    #[test]
    fn keys_are_16_bytes_of_base64() {
        for _ in 0..100 {
            let k = key();
            assert_eq!(k.len(), 24, "{k}");
            assert!(k.ends_with("=="), "{k}");
            assert!(k[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'), "{k}");
        }
    }
}
