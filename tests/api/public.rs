//! A canvas in public: what one client can hold, send and break, and what it cannot. Each
//! test is bounded in count and time, waits for conditions (never for lucky timing), and prints
//! its figures for the closing note.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Reads until the server closes the connection or `within` passes; what it sent, and whether
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Reads a flooding socket until the server closes it: the `error` events it got, and the
/// close code.
async fn refusals_until_closed(
    rx: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> (usize, Option<u16>) {
    let mut refused = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, rx.next()).await {
        match msg {
            Ok(Message::Text(t)) if t.contains("\"error\"") => refused += 1,
            Ok(Message::Close(frame)) => return (refused, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (refused, None)
}

fn detail_of(answer: &[u8]) -> Value {
    let text = String::from_utf8_lossy(answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_closed_in_time_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &["--header-timeout", "1s", "--body-timeout", "1s"]);
    let opened = Instant::now();
    // Slowloris: headers begun, never finished. Slow bodies: 1 MB announced, one byte sent.
    let mut slow_headers = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /images HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow_headers.push(s);
    }
    let mut slow_bodies = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"PUT /images/default HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{").await.unwrap();
        slow_bodies.push(s);
    }
    // A normal client is served meanwhile.
    let http = reqwest::Client::new();
    assert_eq!(http.get(server.url("/healthz")).send().await.unwrap().status(), 200);

    let mut header_closes = Vec::new();
    for s in &mut slow_headers {
        let (_, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(closed, "a slow header was held past 5 s against a 1 s limit");
        header_closes.push(opened.elapsed());
    }
    let mut body_closes = Vec::new();
    for s in &mut slow_bodies {
        let (answer, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(closed, "a slow body was held past 5 s against a 1 s limit");
        assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
        assert!(detail_of(&answer)["detail"].as_str().unwrap().contains("--body-timeout"));
        body_closes.push(opened.elapsed());
    }
    let refused = server.until_sample("draw64_limits_refused_total{draw64_limit=\"header_timeout\"", 50.0).await;
    assert_eq!(refused, 50.0);
    assert_eq!(server.until_sample("draw64_limits_refused_total{draw64_limit=\"body_timeout\"", 20.0).await, 20.0);
    assert_eq!(http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    println!(
        "figures: 50 slow headers closed by {:.2} s, 20 slow bodies answered 408 and closed by {:.2} s (limits 1 s)",
        header_closes.iter().max().unwrap().as_secs_f64(),
        body_closes.iter().max().unwrap().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_caps_leaves_health_and_the_metrics_port_answering() {
    let dir = tempfile::tempdir().unwrap();
    let caps = ["--max-connections", "80", "--max-connections-per-client", "50"];
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &caps);
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    // One address: 50 held, and the next ones refused with a 503 and a detail.
    for _ in 0..50 {
        held.push(connect_from("127.0.0.1", server.addr).await);
    }
    let mut refused = connect_from("127.0.0.1", server.addr).await;
    refused.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut refused, WAIT).await;
    assert!(closed && answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));
    assert!(detail_of(&answer)["detail"].as_str().unwrap().contains("Too many connections"));
    // Another address is still served, on the public port.
    let mut other = connect_from("127.0.0.2", server.addr).await;
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut other, WAIT).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    // Everyone together fills the public port (30 more from another address) ...
    for _ in 0..30 {
        held.push(connect_from("127.0.0.3", server.addr).await);
    }
    let mut third = connect_from("127.0.0.4", server.addr).await;
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut third, WAIT).await;
    assert!(answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));
    // ... and the metrics port still answers its probes and the scrape.
    let metrics = server.metrics.unwrap();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http.get(format!("http://{metrics}{path}")).send().await.unwrap().status(), 200, "{path}");
    }
    let scrape = server.scrape().await;
    assert_eq!(sample(&scrape, "draw64_http_connections{"), 80.0);
    assert!(sample(&scrape, "draw64_limits_refused_total{draw64_limit=\"connections_per_client\"") >= 1.0);
    assert!(sample(&scrape, "draw64_limits_refused_total{draw64_limit=\"connections\"") >= 1.0);
    // Seats are given back: once the flood lets go, everyone is served again.
    drop(held);
    let deadline = Instant::now() + WAIT;
    while server.until_sample("draw64_http_connections{", 0.0).await > 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_is_refused_then_closed_1008_while_another_client_draws_on_time() {
    let app = spawn_app().await;
    let flooder = ws_connect_from("127.0.0.5", app.addr, "/ws/images/flood", &[]).await.unwrap();
    let (mut flood_tx, mut flood_rx) = flooder.split();
    let mut calm = ws_connect_from("127.0.0.6", app.addr, "/ws/images/flood", &[]).await.unwrap();
    // The flood: 3,000 commands as fast as the socket takes them.
    let flood = tokio::spawn(async move {
        let frame = draw(&[[1, 1, 9, 9, 9]]);
        for _ in 0..3000 {
            if flood_tx.send(Message::text(frame.clone())).await.is_err() {
                break;
            }
        }
    });
    let flood_seen = tokio::spawn(async move { refusals_until_closed(&mut flood_rx).await });
    // Meanwhile, another client on the same image draws 20 strokes, 20 ms apart.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        ws_send(&mut calm, &draw(&[[2, i, 1, 2, 3]])).await;
        loop {
            let event = next_event(&mut calm).await;
            if event["event"]["command"]["values"][0] == serde_json::json!([2, i, 1, 2, 3]) {
                break;
            }
        }
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = flood.await;
    let (refused, code) = flood_seen.await.unwrap();
    assert_eq!(code, Some(1008), "persistent excess closes with 1008");
    assert!(refused >= 1, "the excess got error events first");
    let late = latencies.iter().filter(|l| **l > Duration::from_millis(250)).count();
    latencies.sort();
    println!(
        "figures: flood refused {refused} commands then closed 1008; the other client's 20 echoes: median {:?}, max {:?}, {late} over 250 ms",
        latencies[10], latencies[19]
    );
    assert!(late <= 2, "{late} of 20 echoes over 250 ms while another client flooded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_frames_is_throttled_closed_1008_and_logged_a_line_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let ws = ws_connect_from("127.0.0.7", server.addr, "/ws/images/junk", &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        for i in 0..3000 {
            if tx.send(Message::text(format!("not a command {i}"))).await.is_err() {
                break;
            }
        }
    });
    let (refused, code) = refusals_until_closed(&mut rx).await;
    let took = started.elapsed();
    flood.abort();
    assert_eq!(code, Some(1008), "after {refused} refusals");
    let lines = server.logs.lock().unwrap().iter().filter(|l| l.contains("invalid command refused")).count();
    // One line in the first second, and one a second after (each saying how many it stands for).
    let bound = 1 + took.as_secs() as usize + 1;
    assert!(lines <= bound, "{lines} log lines for {refused} refusals in {took:?}");
    println!("figures: {refused} invalid frames refused, closed 1008 after {took:.2?}, {lines} log lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_closed_within_the_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [&["--send-timeout", "1s"], ONE_ADDRESS_LOAD].concat();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &flags);
    // A raw handshake with a tiny receive buffer, and then not one read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut silent = socket.connect(server.addr).await.unwrap();
    silent
        .write_all(
            b"GET /ws/images/silent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let started = Instant::now();
    // Big changes until the server gives the silent socket up (at most 400 of them).
    let pixels: Vec<[i64; 5]> = (0..4000).map(|i| [i % 64, i / 64, 7, 7, 7]).collect();
    let body = draw(&pixels);
    let http = reqwest::Client::new();
    let series = "draw64_ws_disconnections_total{draw64_close_reason=\"stalled\"";
    let mut sent = 0;
    while sample(&server.scrape().await, series) < 1.0 && sent < 400 {
        for _ in 0..10 {
            assert_eq!(http.put(server.url("/images/silent")).body(body.clone()).send().await.unwrap().status(), 200);
            sent += 1;
        }
    }
    let closed_after = started.elapsed();
    assert_eq!(server.until_sample(series, 1.0).await, 1.0, "the silent socket was never closed");
    assert!(sample(&server.scrape().await, "draw64_limits_refused_total{draw64_limit=\"send_timeout\"") >= 1.0);
    println!(
        "figures: a never-reading subscriber closed {closed_after:.2?} after it stopped reading ({sent} changes of 4,000 pixels)"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_is_never_read_is_closed_within_the_send_timeout() {
    // The same deadline bounds every write on a connection (an SSE stream's too): here, 400
    // pipelined reads of an image's data (about 20 MB of answers) on a socket that never reads.
    let dir = tempfile::tempdir().unwrap();
    let flags = [&["--send-timeout", "1s"], ONE_ADDRESS_LOAD].concat();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &flags);
    // No idle connection kept: the open-connection gauge is then the silent one's alone.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(http.post(server.url("/images/big")).send().await.unwrap().status(), 201);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut silent = socket.connect(server.addr).await.unwrap();
    let requests = b"GET /images/big/data HTTP/1.1\r\nHost: x\r\n\r\n".repeat(400);
    silent.write_all(&requests).await.unwrap();
    let started = Instant::now();
    let series = "draw64_limits_refused_total{draw64_limit=\"send_timeout\"";
    assert_eq!(server.until_sample(series, 1.0).await, 1.0, "the never-read download was never closed");
    let closed_after = started.elapsed();
    let open = server.until_sample_below("draw64_http_connections", 0.0).await;
    assert_eq!(open, 0.0, "the connection is still open");
    // Others are served meanwhile and after.
    assert_eq!(http.get(server.url("/images/big/data")).send().await.unwrap().status(), 200);
    println!("figures: a never-read download closed {closed_after:.2?} after its requests were sent");
    drop(silent);
}

#[tokio::test]
async fn foreign_origins_are_refused_on_the_handshake_and_on_cross_site_posts() {
    let app = spawn_app_with(&["--allowed-origins", "http://app.example"]).await;
    let own = format!("http://{}", app.addr);
    for origin in ["http://evil.example", "null"] {
        let refused = ws_connect_from("127.0.0.1", app.addr, "/ws/images/default", &[("origin", origin)]).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403, "{origin}"),
            other => panic!("{origin}: handshake not refused: {:?}", other.map(|_| ())),
        }
    }
    for origin in [own.as_str(), "http://app.example"] {
        assert!(ws_connect_from("127.0.0.1", app.addr, "/ws/images/default", &[("origin", origin)]).await.is_ok());
    }
    let before = app.get_json("/images").await.1.as_array().unwrap().len();
    // A cross-site HTML form: another origin, a form's body type.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let res = app
            .http
            .post(app.url("/images"))
            .header("origin", "http://evil.example")
            .header("content-type", content_type)
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{content_type}");
        // Without Origin (an old browser), the form's body type alone is refused.
        let res =
            app.http.post(app.url("/images")).header("content-type", content_type).body("x=1").send().await.unwrap();
        assert_eq!(res.status(), 422, "{content_type}");
    }
    let res = app
        .http
        .put(app.url("/images/default"))
        .header("origin", "http://evil.example")
        .body(CLEAR)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app.http.delete(app.url("/images/default")).header("origin", "null").send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.get_json("/images").await.1.as_array().unwrap().len(), before, "nothing created or deleted");
    app.stop().await;
}

