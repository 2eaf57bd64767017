//! Config → runtime tables: providers, targets (with shared health), the route table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::cloud::{CloudAuth, cloud_auth};
use super::presets::{Adapter, preset};
use super::{Config, ConfigError, TimeoutsConfig, interpolate};
use arc_swap::ArcSwap;

use crate::auth::{AuthLayer, KeyEntry, KeyValidator, StaticKeys, ValidateFuture};
use crate::health::{BreakerConfig, DEFAULT_MAX_RETRY_AFTER, Health};
use crate::provider::Provider;
use crate::provider::anthropic::AnthropicProvider;
use crate::provider::bedrock::BedrockProvider;
use crate::provider::gemini::GeminiProvider;
use crate::provider::headers::HeaderPolicy;
use crate::provider::mock::MockProvider;
use crate::provider::openai::{AuthStyle, OpenAiProvider, OpenAiProviderBuilder};
use crate::ratelimit::{FailurePolicy, LimitStore, Limits, MemoryStore, RateLimitLayer};
use crate::route::{
    ClientControl, Condition, ModelRoute, RoutePolicy, RouteTable, RouteTableBuilder, Rule,
    Strategy, Variant,
};
use crate::secret::Secret;
use crate::target::{Capabilities, Target, Timeouts};

/// A public model as listed by `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The public name (or alias).
    pub id: String,
    /// `owned_by`.
    pub owned_by: String,
}

/// The `[[auth.keys]]` of a config, or `None` when `[auth] enabled = false` (switched off
/// explicitly).
pub fn static_keys(cfg: &Config) -> Result<Option<StaticKeys>, ConfigError> {
    let file = cfg.source.as_str();
    if cfg.auth.enabled == Some(false) {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(cfg.auth.keys.len());
    for (i, k) in cfg.auth.keys.iter().enumerate() {
        let field = format!("auth.keys[{i}]");
        let mut e = KeyEntry::from_hash(k.name.as_str(), k.sha256.trim())
            .map_err(|e| ConfigError::field(file, &format!("{field}.sha256"), e.message()))?
            .key_id(k.name.as_str());
        if let Some(t) = &k.tenant {
            e = e.tenant(t.as_str());
        }
        if !k.models.is_empty() {
            e = e.models(k.models.iter().map(String::as_str));
        }
        e = e.limits(limits(&k.limits));
        if let Some(m) = &k.max_price {
            e = e.max_price(m.to_max_price(file, &format!("{field}.max_price"))?);
        }
        entries.push(e);
    }
    StaticKeys::from_entries(entries)
        .map(Some)
        .map_err(|e| ConfigError::field(file, "auth.keys", e.message()))
}

/// Virtual keys a reload can replace: a [`KeyValidator`] over a swappable [`StaticKeys`]
/// (requests in flight keep the identity they were admitted with).
#[derive(Clone)]
pub struct ReloadableKeys(Arc<ArcSwap<StaticKeys>>);

impl std::fmt::Debug for ReloadableKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key hashes are not printed.
        f.debug_struct("ReloadableKeys").finish_non_exhaustive()
    }
}

impl ReloadableKeys {
    /// Start with `keys`.
    pub fn new(keys: StaticKeys) -> Self {
        ReloadableKeys(Arc::new(ArcSwap::from_pointee(keys)))
    }
    /// Replace the keys.
    pub fn store(&self, keys: StaticKeys) {
        self.0.store(Arc::new(keys));
    }
}

impl KeyValidator for ReloadableKeys {
    fn validate(&self, key: Secret) -> ValidateFuture {
        self.0.load().validate(key)
    }
}

/// Build the Auth layer from `[auth]`: `enabled = false` switches it off explicitly; otherwise
/// the `[[auth.keys]]` (SHA-256 hashes) with their model globs and limits. The returned
/// [`ReloadableKeys`] (when auth is on) lets a reload replace the keys.
pub fn auth_layer(cfg: &Config) -> Result<(AuthLayer, Option<ReloadableKeys>), ConfigError> {
    Ok(match static_keys(cfg)? {
        None => (AuthLayer::disabled(), None),
        Some(keys) => {
            let keys = ReloadableKeys::new(keys);
            (AuthLayer::new(keys.clone()), Some(keys))
        }
    })
}

/// Runtime limits from config values.
pub fn limits(v: &super::LimitValues) -> Limits {
    let mut l = Limits::new();
    if let Some(n) = v.rpm {
        l = l.requests_per_minute(n);
    }
    if let Some(n) = v.tpm {
        l = l.tokens_per_minute(n);
    }
    if let Some(n) = v.concurrency {
        l = l.concurrent_requests(n);
    }
    if let Some(usd) = v.budget_usd_day {
        l = l.usd_per_day(usd);
    }
    if let Some(usd) = v.budget_usd_month {
        l = l.usd_per_month(usd);
    }
    l
}

/// Build the RateLimit layer from `[limits]` (store, failure policy, global and per-model
/// limits; per-key limits travel with the key). `price` gives the worst-case price of a public
/// model for budget reservations.
pub fn ratelimit_layer(
    cfg: &Config,
    price: impl Fn(&str) -> Option<crate::usage::Price> + Send + Sync + 'static,
) -> Result<RateLimitLayer, ConfigError> {
    ratelimit_layer_on(cfg, limit_store(cfg)?, price)
}

