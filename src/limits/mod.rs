//! What one client, or everyone together, may hold and do: the public port's limits. Each has
//! a default, a flag (and `DRAW64_*` variable), a metric (`draw64.limits.refused` by
//! `draw64.limit`) and a log line per reason (at most one every few seconds, with how many
//! it stands for), and a line in docs/operations.md ("Running it in public").
//!
//! - `bucket`: the token bucket, pure;
//! - `clients`: buckets per client address, and seats held open (connections, sockets);
//! - here: the flags, and `Limits`, the one place where a refusal is counted and logged.

pub mod bucket;
pub mod clients;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use opentelemetry::KeyValue;

pub use bucket::{Bucket, Rate};
pub use clients::{Full, Occupancy, Rates, Seat};

use crate::telemetry::{metrics, throttle::LineThrottle};

/// The public port's limits. Rates are per second, with a burst of two seconds' worth; a
/// rate of 0 turns that limit off.
#[derive(Args, Debug, Clone)]
#[group(id = "limits")]
#[command(next_help_heading = "Limits (see \"Running it in public\" in docs/operations.md)")]
pub struct Options {
    /// Connections open on the public port in all (HTTP, WebSocket, SSE); one more is answered
    /// 503 and closed. Lowered at start to what the file-descriptor limit allows.
    #[arg(long, env = "DRAW64_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Connections open from one address (a --trusted-proxies peer counts only in the total).
    #[arg(long, env = "DRAW64_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,

    /// WebSockets open from one client address (the handshake is refused with 429 beyond).
    #[arg(long, env = "DRAW64_MAX_WEBSOCKETS_PER_CLIENT", default_value_t = 64)]
    pub max_websockets_per_client: usize,

    /// SSE streams open from one client address (429 beyond).
    #[arg(long, env = "DRAW64_MAX_STREAMS_PER_CLIENT", default_value_t = 16)]
    pub max_streams_per_client: usize,

    /// Longest wait for a request's headers, from the connection's start or the end of the
    /// previous answer: it also ends idle keep-alive connections and slow WebSocket handshakes.
    #[arg(long, env = "DRAW64_HEADER_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Longest wait for a request body to arrive whole (408 and the connection closed beyond).
    #[arg(long, env = "DRAW64_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Longest a write to a client may wait for it to read — an HTTP answer, an SSE event, a
    /// WebSocket message — before the connection is closed, so a client that never reads holds
    /// no task and no buffer for long.
    #[arg(long, alias = "ws-send-timeout", env = "DRAW64_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// Commands per second one WebSocket may send; beyond, each gets an error event, and a
    /// socket that keeps going over is closed with 1008.
    #[arg(long, env = "DRAW64_WS_COMMAND_RATE", default_value_t = 100.0)]
    pub ws_command_rate: f64,

    /// Pixels per second one WebSocket may draw (the burst is at least a whole canvas).
    #[arg(long, env = "DRAW64_WS_PIXEL_RATE", default_value_t = 20_000.0)]
    pub ws_pixel_rate: f64,

    /// Commands per second from one client address in all: its WebSockets, PUT and DELETE
    /// (HTTP gets 429 with Retry-After beyond).
    #[arg(long, env = "DRAW64_CLIENT_COMMAND_RATE", default_value_t = 250.0)]
    pub client_command_rate: f64,

    /// Pixels per second from one client address in all.
    #[arg(long, env = "DRAW64_CLIENT_PIXEL_RATE", default_value_t = 50_000.0)]
    pub client_pixel_rate: f64,

    /// Images one client address may create per minute: POST /images, POST /images/ID and
    /// WebSocket connects to a new id (429 beyond).
    #[arg(long, env = "DRAW64_CLIENT_IMAGE_RATE", default_value_t = 30.0)]
    pub client_images_per_minute: f64,

    /// Most pixels in one draw command (64×64 = 4,096 is the whole canvas; 422 or an error
    /// event beyond). 0: no cap, as the original.
    #[arg(long, env = "DRAW64_MAX_PIXELS_PER_COMMAND", default_value_t = 4096)]
    pub max_pixels_per_command: usize,

    /// Real-user-monitoring reports (POST /rum) per second from one client address, with a
    /// burst of 20 (a page sends one every 5 s, and one as it closes; 429 beyond).
    #[arg(long, env = "DRAW64_CLIENT_REPORT_RATE", default_value_t = 2.0)]
    pub client_report_rate: f64,

