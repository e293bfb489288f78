//! The harness, apart from the tests: the app in-process or as a real process, and the
//! clients that speak its protocols (`app`); a throwaway PostgreSQL (`pg`); an OTLP receiver
//! (`otlp`); a real Prometheus (`prometheus`).

pub mod app;
pub mod otlp;
pub mod pg;
pub mod prometheus;

pub use app::*;
