//! Request limits: a token bucket per token, and a count of failed
//! authentications per peer address in a sliding minute. Both maps are
//! bounded: past [`MAX_KEYS`] entries the idle ones are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tokens or peers tracked at once.
pub const MAX_KEYS: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limits {
    rate: f64,
    burst: f64,
    failed_max: u32,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
    failed: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl Limits {
    pub fn new(rate_per_second: u32, burst: u32, failed_auth_per_minute: u32) -> Limits {
        Limits {
            rate: rate_per_second as f64,
            burst: burst as f64,
            failed_max: failed_auth_per_minute,
            buckets: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the token's bucket; false when it is empty.
    pub fn allow(&self, digest: &[u8; 32], now: Instant) -> bool {
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_KEYS && !m.contains_key(digest) {
            let burst = self.burst;
            let rate = self.rate;
            m.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = m.entry(*digest).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `peer` has failed authentication too often in the last minute.
    pub fn blocked(&self, peer: IpAddr, now: Instant) -> bool {
        let mut m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(&peer) {
            None => false,
            Some(v) => {
                v.retain(|t| now.duration_since(*t) < WINDOW);
                v.len() as u32 >= self.failed_max
            }
        }
    }

    /// Counts a failed authentication of `peer`.
    pub fn failed(&self, peer: IpAddr, now: Instant) {
        let mut m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_KEYS && !m.contains_key(&peer) {
            m.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < WINDOW));
        }
        let v = m.entry(peer).or_default();
        v.retain(|t| now.duration_since(*t) < WINDOW);
        // Never more than the limit kept: the count is all that matters.
        if (v.len() as u32) < self.failed_max.max(1) {
            v.push(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = Limits::new(10, 3, 2);
        let t = Instant::now();
        let k = [7u8; 32];
        assert!(l.allow(&k, t) && l.allow(&k, t) && l.allow(&k, t));
        assert!(!l.allow(&k, t));
        assert!(l.allow(&k, t + Duration::from_millis(110)));
        assert!(l.allow(&[8u8; 32], t), "other tokens are not affected");
    }

    #[test]
    fn failed_auth_blocks_a_peer_for_a_minute() {
        let l = Limits::new(10, 3, 2);
        let t = Instant::now();
        let p: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!l.blocked(p, t));
        l.failed(p, t);
        l.failed(p, t);
        assert!(l.blocked(p, t));
        assert!(!l.blocked("127.0.0.2".parse().unwrap(), t));
        assert!(!l.blocked(p, t + Duration::from_secs(61)));
    }
}
