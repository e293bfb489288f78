//! Profiling with real parts: the on-demand endpoint's answer decodes as a pprof `Profile` (by
//! this file's own reading of `profile.proto`) naming Draw64's functions while load runs, the
//! flame graph is an SVG, the limits are answered with 4xx/409; the continuous mode's profiles
//! decode at the in-test OTLP receiver with the service's resource, over gRPC and HTTP.

use std::{
    io::Read as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

use crate::support::{otlp::Receiver, *};

/// The pprof messages, as far as these tests read them (field numbers from profile.proto).
mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }
}

/// PUTs from 8 clients until `stop` (at most 90 s, past `FIRST_PROFILE`): CPU for the profiler to see.
fn load(server: &Server, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = server.url("/images/hot");
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        http.post(&url).send().await.unwrap();
        let until = Instant::now() + Duration::from_secs(90);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let body = draw(&[[i, (n % 64) as i64, 1, 2, 3]]);
                        let res = http.put(&url).header("content-type", "application/json").body(body).send().await;
                        assert_eq!(res.unwrap().status(), 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    })
}

fn metrics_url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.metrics.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_profile_is_pprof_naming_draw64_s_functions_under_load_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", ONE_ADDRESS_LOAD);
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let puts = load(&server, stop.clone());

    let taking = tokio::spawn({
        let url = metrics_url(&server, "/debug/pprof/profile?seconds=3");
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    });
    // Once it samples (its log line says so), a second profile is refused at once.
    let deadline = Instant::now() + WAIT;
    while !server.logs.lock().unwrap().iter().any(|l| l.contains("taking a CPU profile")) {
        assert!(Instant::now() < deadline, "the first profile never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = http.get(metrics_url(&server, "/debug/pprof/profile?seconds=1")).send().await.unwrap();
    assert_eq!(res.status(), 409);
    let detail: serde_json::Value = res.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("already"), "{detail}");
    let res = taking.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let gz = res.bytes().await.unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip-compressed");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
    let profile = pprof::Profile::decode(raw.as_slice()).expect("a pprof Profile");
    let name = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(profile.string_table[0], "");
    assert_eq!(profile.period, 10_000_000, "100 Hz");
    assert!(profile.duration_nanos >= 2_900_000_000, "sampled for the seconds asked: {}", profile.duration_nanos);
    assert_eq!(
        profile.sample_type.iter().map(|t| (name(t.r#type), name(t.unit))).collect::<Vec<_>>(),
        [("samples", "count"), ("cpu", "nanoseconds")]
    );
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(samples >= 10, "{samples} samples under load");
    let function_name = |id: u64| name(profile.function.iter().find(|f| f.id == id).expect("a known function").name);
    let location = |id: u64| profile.location.iter().find(|l| l.id == id).expect("a known location");
    let ours = profile
        .sample
        .iter()
        .flat_map(|s| &s.location_id)
        .flat_map(|&l| &location(l).line)
        .map(|line| function_name(line.function_id))
        .filter(|f| f.starts_with("draw64::"))
        .count();
    assert!(ours > 0, "no draw64:: function in the samples");

    let res = http.get(metrics_url(&server, "/debug/pprof/profile?seconds=1&format=svg")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    let svg = res.text().await.unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
    stop.store(true, Ordering::Relaxed);
    assert!(puts.await.unwrap() > 0);

    for (query, want) in [
        ("seconds=0", "expected 1 to 60"),
        ("seconds=61", "expected 1 to 60"),
        ("seconds=abc", "invalid query"),
        ("format=png", "expected pprof or svg"),
        ("sec=1", "unknown field"),
    ] {
        let res = http.get(metrics_url(&server, &format!("/debug/pprof/profile?{query}"))).send().await.unwrap();
        assert_eq!(res.status(), 422, "{query}");
        let detail: serde_json::Value = res.json().await.unwrap();
        assert!(detail["detail"].as_str().unwrap().contains(want), "{query}: {detail}");
    }
    // Never on the public port; and fire drills stay off unless asked for.
    assert_eq!(http.get(server.url("/debug/pprof/profile?seconds=1")).send().await.unwrap().status(), 404);
    let res = http.post(metrics_url(&server, "/debug/panic?in=request")).send().await.unwrap();
    assert_eq!(res.status(), 403);
}

/// How long the first pushed profile may take. Before it, the profiler reads the binary's symbol
/// and line tables: 2.5 s of CPU for this debug build on an idle machine (1.3 s in release),
/// several times that while other tests load the same two cores (a fresh-clone CI run waited
/// past 10 s). A bound for a hung exporter, not a figure for how fast it is.
const FIRST_PROFILE: Duration = Duration::from_secs(60);

async fn continuous(protocol: &str) {
    let receiver = Receiver::start().await;
    let endpoint = match protocol {
        "grpc" => format!("http://{}", receiver.grpc),
        _ => format!("http://{}", receiver.http),
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "none"),
        ("OTEL_PROFILES_EXPORTER", "otlp"),
        ("OTEL_PROFILES_EXPORT_INTERVAL", "1000"),
        ("OTEL_SERVICE_NAME", "draw64-profiled"),
    ];
    let flags = [&["--drain-grace", "0"], ONE_ADDRESS_LOAD].concat();
    let server = Server::start_env(&test_db(&dir), "127.0.0.1:0", &flags, &env, None);
    let http = reqwest::Client::new();
    let instance = http.get(server.url("/healthz")).send().await.unwrap().headers()["x-served-by"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let puts = load(&server, stop.clone());
    // The continuous profiler holds the sampler: an on-demand profile is refused.
    let res = http.get(metrics_url(&server, "/debug/pprof/profile?seconds=1")).send().await.unwrap();
    assert_eq!(res.status(), 409, "{protocol}");

    let deadline = Instant::now() + FIRST_PROFILE;
    let request = loop {
        let found = {
            let got = receiver.sink.0.lock().unwrap();
            got.profiles
                .iter()
                .find(|r| {
                    let d = r.dictionary.as_ref().unwrap();
                    d.string_table.iter().any(|s| s.starts_with("draw64::"))
                })
                .cloned()
        };
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "{protocol}: no profile naming draw64:: functions arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    puts.await.unwrap();
    let resource = request.resource_profiles[0].resource.as_ref().unwrap();
    let attribute = |key: &str| {
        resource.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some(s.clone()),
            _ => None,
        })
    };
    assert_eq!(attribute("service.name").as_deref(), Some("draw64-profiled"));
    assert_eq!(attribute("service.instance.id").as_deref(), Some(instance.to_str().unwrap()), "the same instance");
    let d = request.dictionary.as_ref().unwrap();
    assert_eq!(d.string_table[0], "");
    for table_starts_with_zero in [
        d.location_table[0] == Default::default(),
        d.function_table[0] == Default::default(),
        d.stack_table[0] == Default::default(),
        d.mapping_table[0] == Default::default(),
    ] {
        assert!(table_starts_with_zero);
    }
    let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
    assert!(!profile.samples.is_empty());
    assert_eq!(profile.period, 10_000_000);
    for s in &profile.samples {
        let stack = &d.stack_table[s.stack_index as usize];
        assert!(stack.location_indices.iter().all(|&l| l > 0 && (l as usize) < d.location_table.len()));
    }
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0), "{protocol}: stops cleanly, pushing its last period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_profiles_reach_an_otlp_receiver_over_grpc_with_the_service_s_resource() {
    continuous("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_profiles_reach_an_otlp_receiver_over_http_with_the_service_s_resource() {
    continuous("http/protobuf").await;
}
