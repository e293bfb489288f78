//! Real `draw64` processes sharing one database: a trace across two of them, and the users of
//! one killed.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{pg, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_shows_the_write_on_one_instance_and_the_fan_out_on_the_other() {
    use crate::{
        support::otlp::Receiver,
        telemetry::{TRACE_ID, hex, put_traced},
    };
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "draw64-cluster"),
    ];
    let a = Server::start_env(&db, "127.0.0.1:0", &["--drain-grace", "0"], &env, None);
    let b = Server::start_env(&db, "127.0.0.1:0", &["--drain-grace", "0"], &env, None);
    let http = reqwest::Client::new();
    assert_eq!(http.post(a.url("/images/traced")).send().await.unwrap().status(), 201);
    let mut on_b = ws_connect(&format!("ws://{}/ws/images/traced", b.addr)).await;
    put_traced(&http, &a, "traced").await;
    next_event(&mut on_b).await;

    let deadline = Instant::now() + WAIT;
    loop {
        {
            let got = receiver.sink.0.lock().unwrap();
            let put = got.spans.iter().find(|s| s.name == "PUT /images/{image_id}" && hex(&s.trace_id) == TRACE_ID);
            let fan_out = got.spans.iter().find(|s| s.name == "fan-out" && hex(&s.trace_id) == TRACE_ID);
            if let (Some(put), Some(fan_out)) = (put, fan_out) {
                // Only B has a subscriber, so this fan-out ran on B, under A's request span.
                assert_eq!(fan_out.parent_span_id, put.span_id, "the fan-out on B is a child of the PUT on A");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no fan-out span on B in the PUT's trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_killed_instance_leave_the_total() {
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let a = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    let b = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    let http = reqwest::Client::new();
    let _user = ws_connect(&format!("ws://{}/ws/images/img", a.addr)).await;
    let users = |v: Value| v["user_count"].as_u64().unwrap();
    let deadline = Instant::now() + WAIT;
    while users(http.get(b.url("/statistics")).send().await.unwrap().json().await.unwrap()) != 1 {
        assert!(Instant::now() < deadline, "B never counted A's user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed: no goodbye. B drops A's users once A's heartbeats stop for 10 s.
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    loop {
        if users(http.get(b.url("/statistics")).send().await.unwrap().json().await.unwrap()) == 0 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "A's user is still counted 20 s after A died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("FIGURES a killed instance's users left the total after {:.1} s", killed.elapsed().as_secs_f64());
}
