//! The runtime model table: [`RouteTable`], [`ModelRoute`], [`Variant`], [`Rule`],
//! [`RoutePolicy`], and the [`RouteHandle`] that hot-swaps it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::error::{ErrorKind, GatewayError};
use crate::pricing::MaxPrice;
use crate::request::{Api, ParsedRequest};
use crate::target::{AttemptInfo, RouteDecision, Target, Timeouts};

/// `x-tollgate-fallback: off` switches fallback off for one request (`on` is the default).
pub const FALLBACK_HEADER: &str = "x-tollgate-fallback";
/// `x-tollgate-timeout-ms: N` caps each attempt's total time (it can only shorten).
pub const TIMEOUT_HEADER: &str = "x-tollgate-timeout-ms";
/// `x-tollgate-first-token-timeout-ms: N` caps each attempt's time to first token.
pub const FIRST_TOKEN_TIMEOUT_HEADER: &str = "x-tollgate-first-token-timeout-ms";
/// `x-tollgate-idle-timeout-ms: N` caps the gap between two stream events.
pub const IDLE_TIMEOUT_HEADER: &str = "x-tollgate-idle-timeout-ms";
/// `x-tollgate-sticky: KEY` keeps a sticky split on one variant per KEY (otherwise the key id
/// of the [`KeyIdentity`](crate::auth::KeyIdentity) Auth put in the request is used).
pub const STICKY_HEADER: &str = "x-tollgate-sticky";
/// `x-tollgate-tag: TAG` is matched by [`Condition::tag`].
pub const TAG_HEADER: &str = "x-tollgate-tag";
/// Response header naming the split variant that served.
pub const VARIANT_HEADER: &str = "x-tollgate-variant";
/// `x-tollgate-max-price: input=3,output=15` (USD per million tokens, either part optional)
/// lowers the request's cost threshold; it can never raise the route's or the key's.
pub const MAX_PRICE_HEADER: &str = "x-tollgate-max-price";
static MAX_PRICE_NAME: HeaderName = HeaderName::from_static(MAX_PRICE_HEADER);

/// Output tokens assumed when a request sets no `max_tokens` (for cost ordering only).
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 512;

/// How the targets of one variant are ordered for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// As configured (priority order).
    #[default]
    Ordered,
    /// The first target drawn by [`Target::weight`] (sticky when the route is sticky), the others
    /// after it in configured order.
    Weighted,
    /// Lowest smoothed time to first token first (targets never measured first, so they get
    /// measured); blocked targets last.
    Latency,
    /// Lowest estimated cost for this request first (unpriced targets last); blocked targets
    /// last.
    Cheapest,
}

/// One arm of a weighted split: a name (recorded on the response and in the usage record), a
/// weight, and its own ordered targets.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Recorded as `x-tollgate-variant` and `UsageRecord::variant`.
    pub name: Arc<str>,
    /// Relative weight (0 never chosen).
    pub weight: u32,
    /// The targets, ordered by the route's [`Strategy`].
    pub targets: Arc<[Arc<Target>]>,
}

impl Variant {
    /// A variant.
    pub fn new(name: impl Into<Arc<str>>, weight: u32, targets: Vec<Arc<Target>>) -> Self {
        Variant {
            name: name.into(),
            weight,
            targets: targets.into(),
        }
    }
}

/// What one public model name routes to.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    name: Arc<str>,
    variants: Vec<Variant>,
    total_weight: u64,
    split: bool,
    sticky: bool,
    strategy: Strategy,
    require_caps: bool,
    fallback: bool,
    max_price: Option<MaxPrice>,
}

impl ModelRoute {
    /// A model served by `targets`, tried in this order.
    pub fn new(name: impl Into<Arc<str>>, targets: Vec<Arc<Target>>) -> Self {
        let name = name.into();
        ModelRoute {
            variants: vec![Variant::new(name.clone(), 1, targets)],
            name,
            total_weight: 1,
            split: false,
            sticky: false,
            strategy: Strategy::Ordered,
            require_caps: false,
            fallback: true,
            max_price: None,
        }
    }

    /// A weighted split (A/B test, canary) between `variants`; the chosen variant is recorded.
    pub fn split(name: impl Into<Arc<str>>, variants: Vec<Variant>) -> Self {
        let total_weight = variants.iter().map(|v| u64::from(v.weight)).sum();
        ModelRoute {
            name: name.into(),
            variants,
            total_weight,
            split: true,
            sticky: false,
            strategy: Strategy::Ordered,
            require_caps: false,
            fallback: true,
            max_price: None,
        }
    }

