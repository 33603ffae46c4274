//! Medians and spreads over the rounds of a bench.

use serde::Serialize;

/// The median of some values, with their minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values, or when any is NaN (a quantity not measured).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if !sorted.len().is_multiple_of(2) {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// Each of median, min and max transformed by `f`, for a monotonically
    /// increasing `f` (unit conversions).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        Spread {
            median: f(self.median),
            min: f(self.min),
            max: f(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_extremes() {
        let spread = |median, min, max| Some(Spread { median, min, max });
        let cases: &[(&[f64], Option<Spread>)] = &[
            (&[3.0], spread(3.0, 3.0, 3.0)),
            (&[5.0, 1.0, 3.0], spread(3.0, 1.0, 5.0)),
            (&[4.0, 1.0, 3.0, 10.0], spread(3.5, 1.0, 10.0)),
            (&[2.0, 2.0, -1.0, 7.0, 2.0], spread(2.0, -1.0, 7.0)),
            (&[], None),
            (&[1.0, f64::NAN], None),
        ];
        for (values, expected) in cases {
            assert_eq!(Spread::of(values), *expected, "{values:?}");
        }
    }

    #[test]
    fn maps_every_figure() {
        let spread = Spread::of(&[1024.0, 2048.0, 4096.0]).unwrap();
        assert_eq!(
            spread.map(|bytes| bytes / 1024.0),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 4.0
            }
        );
    }
}
