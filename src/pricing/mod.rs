//! Prices: the shipped price table ([`PRICES_TOML`], data, not code), dated entries, and the
//! [`PriceTable`] that resolves the [`Price`] of a (provider, upstream model, date), with the
//! operator's configuration winning over the shipped data.
//!
//! All arithmetic is integer: a [`Price`] is micro-USD per million tokens (= pico-USD per
//! token) and [`Price::cost_pico`] multiplies integers, so the cost of a day is exactly the sum
//! of the costs of its requests. Amounts are [`Usd`](crate::money::Usd).
//!
//! The shipped table is a **starting point**: prices change and tiers (long context, batch,
//! priority) are not modelled. Operators override entries in their configuration.
//!
//! ```
//! use tollgate::pricing::{PriceDate, PriceTable};
//! use tollgate::usage::Usage;
//!
//! let table = PriceTable::shipped().unwrap();
//! // o3 was repriced on 2025-06-10: the request's date picks the entry.
//! let before = table.lookup("openai", "o3", PriceDate::from_ymd(2025, 6, 9).unwrap()).unwrap();
//! let after = table.lookup("openai", "o3", PriceDate::from_ymd(2025, 6, 10).unwrap()).unwrap();
//! assert_eq!((before.input, after.input), (10_000_000, 2_000_000));
//!
//! // A dated snapshot id is priced as its family; cost is exact pico-USD.
//! let p = table.lookup("openai", "gpt-4o-2024-08-06", PriceDate::today()).unwrap();
//! let u = Usage { prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100, ..Usage::default() };
//! assert_eq!(p.cost_pico(&u), 1000 * 2_500_000 + 100 * 10_000_000);
//! ```

mod max;
pub mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, PriceConfig};
use crate::money::Usd;
use crate::target::Target;
use crate::usage::Price;

pub use self::max::MaxPrice;
pub use self::report::{
    SpendAccumulator, SpendGroup, SpendQuery, SpendReport, SpendRow, spend_report_jsonl,
    spend_report_jsonl_json, spend_report_records,
};

/// The shipped price table (TOML; see the file's header for its format).
pub const PRICES_TOML: &str = include_str!("prices.toml");

/// A calendar date (UTC), as days since 1970-01-01: the key of dated prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PriceDate(i64);

impl PriceDate {
    /// The earliest date (an entry without `from`).
    pub const MIN: PriceDate = PriceDate(i64::MIN);

    /// From a year, month (1-12) and day (1-31); `None` when out of range.
    pub fn from_ymd(y: i64, m: u32, d: u32) -> Option<PriceDate> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        Some(PriceDate(days_from_civil(y, m, d)))
    }

    /// The date of a Unix time in milliseconds (UTC).
    pub fn from_unix_ms(ms: u64) -> PriceDate {
        PriceDate((ms / 86_400_000) as i64)
    }

    /// Today (UTC).
    pub fn today() -> PriceDate {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        PriceDate::from_unix_ms(ms)
    }

    /// Parse `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<PriceDate> {
        let mut it = s.trim().splitn(3, '-');
        let y = it.next()?.parse().ok()?;
        let m = it.next()?.parse().ok()?;
        let d = it.next()?.parse().ok()?;
        PriceDate::from_ymd(y, m, d)
    }

    /// Year, month, day.
    pub fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.0)
    }
}

impl std::fmt::Display for PriceDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A price effective from a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dated {
    from: PriceDate,
    price: Price,
}

/// Prices by (provider, upstream model), with effective dates, plus the operator's overrides.
///
/// Keys of the shipped data are provider **kinds** (`openai`, `anthropic`, `gemini`, `deepseek`,
/// `mistral`, `qwen`, `groq`, `xai`); [`PriceTable::from_config`] also maps each configured
/// provider **name** to its kind, so lookups may use either. Resolution order in
/// [`lookup`](Self::lookup):
/// 1. an override for (provider name, model) — from `[prices."name/model"]` or a target's
///    `price` —, then for (kind, model);
/// 2. the shipped entries for (kind, model): the latest whose `from` is not after the date;
/// 3. the same for the longest shipped id that is a prefix of the model followed by `-`.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    // kind -> model -> dated entries (nested, so lookups by `&str` allocate nothing)
    shipped: HashMap<String, HashMap<String, Vec<Dated>>>,
    // provider name or kind -> model -> price
    overrides: HashMap<String, HashMap<String, Price>>,
    kinds: HashMap<String, String>,
}

