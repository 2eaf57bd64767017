//! [`Target`]: one concrete place a request can be sent (a provider and an exact upstream model),
//! with its deadlines, capabilities, price and health. Route produces an ordered list of targets
//! ([`RouteDecision`]); Fallback walks it, one [`Attempt`] per try.

use std::sync::Arc;
use std::time::Duration;

use crate::health::Health;
use crate::pricing::MaxPrice;
use crate::provider::Provider;
use crate::usage::Price;

/// Per-attempt deadlines. `None` means "no deadline of this kind".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// TCP/TLS connect.
    pub connect: Option<Duration>,
    /// Until the first content event of a stream (headers alone do not count). For a
    /// non-streaming request, until the response head.
    pub first_token: Option<Duration>,
    /// Longest gap between two events of a stream, after the first.
    pub idle: Option<Duration>,
    /// The whole attempt, body included.
    pub total: Option<Duration>,
}

impl Timeouts {
    /// No deadline at all (what [`Timeouts::default`] gives).
    pub const NONE: Timeouts = Timeouts {
        connect: None,
        first_token: None,
        idle: None,
        total: None,
    };

    /// The documented defaults: connect 5 s, first token 60 s, idle gap 60 s, total 10 min.
    /// A [`Target`] built with [`Target::new`] gets them, and so does every configured target
    /// without explicit timeouts; [`Target::with_timeouts`]`(Timeouts::NONE)` opts out.
    pub const RECOMMENDED: Timeouts = Timeouts {
        connect: Some(Duration::from_secs(5)),
        first_token: Some(Duration::from_secs(60)),
        idle: Some(Duration::from_secs(60)),
        total: Some(Duration::from_secs(600)),
    };

    /// Each deadline of `self`, or `defaults`' where `self` has none (a target's own setting
    /// over its model's).
    pub fn or(self, defaults: Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.or(defaults.connect),
            first_token: self.first_token.or(defaults.first_token),
            idle: self.idle.or(defaults.idle),
            total: self.total.or(defaults.total),
        }
    }

    /// Whether no deadline is set.
    pub fn is_none(&self) -> bool {
        *self == Timeouts::NONE
    }

    /// Each deadline is the shorter of the two (a request may only shorten what config set).
    pub fn min(self, other: Timeouts) -> Timeouts {
        fn m(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        Timeouts {
            connect: m(self.connect, other.connect),
            first_token: m(self.first_token, other.first_token),
            idle: m(self.idle, other.idle),
            total: m(self.total, other.total),
        }
    }
}

/// What a target can do (for tier routing and request-feature rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Context window in tokens (prompt + completion), if known.
    pub context_window: Option<u64>,
    /// Accepts `tools`.
    pub tools: bool,
    /// Accepts image parts.
    pub vision: bool,
    /// Accepts `response_format` JSON modes.
    pub json_mode: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            context_window: None,
            tools: true,
            vision: true,
            json_mode: true,
        }
    }
}

/// One concrete destination: a provider plus the exact upstream model id.
pub struct Target {
    /// `provider/upstream_model`: the bounded label used in metrics and the attempts header.
    pub id: Arc<str>,
    /// The adapter that speaks to the provider.
    pub provider: Arc<dyn Provider>,
    /// The exact model id sent upstream. Never substituted.
    pub upstream_model: Arc<str>,
    /// Deadlines for each attempt on this target.
    pub timeouts: Timeouts,
    /// Weight in a weighted split.
    pub weight: u32,
    /// Price, if known.
    pub price: Option<Price>,
    /// What the target can do.
    pub caps: Capabilities,
    /// Circuit breaker, rate-limit (429 `Retry-After`) memory and latency EWMA of this target.
    pub health: Arc<Health>,
    /// This target's metric handles (Fallback's attempts and circuit state), cached.
    pub(crate) series: crate::fallback::TargetSeries,
}

