//! What is counted per client address: rates (token buckets, `Rates`) and things held open
//! (connections, sockets, streams: `Occupancy`, whose seats are released on drop). Both are
//! bounded in memory whatever the number of addresses: an idle client's full bucket is
//! forgotten, and a client with nothing open has no entry.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use super::bucket::{Bucket, Rate};

/// Client buckets kept before the idle ones are swept.
const MAX_CLIENTS: usize = 65_536;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One bucket per client address and kind, for `N` kinds (say, commands and pixels).
pub struct Rates<const N: usize> {
    rates: [Rate; N],
    buckets: Mutex<HashMap<IpAddr, [Bucket; N]>>,
}

impl<const N: usize> Rates<N> {
    pub fn new(rates: [Rate; N]) -> Self {
        Self { rates, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `amounts[k]` from the client's bucket of kind `k`, all or none; on refusal, the
    /// first kind that lacked and how long until it would not.
    pub fn take(&self, client: IpAddr, amounts: [f64; N], now: Instant) -> Result<(), (usize, Duration)> {
        if self.rates.iter().all(Rate::is_unlimited) {
            return Ok(());
        }
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let rates = self.rates;
            buckets.retain(|_, b| !b.iter().zip(rates).all(|(b, r)| b.is_refilled(r, now)));
        }
        let mine = buckets.entry(client).or_insert_with(|| self.rates.map(|r| Bucket::full(r, now)));
        // Check every kind before taking any, so a refusal costs the client nothing (a
        // refill takes nothing). Each bucket is refilled once: a take is on every command.
        for (k, (bucket, rate)) in mine.iter_mut().zip(self.rates).enumerate() {
            if let Some(wait) = bucket.wait_for(rate, amounts[k], now) {
                return Err((k, wait));
            }
        }
        for (bucket, (rate, n)) in mine.iter_mut().zip(self.rates.into_iter().zip(amounts)) {
            bucket.spend(rate, n);
        }
        Ok(())
    }
}

/// Seats held open: at most `max` in all and `per_client` for one address.
pub struct Occupancy {
    max: usize,
    per_client: usize,
    state: Mutex<Seats>,
}

#[derive(Default)]
struct Seats {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a seat was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    InAll,
    ForClient,
}

/// A seat, given back when dropped.
pub struct Seat {
    occupancy: Arc<Occupancy>,
    client: Option<IpAddr>,
}

impl Occupancy {
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self { max, per_client, state: Mutex::default() })
    }

    /// A seat for `client`; `None` counts only in the total (a trusted proxy speaks for many).
    pub fn enter(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Seat, Full> {
        let mut seats = lock(&self.state);
        if seats.total >= self.max {
            return Err(Full::InAll);
        }
        if let Some(ip) = client {
            let mine = seats.by_client.entry(ip).or_default();
            if *mine >= self.per_client {
                return Err(Full::ForClient);
            }
            *mine += 1;
        }
        seats.total += 1;
        Ok(Seat { occupancy: self.clone(), client })
    }

    pub fn total(&self) -> usize {
        lock(&self.state).total
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = lock(&self.occupancy.state);
        seats.total -= 1;
        if let Some(ip) = self.client
            && let Some(n) = seats.by_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                seats.by_client.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn seats_per_client_and_in_all_are_given_back() {
        let o = Occupancy::new(3, 2);
        let a1 = o.enter(Some(ip("10.0.0.1"))).unwrap();
        let _a2 = o.enter(Some(ip("10.0.0.1"))).unwrap();
        assert_eq!(o.enter(Some(ip("10.0.0.1"))).err(), Some(Full::ForClient));
        let _b = o.enter(Some(ip("10.0.0.2"))).unwrap();
        assert_eq!(o.enter(None).err(), Some(Full::InAll));
        drop(a1);
        assert_eq!(o.total(), 2);
        let _proxy = o.enter(None).unwrap();
        assert_eq!(lock(&o.state).by_client.len(), 2);
    }

    #[test]
    fn rates_are_per_client_and_all_or_nothing() {
        let rates = Rates::new([Rate::per_second(1.0, 0.0), Rate::per_second(100.0, 0.0)]);
        let now = Instant::now();
        let a = ip("10.0.0.1");
        // Two commands of 100 pixels fit the bursts (2 and 200); the third lacks a command.
        assert!(rates.take(a, [1.0, 100.0], now).is_ok());
        assert!(rates.take(a, [1.0, 100.0], now).is_ok());
        assert_eq!(rates.take(a, [1.0, 0.0], now).unwrap_err().0, 0);
        let b = ip("10.0.0.2");
        // Lacking pixels takes no command either.
        assert_eq!(rates.take(b, [1.0, 1000.0], now).unwrap_err().0, 1);
        assert!(rates.take(b, [1.0, 1.0], now).is_ok() && rates.take(b, [1.0, 1.0], now).is_ok());
    }
}
