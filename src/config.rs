//! Command line and environment: one struct, and `--help` is the manual.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "draw64",
    version,
    about = "Draw64: a real-time collaborative 64x64 pixel canvas.",
    long_about = "Draw64: a real-time collaborative 64x64 pixel canvas.\n\n\
        Serves the web page, the REST API, WebSockets and Server-Sent Events on --listen, storing \
        images in embedded SQLite (default ./draw64.db). Every option can also be given as the \
        environment variable shown beside it; a flag wins over the variable.\n\n\
        Signals: SIGTERM or Ctrl-C starts a graceful drain (/readyz turns 503 at once, requests are \
        still served with `Connection: close` for --drain-grace, then WebSockets are closed with \
        1001, pending writes commit and the process exits 0); a second signal exits at once.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Config),
    /// Put load on a running Draw64 (or the bare baseline) and report throughput, latency
    /// percentiles, delivery and errors.
    #[command(subcommand)]
    Load(crate::load::Scenario),
}

/// What the command line asks for.
pub enum Action {
    Serve(Config),
    Load(crate::load::Scenario),
}

impl Cli {
    pub fn into_action(self) -> Action {
        match self.command {
            Some(Command::Serve(config)) => Action::Serve(config),
            Some(Command::Load(scenario)) => Action::Load(scenario),
            None => Action::Serve(self.serve),
        }
    }

    /// The server's configuration (tests start the server in-process with it).
    pub fn into_config(self) -> Config {
        match self.into_action() {
            Action::Serve(config) => config,
            Action::Load(_) => panic!("`draw64 load` has no server configuration"),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address and port to serve HTTP, WebSocket and SSE on; port 0 picks a free port.
    #[arg(long, env = "DRAW64_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Where images are stored: sqlite://PATH (embedded, one instance: locked by PATH-lock, so a
    /// second process on it refuses to start; created and migrated on start) or
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (shared by any number of instances, which
    /// then fan changes out to each other with LISTEN/NOTIFY).
    #[arg(long, env = "DRAW64_DATABASE", default_value = "sqlite://draw64.db")]
    pub database: crate::store::Database,

    /// Most active images `POST /images` may create (the limit is exact: N, not N+1).
    #[arg(long, env = "DRAW64_MAX_IMAGES", default_value_t = 10)]
    pub max_images: usize,

    /// Most images in all, counting those WebSocket connections create on the fly; a
    /// handshake that would create one more is refused with 409.
    #[arg(long, env = "DRAW64_MAX_TOTAL_IMAGES", default_value_t = 1000)]
    pub max_total_images: usize,

    /// After SIGTERM, how long to keep serving (with `Connection: close`, /readyz 503) so a load
    /// balancer moves traffic away before WebSockets are closed. E.g. 5s, 500ms, 0.
    #[arg(long, env = "DRAW64_DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// After the drain, how long to wait for open requests to finish before exiting anyway.
    #[arg(long, env = "DRAW64_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Interval of WebSocket pings; a client silent for two intervals is disconnected.
    #[arg(long, env = "DRAW64_WS_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

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

/// Accepts `5s`, `500ms`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = raw.strip_suffix('m') {
        (n, 60.0)
    } else {
        (raw, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{raw:?} is not a duration like 5s, 500ms or 2m"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{raw:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let cli = Cli::try_parse_from(["draw64", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(cli.into_config().listen.port(), 0);
        let cli = Cli::try_parse_from(["draw64", "serve", "--max-images", "3"]).unwrap();
        assert_eq!(cli.into_config().max_images, 3);
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