impl Target {
    /// A target with the default deadlines ([`Timeouts::RECOMMENDED`]), weight 1, default capabilities and fresh health.
    pub fn new(provider: Arc<dyn Provider>, upstream_model: impl Into<Arc<str>>) -> Target {
        let upstream_model = upstream_model.into();
        Target {
            id: Arc::from(format!("{}/{}", provider.name(), upstream_model)),
            provider,
            upstream_model,
            timeouts: Timeouts::RECOMMENDED,
            weight: 1,
            price: None,
            caps: Capabilities::default(),
            health: Arc::new(Health::default()),
            series: Default::default(),
        }
    }
}

impl Target {
    /// A target served by a leaf service of your own instead of [`Dispatch`] and its
    /// [`Provider`] adapters: the leaf reads the [`Attempt`] extension and answers by
    /// [`provider_name`](Provider::name) and [`upstream_model`](Target::upstream_model). The
    /// target's id is `provider_name/upstream_model`, as for any target, and every other
    /// setting (deadlines, weight, price, health) works the same. Its `provider` is a
    /// placeholder of kind `custom` that only names it: if such a target ever reaches
    /// [`Dispatch`], the attempt fails with a 500 saying so (never a silent call).
    ///
    /// The leaf follows the provider contract: `Ok` only for a successful answer, in OpenAI's
    /// format for the request's API (JSON, or `text/event-stream` chunks ending in
    /// `data: [DONE]`); `Err(`[`GatewayError`](crate::error::GatewayError)`)` otherwise
    /// (e.g. [`GatewayError::upstream_status`](crate::error::GatewayError::upstream_status)),
    /// so Fallback can try the next target.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tollgate::body::Body;
    /// use tollgate::error::GatewayError;
    /// use tollgate::ext::Attempt;
    /// use tollgate::target::Target;
    ///
    /// let primary = Target::for_leaf("my-cluster", "llama-3").into_arc();
    /// assert_eq!(&*primary.id, "my-cluster/llama-3");
    ///
    /// // The leaf, under FallbackLayer and TimeoutLayer in place of `Dispatch`.
    /// let leaf = tower::service_fn(|req: Request<Full<Bytes>>| async move {
    ///     let attempt = req.extensions().get::<Attempt>().cloned();
    ///     let Some(attempt) = attempt else {
    ///         return Err(GatewayError::internal("no Attempt: FallbackLayer is missing"));
    ///     };
    ///     if &*attempt.target.upstream_model != "llama-3" {
    ///         let name = attempt.target.provider.name().into();
    ///         return Err(GatewayError::upstream_status(StatusCode::SERVICE_UNAVAILABLE, "busy", Some(name)));
    ///     }
    ///     Ok::<_, GatewayError>(Response::new(Body::from(r#"{"choices":[]}"#)))
    /// });
    /// # let _ = leaf;
    /// ```
    ///
    /// [`Dispatch`]: crate::provider::Dispatch
    pub fn for_leaf(
        provider_name: impl Into<Arc<str>>,
        upstream_model: impl Into<Arc<str>>,
    ) -> Target {
        let leaf = CustomLeaf {
            name: provider_name.into(),
        };
        Target::new(Arc::new(leaf), upstream_model)
    }
}

/// The placeholder provider of a [`Target::for_leaf`] target: names it, never calls anything.
#[derive(Debug)]
struct CustomLeaf {
    name: Arc<str>,
}

impl Provider for CustomLeaf {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "custom"
    }
    fn call(
        &self,
        call: crate::provider::UpstreamCall,
    ) -> crate::provider::BoxFuture<
        Result<http::Response<crate::body::Body>, crate::error::GatewayError>,
    > {
        let message = format!(
            "The target '{}/{}' is served by a leaf service of your own (Target::for_leaf); \
             Dispatch cannot call it.",
            self.name, call.upstream_model
        );
        Box::pin(async move { Err(crate::error::GatewayError::internal(message)) })
    }
}

