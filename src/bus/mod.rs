//! Cross-instance fan-out: how an instance learns what the others committed.
//!
//! The change log lives in the shared store (each batch appends its accepted commands with
//! their per-image versions and sends a small pointer — image, generation, version — with its
//! commit). A bus carries those pointers and the instances' presence heartbeats; it is
//! loss-tolerant by design: whatever it drops, the instance finds out from the log (a version
//! gap, a reconnect, or the periodic sweep) and reads what it missed before sending anything
//! newer. With one instance (SQLite) there is no bus.

#[cfg(feature = "postgres")]
pub mod postgres;

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{service::Replica, store::Database};

/// The contract every bus keeps, whatever carries it:
///
/// - every change another instance commits reaches this instance's subscribers once, in the
///   image's version order, after this instance's own earlier ones (through `Replica::deliver`,
///   which drops duplicates and holds early versions back); a change the log no longer holds
///   makes the image reload (`Replica::reset`) instead of leaving a gap;
/// - images created or deleted elsewhere become live or go here, each announced once;
/// - the user count is cluster-wide: this instance's heartbeat goes out when it changes and at
///   least every few seconds, and an instance silent for `PRESENCE_TTL` leaves the total;
/// - a catch-up request (a reader wanting the committed state, the writer seeing a gap) is
///   answered after the image has every change committed before it was made.
pub trait Bus: Send + Sync + 'static {
    /// Readiness: `Ok`, or why this instance is not hearing the others.
    fn check(&self) -> Result<(), String>;
    /// Tells the other instances this one is leaving (its users leave the total at once),
    /// then stops.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Starts the bus `database` calls for: none for an embedded store (or without a replica).
pub async fn start(database: &Database, instance: &str, replica: Option<Replica>) -> Option<Arc<dyn Bus>> {
    match (database, replica) {
        #[cfg(feature = "postgres")]
        (Database::Postgres(config), Some(replica)) => Some(postgres::start(config, instance, replica).await),
        _ => {
            let _ = instance;
            None
        }
    }
}
