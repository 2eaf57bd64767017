//! [`PostgresSink`] (feature `postgres`): usage records into a PostgreSQL table, in batches, off
//! the request path, and none lost while the database is away.
//!
//! - [`RecordSink::record`] only `try_send`s the record into a bounded queue: it never waits on
//!   the database. When the queue is full the record is dropped and counted
//!   ([`PostgresSink::dropped`] and the [`RECORDS_DROPPED`] counter, label `sink=postgres`).
//! - A writer task takes what is queued (up to `batch_size` records) and writes it with one
//!   `COPY ... FROM STDIN` per batch.
//! - **While the database is away** (it cannot be reached, or a write fails), the writer
//!   appends records to a bounded local spool file (`spool_path`, at most `spool_max_bytes`;
//!   gauge [`SPOOL_BYTES`]) and retries with exponential backoff (100 ms doubling to
//!   `retry_max`). When the database is back it replays the spool in order, then writes new
//!   records directly again. Records that do not fit in the spool, or that the database
//!   refuses one by one, are dropped, counted ([`RECORDS_DROPPED`]) and logged at `warn`.
//!   A spool left non-empty by a previous run (at a configured `spool_path`) is replayed first.
//! - [`PostgresSink::connect`] runs the migration first: a version table
//!   (`tollgate_schema_version`) and `CREATE TABLE IF NOT EXISTS` for the records table, under a
//!   transaction-scoped advisory lock so replicas starting together do not race. A database that
//!   cannot be reached at start is not an error: the sink starts spooling, and migrates when it
//!   connects. (A table of a newer schema version still is.)
//! - [`PostgresSink::flush`] waits until every record queued before it is written, or in the
//!   spool file if the database is away (one replay is tried first): call it on graceful
//!   shutdown, after the server stopped accepting requests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate::sink::postgres::PostgresSinkError> {
//! use std::sync::Arc;
//! use tollgate::meter::UsageMeterLayer;
//! use tollgate::sink::postgres::{PostgresSink, PostgresSinkConfig};
//!
//! let pg = Arc::new(
//!     PostgresSink::connect(PostgresSinkConfig::new("host=127.0.0.1 user=postgres dbname=gw"))
//!         .await?,
//! );
//! let meter = UsageMeterLayer::new().sink(pg.clone());
//! // ... serve; on shutdown:
//! pg.flush().await;
//! # let _ = meter; Ok(()) }
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

use crate::meter::RecordSink;
use crate::metrics::{RECORDS_DROPPED, SPOOL_BYTES};
use crate::pricing::PriceDate;
use crate::pricing::report::{SpendAccumulator, SpendGroup, SpendQuery, SpendReport};
use crate::usage::UsageRecord;

mod spool;
mod writer;

/// The schema version this code writes.
pub const SCHEMA_VERSION: i32 = 2;

/// A failure to connect, migrate or query.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    /// The database said no (or could not be reached).
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A table or schema name that is not a plain identifier.
    #[error("postgres sink: invalid identifier {0:?} (letters, digits and `_` only)")]
    BadName(String),
    /// The spool file cannot be opened or written.
    #[error("postgres sink: spool file {path}: {error}")]
    Spool {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The database did not answer in time.
    #[error("postgres sink: no connection within {0:?}")]
    Timeout(Duration),
    /// The table was written by a newer version of tollgate.
    #[error(
        "postgres sink: table {table} has schema version {found}, this build knows {SCHEMA_VERSION}"
    )]
    TooNew {
        /// The table.
        table: String,
        /// The version found.
        found: i32,
    },
}

