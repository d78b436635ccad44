//! Per-user flood protection for writes: one token bucket per user, in a bounded map.
//!
//! Every write (`login`, `channel`, `publish`, `message`) costs one token from the bucket of
//! its user (the `user` of a login or a post, the `src` of a private message; channel
//! creation names no user and shares one anonymous bucket). A bucket holds at most
//! [`RateLimit::burst`] tokens and refills at [`RateLimit::per_sec`] tokens per second; a
//! write that finds it empty is refused with [`ChatError::RateLimited`] (code
//! `rate_limited`). A rate of 0 disables the limiter.
//!
//! The map of buckets is itself bounded ([`RateLimit::max_keys`], default 10 000): when it
//! is full, the least recently used bucket is forgotten. A forgotten bucket would be
//! (nearly) full anyway if its user has been quiet, and a new bucket starts full, so a
//! flood of made-up user names costs memory only up to the bound: about
//! `max_keys × (MAX_KEY_BYTES + ~100 bytes)`, under 4 MiB with the defaults.
//!
//! Time comes in as an argument (milliseconds, any epoch): nothing here reads a clock.
//! A clock that steps backwards refills nothing and never locks a user out.

use std::collections::{BTreeMap, HashMap};

use crate::error::ChatError;
use crate::model::EventKind;

/// Default sustained rate: writes per second per user.
pub const DEFAULT_PER_SEC: u32 = 1000;
/// Default burst: writes a quiet user may make at once.
pub const DEFAULT_BURST: u32 = 2000;
/// Default number of users tracked at once.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// Longest key kept, in bytes (longer keys are cut at a character boundary). Every valid
/// name (64 characters of at most 4 bytes) fits, so only invalid names can share a bucket.
pub const MAX_KEY_BYTES: usize = 256;

/// Fixed-point scale: one token is this many micro-tokens.
const MICRO: u64 = 1_000_000;

/// How fast each user may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained writes per second per user; 0 disables the limiter.
    pub per_sec: u32,
    /// Largest number of writes at once (bucket size); 0 is read as 1.
    pub burst: u32,
    /// Most users tracked at once (at least 1); the least recently used is forgotten.
    pub max_keys: usize,
}

