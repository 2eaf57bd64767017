//! The spend report: spend and tokens by key, model and day (UTC), summed exactly from usage
//! records (a JSON-lines file written by [`JsonlSink`](crate::sink::JsonlSink), any iterator of
//! records, or — with the `postgres` feature — the PostgreSQL sink's table).
//!
//! Costs are summed in integer pico-USD and printed as exact decimal USD strings, so "what did
//! team X spend yesterday" has one answer however many requests it made.
//!
//! ```
//! use tollgate::pricing::{SpendQuery, spend_report_records};
//! use tollgate::usage::{Outcome, Usage, UsageRecord, UsageSource};
//!
//! let rec = |key: &str, cost| UsageRecord {
//!     request_id: None, key_id: Some(key.into()), tenant: Some("team-x".into()),
//!     model: "gpt-4o".into(), provider: Some("openai".into()), upstream_model: None,
//!     variant: None, attempts: 1, stream: false, outcome: Outcome::Success, status: 200,
//!     error_kind: None, usage: Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15,
//!     ..Usage::default() }, units: Default::default(), usage_source: UsageSource::Upstream,
//!     usage_note: None, cost_pico: Some(cost),
//!     ttft_ms: None, total_ms: 1.0, overhead_us: None, started_at_ms: 1_767_225_600_000,
//! };
//! let report = spend_report_records(
//!     [rec("k1", 100_000_000), rec("k1", 200_000_000)].iter(),
//!     &SpendQuery::default(),
//! );
//! assert_eq!(report.rows[0].day, "2026-01-01");
//! assert_eq!(report.rows[0].cost_usd, "0.0003");
//! assert_eq!(report.rows[0].prompt_tokens, 20);
//! ```

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::PriceDate;
use crate::money::Usd;
use crate::query;
use crate::usage::{UsageRecord, UsageSource};

/// Which records a report covers. Every field is a filter; `None` keeps all.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendQuery {
    /// Only this key id.
    pub key_id: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this public model.
    pub model: Option<String>,
    /// First day included (UTC, `YYYY-MM-DD`).
    pub from: Option<String>,
    /// Last day included (UTC, `YYYY-MM-DD`).
    pub to: Option<String>,
}

impl SpendQuery {
    /// From a URL query string: `key_id=k1&from=2026-01-01&to=2026-01-31` (also `key`, `day`
    /// for a single day). Percent-escapes and `+` are decoded; unknown keys are an error.
    pub fn from_query_string(q: &str) -> Result<SpendQuery, String> {
        let mut out = SpendQuery::default();
        for (k, v) in query::pairs(q) {
            let v = v.ok_or_else(|| format!("bad escape in the value of {}", query::echo(k)))?;
            let check_day = |v: &str| {
                PriceDate::parse(v).map(|_| v.to_owned()).ok_or_else(|| {
                    format!("`{k}` must be a date (YYYY-MM-DD), got {}", query::echo(v))
                })
            };
            match k {
                "key_id" | "key" => out.key_id = Some(v),
                "tenant" => out.tenant = Some(v),
                "model" => out.model = Some(v),
                "from" => out.from = Some(check_day(&v)?),
                "to" => out.to = Some(check_day(&v)?),
                "day" => {
                    let d = check_day(&v)?;
                    out.from = Some(d.clone());
                    out.to = Some(d);
                }
                other => return Err(format!("unknown parameter {}", query::echo(other))),
            }
        }
        Ok(out)
    }

    fn day_range(&self) -> (PriceDate, PriceDate) {
        let from = self
            .from
            .as_deref()
            .and_then(PriceDate::parse)
            .unwrap_or(PriceDate::MIN);
        let to = self
            .to
            .as_deref()
            .and_then(PriceDate::parse)
            .unwrap_or(PriceDate(i64::MAX));
        (from, to)
    }

    /// Whether `r` is covered.
    pub fn matches(&self, r: &UsageRecord) -> bool {
        let (from, to) = self.day_range();
        let day = PriceDate::from_unix_ms(r.started_at_ms);
        self.key_id
            .as_deref()
            .is_none_or(|k| r.key_id.as_deref() == Some(k))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| r.tenant.as_deref() == Some(t))
            && self.model.as_deref().is_none_or(|m| r.model == m)
            && day >= from
            && day <= to
    }
}

/// One (key, model, day) line of a [`SpendReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// The key id (`null`: requests without a key).
    pub key_id: Option<String>,
    /// The key's tenant (as the first record of the group says).
    pub tenant: Option<String>,
    /// The public model.
    pub model: String,
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: String,
    /// Requests counted.
    pub requests: u64,
    /// Of those, requests whose usage was estimated by the gateway.
    pub estimated_requests: u64,
    /// Of those, requests with usage but no price (their cost is not in `cost_usd`).
    pub unpriced_requests: u64,
    /// Input tokens (cached included).
    pub prompt_tokens: u64,
    /// Output tokens (reasoning included).
    pub completion_tokens: u64,
    /// Cache-read input tokens.
    pub cached_tokens: u64,
    /// Cache-write input tokens.
    pub cache_write_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Spend, exact decimal USD.
    pub cost_usd: String,
    /// Spend in pico-USD, as a decimal string (exact; may exceed 2^53).
    pub cost_pico: String,
    #[serde(skip)]
    pico: u128,
}

