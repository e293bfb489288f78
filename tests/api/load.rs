//! `draw64 load` against a real server: each scenario runs briefly and reports what happened
//! (counts and delivery, never a timing target: those live in bench/suite).

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn load(server: &Server, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_draw64"))
        .arg("load")
        .args(args)
        .args(["--url", &server.url(""), "--pid", &server.pid().to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "draw64 load {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn every_scenario_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [&["--drain-grace", "0", "--max-images", "50"], ONE_ADDRESS_LOAD].concat();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &flags);

    // Bounded by count, not time: the duration is only a ceiling.
    let put = load(&server, &["put", "--duration", "120s", "--connections", "4", "--requests", "500"]);
    assert_eq!(put["scenario"], "put");
    assert_eq!(put["operations"], 500, "{put}");
    assert_eq!(put["errors"], serde_json::json!({}));
    assert!(put["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(put["server"]["rss_after_bytes"].as_u64().unwrap() > 0);

    let fanout = load(
        &server,
        &["fanout", "--duration", "1s", "--subscribers", "5", "--rate", "200", "--writers", "2", "--image", "fan"],
    );
    let d = &fanout["delivery"];
    assert_eq!(fanout["operations"], 200, "{fanout}");
    assert_eq!(d["expected"], 1000);
    assert_eq!(d["received"], 1000, "{fanout}");
    assert_eq!((d["missing"].as_u64(), d["duplicates"].as_u64(), d["reordered"].as_u64()), (Some(0), Some(0), Some(0)));

    let idle = load(&server, &["idle", "--duration", "1s", "--connections", "50", "--image", "idle"]);
    assert_eq!(idle["operations"], 50, "every socket served: {idle}");
    assert!(idle["bytes_per_socket"].as_f64().is_some(), "{idle}");

    // 100 users: enough reads racing writes that, on PostgreSQL, a read's catch-up used to take a
    // change committed between its two queries for a pruned log and close every socket (1013).
    let users = load(&server, &["users", "--duration", "3s", "--users", "100", "--image", "u"]);
    assert!(users["operations"].as_u64().unwrap() > 0, "{users}");
    assert_eq!(users["errors"], serde_json::json!({}), "{users}");
    assert!(users["figures"]["reads"].as_f64().unwrap() > 0.0, "{users}");

    // A bad target is a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_draw64"))
        .args(["load", "put", "--url", "ftp://nowhere", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http:// URLs are supported"));
}

/// Fan-out subscribers only listen, so they must answer the server's pings: with a 1 s ping
/// interval the server drops a silent socket after 3 s, and this run lasts 5.
#[test]
fn listening_subscribers_answer_pings_and_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [&["--drain-grace", "0", "--ws-ping-interval", "1s"], ONE_ADDRESS_LOAD].concat();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &flags);
    let fanout = load(
        &server,
        &["fanout", "--duration", "5s", "--subscribers", "5", "--rate", "50", "--writers", "1", "--image", "p"],
    );
    let d = &fanout["delivery"];
    assert_eq!(d["closed_subscribers"], 0, "{fanout}");
    assert_eq!(d["received"], d["expected"], "{fanout}");
    assert_eq!(d["expected"], 1250, "{fanout}");
}
