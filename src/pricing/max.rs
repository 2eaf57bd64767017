//! [`MaxPrice`]: a cost threshold, in the integer units of [`Price`] (micro-USD per million
//! tokens), set per model route, per virtual key and per request (the
//! [`MAX_PRICE_HEADER`](crate::route::MAX_PRICE_HEADER) header). See the
//! [route module docs](crate::route) for how Route applies it.

use crate::money::Usd;
use crate::usage::Price;

/// The most a request accepts to pay per token, per component, in **micro-USD per million
/// tokens** (the units of [`Price`]); `None` leaves a component unlimited. Comparisons are
/// integer: a target is within the threshold when its `input` and `output` prices are each at
/// most the limit (cached-input and cache-write prices are not compared).
///
/// ```
/// use tollgate::pricing::MaxPrice;
/// use tollgate::usage::Price;
///
/// let key = MaxPrice::usd(Some(3.0), Some(15.0));
/// let header = MaxPrice::parse_header("output=10").unwrap();
/// let effective = key.min(header);
/// assert_eq!((effective.input, effective.output), (Some(3_000_000), Some(10_000_000)));
/// assert!(effective.admits(Some(&Price::from_usd_per_mtok(3.0, 10.0))));
/// assert!(!effective.admits(Some(&Price::from_usd_per_mtok(3.0, 10.5))));
/// assert!(!effective.admits(None)); // unpriced: skipped unless allowed
/// assert!(effective.allowing_unpriced(true).admits(None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxPrice {
    /// Highest input-token price accepted (micro-USD per million tokens).
    pub input: Option<u64>,
    /// Highest output-token price accepted (micro-USD per million tokens).
    pub output: Option<u64>,
    /// Whether a target without a known price may be used (default: skipped).
    pub allow_unpriced: bool,
}

impl MaxPrice {
    /// A threshold in micro-USD per million tokens; unpriced targets are skipped.
    pub const fn micros(input: Option<u64>, output: Option<u64>) -> MaxPrice {
        MaxPrice {
            input,
            output,
            allow_unpriced: false,
        }
    }

    /// A threshold in USD per million tokens (as config writes it), rounded to the
    /// micro-dollar once; comparisons are integer.
    pub fn usd(input: Option<f64>, output: Option<f64>) -> MaxPrice {
        let micros = |usd: f64| Usd::from_f64(usd).micros();
        MaxPrice::micros(input.map(micros), output.map(micros))
    }

    /// Let targets without a known price through (or not).
    pub const fn allowing_unpriced(mut self, yes: bool) -> MaxPrice {
        self.allow_unpriced = yes;
        self
    }

    /// Whether a target priced `price` (`None`: unknown) is within the threshold.
    pub fn admits(&self, price: Option<&Price>) -> bool {
        match price {
            None => self.allow_unpriced,
            Some(p) => {
                self.input.is_none_or(|m| p.input <= m) && self.output.is_none_or(|m| p.output <= m)
            }
        }
    }

    /// The stricter of two thresholds: each component is the minimum, and unpriced targets are
    /// allowed only when both allow them.
    pub fn min(self, other: MaxPrice) -> MaxPrice {
        fn m(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        MaxPrice {
            input: m(self.input, other.input),
            output: m(self.output, other.output),
            allow_unpriced: self.allow_unpriced && other.allow_unpriced,
        }
    }

    /// The effective threshold of a request: the minimum, per component, of the route's and
    /// the key's (unpriced targets allowed only when every one of them that is set allows
    /// them), then lowered by the request's own (`x-tollgate-max-price`), which can never
    /// raise a limit nor allow unpriced targets. `None` when none is set.
    pub fn effective(
        route: Option<MaxPrice>,
        key: Option<MaxPrice>,
        request: Option<MaxPrice>,
    ) -> Option<MaxPrice> {
        let configured = match (route, key) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        };
        match (configured, request) {
            (Some(c), Some(r)) => Some(c.min(r.allowing_unpriced(c.allow_unpriced))),
            (c, None) => c,
            (None, Some(r)) => Some(r.allowing_unpriced(false)),
        }
    }

