//! Assembly: `App::build` opens the store, starts the service and binds the listener (port 0
//! in tests); `App::run` serves until the shutdown future resolves, then drains in the order
//! design invariant 6 gives.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::{
    bus,
    config::Config,
    http::{
        self, AppState, Shared,
        serve::{Gate, serve},
    },
    lifecycle::Lifecycle,
    limits::{Limits, Occupancy},
    service::Service,
    store::{self, StoreError},
    telemetry::Telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    FaultFlags(#[from] crate::faults::watch::FlagFileError),
}

/// Connections the metrics port holds at once (a quarter of them from one address).
const METRICS_CONNECTIONS: usize = 64;

/// Descriptors kept for everything but the public port's connections: the database, the
/// metrics port, exporters, files.
const RESERVED_DESCRIPTORS: usize = 256;

/// `--max-connections` lowered, if it must be, so that accepting never runs out of file
/// descriptors (then nothing, `/healthz` included, could be answered).
fn fit_to_descriptors(mut options: crate::limits::Options) -> crate::limits::Options {
    crate::lifecycle::raise_fd_limit();
    let available = crate::lifecycle::fd_limit().saturating_sub(RESERVED_DESCRIPTORS + METRICS_CONNECTIONS);
    if options.max_connections > available {
        tracing::warn!(
            wanted = options.max_connections,
            allowed = available,
            "--max-connections is more than the file-descriptor limit allows; lowered (raise ulimit -n)"
        );
        options.max_connections = available.max(1);
    }
    options
}

pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    drain_grace: Duration,
    shutdown_timeout: Duration,
}

impl App {
    /// Without `telemetry` (tests in-process) there is no metrics port.
    pub async fn build(config: &Config, telemetry: Option<&Telemetry>) -> Result<Self, StartupError> {
        // In-process apps (tests) share a pid: a random suffix keeps instances apart.
        let instance_id = telemetry.map_or_else(
            || format!("draw64-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            |t| t.instance_id.clone(),
        );
        crate::faults::watch::start(config.fault_flags.clone())?;
        let store = store::open(&config.database, &instance_id, config.database_check)?;
        let limits =
            crate::service::Limits { max_images: config.max_images, max_total_images: config.max_total_images };
        let service = Service::start(store, limits).await?;
        let bus = bus::start(&config.database, &instance_id, service.take_replica()).await;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| StartupError::Bind(config.listen, e))?;
        let metrics_listener = match telemetry.and_then(Telemetry::prometheus_addr) {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| StartupError::Bind(addr, e))?),
            None => None,
        };
        let state = AppState::new(Shared {
            service,
            lifecycle: Arc::new(Lifecycle::default()),
            ws_ping_interval: config.ws_ping_interval,
            served_by: axum::http::HeaderValue::from_str(&instance_id).ok(),
            bus,
            prometheus: telemetry.and_then(|t| t.prometheus.clone()),
            fire_drills: config.fire_drills,
            trusted_proxies: config.trusted_proxies.clone(),
            limits: Arc::new(Limits::new(fit_to_descriptors(config.limits.clone()))),
            allowed_origins: config.allowed_origins.clone(),
            admin_token: config.admin_token.clone(),
        });
        let limits = state.limits.clone();
        crate::telemetry::metrics::registry_gauge(
            &opentelemetry::global::meter("draw64"),
            "draw64.http.connections",
            move || limits.connections.total() as u64,
        );
        if !state.admin_token.is_set() {
            tracing::warn!(
                "no admin token (DRAW64_ADMIN_TOKEN): the canvas is open, anyone may delete images and clear canvases"
            );
        }
        if state.allowed_origins == crate::http::caller::AllowedOrigins::Any {
            tracing::warn!("--allowed-origins is *: pages of any site may change images with their visitors' browsers");
        }
        Ok(Self {
            listener,
            metrics_listener,
            state,
            drain_grace: config.drain_grace,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves or an admin retires the instance, then: readiness 503
    /// and `Connection: close` for the drain grace; WebSockets closed with 1001 (1012 when
    /// retired) and SSE streams ended; open requests given up
    /// to the shutdown timeout; queued writes committed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Self { listener, metrics_listener, state, drain_grace, shutdown_timeout } = self;
        let lifecycle = state.lifecycle.clone();
        let service = state.service.clone();
        let bus = state.bus.clone();
        let public = Gate {
            seats: state.limits.connections.clone(),
            trusted: state.trusted_proxies.clone(),
            header_timeout: state.limits.options.header_timeout,
            send_timeout: state.limits.options.send_timeout,
            limits: state.limits.clone(),
        };
        if let Some(metrics) = metrics_listener {
            tracing::info!(address = %metrics.local_addr()?, "metrics listening");
            // Seats of its own: a flood of the public port leaves the scraper and the probes
            // their way in.
            let gate = Gate { seats: Occupancy::new(METRICS_CONNECTIONS, METRICS_CONNECTIONS / 4), ..public.clone() };
            let server = serve(metrics, http::metrics_port::router(state.clone()), gate, lifecycle.closing());
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        tracing::info!(address = %listener.local_addr()?, "listening");
        let server = serve(listener, http::router(state), public, lifecycle.closing());
        let mut server = tokio::spawn(server);

        tokio::select! {
            result = &mut server => {
                return result.map_err(std::io::Error::other)?;
            }
            _ = shutdown => {}
            _ = lifecycle.retired() => {}
        }
        lifecycle.start_draining();
        tracing::info!(grace = ?drain_grace, "draining: readiness is 503, answers close their connections");
        tokio::time::sleep(drain_grace).await;
        lifecycle.close_connections();
        match tokio::time::timeout(shutdown_timeout, &mut server).await {
            Ok(result) => result.map_err(std::io::Error::other)??,
            Err(_) => {
                tracing::warn!(timeout = ?shutdown_timeout, "open requests did not finish in time; closing them");
                server.abort();
            }
        }
        service.shutdown().await;
        if let Some(bus) = &bus {
            bus.stop().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}
