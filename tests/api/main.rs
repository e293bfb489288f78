//! Black-box tests: the real server on 127.0.0.1, port 0, a fresh database each, spoken to over
//! real sockets. Run with `cargo test`.

mod alerts;
mod browser;
mod cluster;
mod concurrency;
mod deploy;
mod errors;
mod faults;
mod lifecycle;
mod load;
mod parsers;
mod profiling;
mod public;
mod rest;
mod rum;
mod schema;
mod sse;
mod storage;
mod support;
mod telemetry;
mod websocket;
