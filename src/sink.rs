//! Usage-record sinks that keep records off the request path.
//!
//! [`JsonlSink`] appends one JSON object per line to a file. Records go through a bounded
//! queue to a writer thread: the request path never waits on the disk. When the queue is full
//! the record is dropped and counted ([`RECORDS_DROPPED`](crate::metrics::RECORDS_DROPPED));
//! [`JsonlSink::flush`] (called on graceful shutdown) waits until every queued record is written.
//!
//! With the `postgres` feature, `postgres::PostgresSink` writes records to PostgreSQL in
//! batches, with the same bounded queue, drop counter and flush. Both files can be summed by
//! the spend report ([`crate::pricing::report`]).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::meter::RecordSink;
use crate::usage::UsageRecord;

#[cfg(feature = "postgres")]
pub mod postgres;

/// The `tracing` target of the access log, so it can be filtered on its own
/// (`RUST_LOG=info,tollgate::access=off`).
pub const ACCESS_LOG_TARGET: &str = "tollgate::access";

/// The longest request id or model name an access line carries (both may come from the
/// client); longer values are cut at a character boundary.
const ACCESS_FIELD_MAX: usize = 128;

/// The access log: one `info` line per request under the target [`ACCESS_LOG_TARGET`], written
/// when the [`UsageMeter`](crate::meter::UsageMeter) finalizes the request's record (so every
/// outcome, refusals included, gets exactly one line).
///
/// Fields: `request_id`, `key` (the key's name, never the key), `model` (the public model),
/// `served` (`provider/upstream_model` that served, or last failed), `status`, `attempts`,
/// `ttft_ms` (first token), `total_ms`, `prompt_tokens`, `completion_tokens`, `usage`
/// (`upstream` | `estimated` | `none`), `cost_usd` (exact, when priced), `outcome` and
/// `error` (the error kind, when failed). A field with no value is left out.
///
/// ```
/// use std::sync::Arc;
/// use tollgate::meter::UsageMeterLayer;
/// use tollgate::sink::AccessLog;
///
/// let meter = UsageMeterLayer::new().sink(Arc::new(AccessLog::new()));
/// # let _ = meter;
/// ```
///
/// [`AccessLog::preformatted`] writes the same fields as one text line straight to stderr, for
/// text logs: the `tracing` text formatter's escaping costs about 18,000 instructions a line.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog {
    preformatted: bool,
}

impl AccessLog {
    /// The access log, each field a `tracing` field (for structured, e.g. JSON, logs).
    pub fn new() -> Self {
        AccessLog {
            preformatted: false,
        }
    }

    /// The access log as one preformatted line written straight to stderr (`<time>  INFO access
    /// request_id="…" key="…" …`), the way the text log shows an event: for the reference
    /// gateway's `log_format = "text"`. Filtered like the `tracing` event (`tollgate::access`).
    pub fn preformatted() -> Self {
        AccessLog { preformatted: true }
    }
}

/// `s` cut to at most [`ACCESS_FIELD_MAX`] bytes, at a character boundary.
fn bounded(s: &str) -> &str {
    if s.len() <= ACCESS_FIELD_MAX {
        return s;
    }
    let mut end = ACCESS_FIELD_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `provider/upstream_model`, written without an intermediate string.
struct Served<'a>(&'a str, &'a str);

impl std::fmt::Display for Served<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

impl RecordSink for AccessLog {
    fn record(&self, r: &UsageRecord) {
        if !tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
            return;
        }
        let served = match (r.provider.as_deref(), r.upstream_model.as_deref()) {
            (Some(p), Some(m)) => Some(Served(p, m)),
            _ => None,
        };
        let usage = match r.usage_source {
            crate::usage::UsageSource::Upstream => "upstream",
            crate::usage::UsageSource::Estimated => "estimated",
            crate::usage::UsageSource::None => "none",
        };
        let cost = r.cost_usd();
        if self.preformatted {
            let mut line = access_prefix();
            access_fields(&mut line, r, served.as_ref(), usage, cost.as_deref());
            line.push('\n');
            // One write of the whole line to stderr, as the text log writes it: the `tracing`
            // text formatter escapes a message character by character, which made this line
            // a seventh of the gateway's instructions per request.
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            return;
        }
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            request_id = r.request_id.as_deref().map(bounded),
            key = r.key_id.as_deref(),
            model = bounded(&r.model),
            served = served.as_ref().map(tracing::field::display),
            status = r.status,
            attempts = r.attempts,
            ttft_ms = r.ttft_ms.map(|ms| ms.round() as u64),
            total_ms = r.total_ms.round() as u64,
            prompt_tokens = r.usage.prompt_tokens,
            completion_tokens = r.usage.completion_tokens,
            usage,
            cost_usd = cost.as_deref(),
            outcome = r.outcome.as_str(),
            error = r.error_kind.as_deref(),
            "access"
        );
    }
}