/// The counter store that `[limits] store` names (`memory`, the default, or `redis`).
pub(crate) fn limit_store(cfg: &Config) -> Result<Arc<dyn LimitStore>, ConfigError> {
    let file = cfg.source.as_str();
    let l = &cfg.limits;
    Ok(match l.store.as_deref() {
        None | Some("memory") => Arc::new(MemoryStore::new()),
        #[cfg(feature = "redis")]
        Some("redis") => {
            let url = interpolate(
                l.redis_url.as_deref().unwrap_or("redis://127.0.0.1:6379"),
                file,
                "limits.redis_url",
            )?;
            let mut rc = crate::ratelimit::RedisConfig::new(url);
            if let Some(p) = &l.redis_prefix {
                rc = rc.prefix(p.as_str());
            }
            Arc::new(
                crate::ratelimit::RedisStore::new(rc)
                    .map_err(|e| ConfigError::field(file, "limits.redis_url", e))?,
            )
        }
        #[cfg(not(feature = "redis"))]
        Some("redis") => {
            return Err(ConfigError::field(
                file,
                "limits.store",
                "this build has no Redis support (cargo feature `redis`)",
            ));
        }
        Some(other) => {
            return Err(ConfigError::field(
                file,
                "limits.store",
                format!("unknown store `{other}`; expected memory or redis"),
            ));
        }
    })
}

/// [`ratelimit_layer`] over an existing `store` (a reload keeps the counters: a lowered limit
/// applies to what was already counted in the window).
pub(crate) fn ratelimit_layer_on(
    cfg: &Config,
    store: Arc<dyn LimitStore>,
    price: impl Fn(&str) -> Option<crate::usage::Price> + Send + Sync + 'static,
) -> Result<RateLimitLayer, ConfigError> {
    let file = cfg.source.as_str();
    let l = &cfg.limits;
    let policy = match l.on_store_error.as_deref() {
        None | Some("fail_closed") => FailurePolicy::Closed,
        Some("fail_open") => FailurePolicy::Open,
        Some(other) => {
            return Err(ConfigError::field(
                file,
                "limits.on_store_error",
                format!("unknown policy `{other}`; expected fail_open or fail_closed"),
            ));
        }
    };
    let mut layer = RateLimitLayer::with_store(store)
        .global(limits(&l.global))
        .failure_policy(policy)
        .prices(price);
    for (m, v) in &l.models {
        layer = layer.model(m.as_str(), limits(v));
    }
    if let Some(n) = l.default_max_tokens {
        layer = layer.default_max_tokens(n);
    }
    Ok(layer)
}

/// The highest price among the targets a public model may use (budget reservations are
/// upper bounds).
#[cfg(feature = "gateway")]
pub(crate) fn worst_price(routes: &RouteTable, model: &str) -> Option<crate::usage::Price> {
    let route = routes.get(model)?;
    route
        .variants()
        .iter()
        .flat_map(|v| v.targets.iter())
        .filter_map(|t| t.price)
        .max_by_key(|p| (p.output, p.input))
}

/// What a config builds into.
pub struct Runtime {
    /// Enabled providers by name.
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
    /// The route table.
    pub routes: RouteTable,
    /// Models (and aliases) served, for `/v1/models`.
    pub models: Vec<ModelInfo>,
    /// Providers switched off because their key variable is unset.
    pub disabled_providers: Vec<String>,
    /// The price table: shipped prices, overridden by `[prices]` and targets' own `price`.
    pub prices: crate::pricing::PriceTable,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_millis)
}

fn timeouts(t: &TimeoutsConfig) -> Timeouts {
    Timeouts {
        connect: ms(t.connect_ms),
        first_token: ms(t.first_token_ms),
        idle: ms(t.idle_ms),
        total: ms(t.total_ms),
    }
}

/// Keeps health per target id, so a reload keeps circuit state and latency history (but not
/// remembered `Retry-After` waits: see [`Config::build_runtime`]).
pub type HealthRegistry = HashMap<Arc<str>, Arc<Health>>;

