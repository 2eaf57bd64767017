//! The RateLimit layer: exact requests/tokens per minute, concurrency and USD budgets, per key,
//! per model and global — reserve, then settle.
//!
//! Before the inner service is called, one atomic check-and-reserve covers every applicable
//! limit ([`LimitStore::reserve`]): 1 request, `prompt estimate + max_tokens` tokens (or
//! [`default_max_tokens`](RateLimitLayer::default_max_tokens)), 1 concurrency slot, and the
//! worst-case price of those tokens ([`Price::cost_pico`], integer pico-USD). Either all are
//! reserved or none.
//!
//! - Refused: **429** with `Retry-After` (seconds until it would fit: the window's reset; 1 s
//!   for concurrency), `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as Go
//!   durations such as `1s`, `6m0s`, as the OpenAI SDKs read them). An exhausted budget is a
//!   429 [`BudgetExceeded`](crate::error::ErrorKind::BudgetExceeded) that names the budget, with
//!   `x-should-retry: false`. Nothing reaches the upstream.
//! - Admitted: the response carries the same `x-ratelimit-*` headers.
//! - Settled when the request ends: with a [`UsageTap`] (the UsageMeter's ledger), a
//!   completion hook settles with the record's exact usage and cost — refunding the
//!   difference at once — and the concurrency permit is handed to [`UsageTap::hold`], so it
//!   lives until the response stream ends. A record without upstream usage (a client that
//!   disconnected before the upstream reported, a timeout) keeps the reserved amount: never
//!   zero. A request refused further in (`Refused`) or an upstream error status without usage
//!   is refunded in full. Without a tap, the permit rides in the response future and then the
//!   body, and the reserved amounts are kept (no usage to settle with), except for errors the
//!   upstream did not bill.
//!
//! Windows are fixed and aligned to UTC (minute, day, calendar month): exact within a
//! window, identical on every replica. Stores: [`MemoryStore`] (default) and, with the `redis`
//! feature, `RedisStore` (one Lua script call per check, shared by every replica). When the
//! store fails, the [`FailurePolicy`] applies, with the counter [`STORE_ERRORS_TOTAL`] and a
//! warning (at most one a second).
//!
//! Scopes: the key (from [`KeyIdentity`]: its own limits, else the layer's default key
//! limits), the model the client asked for (when it has limits), and the gateway.
//!
//! ```
//! use tollgate::auth::{AuthLayer, StaticKeys};
//! use tollgate::ratelimit::{Limits, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     // ... edge, Parse, UsageMeter ...
//!     .layer(AuthLayer::new(StaticKeys::new()))
//!     .layer(RateLimitLayer::new().default_key_limits(Limits::new().requests_per_minute(60)));
//! # let _ = stack;
//! ```

mod body;
mod future;
mod layer;
mod limits;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod store;
mod window;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tower::Service;

pub use future::RateLimitFuture;
pub use layer::{Clock, DEFAULT_MAX_TOKENS, FailurePolicy, PriceFn, RateLimitLayer};
pub use limits::{LimitKind, Limits, Scope, usd_to_pico};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
pub use store::{
    BoxFuture, Decision, LimitStore, Quota, RateStatus, Refusal, ReserveRequest, Settlement,
    StoreError, StoreFuture, Ticket,
};
pub use window::{Windows, go_duration};

use future::State;
use layer::Config;
pub(crate) use store::decide;

use crate::auth::KeyIdentity;
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::request::ParsedRequest;
use crate::usage::{Outcome, Price, Usage, UsageRecord, UsageSource, UsageTap};

/// Counter: requests refused by a limit, labelled `scope` (`key`, `model`, `global`) and
/// `limit` ([`LimitKind::as_str`]).
pub const REFUSED_TOTAL: &str = crate::metrics::LIMIT_REFUSALS;
/// Counter: store operations that failed, labelled `op` (`reserve`, `settle`) and `policy`.
pub const STORE_ERRORS_TOTAL: &str = crate::metrics::LIMIT_STORE_ERRORS;