impl PriceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shipped table ([`PRICES_TOML`]).
    pub fn shipped() -> Result<PriceTable, ConfigError> {
        PriceTable::parse(PRICES_TOML, "tollgate/src/pricing/prices.toml")
    }

    /// Parse a table in the format of [`PRICES_TOML`]; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<PriceTable, ConfigError> {
        let root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError(format!("{source}: {e}")))?;
        let mut table = PriceTable::new();
        for (kind, models) in root {
            let models = models
                .as_table()
                .ok_or_else(|| ConfigError::field(source, &kind, "expected a table of models"))?;
            for (model, entries) in models {
                let field = format!("{kind}.\"{model}\"");
                let list: Vec<&toml::Value> = match entries {
                    toml::Value::Table(_) => vec![entries],
                    toml::Value::Array(a) => a.iter().collect(),
                    _ => {
                        return Err(ConfigError::field(source, &field, "expected a table"));
                    }
                };
                let mut dated = Vec::with_capacity(list.len());
                for e in list {
                    dated.push(parse_entry(e, source, &field)?);
                }
                dated.sort_by_key(|d| d.from);
                if dated.windows(2).any(|w| w[0].from == w[1].from) {
                    return Err(ConfigError::field(
                        source,
                        &field,
                        "two entries with the same `from` date",
                    ));
                }
                table
                    .shipped
                    .entry(kind.clone())
                    .or_default()
                    .insert(model.clone(), dated);
            }
        }
        Ok(table)
    }

    /// The shipped table, with the providers of `cfg` mapped to their kinds and the config's
    /// prices (`[prices."provider/model"]`, then each target's `price`) as overrides.
    pub fn from_config(cfg: &Config) -> Result<PriceTable, ConfigError> {
        let mut table = PriceTable::shipped()?;
        for (name, p) in &cfg.providers {
            table.map_provider(name, &p.kind);
        }
        for (key, price) in &cfg.prices {
            let Some((provider, model)) = key.split_once('/') else {
                return Err(ConfigError::field(
                    &cfg.source,
                    &format!("prices.\"{key}\""),
                    "expected \"provider/upstream_model\"",
                ));
            };
            table.set_override(provider, model, price_of(price, &cfg.source, key)?);
        }
        for (name, model) in &cfg.models {
            for (i, t) in model.targets.iter().enumerate() {
                if let Some(price) = &t.price {
                    let field = format!("models.\"{name}\".targets[{i}].price");
                    table.set_override(
                        &t.provider,
                        &t.model,
                        price_of(price, &cfg.source, &field)?,
                    );
                }
            }
        }
        Ok(table)
    }

    /// Say that provider `name` is of `kind` (so shipped prices of the kind apply to it).
    pub fn map_provider(&mut self, name: &str, kind: &str) {
        self.kinds.insert(name.to_owned(), kind.to_owned());
    }

    /// Set the price of `model` at `provider` (a name or a kind), for every date.
    pub fn set_override(&mut self, provider: &str, model: &str, price: Price) {
        self.overrides
            .entry(provider.to_owned())
            .or_default()
            .insert(model.to_owned(), price);
    }

    /// Add a shipped-style entry effective from `from` (`None`: from the start).
    pub fn insert(&mut self, kind: &str, model: &str, from: Option<PriceDate>, price: Price) {
        let list = self
            .shipped
            .entry(kind.to_owned())
            .or_default()
            .entry(model.to_owned())
            .or_default();
        let from = from.unwrap_or(PriceDate::MIN);
        list.retain(|d| d.from != from);
        list.push(Dated { from, price });
        list.sort_by_key(|d| d.from);
    }

    /// Number of (provider, model) entries shipped or inserted.
    pub fn len(&self) -> usize {
        self.shipped.values().map(HashMap::len).sum()
    }

    /// Whether there are no shipped entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The price of `model` at `provider` (a configured name or a kind) on `date`; see the
    /// [type docs](Self) for the order.
    pub fn lookup(&self, provider: &str, model: &str, date: PriceDate) -> Option<Price> {
        let kind = self.kinds.get(provider).map(String::as_str);
        let over = |p: &str| self.overrides.get(p).and_then(|m| m.get(model)).copied();
        if let Some(p) = over(provider).or_else(|| kind.and_then(over)) {
            return Some(p);
        }
        let models = self.shipped.get(kind.unwrap_or(provider))?;
        if let Some(list) = models.get(model) {
            return at(list, date);
        }
        // The longest shipped id of this kind that prefixes the model at a `-` boundary.
        let mut best: Option<(&str, &Vec<Dated>)> = None;
        for (m, list) in models {
            if model.len() > m.len()
                && model.starts_with(m.as_str())
                && model.as_bytes()[m.len()] == b'-'
                && best.is_none_or(|(b, _)| m.len() > b.len())
            {
                best = Some((m, list));
            }
        }
        best.and_then(|(_, list)| at(list, date))
    }

    /// The price of a request served by `target` on `date`: the table's when it has one, else
    /// the target's own [`Target::price`].
    pub fn price_for_target(&self, target: &Target, date: PriceDate) -> Option<Price> {
        self.lookup(target.provider.name(), &target.upstream_model, date)
            .or(target.price)
    }
}