impl Config {
    /// Build providers and the route table. `health` carries circuit state and latency history
    /// across reloads (pass the previous registry; new targets, and targets whose breaker
    /// settings changed, get fresh health). When the build succeeds, every remembered upstream
    /// `Retry-After` in `health` is forgotten ([`Health::forget_waits`]): a reload is the
    /// operator's way out of a wait the upstream should not have asked for.
    pub fn build_runtime(&self, health: &mut HealthRegistry) -> Result<Runtime, ConfigError> {
        let file = if self.source.is_empty() {
            "<config>"
        } else {
            &self.source
        };
        let built = self.build_providers(file)?;
        let prices = crate::pricing::PriceTable::from_config(self)?;
        let ctx = TargetCtx {
            cfg: self,
            file,
            built: &built,
            prices: &prices,
            today: crate::pricing::PriceDate::today(),
            defaults: timeouts(&self.routing.timeouts).or(Timeouts::RECOMMENDED),
            breaker: BreakerConfig {
                max_retry_after: ms(self.routing.max_retry_after_ms)
                    .unwrap_or(DEFAULT_MAX_RETRY_AFTER),
                ..BreakerConfig::default()
            },
        };
        let mut builder = RouteTable::builder();
        let mut models = Vec::new();
        let mut targets_of: HashMap<&str, Vec<Arc<Target>>> = HashMap::new();
        for (mname, m) in &self.models {
            let targets = ctx.model_targets(mname, m, health)?;
            if targets.is_empty() {
                continue; // every provider of this model is switched off
            }
            builder = builder.model(model_route(mname, m, &targets, file)?);
            let owned_by = m.owned_by.clone().unwrap_or_else(|| {
                m.targets
                    .first()
                    .map(|t| t.provider.clone())
                    .unwrap_or_default()
            });
            for id in std::iter::once(mname).chain(&m.aliases) {
                if id != mname {
                    builder = builder.alias(id.as_str(), mname.as_str());
                }
                models.push(ModelInfo {
                    id: id.clone(),
                    owned_by: owned_by.clone(),
                });
            }
            targets_of.insert(
                mname.as_str(),
                targets.into_iter().map(|(_, t)| t).collect(),
            );
        }
        for (tname, tier) in &self.tiers {
            if let Some(route) = self.tier_route(tname, tier, &targets_of, file)? {
                models.push(ModelInfo {
                    id: route.name().to_string(),
                    owned_by: "tollgate".into(),
                });
                builder = builder.model(route);
            }
        }
        let routes = self
            .with_rules_and_policy(builder)
            .build()
            .map_err(|e| ConfigError(format!("{file}: {e}")))?;
        for h in health.values() {
            h.forget_waits();
        }
        Ok(Runtime {
            providers: built.providers,
            routes,
            models,
            disabled_providers: built.disabled,
            prices,
        })
    }

    /// Every enabled provider of `[providers]`, with its connect deadline.
    fn build_providers(&self, file: &str) -> Result<BuiltProviders, ConfigError> {
        let mut built = BuiltProviders::default();
        for (name, p) in &self.providers {
            if let Some(var) = &p.enabled_if_env {
                if std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
                    built.disabled.push(name.clone());
                    continue;
                }
            }
            built.connect.insert(name.clone(), ms(p.connect_timeout_ms));
            built
                .providers
                .insert(name.clone(), build_provider(name, p, file)?);
        }
        Ok(built)
    }

    /// The route of tier `tname` (`tier:{tname}`), over the targets of its models; `None` when
    /// every one of them is switched off.
    fn tier_route(
        &self,
        tname: &str,
        tier: &super::TierConfig,
        targets_of: &HashMap<&str, Vec<Arc<Target>>>,
        file: &str,
    ) -> Result<Option<ModelRoute>, ConfigError> {
        let mut candidates = Vec::new();
        for m in &tier.models {
            match targets_of.get(m.as_str()) {
                Some(ts) => candidates.extend(ts.iter().cloned()),
                None if self.models.contains_key(m) => {} // switched off
                None => {
                    return Err(ConfigError::field(
                        file,
                        &format!("tiers.{tname}.models"),
                        format!("no model `{m}` in [models]"),
                    ));
                }
            }
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let name = format!("tier:{tname}");
        let route = match tier.strategy.as_deref() {
            None | Some("cheapest") => ModelRoute::tier(name.as_str(), candidates),
            Some("ordered") => {
                ModelRoute::new(name.as_str(), candidates).require_capabilities(true)
            }
            Some(other) => {
                return Err(ConfigError::field(
                    file,
                    &format!("tiers.{tname}.strategy"),
                    format!("unknown strategy `{other}`; expected cheapest or ordered"),
                ));
            }
        };
        Ok(Some(match &tier.max_price {
            Some(mp) => {
                route.max_price(mp.to_max_price(file, &format!("tiers.{tname}.max_price"))?)
            }
            None => route,
        }))
    }

    /// `[routing] rules` and the client-control policy, added to `builder`.
    fn with_rules_and_policy(&self, mut builder: RouteTableBuilder) -> RouteTableBuilder {
        for r in &self.routing.rules {
            builder = builder.rule(Rule {
                models: r
                    .models
                    .as_ref()
                    .map(|ms| ms.iter().map(|m| Arc::from(m.as_str())).collect()),
                when: Condition {
                    has_tools: r.has_tools,
                    has_images: r.has_images,
                    json_mode: r.json_mode,
                    stream: r.stream,
                    min_prompt_tokens: r.min_prompt_tokens,
                    max_prompt_tokens: r.max_prompt_tokens,
                    tag: r.tag.as_deref().map(Arc::from),
                },
                route_to: Arc::from(r.route_to.as_str()),
            });
        }
        let control = |allowed: Option<bool>, default: bool| {
            if allowed.unwrap_or(default) {
                ClientControl::Allow
            } else {
                ClientControl::Reject
            }
        };
        builder.policy(RoutePolicy {
            client_fallback_list: control(self.routing.allow_client_models, false),
            client_fallback_off: control(self.routing.allow_client_fallback_off, true),
            client_timeouts: ClientControl::Allow,
        })
    }
}

/// The providers a config builds.
#[derive(Default)]
struct BuiltProviders {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    /// Each provider's `connect_timeout_ms`.
    connect: HashMap<String, Option<Duration>>,
    /// Providers switched off because their key variable is unset.
    disabled: Vec<String>,
}