/// The report: rows ordered by day, key, model, plus the grand total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendReport {
    /// One row per (key, model, day).
    pub rows: Vec<SpendRow>,
    /// Requests counted.
    pub requests: u64,
    /// Total spend, exact decimal USD.
    pub total_cost_usd: String,
    /// Lines of the source that could not be read as a record (skipped).
    pub skipped_lines: u64,
}

/// Accumulates records (or pre-summed groups) into a [`SpendReport`].
#[derive(Debug, Default)]
pub struct SpendAccumulator {
    groups: BTreeMap<(String, Option<String>, String), SpendRow>,
    skipped: u64,
}

impl SpendAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    fn row(
        &mut self,
        key_id: Option<&str>,
        tenant: Option<&str>,
        model: &str,
        day: String,
    ) -> &mut SpendRow {
        self.groups
            .entry((day.clone(), key_id.map(str::to_owned), model.to_owned()))
            .or_insert_with(|| SpendRow {
                key_id: key_id.map(str::to_owned),
                tenant: tenant.map(str::to_owned),
                model: model.to_owned(),
                day,
                ..SpendRow::default()
            })
    }

    /// Add one record.
    pub fn add(&mut self, r: &UsageRecord) {
        let day = PriceDate::from_unix_ms(r.started_at_ms).to_string();
        let row = self.row(r.key_id.as_deref(), r.tenant.as_deref(), &r.model, day);
        row.requests += 1;
        if r.usage_source == UsageSource::Estimated {
            row.estimated_requests += 1;
        }
        if r.usage_source != UsageSource::None && r.cost_pico.is_none() && r.usage.total_tokens > 0
        {
            row.unpriced_requests += 1;
        }
        row.prompt_tokens += r.usage.prompt_tokens;
        row.completion_tokens += r.usage.completion_tokens;
        row.cached_tokens += r.usage.cached_tokens;
        row.cache_write_tokens += r.usage.cache_write_tokens;
        row.reasoning_tokens += r.usage.reasoning_tokens;
        row.pico += u128::from(r.cost_pico.unwrap_or(0));
    }

    /// Add a group already summed elsewhere (e.g. by SQL): `sums.pico` carries the cost.
    pub fn add_group(&mut self, group: SpendGroup) {
        let row = self.row(
            group.key_id.as_deref(),
            group.tenant.as_deref(),
            &group.model,
            group.day.clone(),
        );
        row.requests += group.requests;
        row.estimated_requests += group.estimated_requests;
        row.unpriced_requests += group.unpriced_requests;
        row.prompt_tokens += group.prompt_tokens;
        row.completion_tokens += group.completion_tokens;
        row.cached_tokens += group.cached_tokens;
        row.cache_write_tokens += group.cache_write_tokens;
        row.reasoning_tokens += group.reasoning_tokens;
        row.pico += group.cost_pico;
    }

    /// Count a source line that was not a record.
    pub fn skip(&mut self) {
        self.skipped += 1;
    }

    /// The report.
    pub fn finish(self) -> SpendReport {
        let mut total: u128 = 0;
        let mut requests = 0;
        let rows = self
            .groups
            .into_values()
            .map(|mut row| {
                total += row.pico;
                requests += row.requests;
                row.cost_usd = Usd::from_pico(row.pico).to_string();
                row.cost_pico = row.pico.to_string();
                row
            })
            .collect();
        SpendReport {
            rows,
            requests,
            total_cost_usd: Usd::from_pico(total).to_string(),
            skipped_lines: self.skipped,
        }
    }
}

/// A pre-summed (key, model, day) group, for [`SpendAccumulator::add_group`].
#[derive(Debug, Clone, Default)]
pub struct SpendGroup {
    /// Key id.
    pub key_id: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Public model.
    pub model: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Requests.
    pub requests: u64,
    /// Estimated requests.
    pub estimated_requests: u64,
    /// Unpriced requests.
    pub unpriced_requests: u64,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Cache-read tokens.
    pub cached_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost, pico-USD.
    pub cost_pico: u128,
}

/// The report over `records` that match `query`.
pub fn spend_report_records<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
    query: &SpendQuery,
) -> SpendReport {
    let mut acc = SpendAccumulator::new();
    for r in records {
        if query.matches(r) {
            acc.add(r);
        }
    }
    acc.finish()
}

