//! Property tests of Cristian's estimate: round-trip compensation, outlier rejection, the
//! shortest round trip winning, and the error bound it reports.

use chat_sync::cristian::{estimate, Sample};
use proptest::prelude::*;

/// A plausible wall clock in ms (2024).
const EPOCH_MS: i64 = 1_700_000_000_000;

/// One exchange with the coordinator: its clock's true offset from ours and the one-way
/// delays of the request and the reply.
#[derive(Debug, Clone)]
struct Exchange {
    offset: i64,
    out_ms: i64,
    back_ms: i64,
}

fn exchange(max_offset: i64, max_delay: i64) -> impl Strategy<Value = Exchange> {
    (-max_offset..=max_offset, 0..=max_delay, 0..=max_delay).prop_map(
        |(offset, out_ms, back_ms)| Exchange {
            offset,
            out_ms,
            back_ms,
        },
    )
}

/// The sample of an exchange sent at our `sent` (ms): the coordinator reads its clock when
/// the request arrives.
fn sample(sent: i64, e: &Exchange) -> Sample {
    let remote = sent + e.out_ms + e.offset;
    let received = sent + e.out_ms + e.back_ms;
    Sample::new((e.out_ms + e.back_ms) as f64, received, remote)
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
    fn symmetric_delays_recover_the_true_offset(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        offset in -10_000_000i64..10_000_000,
        delay in 0i64..5_000,
    ) {
        let s = sample(sent, &Exchange { offset, out_ms: delay, back_ms: delay });
        prop_assert_eq!(s.offset_ms(), offset as f64);
    }

    /// With unequal delays the error is half their difference, so within the bound the
    /// sample reports (half its round trip).
    #[test]
    fn asymmetric_delays_err_within_the_reported_bound(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        e in exchange(10_000_000, 5_000),
    ) {
        let s = sample(sent, &e);
        let error = s.offset_ms() - e.offset as f64;
        prop_assert_eq!(error, (e.out_ms - e.back_ms) as f64 / 2.0);
        prop_assert!(error.abs() <= s.error_bound_ms());
    }

    /// Exactly the samples farther than the threshold from the median are dropped; the
    /// chosen one is kept and has the shortest round trip of those kept (the first of
    /// equals).
    #[test]
    fn outliers_are_dropped_and_the_shortest_round_trip_wins(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        exchanges in prop::collection::vec(exchange(20_000, 300), 1..9),
        threshold in 0u64..10_000,
    ) {
        let samples: Vec<Sample> = exchanges.iter().map(|e| sample(sent, e)).collect();
        let med = median(samples.iter().map(Sample::offset_ms).collect());
        let far: Vec<usize> = (0..samples.len())
            .filter(|&i| (samples[i].offset_ms() - med).abs() > threshold as f64)
            .collect();
        match estimate(&samples, threshold) {
            None => prop_assert_eq!(far.len(), samples.len(), "inconclusive only if all are far"),
            Some(e) => {
                prop_assert_eq!(e.median_ms, med);
                prop_assert_eq!(&e.discarded, &far);
                prop_assert_eq!(e.kept.len() + e.discarded.len(), samples.len());
                prop_assert!(e.kept.contains(&e.chosen));
                let best = e.kept.iter().map(|&i| samples[i].rtt_ms).fold(f64::INFINITY, f64::min);
                prop_assert_eq!(samples[e.chosen].rtt_ms, best);
                let first = e.kept.iter().copied().find(|&i| samples[i].rtt_ms == best);
                prop_assert_eq!(Some(e.chosen), first);
                prop_assert_eq!(e.offset_ms, samples[e.chosen].offset_ms());
                prop_assert_eq!(e.error_bound_ms, samples[e.chosen].rtt_ms / 2.0);
            }
        }
        if samples.len() % 2 == 1 {
            prop_assert!(estimate(&samples, threshold).is_some(), "the median sample is kept");
        }
    }

    /// Against one coordinator clock (the same true offset for every sample), the estimate
    /// is never farther from the truth than the bound it reports.
    #[test]
    fn the_estimate_is_within_its_bound_of_the_truth(
        sent in EPOCH_MS..EPOCH_MS + 1_000_000,
        offset in -5_000_000i64..5_000_000,
        delays in prop::collection::vec((0i64..500, 0i64..500), 1..9),
        threshold in 0u64..5_000,
    ) {
        let samples: Vec<Sample> = delays
            .iter()
            .enumerate()
            .map(|(k, (out_ms, back_ms))| {
                let e = Exchange { offset, out_ms: *out_ms, back_ms: *back_ms };
                sample(sent + 1000 * k as i64, &e)
            })
            .collect();
        if let Some(e) = estimate(&samples, threshold) {
            prop_assert!(
                (e.offset_ms - offset as f64).abs() <= e.error_bound_ms,
                "estimate {} ± {} vs true {offset}", e.offset_ms, e.error_bound_ms
            );
        }
    }

    /// Only the difference between the clocks matters: shifting both alike changes nothing.
    #[test]
    fn the_estimate_does_not_depend_on_the_absolute_time(
        exchanges in prop::collection::vec(exchange(50_000, 500), 1..9),
        threshold in 0u64..20_000,
        shift in -1_000_000i64..1_000_000,
    ) {
        let at = |t: i64| -> Vec<Sample> { exchanges.iter().map(|e| sample(t, e)).collect() };
        prop_assert_eq!(
            estimate(&at(EPOCH_MS), threshold),
            estimate(&at(EPOCH_MS + shift), threshold)
        );
    }
}
