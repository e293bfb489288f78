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

use std::{future::Future, pin::Pin};

pub trait Bus: Send + Sync + 'static {
    /// Readiness: `Ok`, or why this instance is not hearing the others.
    fn check(&self) -> Result<(), String>;
    /// Tells the other instances this one is leaving (its users leave the total at once),
    /// then stops.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Starts the bus a `--database` URL calls for: none for an embedded store.
pub async fn start(
    url: &str,
    instance: &str,
    service: &crate::service::Service,
) -> Result<Option<std::sync::Arc<dyn Bus>>, crate::store::StoreError> {
    #[cfg(feature = "postgres")]
    if crate::store::is_shared(url) {
        return Ok(Some(postgres::start(url, instance, service.live().clone()).await?));
    }
    let _ = (url, instance, service);
    Ok(None)
}
