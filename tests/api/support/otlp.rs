//! A real OTLP receiver for tests: gRPC (tonic) and HTTP/protobuf (axum) on 127.0.0.1 port 0,
//! decoding with the OpenTelemetry protobuf definitions and keeping what it receives.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        profiles::v1development::{
            ExportProfilesServiceRequest, ExportProfilesServiceResponse,
            profiles_service_server::{ProfilesService, ProfilesServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    logs::v1::LogRecord,
    trace::v1::Span,
};
use prost::Message;

#[derive(Default)]
pub struct Received {
    /// Benchmarks set this: count spans by name instead of keeping them (keeping costs memory
    /// and CPU on the machine being measured).
    pub count_only: bool,
    pub spans_by_name: std::collections::BTreeMap<String, u64>,
    pub spans: Vec<Span>,
    pub logs: Vec<LogRecord>,
    pub log_count: usize,
    pub metric_requests: usize,
    /// `service.name` of each resource seen.
    pub services: Vec<String>,
    /// Profiles export requests, whole (resource, dictionary and profiles).
    pub profiles: Vec<ExportProfilesServiceRequest>,
}

#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Received>>);

impl Sink {
    fn resource_name(r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> Option<String> {
        r?.attributes.iter().find(|kv| kv.key == "service.name").map(|kv| format!("{:?}", kv.value))
    }

    fn traces(&self, req: ExportTraceServiceRequest) {
        let mut r = self.0.lock().unwrap();
        for rs in req.resource_spans {
            r.services.extend(Self::resource_name(rs.resource.as_ref()));
            for ss in rs.scope_spans {
                if r.count_only {
                    for span in &ss.spans {
                        *r.spans_by_name.entry(span.name.clone()).or_default() += 1;
                    }
                } else {
                    r.spans.extend(ss.spans);
                }
            }
        }
    }

    fn logs(&self, req: ExportLogsServiceRequest) {
        let mut r = self.0.lock().unwrap();
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                if r.count_only {
                    r.log_count += sl.log_records.len();
                } else {
                    r.logs.extend(sl.log_records);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metric_requests += 1;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl ProfilesService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().profiles.push(request.into_inner());
        Ok(tonic::Response::new(ExportProfilesServiceResponse::default()))
    }
}

pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub sink: Sink,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let sink = Sink::default();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(LogsServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()))
            .add_service(ProfilesServiceServer::new(sink.clone()));
        tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc)));

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", post(http_traces))
            .route("/v1/logs", post(http_logs))
            .route("/v1/metrics", post(http_metrics))
            .route("/v1development/profiles", post(http_profiles))
            .with_state(sink.clone());
        tokio::spawn(async move { axum::serve(http, app).await });
        Receiver { grpc: grpc_addr, http: http_addr, sink }
    }
}

fn protobuf(body: Vec<u8>) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    ([("content-type", "application/x-protobuf")], body)
}

async fn http_traces(State(sink): State<Sink>, body: Bytes) -> impl axum::response::IntoResponse {
    sink.traces(ExportTraceServiceRequest::decode(body).expect("an OTLP trace request"));
    protobuf(ExportTraceServiceResponse::default().encode_to_vec())
}

async fn http_logs(State(sink): State<Sink>, body: Bytes) -> impl axum::response::IntoResponse {
    sink.logs(ExportLogsServiceRequest::decode(body).expect("an OTLP log request"));
    protobuf(ExportLogsServiceResponse::default().encode_to_vec())
}

async fn http_metrics(State(sink): State<Sink>, body: Bytes) -> impl axum::response::IntoResponse {
    ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    sink.0.lock().unwrap().metric_requests += 1;
    protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
}

async fn http_profiles(State(sink): State<Sink>, body: Bytes) -> impl axum::response::IntoResponse {
    let request = ExportProfilesServiceRequest::decode(body).expect("an OTLP profiles request");
    sink.0.lock().unwrap().profiles.push(request);
    protobuf(ExportProfilesServiceResponse::default().encode_to_vec())
}
