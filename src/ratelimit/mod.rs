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
//! - Settled exactly once, in one place: the reservation's permit rides in the response future
//!   and then in the response body (tower-http's `in_flight_requests` pattern), so the
//!   concurrency slot is held until a 60-second stream has ended. When the body ends, fails or
//!   is dropped, the permit settles with the exact usage and cost the answer reported (the
//!   [`UsageReport`] StreamPassthrough put on the response, read then)
//!   — refunding the difference at once. Without reported usage (a client that disconnected
//!   before the upstream reported, an upstream that sent none) the reserved amount is kept:
//!   never zero. An error instead of a response settles from the error's
//!   [`context`](crate::error::GatewayError::context): reported usage if any, else nothing for
//!   a request refused further in or failed by its upstreams (every attempt of the chain
//!   failed), and the reserved amount for a deadline or a gateway fault (the upstream may have
//!   billed). The price is the one of the model Route reports ([`Routed`]),
//!   else the one reserved with.
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
//! Order, fail closed: RateLimit needs Parse outside it (the model and the token estimate), and,
//! when [default key limits](RateLimitLayer::default_key_limits) are set, Auth outside it;
//! otherwise it answers 500 `misconfigured_stack` naming the missing layer. Global and per-model
//! limits alone work without Auth.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tower::Service;

pub use future::RateLimitFuture;
pub use layer::{Clock, DEFAULT_MAX_TOKENS, FailurePolicy, PriceFn, RateLimitLayer};
pub use limits::{LimitKind, Limits, Scope};
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
use crate::ext::{Routed, UsageFacts, UsageReport};
use crate::order::{self, Checked};
use crate::request::ParsedRequest;
use crate::usage::{Outcome, Price, Usage};

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

/// Fail closed when the layer is stacked where it cannot see what it limits: without
/// ParsedRequest (Parse outside) there is no model and no token estimate; without KeyIdentity
/// (Auth outside) per-key limits would silently not apply, so it is required when default key
/// limits are configured. Global and per-model limits alone work without Auth.
fn misordered<B>(cfg: &Config, req: &mut Request<B>) -> Option<GatewayError> {
    if let Err(e) = order::enter(req.extensions_mut(), Checked::RateLimit) {
        return Some(e);
    }
    static NO_PARSE: AtomicBool = AtomicBool::new(false);
    static NO_AUTH: AtomicBool = AtomicBool::new(false);
    if req.extensions().get::<ParsedRequest>().is_none() {
        return Some(GatewayError::misconfigured_stack(
            "RateLimitLayer",
            "ParseLayer",
            "ParsedRequest",
            &NO_PARSE,
        ));
    }
    if !cfg.key_default.is_empty() && req.extensions().get::<KeyIdentity>().is_none() {
        return Some(GatewayError::misconfigured_stack(
            "RateLimitLayer",
            "AuthLayer",
            "KeyIdentity",
            &NO_AUTH,
        ));
    }
    None
}

/// What the layer needs after the reservation is decided.
pub(crate) struct Reserving {
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cfg = &self.cfg;
        if let Some(error) = misordered(cfg, &mut req) {
            return RateLimitFuture {
                state: State::Failed { error: Some(error) },
            };
        }
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
        let ctx = Reserving { price };
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
        Ok(Decision::Admitted { ticket, status }) => State::Calling {
            fut: inner.call(req),
            permit: Some(Permit {
                cfg: cfg.clone(),
                ticket: Some(ticket),
                reserved_price: ctx.price,
                report: None,
                model: None,
            }),
            status: Some(status),
        },
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

/// An admitted reservation, settled exactly once — the one settlement path. It rides in the
/// response future, then in the response body ([`PermitBody`](body::PermitBody)); while it
/// lives, the reservation (and its concurrency slot) is held. Dropped — the body ended, failed
/// or was dropped, or the request was abandoned — it settles with the usage the answer
/// reported, else keeps the reserved amount. An error answer settles through
/// [`settle_error`](Self::settle_error) instead.
pub(crate) struct Permit {
    cfg: Arc<Config>,
    ticket: Option<Ticket>,
    /// The price the reservation was made with (the requested model's).
    reserved_price: Option<Price>,
    /// The answer's usage report (StreamPassthrough's), read when the permit settles.
    report: Option<UsageReport>,
    /// The model Route resolved (its price settles), when reported.
    model: Option<Arc<str>>,
}

impl Permit {
    /// The response arrived: read its reports when the body ends.
    fn attach(&mut self, res: &Response<Body>) {
        self.report = res.extensions().get::<UsageReport>().cloned();
        self.model = res.extensions().get::<Routed>().map(|r| r.model.clone());
    }

