//! Draw64: a real-time collaborative 64×64 pixel canvas.
//!
//! # Layout
//! Dependencies point one way (`a → b`: `a` uses `b`), with no circle; the binary (`main.rs`,
//! `cli.rs`) sits on top and also dispatches `draw64 load` to the `draw64-load` crate.
//!
//! ```text
//! app → http → service → store → domain
//!   │     │       ↑        ↑
//!   │     └────→ bus ──────┘        bus → service (only `Replica`), store (`store::postgres`)
//!   └→ config → store, telemetry, limits, http::client, http::caller (their flag types)
//!                                   telemetry, lifecycle, domain, drill: use none of the others
//!                                   (limits uses only telemetry's metrics)
//! ```
//!
//! - [`domain`]: pure types and rules (ids, canvas, commands, events, PNG); no I/O.
//! - [`store`]: persistence behind the [`store::Store`] trait: embedded SQLite, or PostgreSQL
//!   (whose schema, change log and notices only `store::postgres` knows); `Instrumented` adds
//!   the database spans and metrics; [`store::Database`] is `--database`, parsed once.
//! - [`service`]: the use cases over the in-memory state (a cache of the store, private to
//!   `service::state`), the single group-committing writer, the fan-out of encoded events, and
//!   `Replica`, the one door through which other instances' commits come in.
//! - [`bus`]: cross-instance fan-out behind the [`bus::Bus`] trait (PostgreSQL LISTEN/NOTIFY).
//! - [`http`]: axum routers built from one route table (REST, WebSocket, SSE, health, page,
//!   docs, metrics port), the observing middleware and the one error → response mapping.
//! - [`limits`]: the public port's limits (flags, token buckets, seats per client address) and
//!   the one place where a refusal is counted and logged; no I/O.
//! - [`faults`]: fault injection (flagd flag file, admin switches) and its hooks, which
//!   `store::Instrumented` (commits) and `http` (readiness, the WebSocket fan-out, the
//!   observing middleware, PNGs) call; uses only telemetry.
//! - [`lifecycle`]: serving → draining → closing, and the shutdown signals; [`drill`]: panics
//!   on purpose, armed from the metrics port, to prove that they are caught and recorded.
//! - [`app`]: builds all of the above from a [`config::Config`] and runs it.
//! - [`config`]: the server's flags and environment; [`telemetry`]: logs, traces and metrics
//!   (providers, exporters, host metrics, the metric registry).

pub mod app;
pub mod bus;
pub mod config;
pub mod domain;
pub mod drill;
pub mod faults;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod service;
pub mod store;
pub mod telemetry;

pub use app::App;
pub use config::Config;

/// The build's version: `DRAW64_VERSION` when the build set it (the release pipeline sets it
/// from the Git tag), else the crate's. It is `service.version` and `draw64 --version`.
pub const VERSION: &str = match option_env!("DRAW64_VERSION") {
    Some(version) if !version.is_empty() => version,
    _ => env!("CARGO_PKG_VERSION"),
};
