//! [`RateLimitLayer`]: configuration only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use tower::Layer;

use super::{LimitStore, Limits, MemoryStore, RateLimit};
use crate::usage::Price;

/// Looks up the price of a model by name (the name the client asked for when reserving; the
/// record's model after alias resolution when settling). `None`: unpriced, costs nothing.
pub type PriceFn = Arc<dyn Fn(&str) -> Option<Price> + Send + Sync>;

/// The wall clock, Unix milliseconds. Replaceable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What happens when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Admit the request unlimited (availability first).
    Open,
    /// Refuse with 503 and `Retry-After: 1` (limits first). The default.
    #[default]
    Closed,
}

impl FailurePolicy {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        }
    }
}

/// Tokens reserved for the completion when the request sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

#[derive(Clone)]
pub(crate) struct Config {
    pub store: Arc<dyn LimitStore>,
    pub global: Limits,
    pub models: HashMap<Arc<str>, Limits>,
    pub key_default: Limits,
    pub price: Option<PriceFn>,
    pub default_max_tokens: u64,
    pub policy: FailurePolicy,
    pub clock: Clock,
    pub last_warn_ms: Arc<AtomicU64>,
}

/// Layer for [`RateLimit`]: the store, the limits per key (default), per model and global,
/// prices, and the failure policy.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::ratelimit::{FailurePolicy, Limits, MemoryStore, RateLimitLayer};
/// use tollgate::usage::Price;
///
/// let layer = RateLimitLayer::new()                        // in-memory store
///     .global(Limits::new().concurrent_requests(256))
///     .model("gpt-4o", Limits::new().tokens_per_minute(400_000))
///     .default_key_limits(Limits::new().requests_per_minute(60).usd_per_month(100.0))
///     .prices(|model| (model == "gpt-4o").then(|| Price::from_usd_per_mtok(2.5, 10.0)))
///     .default_max_tokens(4096)
///     .failure_policy(FailurePolicy::Closed);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    pub(crate) cfg: Arc<Config>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("global", &self.cfg.global)
            .field("models", &self.cfg.models)
            .field("key_default", &self.cfg.key_default)
            .field("default_max_tokens", &self.cfg.default_max_tokens)
            .field("policy", &self.cfg.policy)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RateLimitLayer {
    /// No limits yet, a fresh [`MemoryStore`].
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new()))
    }

    /// No limits yet, counters in `store` (share one store between layers to share counters).
    pub fn with_store(store: Arc<dyn LimitStore>) -> Self {
        RateLimitLayer {
            cfg: Arc::new(Config {
                store,
                global: Limits::default(),
                models: HashMap::new(),
                key_default: Limits::default(),
                price: None,
                default_max_tokens: DEFAULT_MAX_TOKENS,
                policy: FailurePolicy::default(),
                clock: Arc::new(system_clock),
                last_warn_ms: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    fn cfg(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.cfg)
    }

    /// Limits for the whole gateway.
    pub fn global(mut self, limits: Limits) -> Self {
        self.cfg().global = limits;
        self
    }

    /// Limits for one model (by the name clients send).
    pub fn model(mut self, name: impl Into<Arc<str>>, limits: Limits) -> Self {
        self.cfg().models.insert(name.into(), limits);
        self
    }

    /// Limits for every key whose [`KeyIdentity`](crate::auth::KeyIdentity) has none of its own.
    pub fn default_key_limits(mut self, limits: Limits) -> Self {
        self.cfg().key_default = limits;
        self
    }

    /// How to price a model (for budgets).
    pub fn prices(mut self, f: impl Fn(&str) -> Option<Price> + Send + Sync + 'static) -> Self {
        self.cfg().price = Some(Arc::new(f));
        self
    }

    /// Price models from a table.
    pub fn price_table(self, table: HashMap<String, Price>) -> Self {
        self.prices(move |m| table.get(m).copied())
    }

    /// Completion tokens to reserve when a request sets no `max_tokens`.
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.cfg().default_max_tokens = n;
        self
    }

    /// What to do when the store is unreachable.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.cfg().policy = policy;
        self
    }

    /// Replace the wall clock (Unix ms), e.g. for tests.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.cfg().clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LimitStore> {
        &self.cfg.store
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}