/// The report over a JSON-lines usage file (as [`JsonlSink`](crate::sink::JsonlSink) writes
/// it), streamed line by line. Lines that are not records are counted in `skipped_lines`.
pub fn spend_report_jsonl(
    path: impl AsRef<Path>,
    query: &SpendQuery,
) -> std::io::Result<SpendReport> {
    let file = std::fs::File::open(path)?;
    let mut acc = SpendAccumulator::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<UsageRecord>(&line) {
            Ok(r) if query.matches(&r) => acc.add(&r),
            Ok(_) => {}
            Err(_) => acc.skip(),
        }
    }
    Ok(acc.finish())
}

/// [`spend_report_jsonl`] as a JSON document (what an endpoint or command prints).
pub fn spend_report_jsonl_json(
    path: impl AsRef<Path>,
    query: &SpendQuery,
) -> std::io::Result<serde_json::Value> {
    let report = spend_report_jsonl(path, query)?;
    serde_json::to_value(report).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{Outcome, Usage};

    fn rec(
        key: &str,
        model: &str,
        day_ms: u64,
        cost: Option<u64>,
        source: UsageSource,
    ) -> UsageRecord {
        UsageRecord {
            request_id: None,
            key_id: Some(key.into()),
            tenant: Some(format!("t-{key}")),
            model: model.into(),
            provider: None,
            upstream_model: None,
            variant: None,
            attempts: 1,
            stream: true,
            outcome: Outcome::Success,
            status: 200,
            error_kind: None,
            units: Default::default(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
                cached_tokens: 1,
                cache_write_tokens: 0,
                reasoning_tokens: 1,
            },
            usage_source: source,
            usage_note: None,
            cost_pico: cost,
            ttft_ms: None,
            total_ms: 1.0,
            overhead_us: None,
            started_at_ms: day_ms,
        }
    }

    #[test]
    fn jsonl_report_groups_by_key_model_day_and_sums_exactly() {
        let day1 = 1_767_225_600_000; // 2026-01-01
        let day2 = day1 + 86_400_000;
        let recs = vec![
            rec(
                "a",
                "m1",
                day1,
                Some(100_000_000_001),
                UsageSource::Upstream,
            ),
            rec(
                "a",
                "m1",
                day1 + 5,
                Some(200_000_000_002),
                UsageSource::Upstream,
            ),
            rec("a", "m2", day1, Some(1), UsageSource::Estimated),
            rec("b", "m1", day2, None, UsageSource::Upstream),
        ];
        let dir = std::env::temp_dir().join(format!("tollgate-spend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.jsonl");
        let mut text = String::new();
        for r in &recs {
            text.push_str(&serde_json::to_string(r).unwrap());
            text.push('\n');
        }
        text.push_str("not json\n");
        std::fs::write(&path, text).unwrap();

        let report = spend_report_jsonl(&path, &SpendQuery::default()).unwrap();
        assert_eq!(report.requests, 4);
        assert_eq!(report.skipped_lines, 1);
        assert_eq!(report.rows.len(), 3);
        let a1 = &report.rows[0];
        assert_eq!(
            (a1.key_id.as_deref(), a1.model.as_str(), a1.day.as_str()),
            (Some("a"), "m1", "2026-01-01")
        );
        assert_eq!(a1.requests, 2);
        assert_eq!(a1.cost_usd, "0.300000000003");
        assert_eq!(a1.prompt_tokens, 6);
        assert_eq!(a1.reasoning_tokens, 2);
        assert_eq!(report.rows[1].estimated_requests, 1);
        assert_eq!(report.rows[2].unpriced_requests, 1);
        assert_eq!(report.rows[2].day, "2026-01-02");
        assert_eq!(report.total_cost_usd, "0.300000000004");

        let q = SpendQuery {
            key_id: Some("a".into()),
            from: Some("2026-01-01".into()),
            to: Some("2026-01-01".into()),
            ..SpendQuery::default()
        };
        let parsed = SpendQuery::from_query_string("?key=a&day=2026-01-01").unwrap();
        assert_eq!(
            (
                parsed.key_id.as_deref(),
                parsed.from.as_deref(),
                parsed.to.as_deref()
            ),
            (Some("a"), Some("2026-01-01"), Some("2026-01-01"))
        );
        assert_eq!(
            SpendQuery::from_query_string("tenant=team%20x+y")
                .unwrap()
                .tenant
                .as_deref(),
            Some("team x y")
        );
        assert!(SpendQuery::from_query_string("from=yesterday").is_err());
        assert!(SpendQuery::from_query_string("secret=1").is_err());
        let json = spend_report_jsonl_json(&path, &q).unwrap();
        assert_eq!(json["requests"], 3);
        assert_eq!(json["rows"][0]["tenant"], "t-a");
        assert_eq!(json["rows"][0]["cost_pico"], "300000000003");
    }
}