    /// Real-user-monitoring reports per second from everyone together (429 beyond): what the
    /// telemetry pipeline is asked to take, whatever the number of clients.
    #[arg(long, env = "DRAW64_REPORT_RATE", default_value_t = 500.0)]
    pub report_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            options: Options,
        }
        <Only as clap::Parser>::try_parse_from(["draw64"]).expect("the defaults parse").options
    }
}

/// `fut`'s output, or `None` once it has waited `limit`. The timer is armed only if the first
/// poll finds it waiting: most writes and most bodies are done at once, and a timer set and
/// cancelled for each of them is most of what a deadline costs (callgrind: about 1,000
/// instructions a request).
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    use futures_util::FutureExt as _;
    let mut fut = std::pin::pin!(fut);
    if let Some(done) = fut.as_mut().now_or_never() {
        return Some(done);
    }
    tokio::time::timeout(limit, fut).await.ok()
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

/// Why something was refused: the `draw64.limit` attribute, bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Connections,
    ConnectionsPerClient,
    WebsocketsPerClient,
    StreamsPerClient,
    HeaderTimeout,
    BodyTimeout,
    SendTimeout,
    SilentClient,
    Commands,
    Pixels,
    PixelsPerCommand,
    Images,
    /// A socket that kept going over its rates, closed with 1008.
    Persistent,
    Origin,
    AdminToken,
    Reports,
    ReportsInAll,
}

impl Limit {
    pub const ALL: [Limit; 17] = [
        Limit::Connections,
        Limit::ConnectionsPerClient,
        Limit::WebsocketsPerClient,
        Limit::StreamsPerClient,
        Limit::HeaderTimeout,
        Limit::BodyTimeout,
        Limit::SendTimeout,
        Limit::SilentClient,
        Limit::Commands,
        Limit::Pixels,
        Limit::PixelsPerCommand,
        Limit::Images,
        Limit::Persistent,
        Limit::Origin,
        Limit::AdminToken,
        Limit::Reports,
        Limit::ReportsInAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionsPerClient => "connections_per_client",
            Limit::WebsocketsPerClient => "websockets_per_client",
            Limit::StreamsPerClient => "streams_per_client",
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::SendTimeout => "send_timeout",
            Limit::SilentClient => "silent_client",
            Limit::Commands => "commands",
            Limit::Pixels => "pixels",
            Limit::PixelsPerCommand => "pixels_per_command",
            Limit::Images => "images",
            Limit::Persistent => "persistent",
            Limit::Origin => "origin",
            Limit::AdminToken => "admin_token",
            Limit::Reports => "reports",
            Limit::ReportsInAll => "reports_in_all",
        }
    }

    /// What a client was sending too much of, for its refusal.
    pub fn noun(self) -> &'static str {
        match self {
            Limit::Pixels => "pixels",
            Limit::Images => "new images",
            Limit::Reports | Limit::ReportsInAll => "reports",
            _ => "commands",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Connections => "connection refused: the public port has --max-connections open",
            Limit::ConnectionsPerClient => "connection refused: the client has --max-connections-per-client open",
            Limit::WebsocketsPerClient => "WebSocket refused: the client has --max-websockets-per-client open",
            Limit::StreamsPerClient => "SSE stream refused: the client has --max-streams-per-client open",
            Limit::HeaderTimeout => "connection closed: no complete request headers within --header-timeout",
            Limit::BodyTimeout => "request refused: its body did not arrive within --body-timeout",
            Limit::SendTimeout => "connection closed: the client did not read for --send-timeout",
            Limit::SilentClient => "WebSocket closed: the client answered no ping for two --ws-ping-interval",
            Limit::Commands => "command refused: over the command rate",
            Limit::Pixels => "command refused: over the pixel rate",
            Limit::PixelsPerCommand => "command refused: more than --max-pixels-per-command",
            Limit::Images => "image creation refused: over --client-images-per-minute",
            Limit::Persistent => "WebSocket closed with 1008: it kept going over its rates",
            Limit::Origin => "request refused: its Origin is not in --allowed-origins",
            Limit::AdminToken => "request refused: it needs the admin token",
            Limit::Reports => "browser report refused: over --client-report-rate",
            Limit::ReportsInAll => "browser report refused: over --report-rate",
        }
    }
}

/// Seconds between two log lines for the same limit.
const LOG_EVERY: u64 = 10;