/// One provider of `[providers]`.
fn build_provider(
    name: &str,
    p: &super::ProviderConfig,
    file: &str,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    let pre = preset(&p.kind).ok_or_else(|| {
        ConfigError::field(
            file,
            &field("kind"),
            format!(
                "unknown kind `{}`; expected one of {}",
                p.kind,
                super::presets::KINDS.join(", ")
            ),
        )
    })?;
    let api_key = match &p.api_key {
        Some(k) => Some(interpolate(k, file, &field("api_key"))?),
        None => None,
    };
    let cloud = cloud_auth(name, p, pre.adapter, file)?;
    let base_url = match (&p.base_url, pre.base_url, &cloud) {
        (Some(u), _, _) => interpolate(u, file, &field("base_url"))?,
        (None, Some(u), _) => u.to_owned(),
        (None, None, CloudAuth::Vertex(v)) => v.base_url.clone(),
        (None, None, CloudAuth::Bedrock(b)) => b.base_url.clone(),
        (None, None, _) if pre.adapter == Adapter::Mock => String::new(),
        (None, None, _) => {
            return Err(ConfigError::field(
                file,
                &field("base_url"),
                format!("kind `{}` needs a base_url", p.kind),
            ));
        }
    };
    let keyed = matches!(cloud, CloudAuth::Key);
    if keyed && pre.needs_key && api_key.as_deref().is_none_or(str::is_empty) {
        return Err(ConfigError::field(
            file,
            &field("api_key"),
            format!("kind `{}` needs an api_key", p.kind),
        ));
    }
    let policy = header_policy(p, file, &field)?;
    Ok(match pre.adapter {
        Adapter::Mock => Arc::new(MockProvider::new(name)),
        Adapter::OpenAi => {
            let b = OpenAiProvider::builder(name, base_url).header_policy(policy);
            build_openai(name, b, pre.auth_header, api_key, cloud, p, file)?
        }
        Adapter::Bedrock => build_bedrock(name, base_url, cloud, p, policy, file)?,
        Adapter::Anthropic | Adapter::Gemini => {
            let key = api_key.filter(|k| !k.is_empty()).map(Secret::new);
            build_translating(name, pre.adapter, &base_url, key, cloud, p, policy, file)?
        }
    })
}

/// An Amazon Bedrock provider of `[providers]`.
fn build_bedrock(
    name: &str,
    base_url: String,
    cloud: CloudAuth,
    p: &super::ProviderConfig,
    policy: HeaderPolicy,
    file: &str,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    let CloudAuth::Bedrock(b) = cloud else {
        return Err(ConfigError::field(
            file,
            &field("kind"),
            "kind `bedrock` needs AWS credentials",
        ));
    };
    if !p.headers.is_empty() {
        return Err(ConfigError::field(
            file,
            &field("headers"),
            "is not supported for kind `bedrock` (every header sent is signed)",
        ));
    }
    let provider = BedrockProvider::builder(name, b.region)
        .base_url(base_url)
        .credentials(b.credentials)
        .header_policy(policy)
        .build()
        .map_err(|e| ConfigError::field(file, &field("base_url"), e))?;
    Ok(Arc::new(provider))
}

/// An OpenAI-compatible provider of `[providers]`.
fn build_openai(
    name: &str,
    mut b: OpenAiProviderBuilder,
    preset_auth_header: Option<&str>,
    api_key: Option<String>,
    cloud: CloudAuth,
    p: &super::ProviderConfig,
    file: &str,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    // The Responses API is passed through to OpenAI itself and Azure by default.
    let native = matches!(p.kind.as_str(), "azure") || (p.kind == "openai" && p.base_url.is_none());
    b = b.responses(p.responses.unwrap_or(native));
    if let Some(k) = api_key.filter(|k| !k.is_empty()) {
        b = b.api_key(Secret::new(k));
    }
    if let CloudAuth::Entra(source) = cloud {
        b = b.bearer_token(source);
    }
    if let Some(h) = p.auth_header.as_deref().or(preset_auth_header) {
        b = b.auth(
            AuthStyle::header(h).map_err(|e| ConfigError::field(file, &field("auth_header"), e))?,
        );
    }
    if let Some(q) = &p.query {
        b = b.query(interpolate(q, file, &field("query"))?);
    }
    for (k, v) in &p.headers {
        b = b.header(k.as_str(), interpolate(v, file, &field("headers"))?);
    }
    Ok(Arc::new(b.build().map_err(|e| {
        ConfigError::field(file, &field("base_url"), e)
    })?))
}

/// A model's target with the name of the split variant it belongs to, if any.
type VariantTarget = (Option<String>, Arc<Target>);

/// What building a model's targets needs.
struct TargetCtx<'a> {
    cfg: &'a Config,
    file: &'a str,
    built: &'a BuiltProviders,
    prices: &'a crate::pricing::PriceTable,
    today: crate::pricing::PriceDate,
    defaults: Timeouts,
    breaker: BreakerConfig,
}