    /// A tier (virtual model such as `tier:cheap`): the cheapest healthy `candidates` whose
    /// [`Capabilities`](crate::target::Capabilities) satisfy the request, cheapest first.
    /// A request no candidate can serve is refused with 400.
    pub fn tier(name: impl Into<Arc<str>>, candidates: Vec<Arc<Target>>) -> Self {
        ModelRoute::new(name, candidates)
            .strategy(Strategy::Cheapest)
            .require_capabilities(true)
    }

    /// Whether Fallback may go past the first target of this model (default true). With
    /// `false` every request is exactly one attempt, whatever the client asks.
    pub fn fallback(mut self, allowed: bool) -> Self {
        self.fallback = allowed;
        self
    }

    /// A cost threshold for this model: targets priced above it are skipped (see the
    /// [module docs](crate::route)); a key's threshold and the request's header can only lower
    /// it.
    pub fn max_price(mut self, max_price: MaxPrice) -> Self {
        self.max_price = Some(max_price);
        self
    }

    /// This model's cost threshold, if any.
    pub fn max_price_limit(&self) -> Option<MaxPrice> {
        self.max_price
    }

    /// Set the strategy that orders each variant's targets.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Keep each sticky key (the `x-tollgate-sticky` header, else the key id) on one variant
    /// (and, with [`Strategy::Weighted`], on one first target). A request without a key is
    /// assigned at random, by weight.
    pub fn sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }

    /// Drop targets whose capabilities do not satisfy the request (tools, images, JSON mode,
    /// context window); refuse with 400 when none is left.
    pub fn require_capabilities(mut self, yes: bool) -> Self {
        self.require_caps = yes;
        self
    }

    /// The public name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The variants (one, named after the model, when there is no split).
    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    fn pick_variant(&self, point: u64) -> &Variant {
        if self.variants.len() > 1 && self.total_weight > 0 {
            let mut x = point % self.total_weight;
            for v in &self.variants {
                let w = u64::from(v.weight);
                if x < w {
                    return v;
                }
                x -= w;
            }
        }
        &self.variants[0]
    }
}

/// Whether a client may use a per-request control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientControl {
    /// The client's setting is honoured.
    #[default]
    Allow,
    /// The client's setting is ignored.
    Ignore,
    /// A request that uses it is refused with 400 (explicit, never silent).
    Reject,
}

/// Table-level policy for per-request controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutePolicy {
    /// The client's own ordered fallback list (`"models": [...]` in the body).
    pub client_fallback_list: ClientControl,
    /// `x-tollgate-fallback: off`.
    pub client_fallback_off: ClientControl,
    /// `x-tollgate-*timeout-ms` headers (they can only shorten configured deadlines).
    pub client_timeouts: ClientControl,
}

/// Request features a [`Rule`] matches. Every field set must match; an empty condition matches
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// The request has tools.
    pub has_tools: Option<bool>,
    /// The request has image parts.
    pub has_images: Option<bool>,
    /// The request asks for JSON output.
    pub json_mode: Option<bool>,
    /// The request streams.
    pub stream: Option<bool>,
    /// Estimated prompt tokens at least this.
    pub min_prompt_tokens: Option<u64>,
    /// Estimated prompt tokens at most this.
    pub max_prompt_tokens: Option<u64>,
    /// The `x-tollgate-tag` header equals this.
    pub tag: Option<Arc<str>>,
}

impl Condition {
    fn matches(&self, p: &ParsedRequest, tag: Option<&str>) -> bool {
        let est = p.prompt_tokens_estimate();
        self.has_tools.is_none_or(|v| v == p.has_tools)
            && self.has_images.is_none_or(|v| v == p.has_images)
            && self.json_mode.is_none_or(|v| v == p.json_mode)
            && self.stream.is_none_or(|v| v == p.stream)
            && self.min_prompt_tokens.is_none_or(|v| est >= v)
            && self.max_prompt_tokens.is_none_or(|v| est <= v)
            && self.tag.as_deref().is_none_or(|t| tag == Some(t))
    }
}

