//! The response store of the Responses API: what `POST /v1/responses` answered (and the
//! conversation up to it), kept per virtual key with a TTL, so that a follow-up with
//! `previous_response_id` can continue a conversation on a target that keeps no state of its
//! own, and `GET` / `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`
//! can answer (the input items: the conversation without the response's own output).
//!
//! - [`ResponseStore`] is the object-safe trait; [`MemoryResponseStore`] (bounded, the
//!   default), [`RedisResponseStore`] (feature `redis`) and [`PostgresResponseStore`]
//!   (feature `postgres`) implement it. The networked ones let several replicas share the
//!   conversations.
//! - Every operation names the **owner**: the calling key's id
//!   ([`KeyIdentity::key_id`](crate::auth::KeyIdentity), or [`NO_KEY_OWNER`] when auth is
//!   off). A record is only visible to its owner: another owner's `get` finds nothing and its
//!   `delete` deletes nothing (the gateway answers both with 404, as for an unknown id).
//! - [`ResponseStoreHandle`] is a store with its TTL: the gateway builds one from `[responses]`
//!   ([`Gateway::response_store`](crate::gateway::Gateway::response_store)) and inserts it as
//!   a request extension on every `/v1/responses…` request, where the Responses endpoint
//!   reads it.
//!
//! ```
//! # async fn demo() -> Result<(), tollgate::store::ResponseStoreError> {
//! use bytes::Bytes;
//! use tollgate::store::{MemoryResponseStore, ResponseStoreHandle, StoredResponse};
//!
//! let store = ResponseStoreHandle::new(
//!     std::sync::Arc::new(MemoryResponseStore::new(10_000)),
//!     std::time::Duration::from_secs(3600),
//! );
//! let rec = StoredResponse::new(
//!     Bytes::from_static(br#"{"id":"resp_1","object":"response"}"#),
//!     Bytes::from_static(br#"[{"role":"user","content":"hi"}]"#),
//!     "gpt-4o-mini",
//!     "mock/echo",
//! );
//! let id = rec.id.clone();
//! store.put("team-a", rec).await?;
//! assert!(store.get("team-a", &id).await?.is_some());
//! assert!(store.get("team-b", &id).await?.is_none()); // another key sees nothing
//! assert!(store.delete("team-a", &id).await?);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub(crate) mod items;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryResponseStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresResponseStore, PostgresStoreConfig};
#[cfg(feature = "redis")]
pub use redis::{RedisResponseStore, RedisStoreConfig};

/// The owner of responses created while auth is off (every caller is the same one).
pub const NO_KEY_OWNER: &str = "-";

/// How long a stored response lives unless `[responses] ttl_secs` says otherwise: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most responses the in-memory store keeps unless `[responses] max_entries` says otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Most bytes of responses the in-memory store keeps unless `[responses] max_bytes` says
/// otherwise: 256 MiB.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// What a store operation returns: a boxed, sendable future borrowing the store and its
/// arguments.
pub type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ResponseStoreError>> + Send + 'a>>;

/// A store that could not answer (unreachable, timeout, a corrupt record). Never contains a
/// credential or an owner.
#[derive(Debug, Clone, thiserror::Error)]
#[error("response store unavailable: {0}")]
pub struct ResponseStoreError(pub String);

