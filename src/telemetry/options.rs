//! The flags that shape logs and the metrics exposition (the rest is `OTEL_*`, in `settings`).

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

#[derive(Args, Debug, Clone)]
pub struct Options {
    /// Log format on stderr: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, env = "DRAW64_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `draw64=debug,info`. When
    /// unset, RUST_LOG is used; when that is unset too, info for Draw64 and warn for libraries.
    #[arg(long, env = "DRAW64_LOG")]
    pub log: Option<String>,

    /// Where the Prometheus exposition (`/metrics`, plus `/healthz` and `/readyz`) listens when
    /// OTEL_METRICS_EXPORTER includes prometheus (the default). Port 0 picks a free port. When
    /// unset: OTEL_EXPORTER_PROMETHEUS_HOST and _PORT, else 127.0.0.1:9464.
    #[arg(long, env = "DRAW64_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}