    /// The inner service answered with an error: settle from its context.
    fn settle_error(mut self, e: &GatewayError) {
        let ctx = e.context();
        self.model = ctx.routed.as_ref().map(|r| r.model.clone());
        let usage = ctx.usage.as_ref().and_then(UsageReport::usage);
        let settlement = settlement(usage, Some(e.kind()), self.price());
        self.settle(settlement);
    }

    fn price(&self) -> Option<Price> {
        let routed = match (&self.cfg.price, &self.model) {
            (Some(f), Some(m)) => f(m),
            _ => None,
        };
        routed.or(self.reserved_price)
    }

    /// Settle (first call only): `Some` with the exact amounts, `None` to keep the reserved.
    fn settle(&mut self, actual: Option<Settlement>) {
        if let Some(t) = self.ticket.take() {
            run_settle(self.cfg.store.settle(t, actual));
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let facts = self.report.as_ref().map(UsageReport::get);
            let settlement = match facts {
                Some(f) if f.units.is_some() => units_settlement(&f, self.price()),
                _ => settlement(facts.and_then(|f| f.usage), None, self.price()),
            };
            self.settle(settlement);
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

/// What to settle a finished request with: the exact reported `usage` (priced with `price`)
/// when there is one; else, for a request that failed with `error` that was refused further in
/// or failed by its upstreams before anything was served, nothing; else (a deadline, a gateway
/// fault, an answer without usage, a disconnect) `None`: keep the reservation.
pub fn settlement(
    usage: Option<Usage>,
    error: Option<ErrorKind>,
    price: Option<Price>,
) -> Option<Settlement> {
    if let Some(u) = usage {
        return Some(Settlement {
            tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            cost_pico: price.map_or(0, |p| u64::try_from(p.cost_pico(&u)).unwrap_or(u64::MAX)),
        });
    }
    match error.map(Outcome::of_error) {
        Some(Outcome::Refused | Outcome::UpstreamError) => Some(Settlement::default()),
        _ => None,
    }
}

/// The settlement of an answer billed per unit (images, speech characters, audio seconds):
/// its tokens, and the cost of tokens and units together (a unit without a price costs
/// nothing, as tokens without a price do).
fn units_settlement(facts: &UsageFacts, price: Option<Price>) -> Option<Settlement> {
    let usage = facts.usage.unwrap_or_default();
    let units = facts.units.unwrap_or_default();
    let cost = price.map_or(0, |p| {
        p.cost_pico(&usage)
            .saturating_add(p.units_cost_pico(&units).unwrap_or(0))
    });
    Some(Settlement {
        tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        cost_pico: u64::try_from(cost).unwrap_or(u64::MAX),
    })
}

fn usd(pico: u64) -> String {
    format!("${}", crate::money::Usd::from_pico(u128::from(pico)))
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

    #[test]
    fn settlement_rules() {
        let price = Some(Price {
            input: 5,
            output: 7,
            cached_input: None,
            cache_write: None,
            per_image: None,
            per_character: None,
            per_second: None,
        });
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            total_tokens: 14,
            ..Usage::default()
        };
        let exact = Some(Settlement {
            tokens: 14,
            cost_pico: 10 * 5 + 4 * 7,
        });
        // Reported usage settles exactly: an answer, or an error after usage was reported.
        assert_eq!(settlement(Some(usage), None, price), exact);
        for kind in [ErrorKind::UpstreamTimeout, ErrorKind::UpstreamServerError] {
            assert_eq!(settlement(Some(usage), Some(kind), price), exact);
        }
        // No usage reported: keep the reservation (an answer without usage, a disconnect, a
        // deadline, a gateway fault: the upstream may have billed).
        assert_eq!(settlement(None, None, price), None);
        for kind in [ErrorKind::UpstreamTimeout, ErrorKind::Internal] {
            assert_eq!(settlement(None, Some(kind), price), None);
        }
        // Refused further in, or every upstream attempt failed: nothing was billed.
        for kind in [
            ErrorKind::Unauthorized,
            ErrorKind::ModelNotFound,
            ErrorKind::RateLimited,
            ErrorKind::UpstreamServerError,
            ErrorKind::UpstreamRateLimited,
            ErrorKind::UpstreamConnect,
            ErrorKind::UpstreamProtocol,
            ErrorKind::CircuitOpen,
        ] {
            assert_eq!(
                settlement(None, Some(kind), price),
                Some(Settlement::default()),
                "{kind}"
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
            "The monthly budget of key 'k1' is exhausted: $4.999 of $5 spent; this request may cost up to $0.002."
        );
        assert_eq!(e.headers()["x-should-retry"], "false");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(100)));
    }
}
