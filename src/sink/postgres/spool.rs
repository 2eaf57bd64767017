//! The bounded local file the PostgreSQL sink keeps records in while the database is away:
//! one JSON record a line, appended in arrival order, read back from where the last replay
//! stopped, and truncated once everything in it reached the database.
//!
//! Plain file I/O on the writer task: it only runs while the database is away, and each call
//! writes or reads one batch (page cache, no fsync).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read as _, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::usage::UsageRecord;

/// What one read of the spool gave.
pub(super) struct Read {
    /// The records, each with the file offset just past its line.
    pub(super) records: Vec<(UsageRecord, u64)>,
    /// Lines that were not records (a torn last line after a crash): dropped.
    pub(super) bad: u64,
    /// The offset just past the last line read.
    pub(super) end: u64,
}

pub(super) struct Spool {
    path: PathBuf,
    max_bytes: u64,
    /// The append handle (opened on the first append, or at start for a non-empty file).
    file: Option<File>,
    /// Bytes in the file.
    len: u64,
    /// Bytes already replayed to the database.
    read: u64,
    /// Remove the file when the writer ends with it empty (the per-process default path).
    remove_when_empty: bool,
}

impl Spool {
    /// The spool at `path`; records a previous run left there are replayed first.
    pub(super) fn open(path: PathBuf, max_bytes: u64, remove_when_empty: bool) -> io::Result<Self> {
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut spool = Spool {
            path,
            max_bytes,
            file: None,
            len,
            read: 0,
            remove_when_empty,
        };
        // Fail at start, not during an outage, if the file cannot be written.
        spool.handle()?;
        Ok(spool)
    }

    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Records wait in the file.
    pub(super) fn pending(&self) -> bool {
        self.read < self.len
    }

    /// Bytes waiting.
    pub(super) fn waiting_bytes(&self) -> u64 {
        self.len - self.read
    }

    fn handle(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool file not open"))
    }

    /// Append `records` in order; returns how many did not fit (or could not be written) and
    /// were dropped.
    pub(super) fn append<'r>(&mut self, records: impl IntoIterator<Item = &'r UsageRecord>) -> u64 {
        let mut out = Vec::new();
        let mut dropped = 0;
        for r in records {
            let Ok(mut line) = serde_json::to_vec(r) else {
                dropped += 1;
                continue;
            };
            line.push(b'\n');
            if self.len + (out.len() + line.len()) as u64 > self.max_bytes {
                dropped += 1;
                continue;
            }
            out.extend_from_slice(&line);
        }
        if out.is_empty() {
            return dropped;
        }
        let n = out.iter().filter(|&&b| b == b'\n').count() as u64;
        match self.handle().and_then(|f| f.write_all(&out)) {
            Ok(()) => self.len += out.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "postgres usage sink: cannot write the spool file");
                // What was written (if anything) is past `len`: truncate it away.
                if let Some(f) = &self.file {
                    let _ = f.set_len(self.len);
                }
                dropped += n;
            }
        }
        dropped
    }

    /// Read up to `max` records from where the last replay stopped.
    pub(super) fn read(&mut self, max: usize) -> io::Result<Read> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.read))?;
        let mut r = BufReader::new(f.take(self.len - self.read));
        let mut out = Read {
            records: Vec::with_capacity(max.min(1024)),
            bad: 0,
            end: self.read,
        };
        let mut line = Vec::new();
        while out.records.len() < max {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            out.end += n as u64;
            match serde_json::from_slice::<UsageRecord>(&line) {
                Ok(rec) if line.ends_with(b"\n") => out.records.push((rec, out.end)),
                _ => out.bad += 1,
            }
        }
        Ok(out)
    }

    /// Everything before `offset` is in the database; an empty spool is truncated.
    pub(super) fn advance(&mut self, offset: u64) {
        self.read = offset.min(self.len);
        if self.read == self.len {
            self.clear();
        }
    }

    /// Forget everything in the file.
    pub(super) fn clear(&mut self) {
        let truncated = match self.handle() {
            Ok(f) => f.set_len(0).is_ok(),
            Err(_) => false,
        };
        if truncated {
            self.len = 0;
            self.read = 0;
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.remove_when_empty && !self.pending() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> UsageRecord {
        let mut r: UsageRecord = serde_json::from_str(
            r#"{"model":"m","attempts":1,"stream":false,"outcome":"success","status":200,
                "usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0},
                "usage_source":"upstream","total_ms":1.0,"started_at_ms":0}"#,
        )
        .unwrap();
        r.started_at_ms = i;
        r
    }

    #[test]
    fn appends_reads_in_order_and_bounds_its_size() {
        let path = std::env::temp_dir().join(format!("tollgate-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let one = serde_json::to_vec(&rec(0)).unwrap().len() as u64 + 1;
        let mut s = Spool::open(path.clone(), one * 5, true).unwrap();
        let recs: Vec<_> = (0..7).map(rec).collect();
        assert_eq!(s.append(&recs), 2, "room for 5 records, 2 dropped");
        assert!(s.pending());
        let r = s.read(3).unwrap();
        let order: Vec<u64> = r.records.iter().map(|(r, _)| r.started_at_ms).collect();
        assert_eq!(order, [0, 1, 2]);
        s.advance(r.end);
        // The bound is on the file: replayed lines count until it is drained and truncated.
        assert_eq!(s.append([&rec(7)]), 1);
        let r = s.read(10).unwrap();
        let order: Vec<u64> = r.records.iter().map(|(r, _)| r.started_at_ms).collect();
        assert_eq!(order, [3, 4]);
        s.advance(r.end);
        assert!(!s.pending());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "truncated once drained"
        );
        assert_eq!(s.append([&rec(7)]), 0);
        let r = s.read(10).unwrap();
        assert_eq!(r.records[0].0.started_at_ms, 7);
        s.advance(r.end);
        // A file left by an earlier run is replayed, a torn last line dropped and counted.
        s.append([&rec(8)]);
        drop(s);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"model\":").unwrap();
        let mut s = Spool::open(path.clone(), 1 << 20, true).unwrap();
        let r = s.read(10).unwrap();
        assert_eq!((r.records.len(), r.bad), (1, 1));
        s.advance(r.end);
        drop(s);
        assert!(
            !path.exists(),
            "an empty default spool is removed at the end"
        );
    }
}