/// The limits in force, shared by the public port's connections and handlers.
pub struct Limits {
    pub options: Options,
    pub connections: Arc<Occupancy>,
    pub websockets: Arc<Occupancy>,
    pub streams: Arc<Occupancy>,
    /// Per client: commands and pixels.
    pub writes: Rates<2>,
    pub images: Rates<1>,
    /// Browser reports: per client, and from everyone together.
    reports: Rates<1>,
    all_reports: Mutex<(Rate, Bucket)>,
    /// Refusal log lines, one throttle per limit.
    throttles: [LineThrottle; Limit::ALL.len()],
}

impl Limits {
    pub fn new(options: Options) -> Self {
        let per_minute = options.client_images_per_minute / 60.0;
        Self {
            connections: Occupancy::new(options.max_connections, options.max_connections_per_client),
            websockets: Occupancy::new(usize::MAX, options.max_websockets_per_client),
            streams: Occupancy::new(usize::MAX, options.max_streams_per_client),
            writes: Rates::new([
                Rate::per_second(options.client_command_rate, 1.0),
                Rate::per_second(options.client_pixel_rate, 4096.0),
            ]),
            // A minute's worth at once: a page that opens a few images is never refused.
            images: Rates::new([Rate { per_second: per_minute, burst: options.client_images_per_minute.max(1.0) }]),
            reports: Rates::new([Rate::per_second(options.client_report_rate, 20.0)]),
            all_reports: {
                let rate = Rate::per_second(options.report_rate, 1.0);
                Mutex::new((rate, Bucket::full(rate, Instant::now())))
            },
            options,
            throttles: std::array::from_fn(|_| LineThrottle::new()),
        }
    }

    /// A socket's own rates: commands and pixels.
    pub fn socket_rates(&self) -> [Rate; 2] {
        [Rate::per_second(self.options.ws_command_rate, 1.0), Rate::per_second(self.options.ws_pixel_rate, 4096.0)]
    }

    /// Takes a browser report's token from its client's bucket and from everyone's, or
    /// counts the refusal and answers how long until there is one.
    pub fn report(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        if let Err((_, wait)) = self.reports.take(client, [1.0], now) {
            self.refused(Limit::Reports, Some(client));
            return Err(wait);
        }
        let mut all = self.all_reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (rate, bucket) = &mut *all;
        bucket.take(*rate, 1.0, now).inspect_err(|_| {
            drop(all);
            self.refused(Limit::ReportsInAll, Some(client));
        })
    }

    /// Counts a refusal, and logs it unless a line for the same limit went out in the last
    /// few seconds (the next line says how many it stands for).
    pub fn refused(&self, limit: Limit, client: Option<IpAddr>) {
        metrics().limits_refused.add(1, &[KeyValue::new("draw64.limit", limit.as_str())]);
        let Some(also) = self.throttles[limit as usize].admit(LOG_EVERY) else { return };
        let client = client.map(|ip| ip.to_string());
        tracing::warn!(
            draw64.limit = limit.as_str(),
            client.address = client.as_deref().unwrap_or("-"),
            refused_since_last_line = also,
            "{}",
            limit.what()
        );
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(Options::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_indexed_by_their_position() {
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(*limit as usize, i, "{limit:?}");
            assert!(!limit.what().is_empty());
        }
    }

    #[test]
    fn defaults_parse() {
        let o = Options::default();
        assert_eq!((o.max_connections, o.max_pixels_per_command), (16_384, 4096));
        assert_eq!(o.header_timeout, Duration::from_secs(20));
    }

    #[tokio::test]
    async fn within_answers_what_is_ready_and_gives_up_on_what_waits() {
        assert_eq!(within(Duration::from_millis(10), async { 7 }).await, Some(7));
        assert_eq!(within(Duration::from_millis(10), std::future::pending::<()>()).await, None);
        // Waiting first, then done in time.
        let late = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            8
        };
        assert_eq!(within(Duration::from_secs(10), late).await, Some(8));
    }

    #[test]
    fn a_client_gets_its_report_burst_then_its_rate_and_others_are_not_affected() {
        let limits = Limits::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!((0..100).filter(|_| limits.report(a).is_ok()).count(), 20);
        assert!(limits.report(b).is_ok());
    }

    #[test]
    fn reports_in_all_are_bounded_whatever_the_number_of_clients() {
        let limits = Limits::new(Options { report_rate: 5.0, ..Options::default() });
        let allowed = (0..100u8).filter(|i| limits.report(IpAddr::from([10, 0, 1, *i])).is_ok()).count();
        assert_eq!(allowed, 10, "two seconds' worth");
    }
}