/// A routing rule: when a request for one of `models` (any model when `None`) matches `when`,
/// it is routed to `route_to` instead. The first matching rule wins; rules apply once (the
/// model they route to is not matched again).
#[derive(Debug, Clone)]
pub struct Rule {
    /// Public model names (after alias resolution) the rule applies to; `None`: all.
    pub models: Option<Vec<Arc<str>>>,
    /// The condition.
    pub when: Condition,
    /// The model (or alias, or tier) to route to.
    pub route_to: Arc<str>,
}

/// A table that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route table: {0}")]
pub struct RouteTableError(String);

/// Builder for [`RouteTable`]; [`build`](Self::build) validates.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    models: Vec<ModelRoute>,
    aliases: Vec<(Arc<str>, Arc<str>)>,
    rules: Vec<Rule>,
    policy: RoutePolicy,
}

impl RouteTableBuilder {
    /// Add a model (or split, or tier).
    pub fn model(mut self, route: ModelRoute) -> Self {
        self.models.push(route);
        self
    }
    /// `alias` resolves to the model named `to` (exactly that model: no prefix matching, no
    /// substitution).
    pub fn alias(mut self, alias: impl Into<Arc<str>>, to: impl Into<Arc<str>>) -> Self {
        self.aliases.push((alias.into(), to.into()));
        self
    }
    /// Add a rule (evaluated in the order added).
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
    /// Set the per-request control policy.
    pub fn policy(mut self, policy: RoutePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Validate and build: names are unique, every model has targets, every split has weight,
    /// every alias and rule names a configured model.
    pub fn build(self) -> Result<RouteTable, RouteTableError> {
        let mut models = HashMap::with_capacity(self.models.len());
        for m in self.models {
            if m.variants.is_empty() || m.variants.iter().any(|v| v.targets.is_empty()) {
                return Err(RouteTableError(format!(
                    "model `{}` has a variant without targets",
                    m.name
                )));
            }
            if m.split && m.total_weight == 0 {
                return Err(RouteTableError(format!(
                    "split `{}` has no variant with a weight above 0",
                    m.name
                )));
            }
            let name = m.name.clone();
            if models.insert(name.clone(), Arc::new(m)).is_some() {
                return Err(RouteTableError(format!("model `{name}` is defined twice")));
            }
        }
        let mut aliases = HashMap::with_capacity(self.aliases.len());
        for (alias, to) in self.aliases {
            if models.contains_key(&alias) {
                return Err(RouteTableError(format!(
                    "alias `{alias}` is also a model name"
                )));
            }
            if !models.contains_key(&to) {
                return Err(RouteTableError(format!(
                    "alias `{alias}` points to unknown model `{to}`"
                )));
            }
            if aliases.insert(alias.clone(), to).is_some() {
                return Err(RouteTableError(format!("alias `{alias}` is defined twice")));
            }
        }
        for r in &self.rules {
            let known = |n: &Arc<str>| models.contains_key(n) || aliases.contains_key(n);
            if !known(&r.route_to) {
                return Err(RouteTableError(format!(
                    "rule routes to unknown model `{}`",
                    r.route_to
                )));
            }
            if let Some(bad) = r.models.iter().flatten().find(|m| !known(m)) {
                return Err(RouteTableError(format!(
                    "rule applies to unknown model `{bad}`"
                )));
            }
        }
        Ok(RouteTable {
            models,
            aliases,
            rules: self.rules,
            policy: self.policy,
            counter: AtomicU64::new(seed()),
        })
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix64(t ^ (std::process::id() as u64).rotate_left(32))
}

/// SplitMix64: a fast, well-distributed 64-bit mixer.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over `parts`, then mixed: a stable hash for sticky assignment (the same key lands on
/// the same variant in every replica and across restarts).
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h)
}

/// The model table: public names, aliases, splits, tiers, rules and the per-request policy.
///
/// Immutable once built; hot reload builds a new one and swaps it in through a
/// [`RouteHandle`]. A request routed by the old table keeps its targets (they are `Arc`s).
#[derive(Debug)]
pub struct RouteTable {
    models: HashMap<Arc<str>, Arc<ModelRoute>>,
    aliases: HashMap<Arc<str>, Arc<str>>,
    rules: Vec<Rule>,
    policy: RoutePolicy,
    counter: AtomicU64,
}

