//! The Lamport logical clock carried by every message.

/// A Lamport clock: `tick()` before every send, `observe(received)` on every receive.
///
/// Values saturate at [`LamportClock::MAX`] (2^53 - 1, the largest integer every JSON and
/// JavaScript client holds exactly, and the largest clock the protocol accepts), so the
/// clock never wraps, never goes backwards, and never produces a stamp a peer would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LamportClock {
    value: u64,
}

impl LamportClock {
    /// Largest value the clock takes (2^53 - 1).
    pub const MAX: u64 = (1 << 53) - 1;

    /// A clock starting at zero.
    pub const fn new() -> Self {
        LamportClock { value: 0 }
    }

    /// A clock starting at `value` (e.g. restored from storage).
    pub const fn starting_at(value: u64) -> Self {
        LamportClock {
            value: if value > Self::MAX { Self::MAX } else { value },
        }
    }

    /// The current value.
    pub const fn value(&self) -> u64 {
        self.value
    }

    /// Advances the clock for a local event or a send and returns the stamp to use.
    pub fn tick(&mut self) -> u64 {
        self.value = self.value.saturating_add(1).min(Self::MAX);
        self.value
    }

    /// Merges a received stamp: `max(local, received) + 1`; returns the new value.
    pub fn observe(&mut self, received: u64) -> u64 {
        self.value = self.value.max(received).saturating_add(1).min(Self::MAX);
        self.value
    }

    /// Raises the clock to at least `value` without counting an event (used on recovery).
    pub fn witness(&mut self, value: u64) {
        self.value = self.value.max(value).min(Self::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_example() {
        // 000: client 5 sends 6; server 10 receives -> 11, replies 12; client -> 13.
        let mut client = LamportClock::starting_at(5);
        let mut server = LamportClock::starting_at(10);
        let sent = client.tick();
        assert_eq!(sent, 6);
        assert_eq!(server.observe(sent), 11);
        let reply = server.tick();
        assert_eq!(reply, 12);
        assert_eq!(client.observe(reply), 13);
    }

    #[test]
    fn saturates_at_the_protocol_maximum() {
        let max = LamportClock::MAX;
        let mut c = LamportClock::starting_at(max - 1);
        assert_eq!(c.tick(), max);
        assert_eq!(c.tick(), max);
        assert_eq!(c.observe(u64::MAX), max);
        assert_eq!(LamportClock::starting_at(u64::MAX).value(), max);
    }

    proptest! {
        #[test]
        fn never_goes_backwards(start in any::<u64>(), ops in proptest::collection::vec(proptest::option::of(any::<u64>()), 0..64)) {
            let mut c = LamportClock::starting_at(start);
            let mut last = c.value();
            for op in ops {
                let v = match op { Some(r) => { let v = c.observe(r); prop_assert!(v >= r.min(LamportClock::MAX)); v } None => c.tick() };
                prop_assert!(v >= last);
                prop_assert!(v > last || v == LamportClock::MAX);
                prop_assert!(v <= LamportClock::MAX);
                last = v;
            }
        }
    }
}
