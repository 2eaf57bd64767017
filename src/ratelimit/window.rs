//! Fixed UTC windows (minute, day, calendar month) and Go-style durations.

use std::time::Duration;

use super::LimitKind;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// The windows a request falls into, computed once from `now_ms` (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The time the windows were computed for (Unix ms).
    pub now_ms: u64,
    /// Minutes since the epoch.
    pub minute: u64,
    /// Days since the epoch.
    pub day: u64,
    /// `year * 12 + month0` of the UTC calendar month.
    pub month: u64,
    /// Unix ms at which the current month ends.
    pub month_end_ms: u64,
}

impl Windows {
    /// The windows at `now_ms`.
    pub fn at(now_ms: u64) -> Windows {
        let day = now_ms / DAY_MS;
        let (y, m, _) = civil_from_days(day as i64);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let next = days_from_civil(ny, nm, 1).max(0) as u64;
        Windows {
            now_ms,
            minute: now_ms / MINUTE_MS,
            day,
            month: (y.max(0) as u64) * 12 + u64::from(m - 1),
            month_end_ms: next * DAY_MS,
        }
    }

    /// The window id of `kind` (`0` for concurrency, which has none).
    pub fn id(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Requests | LimitKind::Tokens => self.minute,
            LimitKind::BudgetDay => self.day,
            LimitKind::BudgetMonth => self.month,
            LimitKind::Concurrency => 0,
        }
    }

    /// Unix ms at which the window of `kind` ends (`now` for concurrency).
    pub fn end_ms(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Requests | LimitKind::Tokens => (self.minute + 1) * MINUTE_MS,
            LimitKind::BudgetDay => (self.day + 1) * DAY_MS,
            LimitKind::BudgetMonth => self.month_end_ms,
            LimitKind::Concurrency => self.now_ms,
        }
    }

    /// Time until the window of `kind` resets.
    pub fn reset(&self, kind: LimitKind) -> Duration {
        Duration::from_millis(self.end_ms(kind).saturating_sub(self.now_ms))
    }
}

// The calendar (proleptic Gregorian, UTC) is the crate's one, in `pricing`.
use crate::pricing::{civil_from_days, days_from_civil};

/// A duration the way Go prints it (and OpenAI's `x-ratelimit-reset-*` headers look):
/// `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`. Millisecond precision.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let frac = ms % 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let sec = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{sec}")
    } else if m > 0 {
        format!("{m}m{sec}")
    } else {
        sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(ms(20)), "20ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(7660)), "7.66s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_723_000)), "1h2m3s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
    }

    #[test]
    fn calendar_windows() {
        // 2026-11-25T16:14:13Z
        let now = 1_795_623_253_000;
        let w = Windows::at(now);
        assert_eq!(w.minute, now / 60_000);
        assert_eq!(w.month, 2026 * 12 + 10);
        // 2026-12-01T00:00:00Z
        assert_eq!(w.month_end_ms, 1_796_083_200_000);
        assert_eq!(
            w.reset(LimitKind::BudgetDay),
            Duration::from_millis(1_795_651_200_000 - now)
        );
        assert_eq!(w.reset(LimitKind::Requests), Duration::from_millis(47_000));
        // December rolls into January of the next year.
        let dec = Windows::at(1_796_083_200_000);
        assert_eq!(dec.month, 2026 * 12 + 11);
        assert_eq!(dec.month_end_ms, 1_798_761_600_000);
        for d in [-1000i64, 0, 1, 59, 60, 365, 10_957, 20_000, 60_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