/// Settings of a [`PostgresSink`].
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    /// A libpq-style connection string (`host=... user=... dbname=...`) or URL.
    pub url: String,
    /// Schema of the table (created if missing); `None`: the connection's default (`public`).
    pub schema: Option<String>,
    /// Table name (default `tollgate_usage`).
    pub table: String,
    /// Records the queue holds before it drops (default 65 536).
    pub capacity: usize,
    /// Most records per `COPY` (default 1 000).
    pub batch_size: usize,
    /// The spool file (records wait there while the database is away). `None`: a file per
    /// process in the system's temp directory, removed when the sink ends with it empty.
    pub spool_path: Option<PathBuf>,
    /// Most bytes in the spool file (default 256 MiB); records beyond are dropped and counted.
    pub spool_max_bytes: u64,
    /// Longest wait between two attempts to reach the database (default 5 s).
    pub retry_max: Duration,
}

/// Default [`PostgresSinkConfig::spool_max_bytes`]: 256 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;

impl PostgresSinkConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresSinkConfig {
            url: url.into(),
            schema: None,
            table: "tollgate_usage".to_owned(),
            capacity: 65_536,
            batch_size: 1_000,
            spool_path: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            retry_max: Duration::from_secs(5),
        }
    }

    /// From the config's `[usage.postgres]` (and `[usage] queue`); `${VAR}` in the URL is
    /// resolved from the environment.
    pub fn from_config(
        usage: &crate::config::UsageConfig,
        source: &str,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        let Some(pg) = &usage.postgres else {
            return Ok(None);
        };
        let url = crate::config::interpolate(&pg.url, source, "usage.postgres.url")?;
        let mut cfg = PostgresSinkConfig::new(url);
        cfg.schema = pg.schema.clone();
        if let Some(t) = &pg.table {
            cfg.table = t.clone();
        }
        if let Some(n) = usage.queue {
            cfg.capacity = n;
        }
        if let Some(n) = pg.batch_size {
            cfg.batch_size = n;
        }
        cfg.spool_path = pg.spool_path.as_ref().map(PathBuf::from);
        if let Some(n) = pg.spool_max_bytes {
            cfg.spool_max_bytes = n;
        }
        cfg.check()
            .map_err(|e| crate::config::ConfigError::field(source, "usage.postgres", e))?;
        Ok(Some(cfg))
    }

    /// Use `schema` (created if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Use `table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Queue `capacity` records at most.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Write at most `n` records per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Keep records in `path` while the database is away.
    pub fn spool_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.spool_path = Some(path.into());
        self
    }

    /// Hold at most `n` bytes in the spool file.
    pub fn spool_max_bytes(mut self, n: u64) -> Self {
        self.spool_max_bytes = n;
        self
    }

    /// Wait at most `d` between two attempts to reach the database.
    pub fn retry_max(mut self, d: Duration) -> Self {
        self.retry_max = d;
        self
    }

    fn check(&self) -> Result<(), PostgresSinkError> {
        for name in self.schema.iter().chain(std::iter::once(&self.table)) {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(PostgresSinkError::BadName(name.clone()));
            }
        }
        Ok(())
    }

    /// `"schema"."table"` (or `"table"`).
    fn qualified(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{name}\""),
            None => format!("\"{name}\""),
        }
    }
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(oneshot::Sender<()>),
}

/// The PostgreSQL usage sink; see the [module docs](self).
pub struct PostgresSink {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    table: String,
}

/// What the writer did, shared with the sink.
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    spooled_bytes: AtomicU64,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("table", &self.table)
            .field("dropped", &self.dropped())
            .field("spooled_bytes", &self.spooled_bytes())
            .finish_non_exhaustive()
    }
}

/// Sinks made by this process (numbers their default spool files).
static SPOOLS: AtomicU64 = AtomicU64::new(0);

/// Longest wait for a connection (and the migration) before the database counts as away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn open(url: &str) -> Result<Client, PostgresSinkError> {
    let connect = tokio_postgres::connect(url, NoTls);
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| PostgresSinkError::Timeout(CONNECT_TIMEOUT))??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres usage sink: connection ended");
        }
    });
    Ok(client)
}

