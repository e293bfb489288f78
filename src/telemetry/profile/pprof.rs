//! The pprof format (`profile.proto` of github.com/google/pprof), gzip-compressed as every pprof
//! reader expects. The messages are declared here with prost's derive (the fields that Draw64
//! fills, with the proto's own numbers): no `protoc`, no generated code to keep.

use std::io::Write as _;

use prost::Message;

use super::Stacks;

#[derive(Clone, PartialEq, Message)]
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
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// `stacks` as a pprof `Profile`: two values per sample (`samples/count`, `cpu/nanoseconds`),
/// a `thread` label on each.
pub fn profile(stacks: &Stacks) -> Profile {
    let (strings, at) = stacks.strings_with(["samples", "count", "cpu", "nanoseconds", "thread"]);
    let [samples, count, cpu, nanoseconds, thread] = at.map(|i| i as i64);
    let sample = stacks
        .samples
        .iter()
        .map(|s| Sample {
            location_id: s.locations.iter().map(|&l| l as u64).collect(),
            value: vec![s.count, s.count * stacks.period],
            label: vec![Label { key: thread, str: s.thread as i64 }],
        })
        .collect();
    let location = (1..stacks.locations.len())
        .map(|id| {
            let (function, line) = stacks.locations[id];
            Location { id: id as u64, line: vec![Line { function_id: function as u64, line }] }
        })
        .collect();
    let function = (1..stacks.functions.len())
        .map(|id| {
            let (name, system_name, filename) = stacks.functions[id];
            Function { id: id as u64, name: name as i64, system_name: system_name as i64, filename: filename as i64 }
        })
        .collect();
    let time_nanos = stacks.start.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    Profile {
        sample_type: vec![ValueType { r#type: samples, unit: count }, ValueType { r#type: cpu, unit: nanoseconds }],
        sample,
        location,
        function,
        string_table: strings,
        time_nanos,
        duration_nanos: stacks.duration.as_nanos() as i64,
        period_type: Some(ValueType { r#type: cpu, unit: nanoseconds }),
        period: stacks.period,
    }
}

/// The gzip-compressed protobuf that `go tool pprof` reads.
pub fn encode(stacks: &Stacks) -> Vec<u8> {
    let raw = profile(stacks).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 3), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    gz.write_all(&raw).and_then(|()| gz.finish()).unwrap_or_default()
}
