//! The single writer: the hot path's middle. It owns the authoritative image state and the
//! store, takes every change from one bounded queue, and handles them in batches:
//!
//! 1. drain the queue (up to `MAX_BATCH` operations) and stage each in arrival order on its
//!    working copy of the images, assigning each image's next version (`batch`);
//! 2. commit the batch's net effect in one transaction (one fsync for the whole batch);
//! 3. only then publish: canvases to readers, events to subscribers, replies to callers
//!    (`publish`).
//!
//! If the commit fails the batch is undone and every caller gets the error, so nothing that was
//! acknowledged is missing and nothing unacknowledged is visible. One thread doing all of this
//! is what makes the order of an image's changes the same in the database, in memory and on
//! every socket.

mod batch;
mod publish;

use std::sync::Arc;

use opentelemetry::{Context, trace::TraceContextExt as _};
use tokio::sync::{mpsc, oneshot};

use self::batch::{Staged, Working};
use super::{Limits, ServiceError, state::State};
use crate::{
    domain::{Command, ImageId},
    store::{Commit, Instrumented, Logged, Store, StoreError},
    telemetry::errors,
};

/// An operation and the trace context of the request that queued it.
pub type Job = (Op, Context);

/// Upper bound on operations per transaction, so one batch cannot hold replies back for long.
const MAX_BATCH: usize = 4096;

pub type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

pub enum Op {
    /// `POST /images[/{id}]`: subject to the active-image limit. `None` picks a random id.
    Create {
        id: Option<ImageId>,
        reply: Reply<ImageId>,
    },
    /// WebSocket connect: creates the image if missing (capped by the total limit); answers
    /// whether it was created.
    Ensure {
        id: ImageId,
        reply: Reply<bool>,
    },
    Apply {
        id: ImageId,
        command: Command,
        reply: Reply<()>,
    },
    Delete {
        id: ImageId,
        reply: Reply<()>,
    },
    Ping {
        reply: Reply<()>,
    },
    /// Commit what came before, then exit; later callers get `ServiceError::Stopped`.
    Stop,
}

pub struct Writer {
    store: Instrumented,
    working: Working,
    state: Arc<State>,
    /// Set when a batch panicked between its commit and the end of its publishing: readers
    /// may now lag the store, so the instance answers not ready (to be replaced) while it goes
    /// on serving writes correctly from the reloaded working copy.
    poisoned: Option<String>,
    /// Whether the batch in hand is committed but not yet wholly published.
    publishing: bool,
    /// Why the last commit failed, until one succeeds: readiness says so rather than
    /// answering ready while every write is refused.
    failing: Option<String>,
}

impl Writer {
    /// Loads every image from the store (after its migrations) and makes them live.
    pub fn load(store: Box<dyn Store>, state: Arc<State>, limits: Limits) -> Result<Self, StoreError> {
        let mut store = Instrumented::new(store);
        let snapshot = store.load()?;
        state.load(&snapshot.images, snapshot.counters);
        tracing::info!(images = snapshot.images.len(), "images loaded from the store");
        let working = Working::new(snapshot.images, snapshot.counters, limits, fastrand::Rng::new());
        Ok(Self { store, working, state, poisoned: None, publishing: false, failing: None })
    }

