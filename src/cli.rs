//! The command line: `draw64 [serve] [FLAGS]` runs the server, `draw64 load SCENARIO` the load
//! tool and `draw64 release VERB` the release controller (crates of their own, `draw64-load`
//! and `draw64-release`, which the server library never links).

use clap::{Parser, Subcommand};
use draw64::Config;

/// The OpenTelemetry variables Draw64 reads (strictly: an invalid value stops the start).
const TELEMETRY_VARIABLES: &str = "\
Telemetry (OpenTelemetry variables; docs/observability.md has every detail):
  OTEL_SERVICE_NAME                  service.name (draw64)
  OTEL_RESOURCE_ATTRIBUTES           more resource attributes, e.g. service.instance.id=pod-1
  OTEL_TRACES_EXPORTER               otlp, console or none (otlp when an endpoint is set)
  OTEL_METRICS_EXPORTER              prometheus, otlp, console or none, comma-separated (prometheus)
  OTEL_LOGS_EXPORTER                 otlp, console or none (otlp when an endpoint is set)
  OTEL_EXPORTER_OTLP_ENDPOINT        the collector, e.g. http://localhost:4317
  OTEL_EXPORTER_OTLP_PROTOCOL        grpc or http/protobuf (grpc)
  OTEL_TRACES_SAMPLER[_ARG]          always_on, parentbased_traceidratio with a ratio, ...
  OTEL_METRIC_EXPORT_INTERVAL        milliseconds between OTLP metric pushes (60000)
  OTEL_BSP_*, OTEL_BLRP_*            span and log batching (as the specification defines them)
Continuous profiling (Draw64's own, in the same style, while the specification has none):
  OTEL_PROFILES_EXPORTER             otlp or none (none): push a CPU profile every period
  OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT, _PROTOCOL, _TIMEOUT   default: the OTLP ones
  OTEL_PROFILES_EXPORT_INTERVAL      milliseconds per profile (10000)
On the metrics port: /metrics, /healthz, /readyz, GET /debug/pprof/profile?seconds=N[&format=svg]
(a CPU profile, 1 to 60 s), POST /debug/panic?in=request|writer (with --fire-drills).";

#[derive(Parser, Debug)]
#[command(
    name = "draw64",
    version = draw64::VERSION,
    about = "Draw64: a real-time collaborative 64x64 pixel canvas.",
    long_about = "Draw64: a real-time collaborative 64x64 pixel canvas.\n\n\
        Serves the web page, the REST API, WebSockets and Server-Sent Events on --listen, storing \
        images in embedded SQLite (default ./draw64.db). Every option can also be given as the \
        environment variable shown beside it; a flag wins over the variable.\n\n\
        Signals: SIGTERM or Ctrl-C starts a graceful drain (/readyz turns 503 at once, requests are \
        still served with `Connection: close` for --drain-grace, then WebSockets are closed with \
        1001, pending writes commit and the process exits 0); a second signal exits at once.",
    after_long_help = TELEMETRY_VARIABLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Verb>,
    #[command(flatten)]
    serve: Config,
}

// Parsed once per process: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Verb {
    /// Run the server (the default when no subcommand is given).
    Serve(Config),
    /// Put load on a running Draw64 (or the bare baseline) and report throughput, latency
    /// percentiles, delivery and errors.
    #[command(subcommand)]
    Load(draw64_load::Scenario),
    /// Release a new build through HAProxy as a canary judged from Prometheus: promote it or
    /// roll it back (docs/operations.md, Releasing).
    #[command(subcommand)]
    Release(draw64_release::Release),
}

/// What the command line asks for.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    Serve(Config),
    Load(draw64_load::Scenario),
    Release(draw64_release::Release),
}

impl Cli {
    pub fn into_action(self) -> Action {
        match self.command {
            Some(Verb::Serve(config)) => Action::Serve(config),
            Some(Verb::Load(scenario)) => Action::Load(scenario),
            Some(Verb::Release(release)) => Action::Release(release),
            None => Action::Serve(self.serve),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default_subcommand() {
        let cli = Cli::try_parse_from(["draw64", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.into_action(), Action::Serve(config) if config.listen.port() == 0));
        let cli = Cli::try_parse_from(["draw64", "serve", "--max-images", "3"]).unwrap();
        assert!(matches!(cli.into_action(), Action::Serve(config) if config.max_images == 3));
        let cli = Cli::try_parse_from(["draw64", "load", "put", "--duration", "2s"]).unwrap();
        assert!(matches!(cli.into_action(), Action::Load(draw64_load::Scenario::Put { .. })));
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