/// The start of a text access line, as the text log writes an event: the UTC time (RFC 3339,
/// microseconds), the level, the message.
fn access_prefix() -> String {
    use std::fmt::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d) = crate::pricing::PriceDate::from_unix_ms(now.as_millis() as u64).ymd();
    let secs = now.as_secs() % 86_400;
    let mut s = String::with_capacity(320);
    let _ = write!(
        s,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z  INFO access",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_micros()
    );
    s
}

/// The fields of a text access line, `key=value …`: strings quoted (escaped), a field with no
/// value left out.
fn access_fields(
    s: &mut String,
    r: &UsageRecord,
    served: Option<&Served<'_>>,
    usage: &str,
    cost: Option<&str>,
) {
    use std::fmt::Write as _;
    let quoted = |s: &mut String, k: &str, v: Option<&str>| {
        if let Some(v) = v {
            let _ = write!(s, " {k}={v:?}");
        }
    };
    quoted(s, "request_id", r.request_id.as_deref().map(bounded));
    quoted(s, "key", r.key_id.as_deref());
    quoted(s, "model", Some(bounded(&r.model)));
    if let Some(sv) = served {
        let _ = write!(s, " served={sv}");
    }
    let _ = write!(s, " status={} attempts={}", r.status, r.attempts);
    if let Some(ms) = r.ttft_ms {
        let _ = write!(s, " ttft_ms={}", ms.round() as u64);
    }
    let _ = write!(
        s,
        " total_ms={} prompt_tokens={} completion_tokens={}",
        r.total_ms.round() as u64,
        r.usage.prompt_tokens,
        r.usage.completion_tokens
    );
    quoted(s, "usage", Some(usage));
    quoted(s, "cost_usd", cost);
    quoted(s, "outcome", Some(r.outcome.as_str()));
    quoted(s, "error", r.error_kind.as_deref());
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(SyncSender<()>),
}

/// A JSON-lines file sink with a bounded queue and a writer thread.
pub struct JsonlSink {
    tx: SyncSender<Msg>,
    path: PathBuf,
    dropped: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("path", &self.path)
            .finish()
    }
}

impl JsonlSink {
    /// Open (append to) `path`, with a queue of `capacity` records.
    pub fn open(path: impl AsRef<Path>, capacity: usize) -> std::io::Result<JsonlSink> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("tollgate-jsonl".into())
            .spawn(move || write_loop(rx, BufWriter::new(file)))?;
        Ok(JsonlSink {
            tx,
            path,
            dropped,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records dropped because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Block until every record queued so far is written and flushed to the file.
    pub fn flush(&self) {
        let (done_tx, done_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

impl Drop for JsonlSink {
    fn drop(&mut self) {
        self.flush();
        // The writer ends when the last sender (ours) is dropped; we cannot drop `tx` before
        // the join, so a flush is what guarantees the data is on disk.
        if let Ok(mut w) = self.writer.lock() {
            drop(w.take());
        }
    }
}

fn write_loop(rx: Receiver<Msg>, mut out: BufWriter<std::fs::File>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Record(r) => {
                if serde_json::to_writer(&mut out, &r).is_ok() {
                    let _ = out.write_all(b"\n");
                }
                // Batch: drain what is already queued before flushing.
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Msg::Record(r) => {
                            if serde_json::to_writer(&mut out, &r).is_ok() {
                                let _ = out.write_all(b"\n");
                            }
                        }
                        Msg::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    }
                }
                let _ = out.flush();
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
    let _ = out.flush();
}

impl RecordSink for JsonlSink {
    fn record(&self, record: &UsageRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record.clone()))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::RECORDS_DROPPED, "sink" => "jsonl").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{Outcome, Usage, UsageSource};

    fn rec(i: u64) -> UsageRecord {
        UsageRecord {
            request_id: Some(format!("r{i}")),
            key_id: None,
            tenant: None,
            model: "m".into(),
            provider: None,
            upstream_model: None,
            variant: None,
            attempts: 1,
            stream: false,
            outcome: Outcome::Success,
            status: 200,
            error_kind: None,
            units: Default::default(),
            usage: Usage {
                prompt_tokens: i,
                ..Usage::default()
            },
            usage_source: UsageSource::Upstream,
            usage_note: None,
            cost_pico: Some(i),
            ttft_ms: None,
            total_ms: 1.0,
            overhead_us: None,
            started_at_ms: 0,
        }
    }

    #[test]
    fn access_fields_are_bounded_at_a_char_boundary() {
        assert_eq!(bounded("req_1"), "req_1");
        let long = "é".repeat(100); // 200 bytes
        let cut = bounded(&long);
        assert!(cut.len() <= ACCESS_FIELD_MAX && cut.len() >= ACCESS_FIELD_MAX - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn writes_every_record_and_flushes() {
        let dir = std::env::temp_dir().join(format!("tollgate-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = JsonlSink::open(&path, 100_000).unwrap();
        for i in 0..10_000 {
            sink.record(&rec(i));
        }
        sink.flush();
        assert_eq!(sink.dropped(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<UsageRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10_000);
        assert_eq!(
            lines.iter().map(|r| r.usage.prompt_tokens).sum::<u64>(),
            (0..10_000).sum::<u64>()
        );
    }
}