/// Create the version table and the records table (if missing) and record the version.
pub async fn migrate(
    client: &mut Client,
    cfg: &PostgresSinkConfig,
) -> Result<(), PostgresSinkError> {
    cfg.check()?;
    let versions = cfg.qualified("tollgate_schema_version");
    let table = cfg.qualified(&cfg.table);
    let tx = client.transaction().await?;
    // One migrator at a time (replicas starting together).
    tx.batch_execute("SELECT pg_advisory_xact_lock(7406316839)")
        .await?;
    if let Some(s) = &cfg.schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{s}\""))
            .await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {versions} (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await?;
    let found: i32 = tx
        .query_opt(
            &format!("SELECT version FROM {versions} WHERE component = $1"),
            &[&cfg.table],
        )
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(PostgresSinkError::TooNew {
            table: cfg.table.clone(),
            found,
        });
    }
    if found < 1 {
        create_v1(&tx, &table, &cfg.table).await?;
    }
    if found < 2 {
        alter_v2(&tx, &table).await?;
    }
    if found < SCHEMA_VERSION {
        tx.execute(
            &format!(
                "INSERT INTO {versions} (component, version) VALUES ($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, applied_at = now()"
            ),
            &[&cfg.table, &SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Schema version 1: the records table and its (day, key) index.
async fn create_v1(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    t: &str,
) -> Result<(), PostgresSinkError> {
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id BIGSERIAL PRIMARY KEY,
            day DATE NOT NULL,
            started_at_ms BIGINT NOT NULL,
            request_id TEXT,
            key_id TEXT,
            tenant TEXT,
            model TEXT NOT NULL,
            provider TEXT,
            upstream_model TEXT,
            variant TEXT,
            attempts INTEGER NOT NULL,
            stream BOOLEAN NOT NULL,
            outcome TEXT NOT NULL,
            status INTEGER NOT NULL,
            error_kind TEXT,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            total_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            usage_source TEXT NOT NULL,
            cost_pico NUMERIC(20, 0),
            ttft_ms DOUBLE PRECISION,
            total_ms DOUBLE PRECISION NOT NULL,
            overhead_us DOUBLE PRECISION);
         CREATE INDEX IF NOT EXISTS \"{t}_day_key\" ON {table} (day, key_id);"
    ))
    .await?;
    Ok(())
}

/// Schema version 2: why a usage is an estimate, and the units billed per image, character or
/// second of audio.
async fn alter_v2(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<(), PostgresSinkError> {
    tx.batch_execute(&format!(
        "ALTER TABLE {table}
            ADD COLUMN IF NOT EXISTS usage_note TEXT,
            ADD COLUMN IF NOT EXISTS images BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS characters BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS audio_ms BIGINT NOT NULL DEFAULT 0"
    ))
    .await?;
    Ok(())
}

const COLUMNS: &str = "day, started_at_ms, request_id, key_id, tenant, model, provider, \
    upstream_model, variant, attempts, stream, outcome, status, error_kind, prompt_tokens, \
    completion_tokens, total_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, \
    usage_source, cost_pico, ttft_ms, total_ms, overhead_us, usage_note, images, characters, \
    audio_ms";

/// Append `s` as a COPY text-format field.
fn text(out: &mut String, s: Option<&str>) {
    let Some(s) = s else {
        out.push_str("\\N");
        return;
    };
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn num(out: &mut String, v: Option<impl std::fmt::Display>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("\\N"),
    }
}

fn float(out: &mut String, v: Option<f64>) {
    num(out, v.filter(|x| x.is_finite()));
}

fn enum_label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One record as a COPY text-format line.
fn copy_line(out: &mut String, r: &UsageRecord) {
    let clamp = |v: u64| v.min(i64::MAX as u64);
    let _ = write!(out, "{}\t", PriceDate::from_unix_ms(r.started_at_ms));
    num(out, Some(clamp(r.started_at_ms)));
    for s in [
        r.request_id.as_deref(),
        r.key_id.as_deref(),
        r.tenant.as_deref(),
        Some(r.model.as_str()),
        r.provider.as_deref(),
        r.upstream_model.as_deref(),
        r.variant.as_deref(),
    ] {
        out.push('\t');
        text(out, s);
    }
    out.push('\t');
    num(out, Some(r.attempts.min(i32::MAX as u32)));
    out.push_str(if r.stream { "\tt\t" } else { "\tf\t" });
    text(out, Some(&enum_label(&r.outcome)));
    out.push('\t');
    num(out, Some(r.status));
    out.push('\t');
    text(out, r.error_kind.as_deref());
    let u = &r.usage;
    for v in [
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cached_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
    ] {
        out.push('\t');
        num(out, Some(clamp(v)));
    }
    out.push('\t');
    text(out, Some(&enum_label(&r.usage_source)));
    out.push('\t');
    num(out, r.cost_pico);
    out.push('\t');
    float(out, r.ttft_ms);
    out.push('\t');
    float(out, Some(r.total_ms));
    out.push('\t');
    float(out, r.overhead_us);
    out.push('\t');
    text(out, r.usage_note.as_deref());
    for v in [r.units.images, r.units.characters, r.units.audio_ms] {
        out.push('\t');
        num(out, Some(clamp(v)));
    }
    out.push('\n');
}

async fn write_batch<'r>(
    client: &Client,
    table: &str,
    batch: impl IntoIterator<Item = &'r UsageRecord>,
) -> Result<usize, tokio_postgres::Error> {
    let mut data = String::new();
    let mut n = 0;
    for r in batch {
        copy_line(&mut data, r);
        n += 1;
    }
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} ({COLUMNS}) FROM STDIN"))
        .await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(Bytes::from(data)).await?;
    sink.as_mut().finish().await?;
    Ok(n)
}