/// Per-request inputs to [`RouteTable::route`] that come from outside the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    /// The request headers (`x-tollgate-*` controls).
    pub headers: Option<&'a HeaderMap>,
    /// The sticky key when no `x-tollgate-sticky` header is sent (the key id from Auth).
    pub key_id: Option<&'a str>,
    /// The calling key's cost threshold ([`KeyIdentity::max_price`](crate::auth::KeyIdentity)).
    pub key_max_price: Option<MaxPrice>,
}

impl RouteTable {
    /// A builder.
    pub fn builder() -> RouteTableBuilder {
        RouteTableBuilder::default()
    }

    /// The policy.
    pub fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// The public model names (for `GET /v1/models`), aliases excluded.
    pub fn model_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.models.keys()
    }

    /// Every target of the table (each `Arc` once, in no particular order).
    pub fn targets(&self) -> Vec<Arc<Target>> {
        let mut out: Vec<Arc<Target>> = Vec::new();
        for m in self.models.values() {
            for v in &m.variants {
                for t in v.targets.iter() {
                    if !out.iter().any(|x| Arc::ptr_eq(x, t)) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// The first target named `id` (`provider/upstream_model`). On reload, give the new table's
    /// target the old one's [`Health`](crate::health::Health)
    /// (`Target::with_health(old.find_target(id)?.health.clone())`) so an ejected upstream
    /// stays ejected.
    pub fn find_target(&self, id: &str) -> Option<&Arc<Target>> {
        self.models
            .values()
            .flat_map(|m| m.variants.iter())
            .flat_map(|v| v.targets.iter())
            .find(|t| &*t.id == id)
    }

    /// The route of a model or alias.
    pub fn get(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.models
            .get(name)
            .or_else(|| self.models.get(self.aliases.get(name)?))
    }

    fn lookup(&self, name: &str) -> Result<&Arc<ModelRoute>, GatewayError> {
        self.get(name).ok_or_else(|| model_not_found(name))
    }

    /// Route one request: resolve the alias, apply rules, pick the split variant, order and
    /// filter the targets, append the client's own fallback models, read the client controls.
    pub fn route(
        &self,
        parsed: &ParsedRequest,
        input: RouteInput<'_>,
    ) -> Result<RouteDecision, GatewayError> {
        let headers = input.headers;
        let route = self.resolve(parsed, headers)?;

        let sticky_key = if route.sticky {
            header_str(headers, STICKY_HEADER).or(input.key_id)
        } else {
            None
        };
        let point = match sticky_key {
            Some(k) => stable_hash(&[route.name.as_bytes(), k.as_bytes()]),
            None => splitmix64(self.counter.fetch_add(1, Ordering::Relaxed)),
        };
        let variant = route.pick_variant(point);
        let targets = self.order(route, variant, parsed, point)?;

        // Per-request controls.
        let allow_fallback = self.allow_fallback(route, headers)?;
        let targets = self.client_fallbacks(targets, parsed, point)?;
        let priced = within_max_price(route, targets, headers, input.key_max_price, parsed)?;
        let client_timeouts = self.client_timeouts(headers)?;

        Ok(RouteDecision {
            model: route.name.clone(),
            targets: priced.targets,
            variant: route.split.then(|| variant.name.clone()),
            allow_fallback,
            client_timeouts,
            max_price: priced.limit,
            over_max_price: priced.over,
        })
    }

    /// The route of the requested model or alias, redirected by the first matching rule.
    fn resolve(
        &self,
        parsed: &ParsedRequest,
        headers: Option<&HeaderMap>,
    ) -> Result<&Arc<ModelRoute>, GatewayError> {
        let route = self.lookup(&parsed.model)?;
        if self.rules.is_empty() {
            return Ok(route);
        }
        let tag = header_str(headers, TAG_HEADER);
        match self.rules.iter().find(|r| {
            r.models.as_ref().is_none_or(|ms| {
                ms.iter()
                    .any(|m| self.get(m).is_some_and(|x| Arc::ptr_eq(x, route)))
            }) && r.when.matches(parsed, tag)
        }) {
            Some(rule) => self.lookup(&rule.route_to),
            None => Ok(route),
        }
    }

    /// Whether fallback stays on: the route's setting, unless the client turns it off (as the
    /// policy allows).
    fn allow_fallback(
        &self,
        route: &ModelRoute,
        headers: Option<&HeaderMap>,
    ) -> Result<bool, GatewayError> {
        let Some(v) = header_str(headers, FALLBACK_HEADER) else {
            return Ok(route.fallback);
        };
        let off = match v.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "0" | "none" | "no" => true,
            "on" | "true" | "1" | "yes" => false,
            _ => {
                return Err(GatewayError::bad_request(
                    format!("{FALLBACK_HEADER} must be `on` or `off`"),
                    None,
                ));
            }
        };
        if !off {
            return Ok(route.fallback);
        }
        match self.policy.client_fallback_off {
            ClientControl::Allow => Ok(false),
            ClientControl::Ignore => Ok(route.fallback),
            ClientControl::Reject => Err(GatewayError::bad_request(
                format!("{FALLBACK_HEADER} is not allowed by this gateway"),
                None,
            )),
        }
    }

    /// `targets` followed by those of the client's own fallback models (`models`), each
    /// target once, as the policy allows.
    fn client_fallbacks(
        &self,
        targets: Arc<[Arc<Target>]>,
        parsed: &ParsedRequest,
        point: u64,
    ) -> Result<Arc<[Arc<Target>]>, GatewayError> {
        let Some(extra) = parsed.fallback_models.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(targets);
        };
        match self.policy.client_fallback_list {
            ClientControl::Allow => {
                let mut list: Vec<Arc<Target>> = targets.to_vec();
                for name in extra {
                    let r = self.lookup(name)?;
                    let v = r.pick_variant(point);
                    for t in self.order(r, v, parsed, point)?.iter() {
                        if !list.iter().any(|x| Arc::ptr_eq(x, t) || x.id == t.id) {
                            list.push(t.clone());
                        }
                    }
                }
                Ok(list.into())
            }
            ClientControl::Ignore => Ok(targets),
            ClientControl::Reject => Err(GatewayError::bad_request(
                "a client fallback list (`models`) is not allowed by this gateway",
                Some("models"),
            )),
        }
    }

    /// The client's deadline headers, as the policy allows.
    fn client_timeouts(&self, headers: Option<&HeaderMap>) -> Result<Timeouts, GatewayError> {
        let policy = self.policy.client_timeouts;
        if policy == ClientControl::Ignore {
            return Ok(Timeouts::NONE);
        }
        let t = Timeouts {
            connect: None,
            first_token: header_ms(headers, FIRST_TOKEN_TIMEOUT_HEADER)?,
            idle: header_ms(headers, IDLE_TIMEOUT_HEADER)?,
            total: header_ms(headers, TIMEOUT_HEADER)?,
        };
        if policy == ClientControl::Reject && !t.is_none() {
            return Err(GatewayError::bad_request(
                "client deadlines are not allowed by this gateway",
                None,
            ));
        }
        Ok(t)
    }

    /// Order (and for capability-checked routes, filter) a variant's targets for `parsed`.
    fn order(
        &self,
        route: &ModelRoute,
        variant: &Variant,
        parsed: &ParsedRequest,
        point: u64,
    ) -> Result<Arc<[Arc<Target>]>, GatewayError> {
        // `count_tokens` is served only by targets that speak Anthropic, moderations, images
        // and audio only by OpenAI-compatible ones.
        let count = parsed.api == Api::CountTokens || parsed.api.openai_only();
        if route.strategy == Strategy::Ordered && !route.require_caps && !count {
            return Ok(variant.targets.clone());
        }
        let prompt = parsed.prompt_tokens_estimate();
        let output = parsed.max_tokens.unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
        let mut list: Vec<Arc<Target>> = if route.require_caps {
            variant
                .targets
                .iter()
                .filter(|t| satisfies(t, parsed))
                .cloned()
                .collect()
        } else if count {
            variant
                .targets
                .iter()
                .filter(|t| serves_api(t, parsed.api))
                .cloned()
                .collect()
        } else {
            variant.targets.to_vec()
        };
        if list.is_empty() {
            return Err(GatewayError::bad_request(
                format!(
                    "no target of `{}` supports this request ({})",
                    route.name,
                    needs(parsed)
                ),
                None,
            )
            .with_code("model_capability_mismatch"));
        }
        let now = Instant::now();
        match route.strategy {
            Strategy::Ordered => {}
            Strategy::Weighted => {
                let total: u64 = list.iter().map(|t| u64::from(t.weight)).sum();
                if total > 0 {
                    // Use other bits than the variant pick so the two draws are independent.
                    let mut x = splitmix64(point) % total;
                    let mut first = 0;
                    for (i, t) in list.iter().enumerate() {
                        let w = u64::from(t.weight);
                        if x < w {
                            first = i;
                            break;
                        }
                        x -= w;
                    }
                    let t = list.remove(first);
                    list.insert(0, t);
                }
            }
            Strategy::Latency => list.sort_by_cached_key(|t| {
                (
                    t.health.peek(now).is_err(),
                    t.health.ewma_ttft().unwrap_or(Duration::ZERO),
                )
            }),
            Strategy::Cheapest => list.sort_by_cached_key(|t| {
                (
                    t.health.peek(now).is_err(),
                    t.cost_estimate(prompt, output).is_none(),
                    t.cost_estimate(prompt, output).unwrap_or(0),
                )
            }),
        }
        Ok(list.into())
    }
}

/// The request's effective cost threshold (the route's, the key's and the
/// `x-tollgate-max-price` header's, per component the lowest) and the targets within it, in
/// order, plus those left out. Without any threshold: the targets unchanged, nothing else done.
/// Nothing within it: 400 `no_target_within_max_price`, no upstream called.
fn within_max_price(
    route: &ModelRoute,
    targets: Arc<[Arc<Target>]>,
    headers: Option<&HeaderMap>,
    key: Option<MaxPrice>,
    parsed: &ParsedRequest,
) -> Result<Priced, GatewayError> {
    let request = match headers.and_then(|h| h.get(&MAX_PRICE_NAME)) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "not text")
                .and_then(MaxPrice::parse_header)
                .map_err(|why| {
                    GatewayError::bad_request(
                        format!(
                            "{MAX_PRICE_HEADER} must be `input=USD,output=USD` (USD per million \
                             tokens, either part may be omitted): {why}"
                        ),
                        None,
                    )
                })?,
        ),
    };
    let limit = MaxPrice::effective(route.max_price, key, request);
    let Some(max) = limit.filter(|m| !targets.iter().all(|t| m.admits(t.price.as_ref()))) else {
        return Ok(Priced {
            targets,
            over: Vec::new(),
            limit,
        });
    };
    let (within, mut over): (Vec<_>, Vec<_>) = targets
        .iter()
        .cloned()
        .partition(|t| max.admits(t.price.as_ref()));
    // A tier may hold one upstream twice (through two models): report it once.
    let mut i = 0;
    while i < over.len() {
        if over[..i].iter().any(|x| x.id == over[i].id) {
            over.remove(i);
        } else {
            i += 1;
        }
    }
    if within.is_empty() {
        return Err(no_target_within(&route.name, &max, &over, parsed));
    }
    Ok(Priced {
        targets: within.into(),
        over,
        limit,
    })
}