/// A [`PriceTable`] shared by the UsageMeter and CostReport, swappable at run time: a config
/// reload [`store`](Self::store)s the new table and the next request is priced with it.
#[derive(Clone)]
pub struct PriceHandle(Arc<ArcSwap<PriceTable>>);

impl std::fmt::Debug for PriceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PriceHandle")
            .field(&self.0.load().len())
            .finish()
    }
}

impl PriceHandle {
    /// A handle on `table`.
    pub fn new(table: PriceTable) -> Self {
        PriceHandle(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// Replace the table (requests already priced keep their price).
    pub fn store(&self, table: PriceTable) {
        self.0.store(Arc::new(table));
    }

    /// The current table.
    pub fn load(&self) -> Arc<PriceTable> {
        self.0.load_full()
    }
}

impl From<PriceTable> for PriceHandle {
    fn from(table: PriceTable) -> Self {
        PriceHandle::new(table)
    }
}

/// The price used for a request served by `target` on `date`: from `table` when given and it
/// knows the model, else [`Target::price`].
pub fn resolve(table: Option<&PriceHandle>, target: &Target, date: PriceDate) -> Option<Price> {
    match table {
        Some(t) => t.0.load().price_for_target(target, date),
        None => target.price,
    }
}

fn at(list: &[Dated], date: PriceDate) -> Option<Price> {
    list.iter().rev().find(|d| d.from <= date).map(|d| d.price)
}

fn price_of(p: &PriceConfig, source: &str, field: &str) -> Result<Price, ConfigError> {
    for (name, v) in [
        ("input", Some(p.input)),
        ("output", Some(p.output)),
        ("cached_input", p.cached_input),
        ("cache_write", p.cache_write),
        ("per_image", p.per_image),
        ("per_second", p.per_second),
        ("per_million_characters", p.per_million_characters),
    ] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::field(
                    source,
                    &format!("{field}.{name}"),
                    "must be a non-negative number (USD per million tokens)",
                ));
            }
        }
    }
    Ok(p.to_price())
}

fn usd(v: &toml::Value, source: &str, field: &str) -> Result<Usd, ConfigError> {
    let x = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        _ => return Err(ConfigError::field(source, field, "expected a number")),
    };
    if !x.is_finite() || x < 0.0 {
        return Err(ConfigError::field(
            source,
            field,
            "must be a non-negative number of USD",
        ));
    }
    Ok(Usd::from_f64(x))
}

