//! Summary statistics of the benchmarks' samples, in one place.

use std::time::Duration;

/// Milliseconds of `duration`, the unit every report uses.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sorts samples so [`percentile`] can read them.
pub fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

/// The `p`-quantile (0.0..=1.0) of sorted samples, interpolated linearly between
/// the two nearest ranks (so `percentile(s, 0.5)` is the usual median); 0 for no
/// samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = last as f64 * p.clamp(0.0, 1.0);
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&sorted(vec![3.0, 1.0, 2.0]), 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        let hundred: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.99), 100.0);
        assert_eq!(percentile(&hundred, 1.0), 101.0);
    }
}