    /// Runs until every sender is gone or `Stop` arrives, committing what is queued first.
    pub fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(64);
        let mut next = queue.blocking_recv();
        while let Some(job) = next.take() {
            let mut stop = matches!(job.0, Op::Stop);
            batch.push(job);
            while !stop && batch.len() < MAX_BATCH {
                let Ok(job) = queue.try_recv() else { break };
                stop = matches!(job.0, Op::Stop);
                batch.push(job);
            }
            batch.retain(|job| !matches!(job.0, Op::Stop));
            self.step_catching_panics(&mut batch);
            self.store.maintain();
            if stop {
                tracing::info!("writer stopped; every queued change is committed");
                return;
            }
            next = queue.blocking_recv();
        }
    }

    /// [`Writer::step`], surviving a panic in it: the panic hook has recorded it; here the
    /// batch's callers are answered, the transaction is rolled back and the working copy is
    /// reloaded from the store, which holds exactly what was committed.
    fn step_catching_panics(&mut self, batch: &mut Vec<Job>) {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(batch)));
        if caught.is_err() {
            // Jobs not yet taken from the batch are answered; the taken ones' replies were
            // dropped with the unwinding (their callers see the writer gone for that call).
            let error = ServiceError::Unavailable("internal error; the change was not made".into());
            batch.drain(..).for_each(|(op, _)| op.fail(error.clone()));
            self.recover();
        }
    }

    fn recover(&mut self) {
        self.store.rollback();
        self.state.set_committing(false);
        if std::mem::take(&mut self.publishing) {
            self.poisoned = Some("a batch panicked while publishing; restart this instance".into());
        }
        match self.store.load() {
            Ok(snapshot) => {
                self.working = self.working.reloaded(snapshot.images, snapshot.counters);
                tracing::warn!(poisoned = self.poisoned.is_some(), "writer recovered from a panic");
            }
            Err(e) => {
                let cx = Context::new();
                errors::record(&cx, &errors::RELOAD_FAILED, &e);
                self.poisoned = Some(format!("cannot reload after a panic: {}", errors::chain(&e)));
            }
        }
    }

    /// One batch: lock (shared stores), stage, commit, then publish or undo. Drains `jobs`.
    pub fn step(&mut self, jobs: &mut Vec<Job>) {
        if crate::drill::take(crate::drill::Drill::Writer) {
            panic!("fire drill: a panic in the writer");
        }
        let shared = match self.lock(jobs) {
            Ok(shared) => shared,
            Err(e) => {
                let cx = jobs.iter().map(|(_, cx)| cx).find(|cx| cx.span().span_context().is_sampled());
                let cx = cx.cloned().unwrap_or_default();
                errors::record(&cx, &errors::LOCK_FAILED, &e);
                let error = ServiceError::Unavailable(e.to_string());
                jobs.drain(..).for_each(|(op, _)| op.fail(error.clone()));
                return;
            }
        };
        let mut undo = self.working.begin();
        let mut staged = Vec::with_capacity(jobs.len());
        let mut contexts = Vec::with_capacity(jobs.len());
        for (op, cx) in jobs.drain(..) {
            staged.push(self.working.stage(op, &mut undo));
            contexts.push(cx);
        }
        if undo.is_empty(&self.working) {
            self.store.rollback();
            self.working.end();
            return self.publish(staged, contexts);
        }
        // Until published, the bus leaves this batch's new images to this writer.
        let _creating = self.state.creating(if shared { created(&staged) } else { Vec::new() });
        let commit = Commit {
            writes: self.working.writes(&undo),
            counters: self.working.counters(),
            log: if shared { log(&staged, &contexts) } else { Vec::new() },
        };
        self.state.set_committing(true);
        let result = self.store.commit(&commit, &contexts, staged.len());
        self.state.set_committing(false);
        drop(commit);
        match result {
            Ok(()) => {
                self.working.end();
                if self.failing.take().is_some() {
                    tracing::info!("commits succeed again");
                }
                self.publishing = true;
                self.publish(staged, contexts);
                self.publishing = false;
            }
            Err(e) => {
                // Recorded by the store's instrumentation, on the commit's span.
                self.working.undo(undo);
                self.failing = Some(e.to_string());
                let error = ServiceError::Unavailable(e.to_string());
                staged.into_iter().for_each(|s| s.fail(error.clone()));
            }
        }
    }

    /// For a shared store: opens the batch's transaction, locking and re-reading every image
    /// the batch names (and the counters when it may create or delete), so that the rules
    /// decide on the database's current truth. Answers whether the batch runs shared.
    fn lock(&mut self, jobs: &mut [Job]) -> Result<bool, StoreError> {
        if !self.store.shared() {
            return Ok(false);
        }
        self.working.pick_ids(jobs.iter_mut().map(|(op, _)| op));
        let mut global = false;
        let mut ids: Vec<ImageId> = Vec::new();
        for (op, _) in jobs.iter() {
            match op {
                Op::Create { id, .. } => {
                    global = true;
                    ids.extend(id.clone());
                }
                Op::Ensure { id, .. } | Op::Delete { id, .. } => {
                    global = true;
                    ids.push(id.clone());
                }
                Op::Apply { id, .. } => ids.push(id.clone()),
                Op::Ping { .. } | Op::Stop => {}
            }
        }
        if ids.is_empty() && !global {
            return Ok(false);
        }
        ids.sort_unstable();
        ids.dedup();
        let Some(locked) = self.store.lock(&ids, global)? else {
            return Ok(false);
        };
        self.working.refresh(&ids, locked);
        Ok(true)
    }
}