#[tokio::test]
async fn with_an_admin_token_deleting_and_clearing_need_it() {
    const TOKEN: &str = "0123456789abcdef-test";
    let app = spawn_app_with(&["--admin-token", TOKEN]).await;
    assert_eq!(app.post("/images/victim").await.0, 201);
    assert_eq!(app.put("victim", &draw(&[[1, 1, 5, 5, 5]])).await.0, 200, "drawing needs no token");
    let res = app.http.delete(app.url("/images/victim")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let res = app.http.delete(app.url("/images/victim")).bearer_auth("wrong-token-0123456").send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.put("victim", CLEAR).await.0, 401);
    // A socket without the token cannot clear; with it (as the page sends it) it can.
    let mut anonymous = ws_connect(&app.ws_url("victim")).await;
    ws_send(&mut anonymous, CLEAR).await;
    let refusal = next_event(&mut anonymous).await;
    assert_eq!(refusal["event"]["event_type"], "error", "{refusal}");
    assert_eq!(app.data("victim").await[1][1], [5, 5, 5], "not cleared");
    let protocol = format!("draw64, draw64.token.{TOKEN}");
    let mut admin =
        ws_connect_from("127.0.0.1", app.addr, "/ws/images/victim", &[("sec-websocket-protocol", &protocol)])
            .await
            .unwrap();
    ws_send(&mut admin, CLEAR).await;
    assert_eq!(next_event(&mut admin).await["event"]["command"]["command_type"], "clear_canvas");
    let res = app.http.delete(app.url("/images/victim")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // The page is told, so it can hide what the visitor may not do.
    let page = app.http.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<meta name="draw64-admin" content="token">"#));
    app.stop().await;
    let open = spawn_app().await;
    let page = open.http.get(open.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<meta name="draw64-admin" content="open">"#));
    open.stop().await;
}

#[tokio::test]
async fn unparsable_requests_get_a_json_detail_and_websocket_violations_their_close_codes() {
    let app = spawn_app().await;
    for (request, status) in [
        (b"GARBAGE\r\n\r\n".to_vec(), "400"),
        // More headers than the parser takes (100), in a request small enough to be read whole.
        (
            [
                b"GET /images HTTP/1.1\r\nHost: x\r\n".to_vec(),
                (0..200).flat_map(|i| format!("X-{i}: a\r\n").into_bytes()).collect(),
                b"\r\n".to_vec(),
            ]
            .concat(),
            "431",
        ),
    ] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(&request).await;
        let (answer, _) = read_until_closed(&mut s, WAIT).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(detail_of(&answer)["detail"].is_string(), "{text}");
    }
    // A client's close is answered with a close (not a dropped connection).
    let mut ws = ws_connect(&app.ws_url("default")).await;
    ws.close(None).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(echoed, Some(Ok(Message::Close(_))) | None), "{echoed:?}");
    // Invalid UTF-8 in a text frame: 1007. An unmasked client frame: 1002.
    for (frame, code) in
        [(vec![0x81, 0x82, 1, 2, 3, 4, 0xff ^ 1, 0xfe ^ 2], 1007u16), (vec![0x81, 0x02, b'h', b'i'], 1002)]
    {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(
            b"GET /ws/images/default HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        s.write_all(&frame).await.unwrap();
        let (got, _) = read_until_closed(&mut s, WAIT).await;
        let after = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let frames = &got[after..];
        // The last frame is the close: 0x88, its length, then the code.
        let close = frames.windows(2).rposition(|w| w[0] == 0x88).expect("a close frame");
        let sent = u16::from_be_bytes([frames[close + 2], frames[close + 3]]);
        assert_eq!(sent, code);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_page_and_the_docs_carry_a_strict_content_security_policy() {
    let app = spawn_app().await;
    for path in ["/", "/docs/"] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        let script = csp.split(';').find(|d| d.trim().starts_with("script-src")).unwrap();
        assert_eq!(script.trim(), "script-src 'self'", "{path}: no inline script");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let res = app.http.get(app.url("/images")).send().await.unwrap();
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    app.stop().await;
}