fn parse_entry(v: &toml::Value, source: &str, field: &str) -> Result<Dated, ConfigError> {
    let t = v
        .as_table()
        .ok_or_else(|| ConfigError::field(source, field, "expected a table"))?;
    let mut price = Price::default();
    let mut from = PriceDate::MIN;
    let (mut has_in, mut has_out) = (false, false);
    // USD per million tokens (or characters) is micro-USD per million, = pico-USD per one.
    let per_million = |v: &toml::Value, f: &str| usd(v, source, f).map(Usd::micros);
    for (k, v) in t {
        let f = format!("{field}.{k}");
        match k.as_str() {
            "input" => {
                price.input = per_million(v, &f)?;
                has_in = true;
            }
            "output" => {
                price.output = per_million(v, &f)?;
                has_out = true;
            }
            "cached_input" => price.cached_input = Some(per_million(v, &f)?),
            "cache_write" => price.cache_write = Some(per_million(v, &f)?),
            // USD per image / per second: stored as pico-USD per unit.
            "per_image" => price.per_image = Some(usd(v, source, &f)?.pico_u64()),
            "per_second" => price.per_second = Some(usd(v, source, &f)?.pico_u64()),
            "per_million_characters" => price.per_character = Some(per_million(v, &f)?),
            "from" => {
                let text = match v {
                    toml::Value::Datetime(d) => d.to_string(),
                    toml::Value::String(s) => s.clone(),
                    _ => String::new(),
                };
                from = PriceDate::parse(&text).ok_or_else(|| {
                    ConfigError::field(source, &f, "expected a date (YYYY-MM-DD)")
                })?;
            }
            _ => return Err(ConfigError::field(source, &f, "unknown field")),
        }
    }
    let per_unit =
        price.per_image.is_some() || price.per_second.is_some() || price.per_character.is_some();
    if (!has_in || !has_out) && !per_unit {
        return Err(ConfigError::field(
            source,
            field,
            "`input` and `output` are required",
        ));
    }
    Ok(Dated { from, price })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    fn d(s: &str) -> PriceDate {
        PriceDate::parse(s).unwrap()
    }

    #[test]
    fn per_unit_prices_parse_to_pico_usd_per_unit() {
        let t = PriceTable::parse(
            "[openai.\"img\"]\nper_image = 0.04\n[openai.\"stt\"]\nper_second = 0.0001\n[openai.\"tts\"]\nper_million_characters = 15\n",
            "t.toml",
        )
        .unwrap();
        let day = PriceDate::today();
        let get = |m: &str| t.lookup("openai", m, day).unwrap();
        assert_eq!(get("img").per_image, Some(40_000_000_000));
        assert_eq!(get("stt").per_second, Some(100_000_000));
        assert_eq!(get("tts").per_character, Some(15_000_000));
        assert_eq!((get("tts").input, get("tts").output), (0, 0));
        // Neither tokens nor units: refused.
        assert!(PriceTable::parse("[openai.\"x\"]\ncached_input = 1\n", "t.toml").is_err());
        // The shipped table prices the OpenAI per-unit models.
        let shipped = PriceTable::shipped().unwrap();
        let tts = shipped.lookup("openai", "tts-1", day).unwrap();
        assert_eq!(tts.per_character, Some(15_000_000));
        let whisper = shipped.lookup("openai", "whisper-1", day).unwrap();
        assert_eq!(whisper.per_second, Some(100_000_000));
    }

    #[test]
    fn shipped_table_parses_and_covers_every_vendor() {
        let t = PriceTable::shipped().unwrap();
        for (kind, model) in [
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5"),
            ("gemini", "gemini-2.5-flash"),
            ("deepseek", "deepseek-chat"),
            ("mistral", "mistral-small-latest"),
            ("qwen", "qwen-plus"),
            ("groq", "llama-3.3-70b-versatile"),
            ("xai", "grok-4"),
        ] {
            assert!(
                t.lookup(kind, model, PriceDate::today()).is_some(),
                "{kind}/{model}"
            );
        }
        let p = t
            .lookup("anthropic", "claude-sonnet-4-5", PriceDate::today())
            .unwrap();
        assert_eq!(
            p,
            Price {
                input: 3_000_000,
                output: 15_000_000,
                cached_input: Some(300_000),
                cache_write: Some(3_750_000),
                per_image: None,
                per_character: None,
                per_second: None,
            }
        );
    }

    #[test]
    fn dates_pick_the_entry_in_force() {
        let t = PriceTable::shipped().unwrap();
        let old = t
            .lookup("deepseek", "deepseek-chat", d("2025-09-28"))
            .unwrap();
        let new = t
            .lookup("deepseek", "deepseek-chat", d("2025-09-29"))
            .unwrap();
        assert_eq!(old.output, 1_100_000);
        assert_eq!(new.output, 420_000);
        assert_eq!(d("2026-01-01").to_string(), "2026-01-01");
        assert_eq!(PriceDate::from_unix_ms(1_767_225_600_000), d("2026-01-01"));
        assert!(PriceDate::parse("2026-02-30").is_none());
    }

    #[test]
    fn prefix_fallback_takes_the_longest_family() {
        let t = PriceTable::shipped().unwrap();
        let now = PriceDate::today();
        assert_eq!(
            t.lookup("openai", "gpt-4o-mini-2024-07-18", now),
            t.lookup("openai", "gpt-4o-mini", now)
        );
        assert_eq!(
            t.lookup("anthropic", "claude-sonnet-4-5-20250929", now),
            t.lookup("anthropic", "claude-sonnet-4-5", now)
        );
        assert_eq!(t.lookup("openai", "gpt-4oxyz", now), None);
        assert_eq!(t.lookup("mock", "ok", now), None);
    }

    #[test]
    fn config_overrides_win_and_names_map_to_kinds() {
        let cfg = Config::parse(
            r#"
            [providers.work]
            kind = "openai"
            api_key = "x"
            [prices."work/gpt-4o"]
            input = 1.0
            output = 2.0
            [models.m]
            targets = [{ provider = "work", model = "gpt-4o-mini", price = { input = 0.5, output = 0.25 } }]
            "#,
            "test.toml",
        )
        .unwrap();
        let t = PriceTable::from_config(&cfg).unwrap();
        let now = PriceDate::today();
        assert_eq!(t.lookup("work", "gpt-4o", now).unwrap().input, 1_000_000);
        assert_eq!(
            t.lookup("work", "gpt-4o-mini", now).unwrap().output,
            250_000
        );
        // the kind's shipped price applies to a provider name
        assert_eq!(t.lookup("work", "gpt-4.1", now).unwrap().input, 2_000_000);
        // other providers of the kind are untouched by name overrides
        assert_eq!(t.lookup("openai", "gpt-4o", now).unwrap().input, 2_500_000);
    }

    #[test]
    fn bad_tables_name_the_field() {
        let e = PriceTable::parse("[openai.\"x\"]\ninput = 1\n", "p.toml").unwrap_err();
        assert!(
            e.0.contains("p.toml") && e.0.contains("openai.\"x\""),
            "{e}"
        );
        let e =
            PriceTable::parse("[openai.\"x\"]\ninput = 1\noutput = -1\n", "p.toml").unwrap_err();
        assert!(e.0.contains("output"), "{e}");
        let e = PriceTable::parse(
            "[openai.\"x\"]\ninput = 1\noutput = 1\nfrom = \"someday\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(e.0.contains("from"), "{e}");
    }

    fn usage() -> impl proptest::strategy::Strategy<Value = Usage> {
        use proptest::prelude::*;
        (0u64..1_000_000_000, 0u64..1_000_000_000)
            .prop_flat_map(|(prompt, completion)| {
                (Just(prompt), Just(completion), 0..=prompt, 0..=completion)
            })
            .prop_flat_map(|(prompt, completion, cached, reasoning)| {
                (
                    Just(prompt),
                    Just(completion),
                    Just(cached),
                    0..=(prompt - cached),
                    Just(reasoning),
                )
            })
            .prop_map(|(p, c, cached, write, reasoning)| Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
                cached_tokens: cached,
                cache_write_tokens: write,
                reasoning_tokens: reasoning,
            })
    }

    proptest::proptest! {
        /// The sum of per-request costs equals the cost of the summed tokens — in pico-USD, in
        /// the records' u64, and in the spend report's decimal string.
        #[test]
        fn sum_of_costs_is_the_cost_of_the_sum(
            input in 0u64..100_000_000,
            output in 0u64..100_000_000,
            cached in proptest::option::of(0u64..100_000_000),
            write in proptest::option::of(0u64..100_000_000),
            usages in proptest::collection::vec(usage(), 0..40),
        ) {
            let price = Price {
                input, output, cached_input: cached, cache_write: write, ..Price::default()
            };
            let each: u128 = usages.iter().map(|u| price.cost_pico(u)).sum();
            let total = usages.iter().fold(Usage::default(), |a, u| a.add(u));
            proptest::prop_assert_eq!(each, price.cost_pico(&total));

            let records: Vec<crate::usage::UsageRecord> = usages
                .iter()
                .map(|u| crate::usage::UsageRecord {
                    units: Default::default(),
                    request_id: None, key_id: Some("k".into()), tenant: None, model: "m".into(),
                    provider: None, upstream_model: None, variant: None, attempts: 1,
                    stream: false, outcome: crate::usage::Outcome::Success, status: 200,
                    error_kind: None, usage: *u, usage_source: crate::usage::UsageSource::Upstream, usage_note: None,
                    cost_pico: Some(u64::try_from(price.cost_pico(u)).unwrap()),
                    ttft_ms: None, total_ms: 0.0, overhead_us: None, started_at_ms: 0,
                })
                .collect();
            let report = spend_report_records(records.iter(), &SpendQuery::default());
            proptest::prop_assert_eq!(report.total_cost_usd, Usd::from_pico(price.cost_pico(&total)).to_string());
        }
    }

    #[test]
    fn usd_strings_are_exact() {
        assert_eq!(Usd::from_pico(0).to_string(), "0");
        assert_eq!(Usd::from_pico(12_500_000).to_string(), "0.0000125");
        assert_eq!(
            Usd::from_pico(3_000_000_000_001).to_string(),
            "3.000000000001"
        );
        let p = Price {
            input: 150_000,
            output: 600_000,
            cached_input: Some(75_000),
            cache_write: None,
            per_image: None,
            per_character: None,
            per_second: None,
        };
        let u = Usage {
            prompt_tokens: 11,
            completion_tokens: 6,
            total_tokens: 17,
            cached_tokens: 4,
            ..Usage::default()
        };
        // 7 * 0.15 + 4 * 0.075 + 6 * 0.6 (micro-USD) = 4.95 micro-USD
        assert_eq!(Usd::from_pico(p.cost_pico(&u)).to_string(), "0.00000495");
    }
}