/// The images a batch creates.
fn created(staged: &[Staged]) -> Vec<ImageId> {
    staged
        .iter()
        .filter_map(|s| match s {
            Staged::Created { id, .. } | Staged::Ensured { id, created: true, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// What a batch did, in order, for a shared store's change log and its notices.
fn log<'a>(staged: &'a [Staged], contexts: &[Context]) -> Vec<Logged<'a>> {
    let mut log = Vec::with_capacity(staged.len());
    for (staged, cx) in staged.iter().zip(contexts) {
        log.push(match staged {
            Staged::Applied { id, generation, version, command, .. } => Logged::Applied {
                image: id,
                generation: *generation,
                version: *version,
                command,
                trace: cx.span().span_context().clone(),
            },
            Staged::Created { id, .. } | Staged::Ensured { id, created: true, .. } => Logged::Created(id),
            Staged::Deleted { id, .. } => Logged::Deleted(id),
            _ => continue,
        });
    }
    log
}

impl Op {
    fn fail(self, error: ServiceError) {
        match self {
            Op::Create { reply, .. } => drop(reply.send(Err(error))),
            Op::Ensure { reply, .. } => drop(reply.send(Err(error))),
            Op::Apply { reply, .. } | Op::Delete { reply, .. } | Op::Ping { reply } => drop(reply.send(Err(error))),
            Op::Stop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::memory::MemoryStore;

    fn writer(store: &MemoryStore) -> (Writer, Arc<State>) {
        let state = Arc::new(State::new(false).0);
        let limits = Limits { max_images: 10, max_total_images: 100 };
        (Writer::load(Box::new(store.clone()), state.clone(), limits).unwrap(), state)
    }

    fn job(op: Op) -> Job {
        (op, Context::new())
    }

    #[tokio::test]
    async fn a_failed_commit_rolls_the_whole_batch_back_and_acknowledges_nothing() {
        let store = MemoryStore::default();
        let (mut writer, state) = writer(&store);
        let (created, created_rx) = oneshot::channel();
        writer.step(&mut vec![job(Op::Create { id: Some(ImageId::parse("kept").unwrap()), reply: created })]);
        assert!(created_rx.await.unwrap().is_ok());
        let mut events = state.subscribe(&ImageId::parse("kept").unwrap()).unwrap();

        store.fail_commits.store(true, Ordering::Relaxed);
        let (drawn, drawn_rx) = oneshot::channel();
        let (made, made_rx) = oneshot::channel();
        let (gone, gone_rx) = oneshot::channel();
        let kept = ImageId::parse("kept").unwrap();
        writer.step(&mut vec![
            job(Op::Apply { id: kept.clone(), command: Command::ClearCanvas, reply: drawn }),
            job(Op::Create { id: Some(ImageId::parse("new").unwrap()), reply: made }),
            job(Op::Delete { id: kept.clone(), reply: gone }),
        ]);
        for answer in [drawn_rx.await.unwrap(), gone_rx.await.unwrap()] {
            assert!(
                matches!(answer, Err(ServiceError::Unavailable(ref e)) if e.contains("disk on fire")),
                "{answer:?}"
            );
        }
        assert!(made_rx.await.unwrap().is_err());
        // Nothing of it is visible, nothing was stored, and no event went out.
        assert_eq!(state.ids(), vec![kept.clone()]);
        assert_eq!(state.live(&kept).map(|(_, version)| version), Some(0));
        assert_eq!(store.contents.lock().unwrap().commits, 1);
        assert!(events.try_recv().is_err());

        // The next batch starts from the state before the failed one.
        store.fail_commits.store(false, Ordering::Relaxed);
        let (drawn, drawn_rx) = oneshot::channel();
        writer.step(&mut vec![job(Op::Apply { id: kept.clone(), command: Command::ClearCanvas, reply: drawn })]);
        assert!(drawn_rx.await.unwrap().is_ok());
        assert_eq!(store.contents.lock().unwrap().images[&kept].version, 1, "the undone version is given again");
        assert_eq!(store.contents.lock().unwrap().counters.images_created, 1);
    }

    #[tokio::test]
    async fn a_batch_that_changes_nothing_commits_nothing_and_still_answers() {
        let store = MemoryStore::default();
        let (mut writer, _state) = writer(&store);
        let (missing, missing_rx) = oneshot::channel();
        let (ping, ping_rx) = oneshot::channel();
        writer.step(&mut vec![
            job(Op::Delete { id: ImageId::parse("nobody").unwrap(), reply: missing }),
            job(Op::Ping { reply: ping }),
        ]);
        assert!(matches!(missing_rx.await.unwrap(), Err(ServiceError::NotFound)));
        assert!(ping_rx.await.unwrap().is_ok());
        assert_eq!(store.contents.lock().unwrap().commits, 0);
    }
}
