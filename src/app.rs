//! Assembly: `App::build` opens the store, starts the service and binds the listener (port 0
//! in tests); `App::run` serves until the shutdown future resolves, then drains in the order
//! design invariant 6 gives.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

use crate::{
    bus,
    config::Config,
    http::{self, AppState, Shared},
    lifecycle::Lifecycle,
    service::{Limits, Service},
    store::{self, StoreError},
    telemetry::Telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
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
        let store = store::open(&config.database, &instance_id)?;
        let limits = Limits { max_images: config.max_images, max_total_images: config.max_total_images };
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
            rum_limits: Default::default(),
            fire_drills: config.fire_drills,
            trusted_proxies: config.trusted_proxies.clone(),
        });
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

    /// Serves until `shutdown` resolves, then: readiness 503 and `Connection: close` for the
    /// drain grace; WebSockets closed with 1001 and SSE streams ended; open requests given up
    /// to the shutdown timeout; queued writes committed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Self { listener, metrics_listener, state, drain_grace, shutdown_timeout } = self;
        let lifecycle = state.lifecycle.clone();
        let service = state.service.clone();
        let bus = state.bus.clone();
        if let Some(metrics) = metrics_listener {
            tracing::info!(address = %metrics.local_addr()?, "metrics listening");
            let server = axum::serve(metrics, http::metrics_port::router(state.clone()))
                .with_graceful_shutdown(lifecycle.closing());
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        tracing::info!(address = %listener.local_addr()?, "listening");
        // No Nagle: a socket's next small write (a WebSocket event, an SSE line) would otherwise
        // wait for the ACK of the previous one, which the peer may delay by 40 ms.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // The client's address, for per-client limits (`POST /rum`).
        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, app).with_graceful_shutdown(lifecycle.closing());
        let mut server = tokio::spawn(server.into_future());

        tokio::select! {
            result = &mut server => {
                return result.map_err(std::io::Error::other)?;
            }
            _ = shutdown => {}
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
