//! The writer task of the PostgreSQL sink: batches from the queue go to the database while it
//! answers, to the spool file (in order) while it does not; the spool is replayed, oldest first,
//! before anything new is written directly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::Client;

use super::spool::Spool;
use super::{
    Counters, Msg, PostgresSinkConfig, PostgresSinkError, SPOOL_BYTES, count_dropped, migrate,
    open, write_batch,
};
use crate::usage::UsageRecord;

/// Longest wait for one batch to be written before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait after a failure; doubled up to the configured `retry_max`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

pub(super) struct Writer {
    cfg: PostgresSinkConfig,
    table: String,
    client: Option<Client>,
    /// The migration ran on some connection of this writer.
    migrated: bool,
    spool: Spool,
    counters: Arc<Counters>,
    /// The next attempt to reach the database, and the wait after it.
    retry_at: Instant,
    backoff: Duration,
    /// The database is away (logged once per outage).
    away: bool,
    /// The spool filled during this outage (logged once).
    warned_full: bool,
}

impl Writer {
    pub(super) fn new(cfg: PostgresSinkConfig, spool: Spool, counters: Arc<Counters>) -> Self {
        let table = cfg.qualified(&cfg.table);
        let writer = Writer {
            cfg,
            table,
            client: None,
            migrated: false,
            spool,
            counters,
            retry_at: Instant::now(),
            backoff: FIRST_RETRY,
            away: false,
            warned_full: false,
        };
        writer.gauge();
        writer
    }

    /// Open a connection (and migrate, once).
    pub(super) async fn connect(&mut self) -> Result<(), PostgresSinkError> {
        let mut client = open(&self.cfg.url).await?;
        if !self.migrated {
            migrate(&mut client, &self.cfg).await?;
            self.migrated = true;
        }
        self.client = Some(client);
        if self.away {
            tracing::info!(
                spooled_bytes = self.spool.waiting_bytes(),
                "postgres usage sink: database is back; replaying the spool"
            );
        }
        self.away = false;
        self.warned_full = false;
        self.backoff = FIRST_RETRY;
        Ok(())
    }

