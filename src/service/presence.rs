//! Who is connected: this instance's users (a guard per connection) and the other instances'
//! counts, heard from their heartbeats.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, futures::Notified};

use super::{image::LiveImage, state::State, sync::lock};

/// How long another instance's user count counts without a heartbeat (an instance that died
/// without saying goodbye drops out of the total after this).
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// The user counts: this instance's, and the others' as last heard.
#[derive(Default)]
pub(super) struct Users {
    local: AtomicU64,
    remote: Mutex<RemoteUsers>,
    /// Wakes the bus when this instance's count changes.
    changed: Notify,
}

impl Users {
    pub(super) fn joined(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub(super) fn left(&self) {
        self.local.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub(super) fn local(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    /// Users on every instance: this one's plus the others' last heartbeats.
    pub(super) fn total(&self) -> u64 {
        self.local() + lock(&self.remote).total(Instant::now())
    }

    pub(super) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Records another instance's count (see `RemoteUsers::update`); answers the new total if
    /// it changed.
    pub(super) fn update_remote(&self, instance: Option<(&str, Option<u64>)>) -> Option<u64> {
        let before = self.total();
        lock(&self.remote).update(instance, Instant::now());
        let after = self.total();
        (after != before).then_some(after)
    }
}

/// Users on other instances, by instance id, with when each was last heard from.
#[derive(Default)]
pub(super) struct RemoteUsers(HashMap<String, (u64, Instant)>);

impl RemoteUsers {
    pub(super) fn total(&self, now: Instant) -> u64 {
        self.0.values().filter(|(_, seen)| now - *seen < PRESENCE_TTL).map(|(n, _)| n).sum()
    }

    /// Records an instance's count (`None`: it left) and forgets the ones gone silent.
    pub(super) fn update(&mut self, instance: Option<(&str, Option<u64>)>, now: Instant) {
        match instance {
            Some((instance, Some(users))) => drop(self.0.insert(instance.to_owned(), (users, now))),
            Some((instance, None)) => drop(self.0.remove(instance)),
            None => {}
        }
        self.0.retain(|_, (_, seen)| now - *seen < PRESENCE_TTL);
    }
}

/// One connected user: counted while it lives, on its image and on the instance; dropping it
/// announces the departure.
pub struct Presence {
    pub(super) state: Arc<State>,
    /// Weak: a connected user must not keep a deleted image's event channel open.
    pub(super) image: Option<Weak<LiveImage>>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(img) = self.image.as_ref().and_then(Weak::upgrade) {
            img.users.fetch_sub(1, Ordering::Relaxed);
        }
        self.state.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_counts_expire_and_leave() {
        let mut remote = RemoteUsers::default();
        let start = Instant::now();
        remote.update(Some(("a", Some(3))), start);
        remote.update(Some(("b", Some(4))), start + Duration::from_secs(5));
        assert_eq!(remote.total(start + Duration::from_secs(6)), 7);
        assert_eq!(remote.total(start + PRESENCE_TTL + Duration::from_secs(1)), 4);
        remote.update(Some(("b", None)), start + Duration::from_secs(7));
        assert_eq!(remote.total(start + Duration::from_secs(7)), 3);
    }
}
