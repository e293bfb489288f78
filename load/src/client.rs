//! The load tool's clients: keep-alive HTTP/1.1 connections (requests written whole, answers
//! parsed with httparse), WebSockets held open by `idle` (tokio-tungstenite; the busy readers of
//! `fanout` and `users` use `lean_ws`), and the encoding that makes every change unique.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// `host:port` of an `http://host:port[/...]` URL.
pub fn authority(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

pub async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let authority = authority(url)?;
    tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))
}

pub fn ws_url(base: &str, image: &str) -> String {
    format!("ws://{}{}", base.trim_start_matches("http://").trim_end_matches('/'), ws_path(image))
}

/// The WebSocket path of an image.
pub fn ws_path(image: &str) -> String {
    format!("/ws/images/{image}")
}

/// Largest answer head or body the load tool accepts (a PNG is a few KB).
const MAX_ANSWER: usize = 1 << 20;

/// One keep-alive HTTP/1.1 connection, one request at a time. The request is written in one
/// piece and the answer parsed in place with httparse (the parser hyper uses): the load tool
/// shares two cores with the server it measures, so its cost per request is part of every
/// figure. A general client (hyper's, tried first) spent about as much CPU per request as the
/// server under test.
pub struct Http {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    /// Bytes read and not consumed yet.
    read: Vec<u8>,
    closed: bool,
}

impl Http {
    pub async fn connect(addr: SocketAddr, host: &str) -> Result<Http, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Http {
            stream,
            host: host.to_owned(),
            request: Vec::with_capacity(256),
            read: Vec::with_capacity(4096),
            closed: false,
        })
    }

    /// Sends a request and reads the whole answer: its status and body.
    pub async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.closed {
            return Err("connection: closed by the server".into());
        }
        self.request.clear();
        let _ = write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await.map_err(|e| format!("request: {e}"))?;
        let head = loop {
            if let Some(head) = Head::parse(&self.read)? {
                break head;
            }
            self.fill().await?;
        };
        self.closed = head.close;
        self.read.drain(..head.len);
        let body = match head.framing {
            Framing::Length(n) => {
                while self.read.len() < n {
                    self.fill().await?;
                }
                self.read.drain(..n).collect()
            }
            Framing::Chunked => self.chunked().await?,
            Framing::UntilClose => {
                self.closed = true;
                while self.fill().await.is_ok() {}
                std::mem::take(&mut self.read)
            }
        };
        Ok((head.status, body))
    }

    /// Reads more of the answer; an error at the end of the stream.
    async fn fill(&mut self) -> Result<(), String> {
        if self.read.len() > MAX_ANSWER {
            return Err("answer: larger than 1 MiB".into());
        }
        self.read.reserve(4096);
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err("answer: connection closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("answer: {e}")),
        }
    }

    async fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let (at, size) = loop {
                match httparse::parse_chunk_size(&self.read) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => self.fill().await?,
                    Err(_) => return Err("answer: bad chunk size".into()),
                }
            };
            let size = usize::try_from(size).ok().filter(|s| *s <= MAX_ANSWER).ok_or("answer: chunk too large")?;
            // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
            while self.read.len() < at + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.read[at..at + size]);
            self.read.drain(..at + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// How an answer's body is delimited.
#[derive(Debug, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// An answer's head, once complete.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    close: bool,
}

impl Head {
    /// `None` while the head is incomplete.
    fn parse(buf: &[u8]) -> Result<Option<Head>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        let len = match answer.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER => return Err("answer: head too large".into()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("answer: {e}")),
        };
        let status = answer.code.unwrap_or_default();
        let mut framing = if status == 204 || status == 304 { Framing::Length(0) } else { Framing::UntilClose };
        let mut close = answer.version == Some(0);
        for h in answer.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                framing = Framing::Length(n.filter(|n| *n <= MAX_ANSWER).ok_or("answer: bad content-length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                framing = Framing::Chunked;
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        Ok(Some(Head { status, len, framing, close }))
    }
}

/// One request on a fresh connection.
pub async fn once(base: &str, method: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut http = Http::connect(resolve(base).await?, &authority(base)?).await?;
    http.call(method, path, b"").await
}

