//! Token buckets (governor) for messages, typing, joins, uploads and connects, and their
//! refusal errors.

use super::ChatError;
use crate::model::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// One bucket (per connection).
pub struct Bucket(DefaultDirectRateLimiter);

impl Bucket {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self(RateLimiter::direct(quota(per_sec, burst)))
    }

    /// Takes a token, or says how long until one is free.
    pub fn take(&self) -> Result<(), ChatError> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ChatError::RateLimited(wait.as_millis().max(1) as u64)
        })
    }
}

/// One bucket per user (across their connections).
pub type UserBuckets = Buckets<UserId>;

/// One bucket per key (user, client IP, ...).
pub struct Buckets<K: std::hash::Hash + Eq + Clone>(DefaultKeyedRateLimiter<K>);

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self(RateLimiter::keyed(quota(per_sec, burst)))
    }

    /// One token every `period`, `burst` at once (rates slower than one per second).
    pub fn with_period(period: std::time::Duration, burst: u32) -> Self {
        let q = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self(RateLimiter::keyed(q))
    }

    pub fn take(&self, key: &K) -> Result<(), ChatError> {
        self.0.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ChatError::RateLimited(wait.as_millis().max(1) as u64)
        })
    }

    /// Forgets keys whose buckets are full again, and gives back the map's spare capacity
    /// (bounds memory: a burst of distinct keys must not leave its table behind).
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
