//! The harness, apart from the tests: the app in-process or as a real process, and the
//! clients that speak its protocols (`app`); a throwaway PostgreSQL (`pg`); an OTLP receiver
//! (`otlp`); a real Prometheus (`prometheus`); `scripts/cluster` as a newcomer runs it (`script`).

pub mod app;
pub mod otlp;
pub mod pg;
pub mod prometheus;
pub mod script;

pub use app::*;
