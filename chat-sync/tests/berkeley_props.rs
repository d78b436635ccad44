//! Property tests of the Berkeley averaging: RTT compensation, outlier rejection, and the
//! adjustments that bring every clock to the average.

use std::time::{Duration, Instant};

use chat_sync::berkeley::{analyze, Berkeley, BerkeleyConfig, BerkeleyOutput, Reading};
use proptest::prelude::*;

/// A plausible wall clock in ms (2024).
const EPOCH_MS: i64 = 1_700_000_000_000;

/// A peer as the coordinator sees it: its true offset and the one-way delays.
#[derive(Debug, Clone)]
struct Peer {
    offset: i64,
    out_ms: i64,
    back_ms: i64,
}

fn peer(max_offset: i64, max_delay: i64) -> impl Strategy<Value = Peer> {
    (-max_offset..=max_offset, 0..=max_delay, 0..=max_delay).prop_map(
        |(offset, out_ms, back_ms)| Peer {
            offset,
            out_ms,
            back_ms,
        },
    )
}

/// The coordinator's own reading first, then one reading per peer, all asked at `sent`.
fn readings(sent: i64, peers: &[Peer]) -> Vec<Reading> {
    let mut v = vec![Reading::own("coord", sent)];
    for (i, p) in peers.iter().enumerate() {
        // The peer reads its clock when the request arrives.
        let remote = sent + p.out_ms + p.offset;
        let received = sent + p.out_ms + p.back_ms;
        v.push(Reading::remote(format!("p{i}"), sent, received, remote));
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// With equal delays both ways, `remote + rtt / 2 - received` is the true offset.
    #[test]
    fn symmetric_rtt_recovers_the_true_offset(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        offset in -10_000_000i64..10_000_000,
        delay in 0i64..5_000,
    ) {
        let r = Reading::remote("p", sent, sent + 2 * delay, sent + delay + offset);
        prop_assert_eq!(r.rtt_ms(), 2 * delay);
        prop_assert_eq!(r.offset_ms(), offset as f64);
    }

    /// With unequal delays the error is half their difference, so at most rtt / 2.
    #[test]
    fn asymmetric_rtt_error_is_bounded_by_half_the_rtt(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        p in peer(10_000_000, 5_000),
    ) {
        let r = &readings(sent, std::slice::from_ref(&p))[1];
        let error = r.offset_ms() - p.offset as f64;
        prop_assert_eq!(error, (p.out_ms - p.back_ms) as f64 / 2.0);
        prop_assert!(error.abs() <= r.rtt_ms() as f64 / 2.0);
    }

    /// Exactly the readings farther than the threshold from the median are discarded,
    /// except the coordinator's own, which is always kept.
    #[test]
    fn outliers_beyond_the_threshold_are_discarded(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        peers in prop::collection::vec(peer(20_000, 200), 0..8),
        threshold in 0u64..10_000,
    ) {
        let rs = readings(sent, &peers);
        let a = analyze(&rs, threshold);
        let med = median(rs.iter().map(Reading::offset_ms).collect());
        prop_assert_eq!(a.median_ms, med);
        prop_assert!(a.kept.contains(&"coord".to_string()));
        for r in &rs {
            let far = (r.offset_ms() - med).abs() > threshold as f64;
            let discarded = a.discarded.contains(&r.name);
            prop_assert_eq!(discarded, far && !r.own, "{:?}", r);
            prop_assert_eq!(a.kept.contains(&r.name), !discarded);
        }
    }

    /// Applying the adjustments brings every estimated clock (outliers included) to the
    /// average, within rounding: pairwise within 1 ms.
    #[test]
    fn adjusted_clocks_agree_within_one_ms(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        peers in prop::collection::vec(peer(1_000_000, 500), 0..8),
        threshold in 0u64..100_000,
    ) {
        let rs = readings(sent, &peers);
        let a = analyze(&rs, threshold);
        prop_assert_eq!(a.adjustments.len(), rs.len());
        let after: Vec<f64> = rs
            .iter()
            .zip(&a.adjustments)
            .map(|(r, (name, adj))| {
                assert_eq!(name, &r.name, "one adjustment per reading, in order");
                r.offset_ms() + *adj as f64
            })
            .collect();
        for x in &after {
            prop_assert!((x - a.average_ms).abs() <= 0.5, "{x} vs {}", a.average_ms);
        }
        let lo = after.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = after.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(hi - lo <= 1.0);
    }

    /// The average is the mean of the kept offsets: their adjustments sum to zero (up to
    /// half a ms of rounding each), and it lies within their range.
    #[test]
    fn kept_adjustments_sum_to_zero(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        peers in prop::collection::vec(peer(50_000, 500), 0..8),
        threshold in 0u64..20_000,
    ) {
        let rs = readings(sent, &peers);
        let a = analyze(&rs, threshold);
        let kept: Vec<(&Reading, i64)> = rs
            .iter()
            .zip(&a.adjustments)
            .filter(|(r, _)| a.kept.contains(&r.name))
            .map(|(r, (_, adj))| (r, *adj))
            .collect();
        let sum: i64 = kept.iter().map(|(_, adj)| adj).sum();
        prop_assert!((sum as f64).abs() <= kept.len() as f64 / 2.0, "sum {sum}");
        let offsets: Vec<f64> = kept.iter().map(|(r, _)| r.offset_ms()).collect();
        let lo = offsets.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = offsets.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(lo <= a.average_ms && a.average_ms <= hi);
        // An outlier does not move the average.
        let mean = offsets.iter().sum::<f64>() / offsets.len() as f64;
        prop_assert!((mean - a.average_ms).abs() < 1e-6);
    }

    /// Without the coordinator's reading, everything may be discarded (two far-apart middle
    /// readings); the clocks are then brought to the median.
    #[test]
    fn nothing_kept_falls_back_to_the_median(
        peers in prop::collection::vec(peer(50_000, 0), 1..8),
        threshold in 0u64..20_000,
    ) {
        let rs: Vec<Reading> = readings(EPOCH_MS, &peers).into_iter().skip(1).collect();
        let a = analyze(&rs, threshold);
        if a.kept.is_empty() {
            prop_assert_eq!(a.average_ms, a.median_ms);
        }
        prop_assert_eq!(a.kept.len() + a.discarded.len(), rs.len());
    }

    /// Only differences between clocks matter: running the same round at another moment
    /// (every clock shifted alike) gives the same adjustments and outliers.
    #[test]
    fn adjustments_do_not_depend_on_the_absolute_time(
        peers in prop::collection::vec(peer(50_000, 500), 1..8),
        threshold in 0u64..20_000,
        shift in -1_000_000i64..1_000_000,
    ) {
        let a = analyze(&readings(EPOCH_MS, &peers), threshold);
        let b = analyze(&readings(EPOCH_MS + shift, &peers), threshold);
        prop_assert_eq!(a.adjustments, b.adjustments);
        prop_assert_eq!(a.discarded, b.discarded);
    }

    /// A whole round through the machine: skewed clocks, delays in both directions; after
    /// one round every clock is within the delay asymmetry (plus rounding) of the others'
    /// shared target, and the outliers are brought in too.
    #[test]
    fn one_round_brings_clocks_together(
        skews in prop::collection::vec(-3_000i64..3_000, 2..6),
        delays in prop::collection::vec((0i64..40, 0i64..40), 6),
    ) {
        let t0 = Instant::now();
        let names: Vec<String> = (0..skews.len()).map(|i| format!("s{i}")).collect();
        let mut clocks = skews.clone(); // each clock minus true time
        let true_ms = EPOCH_MS;
        let mut b = Berkeley::new("s0", BerkeleyConfig::default());
        let id = b.start_round(t0, true_ms + clocks[0], &names);
        let _requests: Vec<_> = std::iter::from_fn(|| b.poll_output()).collect();
        for i in 1..names.len() {
            let (out, back) = delays[i];
            let remote = true_ms + out + clocks[i];
            let received = true_ms + out + back + clocks[0];
            b.handle_time(t0 + Duration::from_millis(1), received, &names[i], id, remote);
        }
        prop_assert_eq!(b.round_in_progress(), None);
        for o in std::iter::from_fn(|| b.poll_output()) {
            if let BerkeleyOutput::Adjust { to, offset_ms } = o {
                let i = names.iter().position(|n| *n == to).unwrap();
                clocks[i] += offset_ms;
            }
        }
        let worst_asymmetry = delays[1..names.len()]
            .iter()
            .map(|(o, b)| (o - b).abs())
            .max()
            .unwrap_or(0);
        let lo = *clocks.iter().min().unwrap();
        let hi = *clocks.iter().max().unwrap();
        // Each estimate is off by at most half its asymmetry; rounding adds up to 1 ms.
        prop_assert!(hi - lo <= worst_asymmetry + 1, "clocks {clocks:?}");
    }
}