impl Target {
    /// Set the deadlines.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Target {
        self.timeouts = timeouts;
        self
    }
    /// Set the split weight (used by [`Strategy::Weighted`](crate::route::Strategy)).
    pub fn with_weight(mut self, weight: u32) -> Target {
        self.weight = weight;
        self
    }
    /// Set the price.
    pub fn with_price(mut self, price: Price) -> Target {
        self.price = Some(price);
        self
    }
    /// Set the capabilities.
    pub fn with_caps(mut self, caps: Capabilities) -> Target {
        self.caps = caps;
        self
    }
    /// Use `health` (share one `Arc<Health>` between targets naming the same upstream).
    pub fn with_health(mut self, health: Arc<Health>) -> Target {
        self.health = health;
        self
    }
    /// Wrap in an `Arc`, as route tables hold targets.
    pub fn into_arc(self) -> Arc<Target> {
        Arc::new(self)
    }

    /// The estimated cost of a request with `prompt_tokens` in and `output_tokens` out, in
    /// pico-USD; `None` when the target has no price.
    pub fn cost_estimate(&self, prompt_tokens: u64, output_tokens: u64) -> Option<u128> {
        let p = self.price?;
        Some(
            u128::from(prompt_tokens) * u128::from(p.input)
                + u128::from(output_tokens) * u128::from(p.output),
        )
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("timeouts", &self.timeouts)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// Request extension written by Route, read by Fallback: the ordered targets to try.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The public model name after alias resolution.
    pub model: Arc<str>,
    /// Targets in the order they may be tried. Only the first is tried when
    /// `allow_fallback` is false.
    pub targets: Arc<[Arc<Target>]>,
    /// The A/B variant chosen by a weighted split, if any.
    pub variant: Option<Arc<str>>,
    /// Whether Fallback may go past the first target.
    pub allow_fallback: bool,
    /// Deadlines the client asked for (header); they can only shorten the target's own.
    pub client_timeouts: Timeouts,
    /// The effective cost threshold of this request (route, key and `x-tollgate-max-price`),
    /// if any; `targets` holds only targets within it.
    pub max_price: Option<MaxPrice>,
    /// Candidates Route left out because they are priced above `max_price` (or unpriced):
    /// Fallback reports them in `x-tollgate-attempts` as
    /// `provider/model/over_max_price/0`. Empty without a threshold.
    pub over_max_price: Vec<Arc<Target>>,
}

/// Request extension written by Fallback for each try, read by Timeout and Dispatch.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The target of this try.
    pub target: Arc<Target>,
    /// 1-based attempt number.
    pub number: u32,
    /// The deadlines in force for this attempt (target's, shortened by the client's).
    pub timeouts: Timeouts,
}

/// One finished (failed or successful) attempt, as reported in `x-tollgate-attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// The target's id (`provider/model`).
    pub target: Arc<str>,
    /// The upstream status, or 0 when none (connect error, timeout before headers, skipped).
    pub status: u16,
    /// Time the attempt took.
    pub elapsed: Duration,
    /// The error kind label when the attempt failed.
    pub error: Option<&'static str>,
}

/// The `x-tollgate-attempts` label of a target skipped for its price
/// ([`RouteDecision::over_max_price`]).
pub const OVER_MAX_PRICE: &str = "over_max_price";

impl AttemptInfo {
    /// A target skipped without a call because it is priced above the request's threshold:
    /// `provider/model/over_max_price/0` in the attempts header.
    pub fn over_max_price(target: &Target) -> AttemptInfo {
        AttemptInfo {
            target: target.id.clone(),
            status: 0,
            elapsed: Duration::ZERO,
            error: Some(OVER_MAX_PRICE),
        }
    }

    /// `provider/model/status/ms` as in the attempts header. When no upstream status exists
    /// (connect error, timeout, a target skipped because it is blocked) the status part is the
    /// error kind label, e.g. `openai/gpt-4o/upstream_timeout/2000`,
    /// `openai/gpt-4o/upstream_rate_limited/0` (skipped: its upstream's 429 `Retry-After` has
    /// not passed) or `openai/gpt-4o/circuit_open/0` (skipped: ejected by the breaker).
    pub fn header_part(&self) -> String {
        let mut s = String::with_capacity(self.target.len() + 16);
        self.write_header_part(&mut s);
        s
    }

    /// Append [`header_part`](Self::header_part) to `out`.
    pub fn write_header_part(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(&self.target);
        out.push('/');
        match (self.status, self.error) {
            (0, Some(kind)) => out.push_str(kind),
            (status, _) => {
                let _ = write!(out, "{status}");
            }
        }
        let _ = write!(out, "/{}", self.elapsed.as_millis());
    }
}
