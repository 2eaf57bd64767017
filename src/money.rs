//! Money: one integer type for US dollars, with its parsing and its formatting.
//!
//! Every amount tollgate computes (a request's cost, a budget, a spend report, a price
//! threshold) is a [`Usd`]: an integer count of **pico-dollars** (10⁻¹² USD). Prices are
//! micro-dollars per million tokens, which is exactly pico-dollars per token, so a cost is an
//! integer product and sums never drift.
//!
//! One format for people and machines: [`Usd`]'s `Display` writes the exact decimal with trailing
//! zeros trimmed (`0.0000125`, `3`, `10.000049995`), which is also a valid JSON number.
//! [`Usd::parse`] reads a decimal string without floats; [`Usd::from_f64`] takes the floats a
//! config file writes.
//!
//! ```
//! use tollgate::money::Usd;
//!
//! let price = Usd::parse("2.50").unwrap(); // USD per million tokens
//! assert_eq!(price.micros(), 2_500_000); // = pico-USD per token
//! assert_eq!(Usd::from_pico(12_500_000).to_string(), "0.0000125");
//! assert_eq!(Usd::from_f64(0.1), Usd::from_micros(100_000));
//! ```

use std::fmt;

/// Pico-dollars in a dollar.
pub const PICO_PER_USD: u128 = 1_000_000_000_000;
const PICO_PER_MICRO: u128 = 1_000_000;

/// An amount of US dollars, as an integer count of pico-dollars (10⁻¹² USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usd(u128);

impl Usd {
    /// Nothing.
    pub const ZERO: Usd = Usd(0);

    /// From pico-dollars.
    pub const fn from_pico(pico: u128) -> Usd {
        Usd(pico)
    }

    /// From micro-dollars.
    pub const fn from_micros(micros: u64) -> Usd {
        Usd(micros as u128 * PICO_PER_MICRO)
    }

    /// From a float (as config files write amounts), rounded to the pico-dollar. Negative,
    /// infinite and NaN values are zero (configs validate them before this).
    pub fn from_f64(usd: f64) -> Usd {
        if usd.is_finite() && usd > 0.0 {
            // `as` saturates at u128::MAX; 1e12 × any finite f64 fits an f64.
            Usd((usd * 1e12).round() as u128)
        } else {
            Usd::ZERO
        }
    }

    /// A non-negative decimal (`15`, `0.25`, `.5`, `3.000000000001`) read exactly, without
    /// floats. Digits past the twelfth decimal are dropped (rounded down). `None` when empty,
    /// malformed (a sign, an exponent, a second point) or too large.
    pub fn parse(s: &str) -> Option<Usd> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        if !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut pico: u128 = 0;
        for b in whole.bytes() {
            pico = pico.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
        }
        pico = pico.checked_mul(PICO_PER_USD)?;
        let mut scale = PICO_PER_USD / 10;
        for b in frac.bytes().take(12) {
            pico += u128::from(b - b'0') * scale;
            scale /= 10;
        }
        Some(Usd(pico))
    }

    /// The amount in pico-dollars.
    pub const fn pico(self) -> u128 {
        self.0
    }

    /// The amount in pico-dollars, saturating at `u64::MAX` (about 18.4 million dollars).
    pub fn pico_u64(self) -> u64 {
        u64::try_from(self.0).unwrap_or(u64::MAX)
    }

    /// The amount in micro-dollars, rounded half up, saturating at `u64::MAX`.
    pub fn micros(self) -> u64 {
        u64::try_from(self.0.saturating_add(PICO_PER_MICRO / 2) / PICO_PER_MICRO)
            .unwrap_or(u64::MAX)
    }

    /// The amount in micro-dollars, rounded down (a threshold that must not rise); `None` over
    /// `u64::MAX`.
    pub fn micros_floor(self) -> Option<u64> {
        u64::try_from(self.0 / PICO_PER_MICRO).ok()
    }

    /// The sum, saturating.
    pub const fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Usd {
    /// The exact decimal with trailing zeros trimmed: `0`, `3`, `0.0000125`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / PICO_PER_USD;
        let mut frac = self.0 % PICO_PER_USD;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let mut width = 12;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{whole}.{frac:0width$}")
    }
}

impl std::str::FromStr for Usd {
    type Err = ParseUsdError;
    fn from_str(s: &str) -> Result<Usd, ParseUsdError> {
        Usd::parse(s).ok_or(ParseUsdError)
    }
}

/// A string that is not a non-negative decimal amount of dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseUsdError;

impl fmt::Display for ParseUsdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a non-negative decimal amount of USD")
    }
}

impl std::error::Error for ParseUsdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exactly_with_trailing_zeros_trimmed() {
        let s = |p: u128| Usd::from_pico(p).to_string();
        assert_eq!(s(0), "0");
        assert_eq!(s(12_500_000), "0.0000125");
        assert_eq!(s(3_000_000_000_001), "3.000000000001");
        assert_eq!(s(3 * PICO_PER_USD), "3");
        assert_eq!(s(250_000_000_000), "0.25");
        assert_eq!(s(10_000_049_995_000_000), "10000.049995");
        assert_eq!(s(u128::MAX).len(), 40);
    }

    #[test]
    fn parses_decimals_without_floats() {
        let p = |s: &str| Usd::parse(s).map(Usd::pico);
        assert_eq!(p("15"), Some(15 * PICO_PER_USD));
        assert_eq!(p("0.25"), Some(250_000_000_000));
        assert_eq!(p(".5"), Some(500_000_000_000));
        assert_eq!(p("5."), Some(5 * PICO_PER_USD));
        assert_eq!(p("3.000000000001"), Some(3_000_000_000_001));
        assert_eq!(
            p("0.0000000000019"),
            Some(1),
            "past the 12th decimal: rounded down"
        );
        for bad in [
            "", ".", "-1", "+1", "1e3", "1.2.3", " 1", "0x10", "1,5", "∞",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(p(&"9".repeat(40)), None, "too large");
        assert_eq!("0.25".parse::<Usd>(), Ok(Usd::from_pico(250_000_000_000)));
        assert_eq!("x".parse::<Usd>(), Err(ParseUsdError));
    }

    #[test]
    fn round_trips_through_its_string() {
        for p in [
            0,
            1,
            999,
            1_000_000,
            12_345_678_901_234,
            u128::from(u64::MAX),
        ] {
            let usd = Usd::from_pico(p);
            assert_eq!(Usd::parse(&usd.to_string()), Some(usd));
        }
    }

    #[test]
    fn floats_round_to_the_pico_and_micros_round_half_up() {
        assert_eq!(Usd::from_f64(0.1).pico(), 100_000_000_000);
        assert_eq!(Usd::from_f64(2.5).micros(), 2_500_000);
        assert_eq!(Usd::from_f64(0.075).micros(), 75_000);
        assert_eq!(Usd::from_f64(0.000_000_5).micros(), 1);
        assert_eq!(Usd::from_f64(0.000_000_499).micros(), 0);
        for bad in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Usd::from_f64(bad), Usd::ZERO);
        }
        assert_eq!(Usd::from_pico(u128::MAX).micros(), u64::MAX);
        assert_eq!(Usd::from_pico(u128::MAX).pico_u64(), u64::MAX);
        assert_eq!(Usd::from_micros(3).pico(), 3_000_000);
        assert_eq!(Usd::from_pico(1_999_999).micros_floor(), Some(1));
        assert_eq!(Usd::from_pico(u128::MAX).micros_floor(), None);
    }
}
