//! The instance's phases, as health checks and connections see them: serving → draining
//! (readiness 503, `Connection: close`) → closing (WebSockets get 1001, streams end).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

pub struct Lifecycle {
    draining: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { draining: AtomicBool::new(false), closing: watch::Sender::new(false) }
    }
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn close_connections(&self) {
        self.start_draining();
        self.closing.send_replace(true);
    }

    /// Resolves once long-lived connections must close.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }
}

/// Waits for SIGTERM or Ctrl-C; after the first, a second one exits the process at once.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received; draining (send another to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second shutdown signal; exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
