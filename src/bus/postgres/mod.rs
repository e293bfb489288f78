//! The default bus: PostgreSQL `LISTEN`/`NOTIFY` on one dedicated connection per instance.
//!
//! On every (re)connect the listener first `LISTEN`s, then reconciles the image list and
//! catches every live image up, so nothing committed while it was away is skipped; deliveries
//! ignore versions already sent, so nothing is sent twice. The notices' format and every read
//! of the log are the store's (`store::postgres`); this module only decides when to read.

mod follow;

use std::{
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt as _, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

use super::Bus;
use crate::{
    service::Replica,
    store::{
        StoreError,
        postgres::{self as store, configure},
    },
    telemetry::errors,
};

/// How long startup waits for the first connection, so that an instance is usually ready the
/// moment it accepts connections (it serves anyway, not ready, if the database is slower).
const FIRST_ATTEMPT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Listening {
    connected: AtomicBool,
    last_error: Mutex<String>,
    stop: Notify,
    stopped: Notify,
    /// Told when the first connection attempt is over (listening, or failed).
    first_attempt: Mutex<Option<oneshot::Sender<()>>>,
}

impl Listening {
    fn first_attempt_over(&self) {
        if let Some(tell) = self.first_attempt.lock().ok().and_then(|mut t| t.take()) {
            let _ = tell.send(());
        }
    }
}

pub struct PgBus {
    state: Arc<Listening>,
}

impl Bus for PgBus {
    fn check(&self) -> Result<(), String> {
        if self.state.connected.load(Ordering::Relaxed) {
            Ok(())
        } else {
            let why = self.state.last_error.lock().map(|e| e.clone()).unwrap_or_default();
            Err(format!("not listening to the other instances: {why}"))
        }
    }

    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let stopped = self.state.stopped.notified();
            self.state.stop.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(1), stopped).await;
        })
    }
}

/// Starts the listener task and waits (bounded) for its first connection; the instance's
/// own changes reach the others through the store.
pub async fn start(config: &tokio_postgres::Config, instance: &str, replica: Replica) -> Arc<PgBus> {
    let (tell, first) = oneshot::channel();
    let state = Arc::new(Listening {
        last_error: Mutex::new("connecting".into()),
        first_attempt: Mutex::new(Some(tell)),
        ..Default::default()
    });
    let listener = Listener {
        config: configure(config, "draw64-listener"),
        follower: follow::Follower { instance: instance.to_owned(), replica },
        state: state.clone(),
    };
    tokio::spawn(listener.run());
    let _ = tokio::time::timeout(FIRST_ATTEMPT, first).await;
    Arc::new(PgBus { state })
}

struct Listener {
    config: tokio_postgres::Config,
    follower: follow::Follower,
    state: Arc<Listening>,
}

/// How a listening session ended.
enum SessionEnd {
    Stopped,
    Lost(StoreError),
}

impl From<StoreError> for SessionEnd {
    fn from(e: StoreError) -> Self {
        SessionEnd::Lost(e)
    }
}

impl Listener {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // A panic in a session (recorded by the panic hook) ends only that session: the
            // listener reconnects and catches up as after a lost connection.
            let ended = AssertUnwindSafe(self.session())
                .catch_unwind()
                .await
                .unwrap_or_else(|_| SessionEnd::Lost(StoreError::Unusable("the listening session panicked".into())));
            match ended {
                SessionEnd::Stopped => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.state.stopped.notify_waiters();
                    return;
                }
                SessionEnd::Lost(why) => {
                    self.state.first_attempt_over();
                    if self.state.connected.swap(false, Ordering::Relaxed) {
                        errors::record(&opentelemetry::Context::new(), &errors::LISTENER_LOST, &why);
                    } else {
                        tracing::debug!(error = %why, "listener connection failed; retrying");
                    }
                    if let Ok(mut e) = self.state.last_error.lock() {
                        *e = why.to_string();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.state.stop.notified() => {
                    self.state.stopped.notify_waiters();
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: listen, catch up on everything, then follow notices.
    async fn session(&mut self) -> SessionEnd {
        let (client, mut connection) = match self.config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => return SessionEnd::Lost(e.into()),
        };
        let (notices_tx, mut notices) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => drop(notices_tx.send(n.payload().to_owned())),
                    Ok(_) => {}
                    Err(e) => return Some(StoreError::from(e)),
                }
            }
            None
        });
        let end = match self.connected(&client).await {
            Ok(()) => self.follow(&client, &mut notices).await,
            Err(e) => SessionEnd::Lost(e),
        };
        driver.abort();
        end
    }

    /// Listens, then catches up on everything (which answers every request made so far).
    async fn connected(&mut self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
        store::listen(client).await?;
        let waiting = self.follower.replica.pending_catch_ups().await;
        self.follower.sweep(client).await?;
        for (_, done) in waiting {
            done.map(|done| done.send(()));
        }
        self.state.connected.store(true, Ordering::Relaxed);
        self.state.first_attempt_over();
        tracing::info!("listening to the other instances");
        self.follower.say_presence(client).await
    }

    async fn follow(
        &mut self,
        client: &tokio_postgres::Client,
        notices: &mut mpsc::UnboundedReceiver<String>,
    ) -> SessionEnd {
        let mut tick = tokio::time::interval(follow::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(follow::PRUNE_EVERY);
        let follower = &self.follower;
        loop {
            let step = tokio::select! {
                notice = notices.recv() => match notice {
                    Some(payload) => follower.on_notice(client, &payload).await,
                    None => return SessionEnd::Lost(StoreError::Unusable("the listener connection ended".into())),
                },
                request = follower.replica.next_catch_up() => match request {
                    Some((id, done)) => {
                        let result = follower.catch_up_id(client, &id).await;
                        done.map(|done| done.send(()));
                        result
                    }
                    // The service is gone: nothing is left to keep fresh.
                    None => return SessionEnd::Stopped,
                },
                _ = follower.replica.presence_changed() => follower.say_presence(client).await,
                _ = tick.tick() => follower.tick(client).await,
                _ = prune.tick() => follower.prune(client).await,
                _ = self.state.stop.notified() => {
                    follower.say_goodbye(client).await;
                    return SessionEnd::Stopped;
                }
            };
            if let Err(e) = step {
                return SessionEnd::Lost(e);
            }
        }
    }
}
