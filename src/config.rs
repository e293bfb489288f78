//! The server's configuration, from flags and environment: one struct, and `--help` is the
//! manual. (The command line around it, with `draw64 load`, is the binary's: `src/cli.rs`.)

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser};

pub use crate::limits::parse_duration;

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

    /// How an SQLite database is checked at start, before it serves: quick (every page and
    /// record well-formed), full (indexes too) or none. A damaged file is refused with the
    /// reason; the write-ahead log is inspected in every case.
    #[arg(long, env = "DRAW64_DATABASE_CHECK", value_enum, default_value_t = crate::store::Check::Quick)]
    pub database_check: crate::store::Check,

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

    /// Proxies (load balancers) whose X-Forwarded-For names the client, for the limits that
    /// count per client: addresses or ranges, comma-separated, e.g. 10.0.0.0/8,127.0.0.1.
    /// None by default: behind a balancer, list it, or every client counts as the balancer.
    #[arg(long, env = "DRAW64_TRUSTED_PROXIES", default_value = "", hide_default_value = true)]
    pub trusted_proxies: crate::http::client::TrustedProxies,

    /// Web origins whose pages may change images (WebSocket handshakes, POST, PUT, DELETE,
    /// reports), comma-separated, e.g. https://draw.example. Empty (the default): the server's
    /// own origin only. `*`: any — unsafe, as any site could then draw, clear and delete with
    /// its visitors' browsers. Requests without `Origin` (scripts, the original's clients) pass.
    #[arg(long, env = "DRAW64_ALLOWED_ORIGINS", default_value = "", hide_default_value = true)]
    pub allowed_origins: crate::http::caller::AllowedOrigins,

    /// When set, deleting images and clearing canvases need it (`Authorization: Bearer TOKEN`;
    /// the page takes it from its address, `/#admin=TOKEN`). Unset: anyone may, as in the
    /// original. At least 16 of A-Z a-z 0-9 - . _ ~; prefer the variable (flags show in `ps`).
    #[arg(long, env = "DRAW64_ADMIN_TOKEN", default_value = "", hide_default_value = true, hide_env_values = true)]
    pub admin_token: crate::http::caller::AdminToken,

    /// Let the metrics port arm fire drills (`POST /debug/panic?in=request|writer`): a panic
    /// on purpose, to check that panics are caught, recorded and alerted on. Off by default.
    #[arg(long, env = "DRAW64_FIRE_DRILLS")]
    pub fire_drills: bool,

    /// Fault flags: a flagd flag file (the OpenTelemetry Demo's format), read at start and
    /// re-read when it changes. Known flags: slowCommits, failingCommits, failingReadiness,
    /// slowFanout, droppedFanout, memoryLeak, cpuBurn, slowPng (docs/operations.md). Also
    /// switchable over PUT /admin/faults/{flag} with the admin token. None by default.
    #[arg(long, env = "DRAW64_FAULT_FLAGS", value_name = "FILE")]
    pub fault_flags: Option<std::path::PathBuf>,

    /// The public port's limits.
    #[command(flatten)]
    pub limits: crate::limits::Options,

    /// Logs and metrics exposition (`--log-format`, `--log`, `--metrics-listen`).
    #[command(flatten)]
    pub telemetry: crate::telemetry::Options,
}

impl Config {
    /// The configuration a `draw64 [serve]` command line gives, e.g. for an in-process server.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        #[command(name = "draw64")]
        struct Serve {
            #[command(flatten)]
            config: Config,
        }
        Serve::try_parse_from(args).map(|serve| serve.config)
    }
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
    fn flags_and_defaults() {
        let config = Config::try_from_args(["draw64", "--listen", "127.0.0.1:0", "--max-images", "3"]).unwrap();
        assert_eq!((config.listen.port(), config.max_images, config.max_total_images), (0, 3, 1000));
        let err = Config::try_from_args(["draw64", "--database", "mysql://x"]).err().unwrap();
        assert!(err.to_string().contains("sqlite://PATH"), "{err}");
    }
}
