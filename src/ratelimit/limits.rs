//! [`Limits`], [`Scope`] and [`LimitKind`].

use std::fmt;
use std::sync::Arc;

use crate::money::Usd;

/// The limits of one scope (a key, a model, or the whole gateway). Every field is optional;
/// `None` means unlimited. Windows are **fixed** and aligned to UTC: the minute, the day and
/// the calendar month (see the [module docs](super)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once (held until the response body ends).
    pub concurrent_requests: Option<u64>,
    /// Spend per UTC day, in pico-USD (10^-12 USD).
    pub budget_per_day_pico: Option<u64>,
    /// Spend per UTC calendar month, in pico-USD.
    pub budget_per_month_pico: Option<u64>,
}

impl Limits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set requests per minute.
    pub fn requests_per_minute(mut self, n: u64) -> Self {
        self.requests_per_minute = Some(n);
        self
    }
    /// Set tokens per minute.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.tokens_per_minute = Some(n);
        self
    }
    /// Set concurrent requests.
    pub fn concurrent_requests(mut self, n: u64) -> Self {
        self.concurrent_requests = Some(n);
        self
    }
    /// Set the daily budget in USD.
    pub fn usd_per_day(mut self, usd: f64) -> Self {
        self.budget_per_day_pico = Some(Usd::from_f64(usd).pico_u64());
        self
    }
    /// Set the monthly budget in USD.
    pub fn usd_per_month(mut self, usd: f64) -> Self {
        self.budget_per_month_pico = Some(Usd::from_f64(usd).pico_u64());
        self
    }
    /// Set the daily budget in pico-USD.
    pub fn pico_per_day(mut self, pico: u64) -> Self {
        self.budget_per_day_pico = Some(pico);
        self
    }
    /// Set the monthly budget in pico-USD.
    pub fn pico_per_month(mut self, pico: u64) -> Self {
        self.budget_per_month_pico = Some(pico);
        self
    }
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        LimitKind::ALL.iter().all(|k| self.get(*k).is_none())
    }
    /// The limit of `kind`.
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::Requests => self.requests_per_minute,
            LimitKind::Tokens => self.tokens_per_minute,
            LimitKind::Concurrency => self.concurrent_requests,
            LimitKind::BudgetDay => self.budget_per_day_pico,
            LimitKind::BudgetMonth => self.budget_per_month_pico,
        }
    }
}

/// One kind of limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Concurrent requests.
    Concurrency,
    /// Spend per UTC day.
    BudgetDay,
    /// Spend per UTC month.
    BudgetMonth,
}

impl LimitKind {
    /// Every kind, in check order.
    pub const ALL: [LimitKind; 5] = [
        LimitKind::Requests,
        LimitKind::Tokens,
        LimitKind::Concurrency,
        LimitKind::BudgetDay,
        LimitKind::BudgetMonth,
    ];
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
            LimitKind::BudgetDay => "budget_day",
            LimitKind::BudgetMonth => "budget_month",
        }
    }
    /// Whether this is a spend budget.
    pub fn is_budget(self) -> bool {
        matches!(self, LimitKind::BudgetDay | LimitKind::BudgetMonth)
    }
    /// The one-letter tag used in store keys.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn tag(self) -> &'static str {
        match self {
            LimitKind::Requests => "r",
            LimitKind::Tokens => "t",
            LimitKind::Concurrency => "c",
            LimitKind::BudgetDay => "d",
            LimitKind::BudgetMonth => "m",
        }
    }
}

/// What a set of limits applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole gateway.
    Global,
    /// One virtual key, by its non-secret [`key_id`](crate::auth::KeyIdentity::key_id).
    Key(Arc<str>),
    /// One model, by the name the client asked for.
    Model(Arc<str>),
}

impl Scope {
    /// Metrics label (`global`, `key`, `model`): bounded, never the id itself.
    pub fn label(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Key(_) => "key",
            Scope::Model(_) => "model",
        }
    }
    /// The store-key part: `g`, `k:<key_id>`, `m:<model>`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn key_part(&self) -> String {
        match self {
            Scope::Global => "g".to_owned(),
            Scope::Key(k) => format!("k:{k}"),
            Scope::Model(m) => format!("m:{m}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("the gateway"),
            Scope::Key(k) => write!(f, "key '{k}'"),
            Scope::Model(m) => write!(f, "model '{m}'"),
        }
    }
}
