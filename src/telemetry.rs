//! Logs (and, later, traces and metrics). `init` is called once by `main`; tests use their
//! own subscriber or none.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{Config, LogFormat};

/// Flushes telemetry when dropped, after the server has stopped.
pub struct Guard(());

#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {0:?}: {1}")]
pub struct TelemetryError(String, String);

pub fn init(config: &Config) -> Result<Guard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| TelemetryError(config.log.clone(), e.to_string()))?;
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).init();
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).init();
    }
    Ok(Guard(()))
}
