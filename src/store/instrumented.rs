//! A `Store` as OpenTelemetry sees it: each commit a `db.client` span (when a request in the
//! batch is traced) and every operation a `db.client.operation.duration` sample, with the
//! semantic conventions' attributes. The writer talks to the store only through this.

use std::time::{Duration, Instant};

use opentelemetry::{
    Context, KeyValue,
    global::BoxedSpan,
    trace::{Link, Span as _, SpanKind, TraceContextExt as _, Tracer as _},
};
use opentelemetry_semantic_conventions::attribute as attr;

use super::{Commit, Describe, Locked, Snapshot, Store, StoreError, Write};
use crate::{
    domain::ImageId,
    faults::{self, Fault},
    telemetry::{errors, metrics},
};

/// At most this many requests are linked from one batch's database span.
const MAX_LINKS: usize = 64;

pub struct Instrumented {
    store: Box<dyn Store>,
    db: Describe,
}

impl Instrumented {
    pub fn new(store: Box<dyn Store>) -> Self {
        let db = store.describe();
        Self { store, db }
    }

    pub fn describe(&self) -> &Describe {
        &self.db
    }

    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    pub fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.store.load()
    }

    pub fn lock(&mut self, ids: &[ImageId], global: bool) -> Result<Option<Locked>, StoreError> {
        self.store.lock(ids, global)
    }

    pub fn rollback(&mut self) {
        self.store.rollback();
    }

    /// Commits one batch of `operations` requests whose trace contexts are `contexts`.
    pub fn commit(&mut self, commit: &Commit<'_>, contexts: &[Context], operations: usize) -> Result<(), StoreError> {
        let upserts_only = commit.writes.iter().all(|w| matches!(w, Write::Upsert(_)));
        let operation = if upserts_only { "BATCH UPSERT" } else { "BATCH" };
        let mut span = self.span(operation, contexts, commit.writes.len());
        let started = Instant::now();
        let result = self.faulty_commit(commit, span.as_mut());
        self.record(operation, started.elapsed(), result.as_ref().err().map(|_| "commit_failed"));
        metrics().batch_size.record(operations as u64, &[]);
        let cx = span.map(|s| Context::new().with_span(s)).unwrap_or_default();
        if let Err(e) = &result {
            // The one record of a failed commit: every caller in the batch answers 503 from it.
            errors::record(&cx, &errors::COMMIT_FAILED, e);
        }
        cx.span().end();
        result
    }

    /// The commit, as the fault flags `slowCommits` and `failingCommits` have it.
    fn faulty_commit(&mut self, commit: &Commit<'_>, mut span: Option<&mut BoxedSpan>) -> Result<(), StoreError> {
        let mut mark = |fault| {
            if let (Some(span), Some(attributes)) = (span.as_deref_mut(), faults::span_attributes(fault)) {
                span.set_attributes(attributes);
            }
        };
        if let Some(delay) = faults::commit_delay() {
            mark(Fault::SlowCommits);
            // The writer's own thread: a slow disk would hold it the same way.
            std::thread::sleep(delay);
        }
        if faults::commit_fails() {
            mark(Fault::FailingCommits);
            self.store.rollback();
            return Err(StoreError::Unusable("fault injected: the failingCommits flag is on".into()));
        }
        self.store.commit(commit)
    }

    pub fn ping(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.store.ping();
        self.record("SELECT", started.elapsed(), result.as_ref().err().map(|_| "ping_failed"));
        result
    }

    /// A write that changes nothing, to learn whether writes succeed again.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.store.probe();
        self.record("UPDATE", started.elapsed(), result.as_ref().err().map(|_| "ping_failed"));
        result
    }

    /// The store's housekeeping; a failure is logged here and retried next time.
    pub fn maintain(&mut self) {
        let started = Instant::now();
        match self.store.maintain() {
            Ok(None) => {}
            Ok(Some(operation)) => self.record(operation, started.elapsed(), None),
            Err(e) => {
                tracing::warn!(error = %e, "database housekeeping failed; will retry");
                self.record("MAINTAIN", started.elapsed(), Some("maintenance_failed"));
            }
        }
    }

    /// A client span for one commit, when a request in it is traced: parented to the first
    /// traced request, linked to the others (one transaction serves them all).
    fn span(&self, operation: &'static str, contexts: &[Context], writes: usize) -> Option<BoxedSpan> {
        let mut sampled = contexts.iter().filter(|cx| cx.span().span_context().is_sampled());
        let parent = sampled.next()?;
        let links = sampled.take(MAX_LINKS).map(|cx| Link::with_context(cx.span().span_context().clone())).collect();
        let mut attributes = vec![
            KeyValue::new(attr::DB_SYSTEM_NAME, self.db.system),
            KeyValue::new(attr::DB_NAMESPACE, self.db.namespace.clone()),
            KeyValue::new(attr::DB_OPERATION_NAME, operation),
            KeyValue::new(attr::DB_COLLECTION_NAME, "images"),
            KeyValue::new(attr::DB_QUERY_TEXT, self.db.commit_query),
        ];
        if writes > 1 {
            attributes.push(KeyValue::new(attr::DB_OPERATION_BATCH_SIZE, writes as i64));
        }
        let tracer = crate::telemetry::span::tracer();
        let span = tracer
            .span_builder(format!("{operation} images"))
            .with_kind(SpanKind::Client)
            .with_links(links)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Some(span)
    }

    fn record(&self, operation: &'static str, took: Duration, error: Option<&'static str>) {
        let mut attrs = vec![
            KeyValue::new(attr::DB_SYSTEM_NAME, self.db.system),
            KeyValue::new(attr::DB_OPERATION_NAME, operation),
        ];
        if let Some(e) = error {
            attrs.push(KeyValue::new(attr::ERROR_TYPE, e));
        }
        metrics().db_duration.record(took.as_secs_f64(), &attrs);
    }
}