/// What [`within_max_price`] leaves: the targets to try, those left out, the threshold.
struct Priced {
    targets: Arc<[Arc<Target>]>,
    over: Vec<Arc<Target>>,
    limit: Option<MaxPrice>,
}

/// The 400 when every candidate is priced above `limit`: names the limit and the cheapest
/// candidate (by the estimated cost of this request) with its price; the attempts header
/// lists every candidate as skipped.
fn no_target_within(
    model: &str,
    limit: &MaxPrice,
    over: &[Arc<Target>],
    parsed: &ParsedRequest,
) -> GatewayError {
    let prompt = parsed.prompt_tokens_estimate();
    let output = parsed.max_tokens.unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
    let cheapest = over
        .iter()
        .filter_map(|t| Some((t, t.price?)))
        .min_by_key(|(t, p)| (t.cost_estimate(prompt, output), p.input, p.output));
    let cheapest = match cheapest {
        Some((t, p)) => format!(
            "the cheapest candidate is `{}` at {}",
            t.id,
            MaxPrice::micros(Some(p.input), Some(p.output)).describe()
        ),
        None => "no candidate has a known price (unpriced targets are skipped under a \
                 maximum price unless `allow_unpriced = true`)"
            .to_owned(),
    };
    let mut e = GatewayError::bad_request(
        format!(
            "no target of `{model}` is within the maximum price ({}); {cheapest}",
            limit.describe()
        ),
        None,
    )
    .with_code("no_target_within_max_price");
    let mut attempts = String::with_capacity(over.len() * 40);
    for (i, t) in over.iter().enumerate() {
        if i > 0 {
            attempts.push(';');
        }
        AttemptInfo::over_max_price(t).write_header_part(&mut attempts);
    }
    if let Ok(v) = HeaderValue::try_from(attempts) {
        static ATTEMPTS: HeaderName = HeaderName::from_static(crate::fallback::ATTEMPTS_HEADER);
        e = e.with_header(ATTEMPTS.clone(), v);
    }
    e
}