/// One stored response.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The response id (`resp_` and 48 hex digits; see [`new_response_id`]).
    pub id: String,
    /// The response object as returned to the client (JSON).
    pub response: Bytes,
    /// The conversation up to and including this response, as a JSON array of Responses
    /// input items (the gateway gives each an `id`), ending with the response's `output`:
    /// what a follow-up with `previous_response_id` puts before its own input.
    pub conversation: Bytes,
    /// The public model the client asked for.
    pub model: String,
    /// The target that served it (`provider/upstream_model`).
    pub target: String,
    /// When it was created (Unix seconds).
    pub created_at: u64,
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies are the users' content: lengths only.
        f.debug_struct("StoredResponse")
            .field("id", &self.id)
            .field("response_bytes", &self.response.len())
            .field("conversation_bytes", &self.conversation.len())
            .field("model", &self.model)
            .field("target", &self.target)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl StoredResponse {
    /// A record with a new id ([`new_response_id`]) created now. Write the same id into the
    /// response object (or build the record with [`StoredResponse::with_id`]).
    pub fn new(
        response: Bytes,
        conversation: Bytes,
        model: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self::with_id(new_response_id(), response, conversation, model, target)
    }

    /// A record with the given id, created now.
    pub fn with_id(
        id: impl Into<String>,
        response: Bytes,
        conversation: Bytes,
        model: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        StoredResponse {
            id: id.into(),
            response,
            conversation,
            model: model.into(),
            target: target.into(),
            created_at: unix_now(),
        }
    }
}

/// A new response id: `resp_` and 48 random hex digits (192 bits from the OS generator).
pub fn new_response_id() -> String {
    use rand::{RngCore, SeedableRng};
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::StdRng> =
            std::cell::RefCell::new(rand::rngs::StdRng::from_os_rng());
    }
    let mut bytes = [0u8; 24];
    RNG.with(|r| r.borrow_mut().fill_bytes(&mut bytes));
    let mut id = String::with_capacity(5 + 48);
    id.push_str("resp_");
    for b in bytes {
        use fmt::Write as _;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Whether `id` looks like a response id (`resp_` then 1..=128 ASCII letters, digits, `_` or
/// `-`): anything else is answered 404 without asking the store.
pub fn is_response_id(id: &str) -> bool {
    id.strip_prefix("resp_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 128
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A store of responses, keyed by owner (the calling key's id) and response id. Object safe:
/// use it as `Arc<dyn ResponseStore>`.
pub trait ResponseStore: Send + Sync + 'static {
    /// Keep `record` for `owner` for `ttl` (replacing a record of the same owner and id).
    fn put<'a>(
        &'a self,
        owner: &'a str,
        record: StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// The record `id` of `owner`; `None` when there is none, it expired, or it belongs to
    /// another owner.
    fn get<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>>;

    /// Delete the record `id` of `owner`; `false` when there was none for this owner.
    fn delete<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, bool>;
}

/// A [`ResponseStore`] with the TTL its records get: what the gateway builds from
/// `[responses]` and inserts as a request extension on `/v1/responses…` requests. Cheap to
/// clone.
#[derive(Clone)]
pub struct ResponseStoreHandle {
    store: Arc<dyn ResponseStore>,
    ttl: Duration,
}

impl fmt::Debug for ResponseStoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStoreHandle")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ResponseStoreHandle {
    /// `store`, whose records live `ttl`.
    pub fn new(store: Arc<dyn ResponseStore>, ttl: Duration) -> Self {
        ResponseStoreHandle { store, ttl }
    }

    /// The default: a [`MemoryResponseStore`] of [`DEFAULT_MAX_ENTRIES`], [`DEFAULT_TTL`].
    pub fn memory() -> Self {
        Self::new(
            Arc::new(MemoryResponseStore::new(DEFAULT_MAX_ENTRIES)),
            DEFAULT_TTL,
        )
    }

    /// The owner of a request's responses: its key's id, or [`NO_KEY_OWNER`] with auth off.
    pub fn owner_of(key: Option<&crate::auth::KeyIdentity>) -> &str {
        key.map_or(NO_KEY_OWNER, |k| &k.key_id)
    }

    /// How long records live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ResponseStore> {
        &self.store
    }

    /// Keep `record` for `owner` for [`ttl`](Self::ttl).
    pub fn put<'a>(&'a self, owner: &'a str, record: StoredResponse) -> StoreFuture<'a, ()> {
        self.store.put(owner, record, self.ttl)
    }

    /// See [`ResponseStore::get`].
    pub fn get<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredResponse>> {
        self.store.get(owner, id)
    }

    /// See [`ResponseStore::delete`].
    pub fn delete<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        self.store.delete(owner, id)
    }
}

#[cfg(test)]
pub(crate) mod tests;
