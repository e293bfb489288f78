//! The load tool's clients: raw HTTP/1.1 keep-alive connections (hyper), WebSockets
//! (tokio-tungstenite), and the encoding that makes every change unique.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    format!("ws://{}/ws/images/{image}", base.trim_start_matches("http://").trim_end_matches('/'))
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    send: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    pub async fn connect(addr: SocketAddr, host: &str) -> Result<Http, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http { send, host: host.to_owned() })
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(&mut self, method: &str, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        self.send.ready().await.map_err(|e| format!("connection: {e}"))?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self.send.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection.
pub async fn once(base: &str, method: &str, path: &str) -> Result<(StatusCode, Bytes), String> {
    once_with_body(base, method, path, String::new()).await
}

pub async fn once_with_body(base: &str, method: &str, path: &str, body: String) -> Result<(StatusCode, Bytes), String> {
    let mut http = Http::connect(resolve(base).await?, &authority(base)?).await?;
    http.call(method, path, Bytes::from(body)).await
}

/// Creates the image if it does not exist yet.
pub async fn ensure_image(base: &str, image: &str) -> Result<(), String> {
    let (status, body) = once(base, "POST", &format!("/images/{image}")).await?;
    match status.as_u16() {
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
pub fn first_pixel(event: &str) -> Option<[u64; 5]> {
    static OPEN: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"[["));
    let bytes = event.as_bytes();
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
            assert_eq!(first_pixel(&event).map(seq_of), Some(seq), "{event}");
            assert!(p.iter().all(|v| *v < 256));
            let spaced = event.replace(',', ", ");
            assert_eq!(first_pixel(&spaced).map(seq_of), Some(seq), "{spaced}");
        }
        for bad in [r#"{"values":[]}"#, r#"[[1,2,3,4]]"#, r#"[[1,2,3,4,x]]"#, r#"[[1,2,3,4,5"#, "", "[["] {
            assert_eq!(first_pixel(bad), None, "{bad}");
        }
        assert_eq!(authority("http://127.0.0.1:8000/x").unwrap(), "127.0.0.1:8000");
        assert_eq!(ws_url("http://h:1/", "img"), "ws://h:1/ws/images/img");
    }
}