    /// The database could not be reached or a write failed: spool, retry later.
    pub(super) fn went_away(&mut self, e: &PostgresSinkError) {
        if !self.away {
            tracing::warn!(
                error = %e,
                spool = %self.spool.path().display(),
                "postgres usage sink: database unreachable; records are spooled until it is back"
            );
        }
        self.away = true;
        self.client = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.cfg.retry_max.max(FIRST_RETRY));
    }

    /// A usable connection, opening one if it is time to try.
    async fn ready(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        match self.connect().await {
            Ok(()) => true,
            Err(e) => {
                self.went_away(&e);
                false
            }
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let max = self.cfg.batch_size.max(1);
        let mut batch: Vec<Box<UsageRecord>> = Vec::with_capacity(max);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let first = if self.spool.pending() {
                // Wake up at the next retry even if nothing arrives.
                match tokio::time::timeout_at(self.retry_at, rx.recv()).await {
                    Ok(None) => break,
                    Ok(Some(m)) => Some(m),
                    Err(_) => None,
                }
            } else {
                match rx.recv().await {
                    None => break,
                    Some(m) => Some(m),
                }
            };
            collect(first, &mut rx, &mut batch, &mut flushes, max);
            if !batch.is_empty() {
                self.take(&batch).await;
                batch.clear();
            }
            if self.spool.pending() {
                if !flushes.is_empty() {
                    // A flush tries once now, whatever the backoff says.
                    self.retry_at = Instant::now();
                }
                self.replay().await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
        // The sink is gone: one last attempt for what waits.
        self.retry_at = Instant::now();
        self.replay().await;
        if self.spool.pending() {
            tracing::warn!(
                bytes = self.spool.waiting_bytes(),
                spool = %self.spool.path().display(),
                "postgres usage sink: stopped with records still in the spool file"
            );
        }
    }

    /// Write `records` on the connection: how many, or the error and whether the connection
    /// is lost (closed, or no answer within [`WRITE_TIMEOUT`]: it is then dropped, which
    /// aborts the unfinished `COPY`).
    async fn write<'r>(
        &self,
        records: impl IntoIterator<Item = &'r UsageRecord>,
    ) -> Result<usize, (PostgresSinkError, bool)> {
        let Some(client) = &self.client else {
            return Err((PostgresSinkError::Timeout(Duration::ZERO), true));
        };
        let write = write_batch(client, &self.table, records);
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => {
                let lost = client.is_closed();
                Err((e.into(), lost))
            }
            Err(_) => Err((PostgresSinkError::Timeout(WRITE_TIMEOUT), true)),
        }
    }

    /// Write `batch` (after anything spooled), or spool it.
    async fn take(&mut self, batch: &[Box<UsageRecord>]) {
        if !self.spool.pending() && self.ready().await {
            match self.write(batch.iter().map(|r| &**r)).await {
                Ok(n) => {
                    self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
                    return;
                }
                Err((e, lost)) => {
                    self.went_away(&e);
                    if !lost {
                        // The database answered: a refused record, most likely. Sorted out
                        // record by record in the replay, at once.
                        self.retry_at = Instant::now();
                    }
                }
            }
        }
        self.spool_records(batch.iter().map(|r| &**r));
    }

    fn spool_records<'r>(&mut self, records: impl IntoIterator<Item = &'r UsageRecord>) {
        let dropped = self.spool.append(records);
        if dropped > 0 {
            if !self.warned_full {
                tracing::warn!(
                    dropped,
                    max_bytes = self.cfg.spool_max_bytes,
                    spool = %self.spool.path().display(),
                    "postgres usage sink: spool file full; records dropped"
                );
                self.warned_full = true;
            }
            count_dropped(&self.counters, dropped);
        }
        self.gauge();
    }

    fn gauge(&self) {
        let bytes = self.spool.waiting_bytes();
        self.counters.spooled_bytes.store(bytes, Ordering::Relaxed);
        metrics::gauge!(SPOOL_BYTES, "sink" => "postgres").set(bytes as f64);
    }

    /// Write the spool to the database, oldest first, while it answers.
    async fn replay(&mut self) {
        let max = self.cfg.batch_size.max(1);
        while self.spool.pending() && self.ready().await {
            let read = match self.spool.read(max) {
                Ok(r) => r,
                Err(e) => {
                    let lost = self.spool.waiting_bytes();
                    tracing::warn!(error = %e, bytes = lost, "postgres usage sink: cannot read the spool file; its records are dropped");
                    count_dropped(&self.counters, 1);
                    self.spool.clear();
                    break;
                }
            };
            count_dropped(&self.counters, read.bad);
            match self.write(read.records.iter().map(|(r, _)| r)).await {
                Ok(n) => {
                    self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
                    self.spool.advance(read.end);
                }
                Err((e, true)) => {
                    self.went_away(&e);
                    break;
                }
                Err((e, false)) => {
                    tracing::warn!(error = %e, "postgres usage sink: a batch was refused; writing it record by record");
                    if !self.one_by_one(&read.records).await {
                        break;
                    }
                    self.spool.advance(read.end);
                }
            }
            self.gauge();
        }
        self.gauge();
    }

    /// Write each record alone; a record the database refuses is dropped and counted. False
    /// if the connection was lost (the spool then resumes after the last record written).
    async fn one_by_one(&mut self, records: &[(UsageRecord, u64)]) -> bool {
        for (r, end) in records {
            match self.write([r]).await {
                Ok(n) => {
                    self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err((e, true)) => {
                    self.went_away(&e);
                    return false;
                }
                Err((e, false)) => {
                    tracing::warn!(error = %e, "postgres usage sink: a record was refused and dropped");
                    count_dropped(&self.counters, 1);
                }
            }
            self.spool.advance(*end);
        }
        true
    }
}

/// Move `first` and whatever else is queued (up to `max` records, stopping at a flush) into
/// `batch` and `flushes`.
#[allow(clippy::vec_box)] // the queue carries records boxed; they stay so
fn collect(
    first: Option<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
    batch: &mut Vec<Box<UsageRecord>>,
    flushes: &mut Vec<oneshot::Sender<()>>,
    max: usize,
) {
    let mut next = first;
    while let Some(msg) = next.take() {
        match msg {
            Msg::Record(r) => batch.push(r),
            Msg::Flush(done) => {
                // Everything queued before the flush is in `batch`: it is written first.
                flushes.push(done);
                break;
            }
        }
        if batch.len() >= max {
            break;
        }
        next = rx.try_recv().ok();
    }
}