/// Whether `t` can serve `p`: tools, images, JSON mode, and prompt estimate + `max_tokens`
/// within the context window; `count_tokens` only on a provider that speaks Anthropic.
pub fn satisfies(t: &Target, p: &ParsedRequest) -> bool {
    let c = &t.caps;
    serves_api(t, p.api)
        && (!p.has_tools || c.tools)
        && (!p.has_images || c.vision)
        && (!p.json_mode || c.json_mode)
        && c.context_window.is_none_or(|w| {
            p.prompt_tokens_estimate()
                .saturating_add(p.max_tokens.unwrap_or(0))
                <= w
        })
}

/// Whether `t`'s provider serves `api` at all: `count_tokens` needs one that speaks Anthropic,
/// moderations, images and audio an OpenAI-compatible one.
fn serves_api(t: &Target, api: Api) -> bool {
    match api {
        Api::CountTokens => t.provider.speaks_anthropic(),
        a if a.openai_only() => t.provider.serves_openai_surface(),
        _ => true,
    }
}

fn needs(p: &ParsedRequest) -> String {
    let mut v = Vec::new();
    if p.api == Api::CountTokens {
        v.push("count_tokens (an Anthropic provider)".to_owned());
    }
    if p.api.openai_only() {
        v.push(format!(
            "{} (an OpenAI-compatible provider)",
            p.api.as_str()
        ));
    }
    if p.has_tools {
        v.push("tools".to_owned());
    }
    if p.has_images {
        v.push("images".to_owned());
    }
    if p.json_mode {
        v.push("JSON mode".to_owned());
    }
    v.push(format!(
        "~{} prompt tokens + {} max tokens",
        p.prompt_tokens_estimate(),
        p.max_tokens.unwrap_or(0)
    ));
    v.join(", ")
}

