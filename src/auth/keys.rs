//! Identities, the [`KeyValidator`] trait and the config-backed [`StaticKeys`] validator.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, GatewayError};
use crate::pricing::MaxPrice;
use crate::ratelimit::Limits;
use crate::secret::Secret;

/// The boxed future a [`KeyValidator`] returns.
pub type ValidateFuture =
    Pin<Box<dyn Future<Output = Result<Option<KeyIdentity>, GatewayError>> + Send + 'static>>;

/// Who is calling: written into the request extensions by the Auth layer, read by RateLimit,
/// Route and the UsageMeter. Never holds the secret. Cheap to clone (reference counts).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// A short, non-secret id for logs, metrics and usage records (a configured id, or the
    /// first 12 hex digits of the key's SHA-256).
    pub key_id: Arc<str>,
    /// The key's human-readable name.
    pub name: Arc<str>,
    /// The tenant (team, customer) the key belongs to.
    pub tenant: Option<Arc<str>>,
    /// Model-name globs this key may use (`*` any run of characters, `?` one character).
    /// `["*"]` allows every model; an empty list allows none.
    pub allowed_models: Arc<[Arc<str>]>,
    /// This key's own limits; `None` means the RateLimit layer's default per-key limits.
    pub limits: Option<Arc<Limits>>,
    /// This key's cost threshold: Route skips targets priced above it (see
    /// [`MaxPrice`]); `None`: no threshold of the key's own.
    pub max_price: Option<MaxPrice>,
}

impl fmt::Debug for KeyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIdentity")
            .field("key_id", &self.key_id)
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("allowed_models", &self.allowed_models)
            .field("limits", &self.limits)
            .field("max_price", &self.max_price)
            .finish()
    }
}

/// The id of the identity Auth inserts when it is switched off.
pub const ANONYMOUS_KEY_ID: &str = "anonymous";

impl KeyIdentity {
    /// An identity with `key_id` and `name`, no tenant, every model allowed, default limits.
    pub fn new(key_id: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        KeyIdentity {
            key_id: key_id.into(),
            name: name.into(),
            tenant: None,
            allowed_models: Arc::from(vec![Arc::<str>::from("*")]),
            limits: None,
            max_price: None,
        }
    }

    /// The identity used when Auth is disabled: id `anonymous`, every model allowed.
    pub fn anonymous() -> Self {
        // Built once: Auth switched off inserts it on every request (reference counts only).
        static ANONYMOUS: std::sync::OnceLock<KeyIdentity> = std::sync::OnceLock::new();
        ANONYMOUS
            .get_or_init(|| KeyIdentity::new(ANONYMOUS_KEY_ID, ANONYMOUS_KEY_ID))
            .clone()
    }

    /// Set the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Set the allowed model globs.
    pub fn with_models<I, M>(mut self, globs: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        self.allowed_models = globs.into_iter().map(Into::into).collect();
        self
    }

    /// Set this key's limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Some(Arc::new(limits));
        self
    }

    /// Set this key's cost threshold (targets priced above it are skipped for its requests).
    pub fn with_max_price(mut self, max_price: MaxPrice) -> Self {
        self.max_price = Some(max_price);
        self
    }

    /// Whether this key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.iter().any(|g| glob_match(g, model))
    }
}

/// Checks a presented key. Object-safe, so users can plug their own store in
/// (`Arc<dyn KeyValidator>`).
///
/// `Ok(None)` means "unknown key" (answered 401); `Err` is a failure of the validator itself
/// (answered as the error says, e.g. 503).
pub trait KeyValidator: Send + Sync + 'static {
    /// Look `key` up. The future must not log or return the key.
    fn validate(&self, key: Secret) -> ValidateFuture;
}

impl<V: KeyValidator + ?Sized> KeyValidator for Arc<V> {
    fn validate(&self, key: Secret) -> ValidateFuture {
        (**self).validate(key)
    }
}

/// The SHA-256 of `raw_key` as lower-case hex: what config stores instead of the key.
pub fn hash_key(raw_key: &str) -> String {
    hex(&Sha256::digest(raw_key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let b = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// One configured virtual key: its SHA-256 hash and the identity it grants.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    hash: [u8; 32],
    identity: KeyIdentity,
}

impl KeyEntry {
    /// A key named `name`, given as the hex SHA-256 of the secret (see [`hash_key`]). Its
    /// `key_id` defaults to the first 12 hex digits of the hash. Fails on malformed hex; the
    /// message names `name`, never the hash.
    pub fn from_hash(name: impl Into<Arc<str>>, sha256_hex: &str) -> Result<Self, GatewayError> {
        let name = name.into();
        let hash = unhex(sha256_hex).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::Internal,
                format!("key '{name}': hash must be 64 hex digits (SHA-256)"),
            )
        })?;
        let key_id: Arc<str> = Arc::from(&hex(&hash)[..12]);
        Ok(KeyEntry {
            hash,
            identity: KeyIdentity::new(key_id, name),
        })
    }

    /// A key from its raw secret (hashed at once; the secret is not kept). For tests and
    /// programmatic setups; config should hold hashes.
    pub fn from_secret(name: impl Into<Arc<str>>, secret: &Secret) -> Self {
        let hash: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
        let key_id: Arc<str> = Arc::from(&hex(&hash)[..12]);
        KeyEntry {
            hash,
            identity: KeyIdentity::new(key_id, name),
        }
    }

    /// Override the key id (e.g. a configured, stable name).
    pub fn key_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.identity.key_id = id.into();
        self
    }
    /// Set the tenant.
    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.identity = self.identity.with_tenant(tenant);
        self
    }
    /// Set the allowed model globs (default `["*"]`).
    pub fn models<I, M>(mut self, globs: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<Arc<str>>,
    {
        self.identity = self.identity.with_models(globs);
        self
    }
    /// Set the key's own limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.identity = self.identity.with_limits(limits);
        self
    }
    /// Set the key's cost threshold.
    pub fn max_price(mut self, max_price: MaxPrice) -> Self {
        self.identity = self.identity.with_max_price(max_price);
        self
    }
    /// The identity this key grants.
    pub fn identity(&self) -> &KeyIdentity {
        &self.identity
    }
}

