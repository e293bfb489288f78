//! `draw64 load`: the project's own load tool, pointed at any Draw64 URL (or the bare baseline).
//!
//! Scenarios: `put` (keep-alive connections PUTting one pixel), `fanout` (subscribers on one
//! image, writers at a fixed open-loop rate, every change carrying a unique pixel so each receipt
//! is matched to its send instant), `users` (a realistic mix of drawing users, SSE listeners and
//! image reads), `idle` (open sockets, the server's memory per socket). Every run is bounded in
//! time and in count; results print as text, or as one JSON line with `--json`.

mod client;
mod fanout;
mod idle;
mod lean_ws;
mod put;
mod report;
mod users;

use std::time::Duration;

use clap::{Args, Subcommand};

pub use report::Report;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_server_reads_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5h").is_err());
    }
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Base URL of the server under load.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// How long to run (load phase; a short settling wait may follow).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// The server's process id (same machine): report its CPU time and resident memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Image to use (created if missing).
    #[arg(long, default_value = "bench")]
    pub image: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N keep-alive connections, each PUTting one pixel as fast as answers come.
    Put {
        #[command(flatten)]
        common: Common,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Stop after this many requests in all (default: 100,000 per second of --duration).
        #[arg(long)]
        requests: Option<u64>,
    },
    /// S WebSocket subscribers on one image and W writers sending changes at a fixed total rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Changes per second, all writers together (open loop: a late writer is reported).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Writer connections.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Send through these base URLs in turn instead of --url (e.g. other instances of a
        /// cluster); subscribers stay on --url.
        #[arg(long, value_delimiter = ',')]
        write_urls: Vec<String>,
    },
    /// U WebSocket users over 10 images drawing strokes, SSE listeners, PNG and data reads.
    Users {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Print a line of figures every this often (for steady-state runs).
        #[arg(long, value_parser = parse_duration)]
        every: Option<Duration>,
    },
    /// C open WebSockets held idle; with --pid, the server's memory per socket.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
    },
}

/// Runs a scenario and prints its report; answers the process exit code. (Thousands of sockets
/// need a high open-file limit: the caller raises it.)
pub async fn main(scenario: Scenario) -> std::process::ExitCode {
    let (common, result) = match &scenario {
        Scenario::Put { common, connections, requests } => (common, put::run(common, *connections, *requests).await),
        Scenario::Fanout { common, subscribers, rate, writers, write_urls } => {
            (common, fanout::run(common, *subscribers, *rate, *writers, write_urls).await)
        }
        Scenario::Users { common, users, every } => (common, users::run(common, *users, *every).await),
        Scenario::Idle { common, connections } => (common, idle::run(common, *connections).await),
    };
    match result {
        Ok(report) => {
            if common.json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{report}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("draw64 load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `10s`, `500ms`, `2m` or a bare number of seconds, as the server's flags take them.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(raw.len());
    let seconds_per_unit = match &raw[split..] {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        unit => return Err(format!("unknown unit {unit:?} in {raw:?}: use s, ms or m")),
    };
    raw[..split]
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * seconds_per_unit).ok())
        .ok_or_else(|| format!("{raw:?} is not a duration like 10s, 500ms or 2m"))
}

/// A progress bar on a terminal (hidden otherwise), counting seconds of the load phase.
fn progress(what: &str, duration: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(duration.as_secs().max(1)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Ticks the bar once a second until `deadline`.
fn tick(bar: &indicatif::ProgressBar, deadline: tokio::time::Instant) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        while tokio::time::Instant::now() < deadline {
            every.tick().await;
            bar.inc(1);
        }
        bar.finish_and_clear();
    })
}
