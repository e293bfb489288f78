//! The instance's phases, as health checks and connections see them: serving → draining
//! (readiness 503, `Connection: close`) → closing (WebSockets get 1001, or 1012 when a release
//! retired the instance; streams end). A drain starts at a signal or at an admin's
//! `POST /admin/drain`.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};

pub struct Lifecycle {
    draining: AtomicBool,
    /// Set by `retire`: the drain was asked for over HTTP, so the process goes away for good
    /// and its sockets are told to reconnect elsewhere.
    retired: watch::Sender<bool>,
    closing: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            retired: watch::Sender::new(false),
            closing: watch::Sender::new(false),
        }
    }
}

/// Why long-lived connections are closed, which picks their RFC 6455 close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Farewell {
    /// A signal: 1001, going away.
    Shutdown,
    /// A release retired this instance: 1012, service restart (reconnect; another instance
    /// takes over).
    Retired,
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Asks the serving loop to drain as at a signal, the sockets being told 1012. Answers
    /// false when the instance was already retired.
    pub fn retire(&self) -> bool {
        !self.retired.send_replace(true)
    }

    /// Resolves once `retire` was called.
    pub fn retired(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.retired.subscribe();
        async move {
            let _ = rx.wait_for(|retired| *retired).await;
        }
    }

    pub fn farewell(&self) -> Farewell {
        if *self.retired.borrow() { Farewell::Retired } else { Farewell::Shutdown }
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

/// SIGTERM and SIGINT handlers, installed at the very start of `main` so a signal that
/// arrives while the server is still starting is a drain too, not the default instant death.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// Resolves at the first signal; a second one then exits the process at once.
    pub async fn shutdown(mut self) {
        self.recv().await;
        tracing::info!("shutdown signal received; draining (send another to exit at once)");
        tokio::spawn(async move {
            self.recv().await;
            tracing::warn!("second shutdown signal; exiting now");
            std::process::exit(130);
        });
    }
}

/// Many sockets need many descriptors: take the hard limit as the soft one (Linux often starts
/// processes at a soft limit of 1,024).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The soft limit on open file descriptors (after `raise_fd_limit`).
pub fn fd_limit() -> usize {
    // SAFETY: getrlimit only writes the struct passed in.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            return usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
        }
    }
    usize::MAX
}