impl TargetCtx<'_> {
    /// The targets of model `mname` (with their variant names), skipping switched-off
    /// providers. Health is kept from `health` when the breaker settings are unchanged.
    fn model_targets(
        &self,
        mname: &str,
        m: &super::ModelConfig,
        health: &mut HealthRegistry,
    ) -> Result<Vec<VariantTarget>, ConfigError> {
        if m.targets.is_empty() {
            return Err(ConfigError::field(
                self.file,
                &format!("models.{mname}.targets"),
                "must not be empty",
            ));
        }
        let model_timeouts = timeouts(&m.timeouts);
        let mut targets = Vec::new();
        for (i, t) in m.targets.iter().enumerate() {
            let Some(provider) = self.built.providers.get(&t.provider) else {
                if self.built.disabled.contains(&t.provider) {
                    continue;
                }
                return Err(ConfigError::field(
                    self.file,
                    &format!("models.{mname}.targets[{i}].provider"),
                    format!("no provider `{}` in [providers]", t.provider),
                ));
            };
            let tt = timeouts(&t.timeouts)
                .or(model_timeouts)
                .or(Timeouts {
                    connect: self.built.connect.get(&t.provider).copied().flatten(),
                    ..Timeouts::default()
                })
                .or(self.defaults);
            let target = self.target(provider, t, tt);
            let h = match health.get(&target.id) {
                Some(h) if *h.config() == self.breaker => h.clone(),
                _ => {
                    let h = Arc::new(Health::new(self.breaker));
                    health.insert(target.id.clone(), h.clone());
                    h
                }
            };
            targets.push((t.variant.clone(), target.with_health(h).into_arc()));
        }
        Ok(targets)
    }

    /// One target: deadlines, weight, capabilities and price (the target's own, `[prices]`,
    /// else the shipped table).
    fn target(
        &self,
        provider: &Arc<dyn Provider>,
        t: &super::TargetConfig,
        tt: Timeouts,
    ) -> Target {
        let target = Target::new(provider.clone(), t.model.as_str())
            .with_timeouts(tt)
            .with_weight(t.weight.unwrap_or(1))
            .with_caps(Capabilities {
                context_window: t.context_window,
                tools: t.tools.unwrap_or(true),
                vision: t.vision.unwrap_or(true),
                json_mode: t.json_mode.unwrap_or(true),
            });
        let key = format!("{}/{}", t.provider, t.model);
        let price = t
            .price
            .or_else(|| self.cfg.prices.get(&key).copied())
            .map(|p| p.to_price())
            .or_else(|| self.prices.lookup(&t.provider, &t.model, self.today));
        match price {
            Some(p) => target.with_price(p),
            None => target,
        }
    }
}

/// The route of model `mname` over `targets`: strategy, stickiness, a weighted split when
/// targets name variants, fallback and price threshold.
fn model_route(
    mname: &str,
    m: &super::ModelConfig,
    targets: &[VariantTarget],
    file: &str,
) -> Result<ModelRoute, ConfigError> {
    let mfield = |f: &str| format!("models.{mname}.{f}");
    let strategy = match m.strategy.as_deref() {
        None | Some("ordered") | Some("priority") => Strategy::Ordered,
        Some("weighted") | Some("split") => Strategy::Weighted,
        Some("latency") => Strategy::Latency,
        Some("cheapest") => Strategy::Cheapest,
        Some(other) => {
            return Err(ConfigError::field(
                file,
                &mfield("strategy"),
                format!(
                    "unknown strategy `{other}`; expected ordered, weighted, latency, cheapest"
                ),
            ));
        }
    };
    let sticky = match m.sticky.as_deref() {
        None | Some("none") => false,
        Some("key") => true,
        Some(other) => {
            return Err(ConfigError::field(
                file,
                &mfield("sticky"),
                format!("unknown value `{other}`; expected key or none"),
            ));
        }
    };
    let route = if targets.iter().any(|(v, _)| v.is_some()) {
        // A weighted split: one variant per name; a variant's targets are tried in order.
        let mut variants: Vec<(String, u32, Vec<Arc<Target>>)> = Vec::new();
        for (v, t) in targets {
            let name = v.clone().unwrap_or_else(|| t.id.to_string());
            match variants.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, _, ts)) => ts.push(t.clone()),
                None => variants.push((name, t.weight, vec![t.clone()])),
            }
        }
        let variants = variants
            .into_iter()
            .map(|(n, w, ts)| Variant::new(n, w, ts))
            .collect();
        ModelRoute::split(mname, variants).sticky(sticky)
    } else {
        let ts = targets.iter().map(|(_, t)| t.clone()).collect();
        ModelRoute::new(mname, ts).strategy(strategy).sticky(sticky)
    };
    let route = if m.fallback == Some(false) {
        route.fallback(false)
    } else {
        route
    };
    Ok(match &m.max_price {
        Some(mp) => route.max_price(mp.to_max_price(file, &mfield("max_price"))?),
        None => route,
    })
}