    /// Parse the request header's value: `input=3,output=15` (USD per million tokens; either
    /// part may be omitted, not both; decimals beyond the micro-dollar are rounded down, which
    /// only lowers the limit). The error says what is wrong, without naming the header.
    pub fn parse_header(value: &str) -> Result<MaxPrice, &'static str> {
        let mut out = MaxPrice::default();
        for part in value.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or("expected `input=USD,output=USD`")?;
            let v = Usd::parse(v.trim())
                .and_then(Usd::micros_floor)
                .ok_or("prices must be non-negative decimals")?;
            let slot = match k.trim().to_ascii_lowercase().as_str() {
                "input" => &mut out.input,
                "output" => &mut out.output,
                _ => return Err("only `input` and `output` may be given"),
            };
            if slot.replace(v).is_some() {
                return Err("each part may be given once");
            }
        }
        Ok(out)
    }

    /// The limit in words, e.g. `input 3 USD, output 15 USD per million tokens`.
    pub fn describe(&self) -> String {
        let part = |name: &str, v: Option<u64>| v.map(|v| format!("{name} {} USD", usd(v)));
        let parts: Vec<String> = [part("input", self.input), part("output", self.output)]
            .into_iter()
            .flatten()
            .collect();
        if parts.is_empty() {
            "no price limit".to_owned()
        } else {
            format!("{} per million tokens", parts.join(", "))
        }
    }
}

fn usd(micros: u64) -> Usd {
    Usd::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        let m = |i, o| MaxPrice::micros(i, o);
        assert_eq!(
            MaxPrice::parse_header("input=3,output=15"),
            Ok(m(Some(3_000_000), Some(15_000_000)))
        );
        assert_eq!(
            MaxPrice::parse_header(" output = 0.25 "),
            Ok(m(None, Some(250_000)))
        );
        assert_eq!(
            MaxPrice::parse_header("INPUT=.5"),
            Ok(m(Some(500_000), None))
        );
        assert_eq!(
            MaxPrice::parse_header("input=1.00000099"),
            Ok(m(Some(1_000_000), None))
        );
        for bad in [
            "",
            "input",
            "input=",
            "input=-1",
            "input=1e3",
            "input=abc",
            "input=1,input=2",
            "cached_input=1",
            "input=3;output=4",
            "input=99999999999999999999",
            "input=3,",
        ] {
            assert!(MaxPrice::parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn effective_is_the_minimum_and_a_request_only_lowers() {
        let route = MaxPrice::micros(Some(10), Some(100)).allowing_unpriced(true);
        let key = MaxPrice::micros(Some(5), None).allowing_unpriced(true);
        let e = MaxPrice::effective(Some(route), Some(key), None).unwrap();
        assert_eq!(
            e,
            MaxPrice::micros(Some(5), Some(100)).allowing_unpriced(true)
        );
        // a request cannot raise a limit, nor change allow_unpriced
        let r = MaxPrice::micros(Some(50), Some(20));
        let e = MaxPrice::effective(Some(route), Some(key), Some(r)).unwrap();
        assert_eq!(
            e,
            MaxPrice::micros(Some(5), Some(20)).allowing_unpriced(true)
        );
        // a key that does not allow unpriced targets wins over a route that does
        let e = MaxPrice::effective(Some(route), Some(MaxPrice::micros(None, Some(1))), None);
        assert!(!e.unwrap().allow_unpriced);
        // a request alone: unpriced skipped
        let e = MaxPrice::effective(None, None, Some(r.allowing_unpriced(true))).unwrap();
        assert_eq!(e, r);
        assert_eq!(MaxPrice::effective(None, None, None), None);
    }

    #[test]
    fn admits_compares_integers_per_component() {
        let t = MaxPrice::usd(Some(3.0), Some(15.0));
        assert!(t.admits(Some(&Price::from_usd_per_mtok(3.0, 15.0))));
        assert!(!t.admits(Some(&Price::from_usd_per_mtok(3.000001, 1.0))));
        assert!(!t.admits(Some(&Price::from_usd_per_mtok(1.0, 15.000001))));
        assert!(!t.admits(None));
        assert!(MaxPrice::micros(None, Some(1)).admits(Some(&Price::from_usd_per_mtok(99.0, 0.0))));
        assert_eq!(
            t.describe(),
            "input 3 USD, output 15 USD per million tokens"
        );
        assert_eq!(usd(250_000).to_string(), "0.25");
    }
}