/// The config-backed validator: keys stored as SHA-256 hashes.
///
/// Lookup: the presented key is hashed; entries are bucketed by the first 8 bytes of their
/// hash, and the full 32-byte digests in the bucket are compared with
/// [`subtle::ConstantTimeEq`]. Timing can reveal at most whether the first 8 bytes of the
/// SHA-256 of a guess match a stored digest, which tells an attacker nothing usable about any
/// key.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys {
    buckets: Arc<HashMap<u64, Vec<KeyEntry>>>,
}

impl StaticKeys {
    /// An empty set (every key unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Build from entries. Fails when two entries share a hash or a key id.
    pub fn from_entries(entries: impl IntoIterator<Item = KeyEntry>) -> Result<Self, GatewayError> {
        let mut keys = StaticKeys::new();
        for e in entries {
            keys = keys.with(e)?;
        }
        Ok(keys)
    }

    /// Add one entry. Fails when its hash or key id is already present.
    pub fn with(mut self, entry: KeyEntry) -> Result<Self, GatewayError> {
        let dup = self.buckets.values().flatten().find(|e| {
            bool::from(e.hash.ct_eq(&entry.hash)) || e.identity.key_id == entry.identity.key_id
        });
        if let Some(d) = dup {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                format!(
                    "keys '{}' and '{}' share a hash or a key id",
                    d.identity.name, entry.identity.name
                ),
            ));
        }
        let map = Arc::make_mut(&mut self.buckets);
        map.entry(bucket(&entry.hash)).or_default().push(entry);
        Ok(self)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Synchronous lookup (what [`KeyValidator::validate`] does).
    pub fn lookup(&self, key: &Secret) -> Option<KeyIdentity> {
        let digest: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
        let entries = self.buckets.get(&bucket(&digest))?;
        let mut found: Option<&KeyEntry> = None;
        for e in entries {
            if bool::from(e.hash.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found.map(|e| e.identity.clone())
    }
}

fn bucket(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

impl KeyValidator for StaticKeys {
    fn validate(&self, key: Secret) -> ValidateFuture {
        let found = self.lookup(&key);
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// Glob match: `*` matches any run of characters (also none), `?` exactly one; everything else
/// literally. Iterative, no backtracking blow-up.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("gpt-4o*", "gpt-4o"));
        assert!(!glob_match("gpt-4o*", "gpt-4"));
        assert!(glob_match("claude-*-sonnet", "claude-3-5-sonnet"));
        assert!(!glob_match("claude-*-sonnet", "claude-3-5-haiku"));
        assert!(glob_match("m?", "m1"));
        assert!(!glob_match("m?", "m12"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            unhex(&hash_key("abc")).map(|h| hex(&h)),
            Some(hash_key("abc"))
        );
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn static_keys_lookup() {
        let keys = StaticKeys::from_entries([
            KeyEntry::from_hash("team-a", &hash_key("sk-a"))
                .unwrap()
                .tenant("acme")
                .models(["gpt-*"]),
            KeyEntry::from_secret("team-b", &Secret::new("sk-b")).key_id("b"),
        ])
        .unwrap();
        assert_eq!(keys.len(), 2);
        let a = keys.lookup(&Secret::new("sk-a")).unwrap();
        assert_eq!(&*a.name, "team-a");
        assert_eq!(a.tenant.as_deref(), Some("acme"));
        assert_eq!(&*a.key_id, &hash_key("sk-a")[..12]);
        assert!(a.allows_model("gpt-4o") && !a.allows_model("claude"));
        assert_eq!(&*keys.lookup(&Secret::new("sk-b")).unwrap().key_id, "b");
        assert!(keys.lookup(&Secret::new("sk-c")).is_none());
        let dup = keys.with(KeyEntry::from_secret("again", &Secret::new("sk-a")));
        assert!(dup.is_err());
        assert!(KeyEntry::from_hash("bad", "1234").is_err());
    }
}
