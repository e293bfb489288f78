//! Draw64: a real-time collaborative 64×64 pixel canvas.
//!
//! # Layout
//! Dependencies point inwards only: `main` → `app` → `http` → `service` → `store` → `domain`.
//!
//! - [`domain`]: pure types and rules (ids, canvas, commands, events, PNG); no I/O.
//! - [`store`]: persistence behind the [`store::Store`] trait; embedded SQLite.
//! - [`service`]: the use cases; the in-memory canvases (a cache of the store), the single
//!   group-committing writer, and the fan-out of encoded events to subscribers.
//! - [`http`]: axum routers (REST, WebSocket, SSE, health, page, docs), middleware and the one
//!   error → response mapping.
//! - [`lifecycle`]: serving → draining → closing, and the shutdown signals.
//! - [`app`]: builds all of the above from a [`config::Config`] and runs it.
//! - [`config`], [`telemetry`]: flags and environment; logs.

pub mod app;
pub mod bus;
pub mod config;
pub mod domain;
pub mod http;
pub mod lifecycle;
pub mod service;
pub mod store;
pub mod telemetry;

pub use app::App;
pub use config::Config;
