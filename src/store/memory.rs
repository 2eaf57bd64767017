//! [`MemoryResponseStore`]: responses in this process, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{ResponseStore, ResponseStoreError, StoreFuture, StoredResponse};

struct Entry {
    owner: Box<str>,
    record: StoredResponse,
    expires: Instant,
    /// Which insertion this is (an overwritten id leaves a stale entry in `order`).
    seq: u64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// Ids in insertion order, with the insertion's `seq`; stale pairs are skipped.
    order: VecDeque<(String, u64)>,
    next_seq: u64,
    /// The bytes of the records held (bodies, id, names).
    bytes: usize,
}

/// Responses kept in this process (the default store): lost on restart and not shared between
/// replicas — configure Redis or PostgreSQL for that.
///
/// Bounded: at most `max_entries` records and `max_bytes` bytes of them (bodies, ids and
/// names; a follow-up's record holds the whole conversation, so long conversations weigh).
/// Putting one more first drops expired records at the front of the insertion order, then the
/// oldest ones, until it fits. A record larger than `max_bytes` on its own is refused with an
/// error. Reading an expired record finds nothing (and drops it).
pub struct MemoryResponseStore {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryResponseStore")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.len())
            .finish()
    }
}

fn size(r: &StoredResponse) -> usize {
    r.response.len() + r.conversation.len() + r.id.len() + r.model.len() + r.target.len()
}

impl MemoryResponseStore {
    /// A store of at most `max_entries` records (at least 1) and
    /// [`DEFAULT_MAX_BYTES`](super::DEFAULT_MAX_BYTES) bytes.
    pub fn new(max_entries: usize) -> Self {
        MemoryResponseStore {
            max_entries: max_entries.max(1),
            max_bytes: super::DEFAULT_MAX_BYTES,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Hold at most `max_bytes` bytes of records.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Records held now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the records held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Pairs in the insertion order (live and stale).
    #[cfg(test)]
    pub(crate) fn order_len(&self) -> usize {
        self.lock().order.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters (at worst a stale `order` pair, which is skipped).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_now(
        &self,
        owner: &str,
        record: StoredResponse,
        ttl: Duration,
    ) -> Result<(), ResponseStoreError> {
        let bytes = size(&record);
        if bytes > self.max_bytes {
            return Err(ResponseStoreError(format!(
                "a response of {bytes} bytes is larger than the memory store's max_bytes"
            )));
        }
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        inner.remove(&record.id);
        inner.make_room(self.max_entries, self.max_bytes - bytes, now);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.push_back((record.id.clone(), seq));
        inner.bytes += bytes;
        let entry = Entry {
            owner: owner.into(),
            expires: now + ttl,
            seq,
            record,
        };
        inner.by_id.insert(entry.record.id.clone(), entry);
        inner.compact(self.max_entries);
        Ok(())
    }

    fn get_now(&self, owner: &str, id: &str) -> Option<StoredResponse> {
        let now = Instant::now();
        let mut g = self.lock();
        let e = g.by_id.get(id)?;
        if e.expires <= now {
            g.remove(id);
            return None;
        }
        (*e.owner == *owner).then(|| e.record.clone())
    }

    fn delete_now(&self, owner: &str, id: &str) -> bool {
        let now = Instant::now();
        let mut g = self.lock();
        match g.by_id.get(id) {
            Some(e) if *e.owner == *owner => {
                let live = e.expires > now;
                g.remove(id);
                live
            }
            _ => false,
        }
    }
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some(e) = self.by_id.remove(id) {
            self.bytes -= size(&e.record);
        }
    }

    /// Drop expired records at the front, then the oldest, until one more record fits in
    /// `max` records and `max_bytes` bytes.
    fn make_room(&mut self, max: usize, max_bytes: usize, now: Instant) {
        while let Some((id, seq)) = self.order.pop_front() {
            let full = self.by_id.len() >= max || self.bytes > max_bytes;
            match self.by_id.get(&id).filter(|e| e.seq == seq) {
                None => continue,
                Some(e) if e.expires <= now || full => self.remove(&id),
                Some(_) => {
                    self.order.push_front((id, seq));
                    break;
                }
            }
        }
    }

    /// Rebuild `order` when stale pairs (deleted or overwritten ids) outnumber live ones.
    fn compact(&mut self, max: usize) {
        if self.order.len() <= 2 * max.max(self.by_id.len()) + 16 {
            return;
        }
        let by_id = &self.by_id;
        self.order
            .retain(|(id, seq)| by_id.get(id).is_some_and(|e| e.seq == *seq));
    }
}

impl ResponseStore for MemoryResponseStore {
    fn put<'a>(
        &'a self,
        owner: &'a str,
        record: StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.put_now(owner, record, ttl)))
    }

    fn get<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>> {
        Box::pin(std::future::ready(Ok(self.get_now(owner, id))))
    }

    fn delete<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(self.delete_now(owner, id))))
    }
}
