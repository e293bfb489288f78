//! Continuous profiling: the sampler runs all the time and each period's profile is pushed as
//! the OpenTelemetry profiles signal (OTLP `v1development`, gRPC or HTTP/protobuf) with the
//! same resource as the traces, metrics and logs, so a backend can line a profile up with the
//! traces of the same instance and minute. A receiver that is down costs a bounded buffer
//! (`BUFFER` periods, the oldest dropped first), one warning per outage and a count in
//! `draw64.errors{draw64.error.source="exporter"}`.

use std::{
    collections::VecDeque,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, UNIX_EPOCH},
};

use opentelemetry::{Array, Value};
use opentelemetry_proto::tonic::{
    collector::profiles::v1development::{
        ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary, ResourceProfiles,
        Sample, ScopeProfiles, Stack, ValueType,
    },
    resource::v1::Resource,
};
use prost::Message as _;

use super::{ProfileError, Session, Stacks};
use crate::telemetry::{
    errors::{self, Source},
    settings::{Profiles, Protocol},
};

/// Unsent profiles kept while the receiver is unreachable: a minute at the default period.
const BUFFER: usize = 6;

/// The running profiler thread; stops (pushing its last period) on [`Continuous::stop`].
pub struct Continuous {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Continuous {
    /// Takes the sampler and starts profiling; must be called inside the Tokio runtime (the
    /// pushes run on it). From then on, on-demand profiles are refused (409).
    pub fn start(settings: Profiles, resource: &opentelemetry_sdk::Resource) -> Result<Self, ProfileError> {
        let session = super::start()?;
        let resource = convert(resource);
        let runtime = tokio::runtime::Handle::current();
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("draw64-profiler".into())
            .spawn(move || run(&settings, session, resource, &runtime, &stopped))
            .map_err(|e| ProfileError::Thread(e.to_string()))?;
        tracing::info!("continuous profiling on");
        Ok(Self { stop, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    settings: &Profiles,
    mut session: Session,
    resource: Resource,
    runtime: &tokio::runtime::Handle,
    stopped: &mpsc::Receiver<()>,
) {
    // The clients' timers and connections live on the runtime.
    let _runtime = runtime.enter();
    let sender = Sender::new(settings);
    let mut unsent: VecDeque<Vec<u8>> = VecDeque::with_capacity(BUFFER);
    let mut failing = false;
    loop {
        let last = !matches!(stopped.recv_timeout(settings.interval), Err(mpsc::RecvTimeoutError::Timeout));
        match session.next_period() {
            Ok(report) => {
                if unsent.len() == BUFFER {
                    unsent.pop_front();
                    errors::count(Source::Exporter, "profiles_dropped");
                }
                unsent.push_back(request(&Stacks::from_report(&report), &resource).encode_to_vec());
            }
            Err(e) => {
                tracing::error!(error = %e, "the continuous profiler stopped");
                return;
            }
        }
        while let Some(body) = unsent.front() {
            match runtime.block_on(sender.send(body.clone())) {
                Ok(()) => {
                    unsent.pop_front();
                    if std::mem::take(&mut failing) {
                        tracing::info!(endpoint = %settings.endpoint, "profiles are received again");
                    }
                }
                Err(why) => {
                    errors::count(Source::Exporter, "profiles_export_failed");
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(endpoint = %settings.endpoint, error = %why, kept = unsent.len(), "cannot push profiles; keeping the last few");
                    }
                    break;
                }
            }
        }
        if last {
            return;
        }
    }
}

enum Sender {
    Grpc(ProfilesServiceClient<tonic::transport::Channel>, Duration),
    Http(opentelemetry_http::hyper::HyperClient, String),
    Invalid(String),
}

impl Sender {
    fn new(settings: &Profiles) -> Self {
        match settings.protocol {
            Protocol::Grpc => match tonic::transport::Endpoint::from_shared(settings.endpoint.clone()) {
                Ok(e) => Sender::Grpc(ProfilesServiceClient::new(e.connect_lazy()), settings.timeout),
                Err(e) => Sender::Invalid(e.to_string()),
            },
            Protocol::HttpProtobuf => Sender::Http(
                opentelemetry_http::hyper::HyperClient::with_default_connector(settings.timeout, None),
                settings.endpoint.clone(),
            ),
        }
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        match self {
            Sender::Grpc(client, timeout) => {
                let request = ExportProfilesServiceRequest::decode(body.as_slice()).map_err(|e| e.to_string())?;
                let mut client = client.clone();
                match tokio::time::timeout(*timeout, client.export(request)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
            Sender::Http(client, endpoint) => {
                use opentelemetry_http::HttpClient as _;
                let request = http::Request::post(endpoint.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(bytes::Bytes::from(body))
                    .map_err(|e| e.to_string())?;
                let response = client.send_bytes(request).await.map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the receiver answered {}", response.status()))
                }
            }
            Sender::Invalid(why) => Err(why.clone()),
        }
    }
}

/// One period's profile as an export request: the dictionary holds the tables (each with its
/// zero entry first), the profile the samples.
pub fn request(stacks: &Stacks, resource: &Resource) -> ExportProfilesServiceRequest {
    let (strings, at) = stacks.strings_with(["samples", "count", "cpu", "nanoseconds", "thread.name"]);
    let [samples, count, cpu, nanoseconds, thread_key] = at.map(|i| i as i32);
    // Attribute 0 is the zero entry; thread names follow, one entry each.
    let mut attribute_table = vec![KeyValueAndUnit::default()];
    let mut thread_attribute = std::collections::HashMap::new();
    let mut stack_table = vec![Stack::default()];
    let mut sample = Vec::with_capacity(stacks.samples.len());
    for s in &stacks.samples {
        let attribute = *thread_attribute.entry(s.thread).or_insert_with(|| {
            attribute_table.push(KeyValueAndUnit {
                key_strindex: thread_key,
                value: Some(string(stacks.strings[s.thread].clone())),
                unit_strindex: 0,
            });
            attribute_table.len() as i32 - 1
        });
        stack_table.push(Stack { location_indices: s.locations.iter().map(|&l| l as i32).collect() });
        sample.push(Sample {
            stack_index: stack_table.len() as i32 - 1,
            attribute_indices: vec![attribute],
            link_index: 0,
            values: vec![s.count],
            timestamps_unix_nano: Vec::new(),
        });
    }
    let location_table = std::iter::once(Location::default())
        .chain(stacks.locations[1..].iter().map(|&(function, line)| Location {
            mapping_index: 0,
            address: 0,
            lines: vec![Line { function_index: function as i32, line, column: 0 }],
            attribute_indices: Vec::new(),
        }))
        .collect();
    let function_table = std::iter::once(Function::default())
        .chain(stacks.functions[1..].iter().map(|&(name, system_name, filename)| Function {
            name_strindex: name as i32,
            system_name_strindex: system_name as i32,
            filename_strindex: filename as i32,
            start_line: 0,
        }))
        .collect();
    let profile = Profile {
        sample_type: Some(ValueType { type_strindex: samples, unit_strindex: count }),
        samples: sample,
        time_unix_nano: stacks.start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        duration_nano: stacks.duration.as_nanos() as u64,
        period_type: Some(ValueType { type_strindex: cpu, unit_strindex: nanoseconds }),
        period: stacks.period,
        profile_id: fastrand::u128(..).to_be_bytes().to_vec(),
        ..Default::default()
    };
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(resource.clone()),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "draw64".into(),
                    version: crate::VERSION.into(),
                    ..Default::default()
                }),
                profiles: vec![profile],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(ProfilesDictionary {
            mapping_table: vec![Mapping::default()],
            location_table,
            function_table,
            link_table: vec![Link::default()],
            string_table: strings,
            attribute_table,
            stack_table,
        }),
    }
}

fn string(s: String) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s)) }
}

/// The SDK's resource in the protobuf's shape: the same attributes as every other signal.
fn convert(resource: &opentelemetry_sdk::Resource) -> Resource {
    let attributes = resource
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(match v {
                    Value::Bool(b) => any_value::Value::BoolValue(*b),
                    Value::I64(i) => any_value::Value::IntValue(*i),
                    Value::F64(f) => any_value::Value::DoubleValue(*f),
                    Value::String(s) => any_value::Value::StringValue(s.to_string()),
                    Value::Array(Array::String(a)) => {
                        any_value::Value::StringValue(a.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))
                    }
                    other => any_value::Value::StringValue(other.to_string()),
                }),
            }),
        })
        .collect();
    Resource { attributes, ..Default::default() }
}