/// Creates the image if it does not exist yet.
pub async fn ensure_image(base: &str, image: &str) -> Result<(), String> {
    let (status, body) = once(base, "POST", &format!("/images/{image}")).await?;
    match status {
        201 | 409 => Ok(()),
        other => Err(format!("cannot create image {image}: {other} {}", String::from_utf8_lossy(&body))),
    }
}

/// The load tool's read buffer per socket. tungstenite zero-fills the free part of its buffer
/// before every read, so its 128 KiB default costs a 128 KiB memset per read: at a million
/// messages a second that alone took a sixth of the load tool's time.
const WS_READ_BUFFER: usize = 8 * 1024;

pub async fn connect_ws(url: &str) -> Result<Ws, String> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("websocket: {e}")),
        Err(_) => Err("websocket: no handshake within 10 s".into()),
    }
}

/// The pixel that carries change number `seq` (unique for seq < 2^28).
pub fn pixel(seq: u64) -> [u64; 5] {
    [seq % 64, (seq / 64) % 64, (seq >> 12) & 0xff, (seq >> 20) & 0xff, 7]
}

pub fn seq_of(p: [u64; 5]) -> u64 {
    p[0] + p[1] * 64 + (p[2] << 12) + (p[3] << 20)
}

pub fn draw_body(p: [u64; 5]) -> String {
    format!(r#"{{"command":{{"command_type":"draw","values":[[{},{},{},{},{}]]}}}}"#, p[0], p[1], p[2], p[3], p[4])
}

/// The first pixel of an `image_updated` event, read without a JSON parser (the load tool must
/// stay cheap: it shares the machine with the server and reads a million events a second). Ids
/// are `[a-zA-Z0-9-]`, so the first `[[` opens the pixel list.
/// The bytes need not be checked as UTF-8 first: only ASCII is read.
pub fn first_pixel(bytes: &[u8]) -> Option<[u64; 5]> {
    static OPEN: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"[["));
    let mut at = OPEN.find(bytes)? + 2;
    let mut out = [0u64; 5];
    for (i, slot) in out.iter_mut().enumerate() {
        while bytes.get(at) == Some(&b' ') {
            at += 1;
        }
        let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        *slot = bytes[at..at + digits].iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
        at += digits;
        while bytes.get(at) == Some(&b' ') {
            at += 1;
        }
        let want = if i == 4 { b']' } else { b',' };
        if bytes.get(at) != Some(&want) {
            return None;
        }
        at += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_number_survives_the_round_trip() {
        for seq in [0, 1, 63, 64, 4095, 4096, 1 << 20, (1 << 28) - 1] {
            let p = pixel(seq);
            let event = format!(
                r#"{{"event":{{"event_type":"image_updated","image_id":"x","command":{}}}}}"#,
                &draw_body(p)[11..draw_body(p).len() - 1]
            );
            assert_eq!(first_pixel(event.as_bytes()).map(seq_of), Some(seq), "{event}");
            assert!(p.iter().all(|v| *v < 256));
            let spaced = event.replace(',', ", ");
            assert_eq!(first_pixel(spaced.as_bytes()).map(seq_of), Some(seq), "{spaced}");
        }
        for bad in [r#"{"values":[]}"#, r#"[[1,2,3,4]]"#, r#"[[1,2,3,4,x]]"#, r#"[[1,2,3,4,5"#, "", "[["] {
            assert_eq!(first_pixel(bad.as_bytes()), None, "{bad}");
        }
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\nnull";
        assert_eq!(Head::parse(&ok[..20]), Ok(None));
        assert_eq!(
            Head::parse(ok),
            Ok(Some(Head { status: 200, len: ok.len() - 4, framing: Framing::Length(4), close: false }))
        );
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        assert_eq!(Head::parse(chunked).unwrap().unwrap().framing, Framing::Chunked);
        assert!(Head::parse(chunked).unwrap().unwrap().close);
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(Head::parse(b"SSH-2.0\r\n\r\n").is_err());
        assert_eq!(authority("http://127.0.0.1:8000/x").unwrap(), "127.0.0.1:8000");
        assert_eq!(ws_url("http://h:1/", "img"), "ws://h:1/ws/images/img");
    }
}