/// Applies the limits; see the [module docs](self).
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    cfg: Arc<Config>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// Wrap `inner` with `layer`'s configuration.
    pub fn new(inner: S, layer: &RateLimitLayer) -> Self {
        tower::Layer::layer(layer, inner)
    }
    /// A layer with no limits and a fresh in-memory store.
    pub fn layer() -> RateLimitLayer {
        RateLimitLayer::new()
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the layer needs after the reservation is decided.
pub(crate) struct Reserving {
    tap: Option<UsageTap>,
    price: Option<Price>,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError> + Clone,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = RateLimitFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cfg = &self.cfg;
        let parsed = req.extensions().get::<ParsedRequest>();
        let model = parsed.map(|p| &p.model);

        let mut scopes = Vec::with_capacity(3);
        if let Some(id) = req.extensions().get::<KeyIdentity>() {
            let l = id.limits.as_deref().copied().unwrap_or(cfg.key_default);
            if !l.is_empty() {
                scopes.push((Scope::Key(id.key_id.clone()), l));
            }
        }
        if let Some(m) = model {
            if let Some(l) = cfg.models.get(&**m) {
                if !l.is_empty() {
                    scopes.push((Scope::Model(m.clone()), *l));
                }
            }
        }
        if !cfg.global.is_empty() {
            scopes.push((Scope::Global, cfg.global));
        }
        if scopes.is_empty() {
            return RateLimitFuture {
                state: State::Calling {
                    fut: inner.call(req),
                    permit: None,
                    pending: None,
                    status: None,
                },
            };
        }

        let prompt = parsed.map_or(0, ParsedRequest::prompt_tokens_estimate);
        let completion = parsed
            .and_then(|p| p.max_tokens)
            .unwrap_or(cfg.default_max_tokens);
        let price = match (&cfg.price, model) {
            (Some(f), Some(m)) => f(m),
            _ => None,
        };
        let cost_pico = price.map_or(0, |p| {
            let worst = Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt.saturating_add(completion),
                ..Usage::default()
            };
            u64::try_from(p.cost_pico(&worst)).unwrap_or(u64::MAX)
        });
        let rr = ReserveRequest {
            now_ms: (cfg.clock)(),
            scopes,
            tokens: prompt.saturating_add(completion),
            cost_pico,
        };
        let ctx = Reserving {
            tap: req.extensions().get::<UsageTap>().cloned(),
            price,
        };
        let state = match cfg.store.reserve(rr).now_or() {
            Ok(decision) => proceed(cfg, decision, req, inner, ctx),
            Err(fut) => State::Reserving {
                fut,
                req: Some(req),
                inner: Some(inner),
                ctx: Some(ctx),
                cfg: cfg.clone(),
            },
        };
        RateLimitFuture { state }
    }
}

/// Act on the store's answer: refuse, or arrange the settlement and call the inner service.
fn proceed<S, B>(
    cfg: &Arc<Config>,
    decision: Result<Decision, StoreError>,
    req: Request<B>,
    mut inner: S,
    ctx: Reserving,
) -> State<S, B>
where
    S: Service<Request<B>>,
{
    match decision {
        Ok(Decision::Admitted { ticket, status }) => {
            let pending = Arc::new(Pending {
                store: cfg.store.clone(),
                ticket: Mutex::new(Some(ticket)),
            });
            let (permit, pending_err) = match &ctx.tap {
                Some(tap) => {
                    let hook = pending.clone();
                    let prices = cfg.price.clone();
                    let reserved_price = ctx.price;
                    tap.on_complete(move |rec| {
                        let price = prices
                            .as_ref()
                            .filter(|_| !rec.model.is_empty())
                            .and_then(|f| f(&rec.model))
                            .or(reserved_price);
                        hook.complete(settlement_from_record(rec, price));
                    });
                    tap.hold(Permit(pending));
                    (None, None)
                }
                None => (Some(Permit(pending.clone())), Some(pending)),
            };
            State::Calling {
                fut: inner.call(req),
                permit,
                pending: pending_err,
                status: Some(status),
            }
        }
        Ok(Decision::Refused(r)) => State::Failed {
            error: Some(refusal_error(&r)),
        },
        Err(e) => {
            metrics::counter!(STORE_ERRORS_TOTAL, "op" => "reserve", "policy" => cfg.policy.as_str())
                .increment(1);
            let now = (cfg.clock)();
            let last = cfg.last_warn_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && cfg
                    .last_warn_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(error = %e, policy = cfg.policy.as_str(), "rate-limit store unreachable; applying the failure policy");
            }
            match cfg.policy {
                FailurePolicy::Open => State::Calling {
                    fut: inner.call(req),
                    permit: None,
                    pending: None,
                    status: None,
                },
                FailurePolicy::Closed => State::Failed {
                    error: Some(
                        GatewayError::new(
                            ErrorKind::RateLimited,
                            "Rate limits cannot be checked right now; try again shortly.",
                        )
                        .with_status(http::StatusCode::SERVICE_UNAVAILABLE)
                        .with_code("limits_unavailable")
                        .with_retry_after(Duration::from_secs(1)),
                    ),
                },
            }
        }
    }
}

