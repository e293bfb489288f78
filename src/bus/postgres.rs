//! The default bus: PostgreSQL `LISTEN`/`NOTIFY` on one dedicated connection per instance.
//!
//! Payloads stay far below the 8,000-byte limit: a notice is a pointer (`u INSTANCE IMAGE
//! GENERATION VERSION`, `c`/`d INSTANCE IMAGE`, presence `p INSTANCE USERS`, goodbye
//! `q INSTANCE`); the changes themselves are read from the `changes` table, in version order,
//! on the same connection. On every (re)connect the listener first `LISTEN`s, then reconciles
//! the image list and catches every live image up, so nothing committed while it was away is
//! skipped; deliveries ignore versions already sent, so nothing is sent twice.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::Bus;
use crate::{
    domain::{Canvas, Command, ImageId, event},
    service::{CatchUp, Delivery, Live},
    store::{
        StoreError,
        postgres::{CHANNEL, RETENTION, config, image_from_row},
    },
};

/// Presence heartbeat, and the sweep that compares every live image with the database (the
/// safety net for a pointer lost with an instance that died right after its commit).
const TICK: Duration = Duration::from_secs(2);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The most changes one catch-up reads; more follow on the next round.
const CATCH_UP_LIMIT: i64 = 10_000;

#[derive(Default)]
struct State {
    connected: AtomicBool,
    last_error: Mutex<String>,
    stop: Notify,
    stopped: Notify,
    /// Told when the first connection attempt is over (listening, or failed).
    first_attempt: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl State {
    fn first_attempt_over(&self) {
        if let Some(tell) = self.first_attempt.lock().ok().and_then(|mut t| t.take()) {
            let _ = tell.send(());
        }
    }
}

/// How long startup waits for the first connection, so that an instance is usually ready the
/// moment it accepts connections (it serves anyway, not ready, if the database is slower).
const FIRST_ATTEMPT: Duration = Duration::from_secs(5);

pub struct PgBus {
    state: Arc<State>,
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

/// Starts the listener task for `url` and waits (bounded) for its first connection; the
/// instance's changes reach others through the store.
pub async fn start(url: &str, instance: &str, live: Arc<Live>) -> Result<Arc<PgBus>, StoreError> {
    let config = config(url, "draw64-listener")?;
    let (tell, first) = tokio::sync::oneshot::channel();
    let state = Arc::new(State {
        last_error: Mutex::new("connecting".into()),
        first_attempt: Mutex::new(Some(tell)),
        ..Default::default()
    });
    let (catch_up_tx, catch_up) = mpsc::unbounded_channel();
    let _ = live.catch_up.set(catch_up_tx);
    let listener = Listener { config, instance: instance.to_owned(), live, state: state.clone(), catch_up };
    tokio::spawn(listener.run());
    let _ = tokio::time::timeout(FIRST_ATTEMPT, first).await;
    Ok(Arc::new(PgBus { state }))
}

struct Listener {
    config: tokio_postgres::Config,
    instance: String,
    live: Arc<Live>,
    state: Arc<State>,
    catch_up: mpsc::UnboundedReceiver<CatchUp>,
}

enum End {
    Stopped,
    Lost(String),
}

impl Listener {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session().await {
                End::Stopped => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.state.stopped.notify_waiters();
                    return;
                }
                End::Lost(why) => {
                    self.state.first_attempt_over();
                    let was = self.state.connected.swap(false, Ordering::Relaxed);
                    if was {
                        tracing::warn!(error = %why, "lost the listener connection; reconnecting");
                    } else {
                        tracing::debug!(error = %why, "listener connection failed; retrying");
                    }
                    if let Ok(mut e) = self.state.last_error.lock() {
                        *e = why;
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
    async fn session(&mut self) -> End {
        let (client, mut connection) = match self.config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => return End::Lost(StoreError::from(e).to_string()),
        };
        let (notices_tx, mut notices) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => drop(notices_tx.send(n.payload().to_owned())),
                    Ok(_) => {}
                    Err(e) => return StoreError::from(e).to_string(),
                }
            }
            "the server closed the connection".to_owned()
        });
        let end = self.follow(&client, &mut notices).await;
        driver.abort();
        end
    }

    async fn follow(&mut self, client: &Client, notices: &mut mpsc::UnboundedReceiver<String>) -> End {
        let lost = |e: tokio_postgres::Error| End::Lost(StoreError::from(e).to_string());
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return lost(e);
        }
        // Everything asked for so far is covered by the full catch-up below.
        let mut waiting = Vec::new();
        while let Ok((_, done)) = self.catch_up.try_recv() {
            waiting.extend(done);
        }
        if let Err(e) = self.sweep(client).await {
            return lost(e);
        }
        for done in waiting {
            let _ = done.send(());
        }
        self.state.connected.store(true, Ordering::Relaxed);
        self.state.first_attempt_over();
        tracing::info!("listening to the other instances");
        if let Err(e) = self.say_presence(client).await {
            return lost(e);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            let step = tokio::select! {
                notice = notices.recv() => match notice {
                    Some(payload) => self.on_notice(client, &payload).await,
                    None => break End::Lost("the listener connection ended".into()),
                },
                Some((id, done)) = self.catch_up.recv() => {
                    let result = self.catch_up_id(client, &id).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    result
                }
                _ = self.live.presence_changed.notified() => self.say_presence(client).await,
                _ = tick.tick() => {
                    self.live.expire_remote_users();
                    match self.say_presence(client).await {
                        Ok(()) => self.sweep(client).await,
                        Err(e) => Err(e),
                    }
                }
                _ = prune.tick() => self.prune(client).await,
                _ = self.state.stop.notified() => {
                    let _ = client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("q {}", self.instance)]).await;
                    break End::Stopped;
                }
            };
            if let Err(e) = step {
                break lost(e);
            }
        }
    }

    async fn say_presence(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let users = self.live.users.load(Ordering::Relaxed);
        client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("p {} {users}", self.instance)]).await?;
        Ok(())
    }

    async fn on_notice(&self, client: &Client, payload: &str) -> Result<(), tokio_postgres::Error> {
        let mut parts = payload.split(' ');
        let (Some(kind), Some(from)) = (parts.next(), parts.next()) else {
            tracing::warn!(payload, "ignoring a malformed notice");
            return Ok(());
        };
        if from == self.instance {
            return Ok(());
        }
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
        match kind {
            "u" => {
                let image = parts.next().and_then(|s| ImageId::parse(s).ok());
                let (generation, version) = (number(parts.next()), number(parts.next()));
                let (Some(image), Some(generation), Some(version)) = (image, generation, version) else {
                    tracing::warn!(payload, "ignoring a malformed notice");
                    return Ok(());
                };
                let live = self.live.images.read().ok().and_then(|m| m.get(&image).cloned());
                match live {
                    Some(img) if img.generation == generation => {
                        if img.version() < version {
                            self.catch_up(client, &image, &img).await?;
                        }
                    }
                    // Created elsewhere and not seen yet (or re-created): the list is stale.
                    _ => self.sweep(client).await?,
                }
            }
            "c" | "d" => self.sweep(client).await?,
            "p" => match number(parts.next()) {
                Some(users) => self.live.set_remote_users(from, Some(users)),
                None => tracing::warn!(payload, "ignoring a malformed notice"),
            },
            "q" => self.live.set_remote_users(from, None),
            _ => tracing::warn!(payload, "ignoring an unknown notice"),
        }
        Ok(())
    }

    /// Compares the live images with the database: adds the ones created elsewhere, removes
    /// the ones deleted elsewhere, catches up every image that is behind; refreshes counters.
    async fn sweep(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        // Taken before the query: a live image missing from the answer was deleted since.
        let before: Vec<_> = match self.live.images.read() {
            Ok(map) => map.iter().map(|(id, img)| (id.clone(), img.clone())).collect(),
            Err(_) => return Ok(()),
        };
        let rows = client.query("SELECT image_id, generation, version FROM images", &[]).await?;
        let counters =
            client.query_one("SELECT images_created, images_deleted FROM counters WHERE id = 1", &[]).await?;
        self.live.merge_counters(crate::store::Counters {
            images_created: counters.get::<_, i64>(0) as u64,
            images_deleted: counters.get::<_, i64>(1) as u64,
        });
        let mut stored = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let Ok(id) = ImageId::parse(row.get::<_, &str>(0)) else { continue };
            stored.insert(id, (row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64));
        }
        for (id, img) in &before {
            if stored.get(id).is_none_or(|(generation, _)| *generation != img.generation) {
                self.live.remove_image(id, Some(img));
            }
        }
        for (id, (generation, version)) in stored {
            let live = self.live.images.read().ok().and_then(|m| m.get(&id).cloned());
            match live {
                Some(img) if img.generation == generation => {
                    if img.version() < version {
                        self.catch_up(client, &id, &img).await?;
                    }
                }
                _ => {
                    // Start from the stored image rather than replaying a log that may be pruned.
                    let row = client
                        .query_opt(
                            "SELECT image_id, generation, pixels, version, updates FROM images \
                             WHERE image_id = $1 AND generation = $2",
                            &[&id.as_str(), &(generation as i64)],
                        )
                        .await?;
                    if let Some(img) = row.as_ref().and_then(|r| image_from_row(r).ok()) {
                        self.live.add_image(&id, img.generation, img.canvas, img.version);
                    }
                }
            }
        }
        Ok(())
    }

    async fn catch_up_id(&self, client: &Client, id: &ImageId) -> Result<(), tokio_postgres::Error> {
        let live = self.live.images.read().ok().and_then(|m| m.get(id).cloned());
        match live {
            Some(img) => self.catch_up(client, id, &img).await,
            None => self.sweep(client).await,
        }
    }

    /// Reads and delivers, in version order, every change of `img` after the last one it sent.
    async fn catch_up(
        &self,
        client: &Client,
        id: &ImageId,
        img: &Arc<crate::service::LiveImage>,
    ) -> Result<(), tokio_postgres::Error> {
        let from = img.version();
        let rows = client
            .query(
                "SELECT version, command, traceparent FROM changes \
                 WHERE image_id = $1 AND generation = $2 AND version > $3 ORDER BY version LIMIT $4",
                &[&id.as_str(), &(img.generation as i64), &(from as i64), &CATCH_UP_LIMIT],
            )
            .await?;
        let first = rows.first().map(|r| r.get::<_, i64>(0) as u64);
        if first != Some(from + 1) {
            // The next version is no longer in the log (pruned): start again from the stored image.
            let row = client
                .query_opt(
                    "SELECT image_id, generation, pixels, version, updates FROM images \
                     WHERE image_id = $1 AND generation = $2",
                    &[&id.as_str(), &(img.generation as i64)],
                )
                .await?;
            if let Some(stored) = row.as_ref().and_then(|r| image_from_row(r).ok()) {
                // The two reads above are two snapshots: a change committed between them makes
                // the image newer than an (empty) answer from the log without anything being
                // pruned. Pruned means the next version is not in the log now either.
                let next_logged: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM changes                          WHERE image_id = $1 AND generation = $2 AND version = $3)",
                        &[&id.as_str(), &(img.generation as i64), &(from as i64 + 1)],
                    )
                    .await?
                    .get(0);
                if stored.version > from && !next_logged {
                    tracing::warn!(image = %id, from, to = stored.version, "changes pruned from the log; reloading the image");
                    img.reset(stored.canvas, stored.version);
                }
            }
        }
        let received = std::time::Instant::now();
        for row in rows {
            let version = row.get::<_, i64>(0) as u64;
            let command = match Command::parse_json(row.get::<_, &str>(1).as_bytes()) {
                Ok(command) => command,
                Err(e) => {
                    tracing::error!(image = %id, version, error = %e, "unreadable change in the log; reloading the image");
                    let _ = self.reload(client, id, img).await;
                    return Ok(());
                }
            };
            let cx =
                row.get::<_, Option<&str>>(2).and_then(remote_parent).map_or_else(opentelemetry::Context::new, |sc| {
                    opentelemetry::Context::new().with_remote_span_context(sc)
                });
            let text = event::image_updated(id, &command).into();
            img.deliver(id, Delivery { version, command, text, committed_at: received, cx });
        }
        Ok(())
    }

    async fn reload(
        &self,
        client: &Client,
        id: &ImageId,
        img: &crate::service::LiveImage,
    ) -> Result<(), tokio_postgres::Error> {
        let row = client.query_opt("SELECT pixels, version FROM images WHERE image_id = $1", &[&id.as_str()]).await?;
        if let Some(row) = row
            && let Some(canvas) = Canvas::from_bytes(row.get::<_, &[u8]>(0))
        {
            img.reset(canvas, row.get::<_, i64>(1) as u64);
        }
        Ok(())
    }

    /// The retention rule: the log keeps the last `RETENTION` of changes (instances further
    /// behind reload the stored image instead).
    async fn prune(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let pruned = client
            .execute(&format!("DELETE FROM changes WHERE committed_at < now() - interval '{RETENTION}'"), &[])
            .await?;
        if pruned > 0 {
            tracing::debug!(pruned, "old changes pruned from the log");
        }
        Ok(())
    }
}

/// The span context a W3C `traceparent` names (`00-TRACE-SPAN-FLAGS`).
fn remote_parent(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (_version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}