fn header_policy(
    p: &super::ProviderConfig,
    file: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<HeaderPolicy, ConfigError> {
    HeaderPolicy::default()
        .forward(p.forward_headers.iter().map(String::as_str))
        .map_err(|e| ConfigError::field(file, &field("forward_headers"), e))?
        .expose(p.expose_headers.iter().map(String::as_str))
        .map_err(|e| ConfigError::field(file, &field("expose_headers"), e))
}

#[allow(clippy::too_many_arguments)]
fn build_translating(
    name: &str,
    adapter: Adapter,
    base_url: &str,
    key: Option<Secret>,
    cloud: CloudAuth,
    p: &super::ProviderConfig,
    policy: HeaderPolicy,
    file: &str,
) -> Result<Arc<dyn Provider>, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    match adapter {
        Adapter::Anthropic => {
            let mut b = AnthropicProvider::builder(name, base_url).header_policy(policy);
            if let Some(k) = key {
                b = b.api_key(k);
            }
            if let Some(n) = p.default_max_tokens {
                b = b.default_max_tokens(n);
            }
            for (k, v) in &p.headers {
                b = b.header(k.as_str(), interpolate(v, file, &field("headers"))?);
            }
            Ok(Arc::new(b.build().map_err(|e| {
                ConfigError::field(file, &field("base_url"), e)
            })?))
        }
        _ => {
            let mut b = GeminiProvider::builder(name, base_url).header_policy(policy);
            if let Some(k) = key {
                b = b.api_key(k);
            }
            if let CloudAuth::Vertex(v) = cloud {
                b = b.vertex(v.project, v.location).bearer_token(v.source);
            }
            for (k, v) in &p.headers {
                b = b.header(k.as_str(), interpolate(v, file, &field("headers"))?);
            }
            Ok(Arc::new(b.build().map_err(|e| {
                ConfigError::field(file, &field("base_url"), e)
            })?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn every_preset_builds_and_routes() {
        let mut text = String::new();
        for kind in super::super::presets::KINDS {
            if *kind == "vertex" {
                text.push_str(&format!(
                    "[providers.p-vertex]\nkind = \"vertex\"\nlocation = \"us-central1\"\ncredentials_file = \"{SERVICE_ACCOUNT}\"\n"
                ));
            } else if *kind == "bedrock" {
                text.push_str(
                    "[providers.p-bedrock]\nkind = \"bedrock\"\nregion = \"us-east-1\"\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"s\"\n",
                );
            } else {
                text.push_str(&format!(
                    "[providers.p-{kind}]\nkind = \"{kind}\"\napi_key = \"k\"\n"
                ));
            }
            if *kind == "azure" {
                text.push_str("base_url = \"https://x.openai.azure.com/openai/deployments/d\"\nquery = \"api-version=2024-10-21\"\n");
            }
            text.push_str(&format!(
                "[models.m-{kind}]\ntargets = [{{ provider = \"p-{kind}\", model = \"x\" }}]\n"
            ));
        }
        let rt = cfg(&text)
            .build_runtime(&mut HealthRegistry::new())
            .unwrap();
        assert_eq!(rt.providers.len(), super::super::presets::KINDS.len());
        assert_eq!(rt.providers["p-anthropic"].kind(), "anthropic");
        assert_eq!(rt.providers["p-gemini"].kind(), "gemini");
        assert_eq!(rt.providers["p-deepseek"].kind(), "openai");
        assert_eq!(rt.providers["p-mock"].kind(), "mock");
        assert_eq!(rt.providers["p-vertex"].kind(), "vertex");
        assert_eq!(rt.providers["p-bedrock"].kind(), "bedrock");
        assert_eq!(rt.models.len(), super::super::presets::KINDS.len());
    }

    /// The throwaway test service account (tests/fixtures).
    const SERVICE_ACCOUNT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vertex-test-service-account.json"
    );

    #[test]
    fn bedrock_settings_are_checked_naming_the_field() {
        let full = "[providers.b]\nkind = \"bedrock\"\nregion = \"eu-west-1\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"aws-s3cr3t-never-printed\"\n";
        let rt = cfg(full).build_runtime(&mut HealthRegistry::new()).unwrap();
        assert_eq!(rt.providers["b"].kind(), "bedrock");
        let cases = [
            (
                full.replace("region = \"eu-west-1\"\n", ""),
                "providers.b.region: is required",
            ),
            (
                full.replace("eu-west-1", "eu/west"),
                "providers.b.region: `eu/west` must be",
            ),
            (
                full.replace("secret_access_key = \"aws-s3cr3t-never-printed\"\n", ""),
                "providers.b.secret_access_key: is required",
            ),
            (
                full.replace("access_key_id = \"AKID\"\n", ""),
                "providers.b.access_key_id: is required",
            ),
            (
                format!("{full}api_key = \"k\"\n"),
                "providers.b.api_key: is not used with kind `bedrock`",
            ),
            (
                format!("{full}auth = \"entra\"\n"),
                "providers.b.auth: `entra` is not supported for kind `bedrock`",
            ),
            (
                format!("{full}tenant_id = \"t\"\n"),
                "providers.b.tenant_id: is used only with",
            ),
            (
                format!("{full}[providers.b.headers]\nx-a = \"1\"\n"),
                "providers.b.headers: is not supported",
            ),
            (
                "[providers.a]\nkind = \"openai\"\napi_key = \"k\"\nregion = \"us-east-1\"\n"
                    .to_owned(),
                "providers.a.region: is used only for kind `bedrock`",
            ),
        ];
        for (text, want) in cases {
            let e = cfg(&text)
                .build_runtime(&mut HealthRegistry::new())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn token_auth_settings_are_checked_naming_the_field() {
        let entra = "[providers.a]\nkind = \"azure\"\nbase_url = \"https://x.openai.azure.com/openai/v1\"\nauth = \"entra\"\n";
        let full = format!(
            "{entra}tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s3cr3t-never-printed\"\n"
        );
        let rt = cfg(&full)
            .build_runtime(&mut HealthRegistry::new())
            .unwrap();
        assert_eq!(rt.providers["a"].kind(), "openai");
        let vertex = format!(
            "[providers.v]\nkind = \"vertex\"\nlocation = \"europe-west4\"\ncredentials_file = \"{SERVICE_ACCOUNT}\"\n"
        );
        cfg(&vertex)
            .build_runtime(&mut HealthRegistry::new())
            .unwrap();
        let cases = [
            (format!("{entra}client_id = \"c\"\nclient_secret = \"s\"\n"), "providers.a.tenant_id: is required"),
            (format!("{full}api_key = \"k\"\n"), "providers.a.api_key: is not used with auth = \"entra\""),
            (format!("{full}project = \"p\"\n"), "providers.a.project: is used only for kind `vertex`"),
            (format!("{entra}tenant_id = \"a/b\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"), "providers.a.tenant_id"),
            (
                "[providers.a]\nkind = \"openai\"\napi_key = \"k\"\ntenant_id = \"t\"\n".to_owned(),
                "providers.a.tenant_id: is used only with auth = \"entra\" or kind = \"vertex\"",
            ),
            (
                "[providers.a]\nkind = \"anthropic\"\nauth = \"entra\"\n".to_owned(),
                "providers.a.auth: `entra` is not supported for kind `anthropic`",
            ),
            (
                "[providers.v]\nkind = \"vertex\"\nlocation = \"us-central1\"\n".to_owned(),
                "providers.v.credentials_file: is required",
            ),
            (
                "[providers.v]\nkind = \"vertex\"\nlocation = \"us-central1\"\ncredentials_file = \"/nonexistent/sa.json\"\n".to_owned(),
                "providers.v.credentials_file: cannot read `/nonexistent/sa.json`",
            ),
            (
                vertex.replace("location = \"europe-west4\"\n", ""),
                "providers.v.location: is required",
            ),
            (
                format!("{vertex}project = \"a/b\"\n"),
                "providers.v.project: `a/b` must be letters",
            ),
            (format!("{vertex}api_key = \"k\"\n"), "providers.v.api_key: is not used"),
        ];
        for (text, want) in cases {
            let e = cfg(&text)
                .build_runtime(&mut HealthRegistry::new())
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}\nwanted: {want}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_file() {
        let cases = [
            ("[providers.a]\nkind = \"nope\"\n", "providers.a.kind"),
            (
                "[providers.a]\nkind = \"azure\"\napi_key = \"k\"\n",
                "providers.a.base_url",
            ),
            (
                "[providers.a]\nkind = \"deepseek\"\n",
                "providers.a.api_key",
            ),
            (
                "[providers.a]\nkind = \"openai\"\napi_key = \"${TOLLGATE_TEST_SURELY_UNSET}\"\n",
                "providers.a.api_key",
            ),
            (
                "[providers.a]\nkind = \"mock\"\n[models.m]\ntargets = [{ provider = \"b\", model = \"x\" }]\n",
                "models.m.targets[0].provider",
            ),
            (
                "[providers.a]\nkind = \"mock\"\n[models.m]\nstrategy = \"random\"\ntargets = [{ provider = \"a\", model = \"x\" }]\n",
                "models.m.strategy",
            ),
            (
                "[providers.a]\nkind = \"mock\"\n[models.m]\ntargets = [{ provider = \"a\", model = \"x\" }]\n[tiers.cheap]\nmodels = [\"zzz\"]\n",
                "tiers.cheap.models",
            ),
        ];
        for (text, field) in cases {
            let e = cfg(text)
                .build_runtime(&mut HealthRegistry::new())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.toml: "), "{e}");
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn providers_without_their_key_variable_are_switched_off_with_their_models() {
        let rt = cfg(
            "[providers.a]\nkind = \"openai\"\napi_key = \"${TOLLGATE_TEST_SURELY_UNSET}\"\nenabled_if_env = \"TOLLGATE_TEST_SURELY_UNSET\"\n[providers.m]\nkind = \"mock\"\n[models.x]\ntargets = [{ provider = \"a\", model = \"x\" }]\n[models.y]\ntargets = [{ provider = \"a\", model = \"x\" }, { provider = \"m\", model = \"ok\" }]\n",
        )
        .build_runtime(&mut HealthRegistry::new())
        .unwrap();
        assert_eq!(rt.disabled_providers, vec!["a".to_owned()]);
        let ids: Vec<_> = rt.models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["y"]);
    }

    #[test]
    fn splits_tiers_aliases_and_rules_from_config() {
        let rt = cfg(r#"
[providers.m]
kind = "mock"
[models.big]
aliases = ["big-2026-01-01"]
targets = [{ provider = "m", model = "big", price = { input = 5.0, output = 15.0 } }]
[models.small]
targets = [{ provider = "m", model = "small", price = { input = 0.1, output = 0.4 }, tools = false }]
[models.canary]
sticky = "key"
targets = [
  { provider = "m", model = "a", variant = "stable", weight = 90 },
  { provider = "m", model = "b", variant = "next", weight = 10 },
]
[tiers.cheap]
models = ["big", "small"]
[[routing.rules]]
models = ["small"]
has_tools = true
route_to = "big"
"#)
        .build_runtime(&mut HealthRegistry::new())
        .unwrap();
        let ids: Vec<_> = rt.models.iter().map(|m| m.id.as_str()).collect();
        for m in ["big", "big-2026-01-01", "small", "canary", "tier:cheap"] {
            assert!(ids.contains(&m), "{m} in {ids:?}");
        }
        let canary = rt.routes.get("canary").unwrap();
        let names: Vec<_> = canary
            .variants()
            .iter()
            .map(|v| (v.name.to_string(), v.weight))
            .collect();
        assert_eq!(names, vec![("stable".into(), 90), ("next".into(), 10)]);
        assert!(Arc::ptr_eq(
            rt.routes.get("big-2026-01-01").unwrap(),
            rt.routes.get("big").unwrap()
        ));
        // the rule: a request with tools for `small` goes to `big`
        let body = bytes::Bytes::from_static(
            br#"{"model":"small","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let parsed =
            crate::request::parse_body(crate::request::Api::ChatCompletions, body).unwrap();
        let d = rt
            .routes
            .route(&parsed, crate::route::RouteInput::default())
            .unwrap();
        assert_eq!(&*d.model, "big");
        // the tier: cheapest capable first; `small` lacks tools, so only `big` serves this
        let mut p2 = parsed.clone();
        p2.model = Arc::from("tier:cheap");
        let d = rt
            .routes
            .route(&p2, crate::route::RouteInput::default())
            .unwrap();
        assert_eq!(
            d.targets
                .iter()
                .map(|t| t.upstream_model.to_string())
                .collect::<Vec<_>>(),
            vec!["big"]
        );
    }

    #[test]
    fn health_is_kept_across_rebuilds() {
        let c = cfg(
            "[providers.m]\nkind = \"mock\"\n[models.x]\ntargets = [{ provider = \"m\", model = \"ok\" }]\n",
        );
        let mut reg = HealthRegistry::new();
        let a = c.build_runtime(&mut reg).unwrap();
        let b = c.build_runtime(&mut reg).unwrap();
        let ta = a.routes.get("x").unwrap().variants()[0].targets[0].clone();
        let tb = b.routes.get("x").unwrap().variants()[0].targets[0].clone();
        assert!(Arc::ptr_eq(&ta.health, &tb.health));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_forgets_remembered_waits_but_keeps_the_circuit() {
        use crate::error::{ErrorKind, GatewayError};
        use crate::health::{BlockReason, CircuitState};
        let c = cfg(
            "[routing]\nmax_retry_after_ms = 5000\n[providers.m]\nkind = \"mock\"\n[models.x]\ntargets = [{ provider = \"m\", model = \"ok\" }]\n[models.y]\ntargets = [{ provider = \"m\", model = \"down\" }]\n",
        );
        let mut reg = HealthRegistry::new();
        let a = c.build_runtime(&mut reg).unwrap();
        let x = a.routes.get("x").unwrap().variants()[0].targets[0].clone();
        let y = a.routes.get("y").unwrap().variants()[0].targets[0].clone();
        assert_eq!(x.health.config().max_retry_after, Duration::from_secs(5));
        let now = tokio::time::Instant::now();
        let e429 = GatewayError::upstream_status(http::StatusCode::TOO_MANY_REQUESTS, "wait", None)
            .with_retry_after(Duration::from_secs(86_400));
        x.health.on_failure(&e429, now);
        assert_eq!(
            x.health.peek(now).map_err(|b| (b.until, b.reason)),
            Err((now + Duration::from_secs(5), BlockReason::RateLimited)),
            "capped by routing.max_retry_after_ms"
        );
        for _ in 0..5 {
            y.health.on_failure(
                &GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
                now,
            );
        }
        assert!(matches!(y.health.circuit(), CircuitState::Open { .. }));

        let b = c.build_runtime(&mut reg).unwrap();
        let x2 = b.routes.get("x").unwrap().variants()[0].targets[0].clone();
        assert!(Arc::ptr_eq(&x.health, &x2.health), "same health, kept");
        assert_eq!(x2.health.peek(now), Ok(()), "the remembered wait is gone");
        assert!(
            matches!(y.health.circuit(), CircuitState::Open { .. }),
            "the breaker's state survives a reload"
        );

        // A changed cap gives fresh health with the new setting.
        let c3 = cfg(
            "[routing]\nmax_retry_after_ms = 1000\n[providers.m]\nkind = \"mock\"\n[models.x]\ntargets = [{ provider = \"m\", model = \"ok\" }]\n",
        );
        let r3 = c3.build_runtime(&mut reg).unwrap();
        let x3 = r3.routes.get("x").unwrap().variants()[0].targets[0].clone();
        assert_eq!(x3.health.config().max_retry_after, Duration::from_secs(1));
    }

    #[test]
    fn the_embedded_default_builds_with_mock_models() {
        let rt = Config::embedded()
            .build_runtime(&mut HealthRegistry::new())
            .unwrap();
        let ids: Vec<_> = rt.models.iter().map(|m| m.id.as_str()).collect();
        for m in [
            "mock",
            "mock-tool",
            "mock-fallback",
            "mock-429",
            "mock-embed",
        ] {
            assert!(ids.contains(&m), "{m} in {ids:?}");
        }
    }
}