/// The value of header `name`, when sent and visible ASCII.
fn header_str<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.to_str().ok())
}

fn header_ms(
    headers: Option<&HeaderMap>,
    name: &'static str,
) -> Result<Option<Duration>, GatewayError> {
    // A pass over the request's few header names instead of parsing `name` for a lookup:
    // the deadline headers are rarely sent.
    let Some(v) = headers.and_then(|h| {
        h.iter()
            .find_map(|(k, v)| (k.as_str() == name).then_some(v))
    }) else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(GatewayError::bad_request(
            format!("{name} must be a positive integer (milliseconds)"),
            None,
        )),
    }
}

/// The OpenAI-shaped 404 for an unknown model.
pub fn model_not_found(name: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ModelNotFound,
        format!(
            "The model `{}` does not exist or you do not have access to it.",
            crate::request::prefix(name)
        ),
    )
    .with_param("model")
    .with_code("model_not_found")
}

/// A shared, hot-swappable [`RouteTable`]: clone it into the Route layer and keep one to
/// [`store`](Self::store) a new table on reload. Requests in flight keep the table (and
/// targets) they were routed with; a bad new table is refused by
/// [`RouteTableBuilder::build`] before it can be stored.
#[derive(Debug, Clone)]
pub struct RouteHandle(Arc<ArcSwap<RouteTable>>);

impl RouteHandle {
    /// A handle holding `table`.
    pub fn new(table: RouteTable) -> Self {
        RouteHandle(Arc::new(ArcSwap::from_pointee(table)))
    }
    /// The current table (cheap; no lock).
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.load()
    }
    /// The current table as an owned `Arc`.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }
    /// Swap in a new table; returns the old one.
    pub fn store(&self, table: RouteTable) -> Arc<RouteTable> {
        self.0.swap(Arc::new(table))
    }
    /// The underlying `ArcSwap`, for callers that manage it themselves.
    pub fn as_arc_swap(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.0
    }
}

impl From<Arc<ArcSwap<RouteTable>>> for RouteHandle {
    fn from(a: Arc<ArcSwap<RouteTable>>) -> Self {
        RouteHandle(a)
    }
}