/// A reservation waiting to be settled, exactly once.
pub(crate) struct Pending {
    store: Arc<dyn LimitStore>,
    ticket: Mutex<Option<Ticket>>,
}

impl Pending {
    /// Settle (first call only): `Some` with the exact amounts, `None` to keep the reserved.
    fn complete(&self, actual: Option<Settlement>) {
        let ticket = self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = ticket {
            run_settle(self.store.settle(t, actual));
        }
    }
}

fn run_settle(fut: StoreFuture<Result<(), StoreError>>) {
    match fut.now_or() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => settle_failed(&e),
        Err(fut) => match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = fut.await {
                        settle_failed(&e);
                    }
                });
            }
            Err(_) => settle_failed(&StoreError("no tokio runtime to settle on".into())),
        },
    }
}

fn settle_failed(e: &StoreError) {
    metrics::counter!(STORE_ERRORS_TOTAL, "op" => "settle", "policy" => "none").increment(1);
    tracing::warn!(error = %e, "rate-limit settlement failed; the reserved amounts stay charged");
}

/// The guard that releases a reservation's concurrency slot (and settles it at the reserved
/// amount, if nothing settled it before) when dropped.
pub(crate) struct Permit(Arc<Pending>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.complete(None);
    }
}

/// What to settle a finished request with. Exact upstream usage settles exactly; a request
/// refused further in, or an upstream error status without usage, costs nothing; anything
/// else without upstream usage (disconnect, timeout, cut stream) keeps the reservation.
pub fn settlement_from_record(rec: &UsageRecord, price: Option<Price>) -> Option<Settlement> {
    match rec.usage_source {
        UsageSource::Upstream => {
            let u = &rec.usage;
            Some(Settlement {
                tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
                cost_pico: price.map_or(0, |p| u64::try_from(p.cost_pico(u)).unwrap_or(u64::MAX)),
            })
        }
        _ if matches!(rec.outcome, Outcome::Refused | Outcome::UpstreamError) => {
            Some(Settlement::default())
        }
        _ => None,
    }
}

/// Without a tap: errors the upstream did not bill are refunded; others keep the reservation.
fn settlement_for_error(e: &GatewayError) -> Option<Settlement> {
    match e.kind() {
        ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol | ErrorKind::Internal => None,
        _ => Some(Settlement::default()),
    }
}

fn usd(pico: u64) -> String {
    format!(
        "${}.{:06}",
        pico / 1_000_000_000_000,
        (pico % 1_000_000_000_000) / 1_000_000
    )
}

fn refusal_error(r: &Refusal) -> GatewayError {
    metrics::counter!(REFUSED_TOTAL, "scope" => r.scope.label(), "limit" => r.kind.as_str())
        .increment(1);
    let scope = &r.scope;
    let (kind, code, message) = match r.kind {
        LimitKind::BudgetDay | LimitKind::BudgetMonth => {
            let period = if r.kind == LimitKind::BudgetDay {
                "daily"
            } else {
                "monthly"
            };
            (
                ErrorKind::BudgetExceeded,
                "budget_exceeded",
                format!(
                    "The {period} budget of {scope} is exhausted: {} of {} spent; this request may cost up to {}.",
                    usd(r.used),
                    usd(r.limit),
                    usd(r.needed)
                ),
            )
        }
        LimitKind::Requests => (
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {scope}: {} requests per minute.",
                r.limit
            ),
        ),
        LimitKind::Tokens if !r.can_fit => (
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!(
                "This request needs up to {} tokens, more than the limit of {} tokens per minute for {scope}; lower max_tokens.",
                r.needed, r.limit
            ),
        ),
        LimitKind::Tokens => (
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {scope}: {} tokens per minute, {} used, this request needs up to {}.",
                r.limit, r.used, r.needed
            ),
        ),
        LimitKind::Concurrency => (
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!(
                "Too many concurrent requests for {scope}: the limit is {}.",
                r.limit
            ),
        ),
    };
    let mut e = GatewayError::new(kind, message)
        .with_code(code)
        .with_retry_after(r.retry_after);
    write_headers(e.headers_mut(), &r.status);
    if r.kind.is_budget() || !r.can_fit {
        e = e.with_header(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("false"),
        );
    }
    e
}

