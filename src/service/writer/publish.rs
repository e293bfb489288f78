//! After a successful commit: the batch becomes visible, in the order it happened — canvases
//! and events to readers and subscribers, then each caller's answer.

use std::time::Instant;

use opentelemetry::Context;

use super::{Writer, batch::Staged};
use crate::{
    domain::{Command, ImageId, event},
    service::{
        ServiceError,
        image::Delivery,
        state::{Announce, Delivered},
    },
    telemetry::{errors, metrics},
};

impl Writer {
    pub(super) fn publish(&mut self, staged: Vec<Staged>, contexts: Vec<Context>) {
        let committed_at = Instant::now();
        self.state.merge_counters(self.working.counters());
        for (staged, cx) in staged.into_iter().zip(contexts) {
            match staged {
                Staged::Created { id, reply } => {
                    self.make_live(&id, Announce::Now);
                    let _ = reply.send(Ok(id));
                }
                Staged::Ensured { id, created: true, reply } => {
                    // Announced by the connection, after its user_connected.
                    self.make_live(&id, Announce::ByJoin);
                    let _ = reply.send(Ok(true));
                }
                Staged::Ensured { id, created: false, reply } => {
                    // Live here already, or created by another instance whose notice has not
                    // arrived: then made live (blank at version 0, announced) and caught up.
                    if self.make_live(&id, Announce::Now) {
                        self.state.request_catch_up(&id, None);
                    }
                    let _ = reply.send(Ok(false));
                }
                Staged::Applied { id, generation, version, command, reply } => {
                    count(&command);
                    let text = event::image_updated(&id, &command).into();
                    let change = Delivery { version, command, text, committed_at, cx };
                    // A gap: another instance's change comes first and is not here yet. Not
                    // live: this instance has not seen the image's creation yet. The bus
                    // brings either.
                    if self.state.deliver(&id, generation, change) != Delivered::InOrder {
                        self.state.request_catch_up(&id, None);
                    }
                    let _ = reply.send(Ok(()));
                }
                Staged::Deleted { id, reply } => {
                    self.state.remove_image(&id, None);
                    let _ = reply.send(Ok(()));
                }
                Staged::Pinged { reply } => {
                    let _ = reply.send(self.readiness(&cx));
                }
                Staged::Refused { reply, error } => reply(error),
            }
        }
    }

    /// Whether writes can be acknowledged: not poisoned, the database answers, and, after a
    /// failed commit, a probe write succeeds.
    fn readiness(&mut self, cx: &opentelemetry::Context) -> Result<(), ServiceError> {
        if let Some(why) = &self.poisoned {
            return Err(ServiceError::Unavailable(why.clone()));
        }
        let result = if self.failing.is_some() { self.store.probe() } else { self.store.ping() };
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!("writes succeed again");
                }
                Ok(())
            }
            Err(e) => {
                errors::record(cx, &errors::PING_FAILED, &e);
                let why = match &self.failing {
                    Some(commit) => format!("commits are failing ({commit}); and now: {e}"),
                    None => e.to_string(),
                };
                Err(ServiceError::Unavailable(why))
            }
        }
    }

    /// A newly committed image becomes live blank at version 0 (its changes in this batch
    /// follow as deliveries). Answers false if it already was (the bus was faster), or if it
    /// was created and deleted again within this batch (its delete follows).
    fn make_live(&self, id: &ImageId, announce: Announce) -> bool {
        match self.working.generation(id) {
            Some(generation) => self.state.add_image(id, generation, Default::default(), 0, announce),
            None => false,
        }
    }
}

fn count(command: &Command) {
    let m = metrics();
    static APPLIED: metrics::CounterBy<1> = metrics::CounterBy::new(["draw64.command.type"]);
    APPLIED.add(&m.commands_applied, 1, [command.kind()]);
    m.pixels_drawn.add(command.pixels_on_canvas(), &[]);
}