impl PostgresSink {
    /// Connect, run the migration, and start the writer task (on the current tokio runtime).
    /// A database that cannot be reached is not an error: the writer spools records and
    /// connects (and migrates) when it can. A bad name, a spool file that cannot be opened, or
    /// a table of a newer schema version are.
    pub async fn connect(cfg: PostgresSinkConfig) -> Result<PostgresSink, PostgresSinkError> {
        cfg.check()?;
        let (path, per_process) = match &cfg.spool_path {
            Some(p) => (p.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "tollgate-usage-spool-{}-{}-{}.jsonl",
                    cfg.table,
                    std::process::id(),
                    SPOOLS.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        let spool = spool::Spool::open(path.clone(), cfg.spool_max_bytes, per_process).map_err(
            |error| PostgresSinkError::Spool {
                path: path.display().to_string(),
                error,
            },
        )?;
        let (tx, rx) = mpsc::channel(cfg.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let table = cfg.qualified(&cfg.table);
        let mut writer = writer::Writer::new(cfg, spool, counters.clone());
        match writer.connect().await {
            Ok(()) => {}
            Err(e @ (PostgresSinkError::TooNew { .. } | PostgresSinkError::BadName(_))) => {
                return Err(e);
            }
            Err(e) => writer.went_away(&e),
        }
        tokio::spawn(writer.run(rx));
        Ok(PostgresSink {
            tx,
            counters,
            table,
        })
    }

    /// Records dropped (queue full, writer gone, spool full, or a record the database
    /// refused on its own).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records written to the database so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Bytes of records waiting in the spool file for the database.
    pub fn spooled_bytes(&self) -> u64 {
        self.counters.spooled_bytes.load(Ordering::Relaxed)
    }

    /// Wait until every record queued before this call is written (or dropped).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn count_dropped(counters: &Counters, n: u64) {
    if n > 0 {
        counters.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(RECORDS_DROPPED, "sink" => "postgres").increment(n);
    }
}

impl RecordSink for PostgresSink {
    fn record(&self, record: &UsageRecord) {
        if self
            .tx
            .try_send(Msg::Record(Box::new(record.clone())))
            .is_err()
        {
            count_dropped(&self.counters, 1);
        }
    }
}

/// The spend report (see [`crate::pricing::report`]) summed by the database from the sink's
/// table.
pub async fn spend_report(
    client: &Client,
    cfg: &PostgresSinkConfig,
    q: &SpendQuery,
) -> Result<SpendReport, PostgresSinkError> {
    cfg.check()?;
    let table = cfg.qualified(&cfg.table);
    let sql = format!(
        "SELECT key_id, min(tenant), model, day::text, count(*)::text,
            sum(CASE WHEN usage_source = 'estimated' THEN 1 ELSE 0 END)::text,
            sum(CASE WHEN usage_source <> 'none' AND cost_pico IS NULL AND total_tokens > 0
                THEN 1 ELSE 0 END)::text,
            sum(prompt_tokens)::text, sum(completion_tokens)::text, sum(cached_tokens)::text,
            sum(cache_write_tokens)::text, sum(reasoning_tokens)::text,
            coalesce(sum(cost_pico), 0)::text
         FROM {table}
         WHERE ($1::text IS NULL OR key_id = $1)
           AND ($2::text IS NULL OR tenant = $2)
           AND ($3::text IS NULL OR model = $3)
           AND ($4::text IS NULL OR day >= $4::text::date)
           AND ($5::text IS NULL OR day <= $5::text::date)
         GROUP BY key_id, model, day"
    );
    let rows = client
        .query(&sql, &[&q.key_id, &q.tenant, &q.model, &q.from, &q.to])
        .await?;
    let mut acc = SpendAccumulator::new();
    for row in rows {
        let n = |i: usize| -> u64 {
            row.get::<_, Option<String>>(i)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        acc.add_group(SpendGroup {
            key_id: row.get(0),
            tenant: row.get(1),
            model: row.get(2),
            day: row.get(3),
            requests: n(4),
            estimated_requests: n(5),
            unpriced_requests: n(6),
            prompt_tokens: n(7),
            completion_tokens: n(8),
            cached_tokens: n(9),
            cache_write_tokens: n(10),
            reasoning_tokens: n(11),
            cost_pico: row
                .get::<_, Option<String>>(12)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        });
    }
    Ok(acc.finish())
}

/// [`spend_report`] over a new connection to `cfg.url`.
pub async fn spend_report_url(
    cfg: &PostgresSinkConfig,
    q: &SpendQuery,
) -> Result<SpendReport, PostgresSinkError> {
    let client = open(&cfg.url).await?;
    spend_report(&client, cfg, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_escape_text_and_nulls() {
        let r = UsageRecord {
            request_id: Some("a\tb\\c\nd".into()),
            key_id: None,
            tenant: None,
            model: "m".into(),
            provider: None,
            upstream_model: None,
            variant: None,
            attempts: 2,
            stream: true,
            outcome: crate::usage::Outcome::ClientDisconnect,
            units: Default::default(),
            status: 499,
            error_kind: None,
            usage: crate::usage::Usage::default(),
            usage_source: crate::usage::UsageSource::None,
            usage_note: None,
            cost_pico: None,
            ttft_ms: None,
            total_ms: 1.5,
            overhead_us: Some(f64::NAN),
            started_at_ms: 1_767_225_600_000,
        };
        let mut s = String::new();
        copy_line(&mut s, &r);
        assert_eq!(
            s,
            "2026-01-01\t1767225600000\ta\\tb\\\\c\\nd\t\\N\t\\N\tm\t\\N\t\\N\t\\N\t2\tt\tclient_disconnect\t499\t\\N\t0\t0\t0\t0\t0\t0\tnone\t\\N\t\\N\t1.5\t\\N\t\\N\t0\t0\t0\n"
        );
        // Version 2's columns: the usage note and the units.
        let r = UsageRecord {
            usage_note: Some("upstream usage unreadable".into()),
            units: crate::usage::Units {
                images: 2,
                characters: 12,
                audio_ms: 3_000,
            },
            ..r
        };
        s.clear();
        copy_line(&mut s, &r);
        assert!(
            s.ends_with("\tupstream usage unreadable\t2\t12\t3000\n"),
            "{s}"
        );
        assert!(
            PostgresSinkConfig::new("x")
                .table("bad;name")
                .check()
                .is_err()
        );
        assert!(PostgresSinkConfig::new("x").schema("t_1").check().is_ok());
    }
}