impl Default for RateLimit {
    /// [`DEFAULT_PER_SEC`] writes per second, bursts of [`DEFAULT_BURST`], [`DEFAULT_MAX_KEYS`]
    /// users tracked.
    fn default() -> Self {
        RateLimit {
            per_sec: DEFAULT_PER_SEC,
            burst: DEFAULT_BURST,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

impl RateLimit {
    /// A limit that lets everything through.
    pub const fn disabled() -> Self {
        RateLimit {
            per_sec: 0,
            burst: 0,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// `per_sec` writes per second with bursts of `burst`, default map bound.
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        RateLimit {
            per_sec,
            burst,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// Whether writes are limited at all.
    pub const fn is_enabled(&self) -> bool {
        self.per_sec > 0
    }
}

/// The key a write is charged to: its user (`src` of a private message), or the anonymous
/// key `""` for channel creation (no valid user name is empty, so nothing clashes).
pub fn write_key(kind: &EventKind) -> &str {
    match kind {
        EventKind::UserLoggedIn { user } | EventKind::ChannelMessage { user, .. } => user,
        EventKind::DirectMessage { src, .. } => src,
        EventKind::ChannelCreated { .. } => "",
    }
}

/// One user's bucket.
#[derive(Debug, Clone)]
struct Bucket {
    /// Tokens left, in micro-tokens.
    micro: u64,
    /// When `micro` was last brought up to date (ms).
    at_ms: i64,
    /// Position in the recency order (key of `RateLimiter::order`).
    used: u64,
}

/// Token buckets per key, bounded in number. Not thread-safe; one per server loop.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<String, Bucket>,
    /// Recency order: use counter → key; the first entry is the least recently used.
    order: BTreeMap<u64, String>,
    next_use: u64,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
            order: BTreeMap::new(),
            next_use: 0,
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Number of keys tracked now (never more than `max_keys`).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Charges one write to `key` at time `now_ms`; `Err(RateLimited)` when its bucket is
    /// empty (nothing is charged then).
    pub fn check(&mut self, key: &str, now_ms: i64) -> Result<(), ChatError> {
        if !self.limit.is_enabled() {
            return Ok(());
        }
        let key = clip(key);
        let capacity = u64::from(self.limit.burst.max(1)).saturating_mul(MICRO);
        // per_sec tokens per 1000 ms = per_sec × 1000 micro-tokens per ms.
        let per_ms = u64::from(self.limit.per_sec).saturating_mul(MICRO / 1000);
        let used = self.next_use;
        self.next_use += 1;
        if !self.buckets.contains_key(key) {
            self.evict_to(self.limit.max_keys.max(1) - 1);
            self.buckets.insert(
                key.to_string(),
                Bucket {
                    micro: capacity,
                    at_ms: now_ms,
                    used,
                },
            );
        }
        let Some(bucket) = self.buckets.get_mut(key) else {
            // Just inserted; unreachable, and letting the write through is harmless.
            return Ok(());
        };
        self.order.remove(&bucket.used);
        let elapsed = u64::try_from(now_ms.saturating_sub(bucket.at_ms)).unwrap_or(0);
        bucket.micro = bucket
            .micro
            .saturating_add(elapsed.saturating_mul(per_ms))
            .min(capacity);
        // A clock that went backwards restarts the refill from now.
        bucket.at_ms = now_ms;
        bucket.used = used;
        self.order.insert(used, key.to_string());
        if bucket.micro >= MICRO {
            bucket.micro -= MICRO;
            Ok(())
        } else {
            Err(ChatError::RateLimited)
        }
    }

    /// Forgets least recently used buckets until at most `keep` remain.
    fn evict_to(&mut self, keep: usize) {
        while self.buckets.len() > keep {
            let Some((_, key)) = self.order.pop_first() else {
                // Cannot happen (every bucket is in `order`); stay bounded regardless.
                self.buckets.clear();
                return;
            };
            self.buckets.remove(&key);
        }
    }
}

/// `key` cut to at most [`MAX_KEY_BYTES`] at a character boundary.
fn clip(key: &str) -> &str {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn allowed(l: &mut RateLimiter, key: &str, now: i64, n: usize) -> usize {
        (0..n).filter(|_| l.check(key, now).is_ok()).count()
    }

    #[test]
    fn burst_then_refusal() {
        let mut l = RateLimiter::new(RateLimit::new(10, 5));
        assert_eq!(allowed(&mut l, "ana", 1_000, 5), 5);
        let err = l.check("ana", 1_000).unwrap_err();
        assert_eq!(err, ChatError::RateLimited);
        assert_eq!(err.code(), ErrorCode::RateLimited);
        assert!(!err.to_string().is_empty());
        // Another user has a bucket of their own.
        assert_eq!(allowed(&mut l, "bia", 1_000, 5), 5);
    }

    #[test]
    fn refills_over_time_up_to_the_burst() {
        let mut l = RateLimiter::new(RateLimit::new(10, 5));
        assert_eq!(allowed(&mut l, "ana", 0, 10), 5);
        // 10 per second: one token per 100 ms.
        assert_eq!(allowed(&mut l, "ana", 99, 3), 0);
        assert_eq!(allowed(&mut l, "ana", 100, 3), 1);
        assert_eq!(allowed(&mut l, "ana", 350, 3), 2);
        // Refusals cost nothing; a long pause refills only up to the burst.
        assert_eq!(allowed(&mut l, "ana", 60_000, 10), 5);
    }

    #[test]
    fn sustained_rate_is_respected() {
        let mut l = RateLimiter::new(RateLimit::new(50, 100));
        let mut ok = 0;
        // 10 seconds of one attempt per millisecond.
        for ms in 0..10_000 {
            ok += allowed(&mut l, "ana", ms, 1);
        }
        // Burst plus ~50 per second.
        assert!((590..=601).contains(&ok), "{ok}");
    }

    #[test]
    fn fractional_rates_accumulate() {
        let mut l = RateLimiter::new(RateLimit::new(1, 1));
        assert_eq!(allowed(&mut l, "ana", 0, 2), 1);
        for ms in (1..1_000).step_by(7) {
            assert!(l.check("ana", ms).is_err(), "at {ms}");
        }
        assert!(l.check("ana", 1_000).is_ok());
    }

    #[test]
    fn disabled_when_rate_is_zero() {
        let mut l = RateLimiter::new(RateLimit::disabled());
        assert_eq!(allowed(&mut l, "ana", 0, 100_000), 100_000);
        assert_eq!(l.tracked(), 0);
        let mut l = RateLimiter::new(RateLimit::new(0, 5));
        assert_eq!(allowed(&mut l, "ana", 0, 1_000), 1_000);
    }

    #[test]
    fn zero_burst_is_one() {
        let mut l = RateLimiter::new(RateLimit::new(1000, 0));
        assert_eq!(allowed(&mut l, "ana", 0, 5), 1);
        assert_eq!(allowed(&mut l, "ana", 1, 5), 1);
    }

    #[test]
    fn clock_going_backwards_neither_refills_nor_locks_out() {
        let mut l = RateLimiter::new(RateLimit::new(10, 2));
        assert_eq!(allowed(&mut l, "ana", 1_000_000, 5), 2);
        // One hour back: nothing refilled...
        assert_eq!(allowed(&mut l, "ana", 1_000_000 - 3_600_000, 5), 0);
        // ...but the refill restarts from the new "now".
        assert_eq!(allowed(&mut l, "ana", 1_000_000 - 3_600_000 + 100, 5), 1);
        // Extreme values do not overflow.
        assert_eq!(allowed(&mut l, "ana", i64::MAX, 5), 2);
        assert_eq!(allowed(&mut l, "ana", i64::MIN, 5), 0);
    }

    #[test]
    fn key_map_is_bounded() {
        let limit = RateLimit {
            max_keys: 100,
            ..RateLimit::new(1, 1)
        };
        let mut l = RateLimiter::new(limit);
        for i in 0..10_000 {
            assert!(l.check(&format!("user-{i}"), 0).is_ok());
            assert!(l.tracked() <= 100);
        }
        assert_eq!(l.tracked(), 100);
        assert_eq!(l.order.len(), 100);
        // Long keys are clipped, so memory per key is bounded too.
        let long = "é".repeat(10_000);
        assert!(l.check(&long, 0).is_ok());
        assert!(l.buckets.keys().all(|k| k.len() <= MAX_KEY_BYTES));
        assert!(
            l.check(&long, 0).is_err(),
            "the clipped key is the same bucket"
        );
    }

    #[test]
    fn eviction_forgets_the_least_recently_used() {
        let limit = RateLimit {
            max_keys: 3,
            ..RateLimit::new(1, 1)
        };
        let mut l = RateLimiter::new(limit);
        for k in ["a", "b", "c"] {
            assert!(l.check(k, 0).is_ok());
        }
        // `a` is used again (refused, but recent): `b` is now the oldest.
        assert!(l.check("a", 0).is_err());
        assert!(l.check("d", 0).is_ok());
        assert_eq!(l.tracked(), 3);
        assert!(!l.buckets.contains_key("b"));
        // `a` and `c` are still remembered as empty.
        assert!(l.check("a", 0).is_err());
        assert!(l.check("c", 0).is_err());
        // `b` was forgotten and starts again with a full bucket.
        assert!(l.check("b", 0).is_ok());
        assert!(!l.buckets.contains_key("d"));
    }

    #[test]
    fn writes_are_charged_to_their_author() {
        let post = EventKind::ChannelMessage {
            channel: "geral".into(),
            user: "ana".into(),
            message: "oi".into(),
        };
        assert_eq!(write_key(&post), "ana");
        let dm = EventKind::DirectMessage {
            src: "bia".into(),
            dst: "ana".into(),
            message: "oi".into(),
        };
        assert_eq!(write_key(&dm), "bia");
        let login = EventKind::UserLoggedIn {
            user: "caio".into(),
        };
        assert_eq!(write_key(&login), "caio");
        let channel = EventKind::ChannelCreated {
            channel: "geral".into(),
        };
        assert_eq!(write_key(&channel), "");
    }
}