const H_LIMIT_REQ: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const H_REM_REQ: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const H_RESET_REQ: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const H_LIMIT_TOK: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const H_REM_TOK: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const H_RESET_TOK: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// Write the `x-ratelimit-*` headers for `status`.
pub fn write_headers(h: &mut HeaderMap, status: &RateStatus) {
    let mut put = |q: &Option<Quota>, names: [HeaderName; 3]| {
        if let Some(q) = q {
            let [l, r, t] = names;
            h.insert(l, HeaderValue::from(q.limit));
            h.insert(r, HeaderValue::from(q.remaining));
            if let Ok(v) = HeaderValue::try_from(go_duration(q.reset)) {
                h.insert(t, v);
            }
        }
    };
    put(&status.requests, [H_LIMIT_REQ, H_REM_REQ, H_RESET_REQ]);
    put(&status.tokens, [H_LIMIT_TOK, H_REM_TOK, H_RESET_TOK]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(outcome: Outcome, source: UsageSource) -> UsageRecord {
        UsageRecord {
            request_id: None,
            key_id: None,
            tenant: None,
            model: "m".into(),
            provider: None,
            upstream_model: None,
            variant: None,
            attempts: 1,
            stream: true,
            outcome,
            status: 200,
            error_kind: None,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 4,
                total_tokens: 14,
                ..Usage::default()
            },
            usage_source: source,
            cost_pico: None,
            ttft_ms: None,
            total_ms: 1.0,
            overhead_us: None,
            started_at_ms: 0,
        }
    }

    #[test]
    fn settlement_rules() {
        let price = Some(Price {
            input: 5,
            output: 7,
            cached_input: None,
            cache_write: None,
        });
        let exact = Some(Settlement {
            tokens: 14,
            cost_pico: 10 * 5 + 4 * 7,
        });
        assert_eq!(
            settlement_from_record(&rec(Outcome::Success, UsageSource::Upstream), price),
            exact
        );
        assert_eq!(
            settlement_from_record(
                &rec(Outcome::ClientDisconnect, UsageSource::Upstream),
                price
            ),
            exact
        );
        // No exact usage: keep the reservation (an estimate never settles).
        for o in [
            Outcome::ClientDisconnect,
            Outcome::Timeout,
            Outcome::StreamError,
        ] {
            for s in [UsageSource::None, UsageSource::Estimated] {
                assert_eq!(settlement_from_record(&rec(o, s), price), None);
            }
        }
        // Not billed upstream: refund in full.
        for o in [Outcome::Refused, Outcome::UpstreamError] {
            assert_eq!(
                settlement_from_record(&rec(o, UsageSource::None), price),
                Some(Settlement::default())
            );
        }
    }

    #[test]
    fn refusal_errors() {
        let r = Refusal {
            scope: Scope::Key(Arc::from("k1")),
            kind: LimitKind::BudgetMonth,
            limit: 5_000_000_000_000,
            used: 4_999_000_000_000,
            needed: 2_000_000_000,
            retry_after: Duration::from_secs(100),
            can_fit: true,
            status: RateStatus::default(),
        };
        let e = refusal_error(&r);
        assert_eq!(e.kind(), ErrorKind::BudgetExceeded);
        assert_eq!(e.status(), 429);
        assert_eq!(
            e.message(),
            "The monthly budget of key 'k1' is exhausted: $4.999000 of $5.000000 spent; this request may cost up to $0.002000."
        );
        assert_eq!(e.headers()["x-should-retry"], "false");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(100)));
    }
}
