//! [`RedisStore`]: counters shared by every replica in one redis-server (feature `redis`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rand::{RngCore, SeedableRng};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::{
    Decision, ReserveRequest, Settlement, StoreError, StoreFuture, Ticket, View, decide,
};
use super::{LimitKind, LimitStore};

const RESERVE_LUA: &str = r"
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local member = ARGV[3]
local n = #KEYS
local used = {}
local fail = 0
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local u
  if ARGV[b + 1] == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    u = redis.call('ZCARD', KEYS[i])
  else
    u = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  used[i] = u
  if fail == 0 and u + tonumber(ARGV[b + 3]) > tonumber(ARGV[b + 2]) then
    fail = i
  end
end
if fail == 0 then
  for i = 1, n do
    local b = 3 + (i - 1) * 4
    if ARGV[b + 1] == 'c' then
      redis.call('ZADD', KEYS[i], now + lease, member)
      redis.call('PEXPIRE', KEYS[i], lease)
    else
      redis.call('INCRBY', KEYS[i], ARGV[b + 3])
      redis.call('PEXPIREAT', KEYS[i], ARGV[b + 4])
    end
  end
end
local out = {fail}
for i = 1, n do out[i + 1] = used[i] end
return out
";

const SETTLE_LUA: &str = r"
for i = 1, #KEYS do
  local kind = ARGV[2 * i - 1]
  local v = ARGV[2 * i]
  if kind == 'c' then
    redis.call('ZREM', KEYS[i], v)
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], v)
  end
end
return 0
";

/// Configuration of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (credentials in the URL are never logged).
    pub url: String,
    /// Key prefix (put in a `{hash tag}`); give each gateway fleet its own.
    pub prefix: String,
    /// How long a concurrency lease lives if its replica never releases it.
    pub lease: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one command.
    pub response_timeout: Duration,
    /// After a failure, fail fast for this long before trying the server again.
    pub retry_interval: Duration,
}

impl RedisConfig {
    /// Defaults for `url`: prefix `tollgate`, 15 min leases, 250 ms connect, 500 ms response,
    /// 500 ms retry interval.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "tollgate".to_owned(),
            lease: Duration::from_secs(900),
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(500),
            retry_interval: Duration::from_millis(500),
        }
    }
    /// Set the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Set the concurrency lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Set the connect and response timeouts.
    pub fn timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }
    /// Set the fail-fast interval after a failure.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = d;
        self
    }
}

struct Inner {
    client: redis::Client,
    cfg: RedisConfig,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
    down_until_ms: AtomicU64,
    down: AtomicBool,
    reserve: redis::Script,
    settle: redis::Script,
    instance: u64,
    leases: AtomicU64,
}

/// Limits shared by every replica through one redis-server (feature `redis`).
///
/// # Key schema
///
/// Every key starts with the configured prefix in a hash tag, so all of them live in one
/// cluster slot and one script may touch them all:
///
/// | key | type | what |
/// |---|---|---|
/// | `{P}:r:<scope>:<minute>` | string (int) | requests in the UTC minute `<minute>` (minutes since the epoch) |
/// | `{P}:t:<scope>:<minute>` | string (int) | tokens reserved/settled in that minute |
/// | `{P}:d:<scope>:<day>` | string (int) | pico-USD spent on the UTC day (days since the epoch) |
/// | `{P}:m:<scope>:<month>` | string (int) | pico-USD spent in the UTC month (`year * 12 + month - 1`) |
/// | `{P}:c:<scope>` | sorted set | in-flight leases: member = lease id, score = lease expiry (Unix ms) |
///
/// `<scope>` is `g` (global), `k:<key_id>` or `m:<model>`. Window keys expire one minute after
/// their window ends. A concurrency lease expires after [`RedisConfig::lease`] even if its
/// replica died before releasing it.
///
/// # Round trips
///
/// Check-and-reserve is **one** `EVALSHA` of a Lua script over every applicable counter: it
/// reads them all, and increments them all only if every one fits — atomically, so N replicas
/// admit exactly the limit. Settling is one `EVALSHA` too (`INCRBY` of the signed difference on
/// the counters that still exist, `ZREM` of the lease); a settle with nothing to change costs
/// nothing. Window ids come from the caller's clock: replicas need synchronised clocks (NTP)
/// for their window boundaries to agree; counts inside a window are exact regardless. Budget
/// comparisons run on Lua numbers (doubles): exact up to 2^53 pico-USD (about $9,007) per
/// window, and within a few pico-USD beyond (the `INCRBY` itself is exact).
///
/// # Failure
///
/// The store connects lazily. When an operation fails it returns [`StoreError`] at once for
/// [`RedisConfig::retry_interval`] (no request waits on a dead server), then tries again; the
/// layer's [`FailurePolicy`](super::FailurePolicy) decides what a failure means.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// A store for `cfg`. Does not connect yet (a server that is down at start is handled like
    /// one that goes down later); fails only on a malformed URL.
    pub fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| StoreError(format!("bad redis url: {}", e.category())))?;
        let instance = rand::rngs::StdRng::from_os_rng().next_u64();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                cfg,
                conn: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                down_until_ms: AtomicU64::new(0),
                down: AtomicBool::new(false),
                reserve: redis::Script::new(RESERVE_LUA),
                settle: redis::Script::new(SETTLE_LUA),
                instance,
                leases: AtomicU64::new(0),
            }),
        })
    }

    /// Connect now (and load the scripts), instead of on the first request.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let mut con = self.inner.connection().await?;
        self.inner
            .reserve
            .prepare_invoke()
            .load_async(&mut con)
            .await
            .map_err(err)?;
        self.inner
            .settle
            .prepare_invoke()
            .load_async(&mut con)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// The Redis key of `kind` for `scope` in `windows` (see the key schema).
    pub fn key(&self, scope: &super::Scope, kind: LimitKind, windows: &super::Windows) -> String {
        self.inner.key(scope, kind, windows)
    }

    /// Check-and-reserve, async.
    pub async fn reserve_async(&self, req: ReserveRequest) -> Result<Decision, StoreError> {
        self.inner.clone().reserve(req).await
    }

    /// Settle, async.
    pub async fn settle_async(
        &self,
        ticket: Ticket,
        actual: Option<Settlement>,
    ) -> Result<(), StoreError> {
        self.inner.clone().settle(ticket, actual).await
    }
}

impl Inner {
    fn key(&self, scope: &super::Scope, kind: LimitKind, w: &super::Windows) -> String {
        let p = &self.cfg.prefix;
        let s = scope.key_part();
        match kind {
            LimitKind::Concurrency => format!("{{{p}}}:c:{s}"),
            k => format!("{{{p}}}:{}:{s}:{}", k.tag(), w.id(k)),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        // One connection attempt at a time; the others wait for it (bounded by the timeouts).
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.cfg.connect_timeout)
            .set_response_timeout(self.cfg.response_timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let con = ConnectionManager::new_with_config(self.client.clone(), cfg)
            .await
            .map_err(err)?;
        self.conn.store(Some(Arc::new(con.clone())));
        Ok(con)
    }

    /// Run `op` unless the server is known down; track up/down transitions.
    async fn guarded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let now = now_ms();
        if now < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(StoreError("redis marked down; retrying shortly".into()));
        }
        let limit = self.cfg.connect_timeout + self.cfg.response_timeout * 2;
        let res = match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_) => Err(StoreError("redis timed out".into())),
        };
        match &res {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis limit store reachable again");
                }
            }
            Err(e) => {
                let retry = u64::try_from(self.cfg.retry_interval.as_millis()).unwrap_or(u64::MAX);
                self.down_until_ms
                    .store(now_ms().saturating_add(retry), Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis limit store unreachable");
                }
            }
        }
        res
    }

    async fn reserve(self: Arc<Self>, req: ReserveRequest) -> Result<Decision, StoreError> {
        let w = super::Windows::at(req.now_ms);
        let lease_id = self.leases.fetch_add(1, Ordering::Relaxed);
        let member = format!("{:016x}-{lease_id:x}", self.instance);
        let lease_ms = u64::try_from(self.cfg.lease.as_millis()).unwrap_or(u64::MAX);
        let mut views: Vec<View> = Vec::with_capacity(8);
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(req.now_ms).arg(lease_ms).arg(&member);
        for (i, kind, limit) in req.checks() {
            let amount = req.amount(kind);
            inv.key(self.key(&req.scopes[i].0, kind, &w));
            let expire = w.end_ms(kind).saturating_add(60_000);
            inv.arg(if kind == LimitKind::Concurrency {
                "c"
            } else {
                "w"
            })
            .arg(limit)
            .arg(amount)
            .arg(expire);
            views.push(View {
                scope: i,
                kind,
                limit,
                used: 0,
                amount,
            });
        }
        let reply: Vec<i64> = self
            .guarded(async {
                let mut con = self.connection().await?;
                inv.invoke_async(&mut con).await.map_err(err)
            })
            .await?;
        if reply.len() != views.len() + 1 {
            return Err(StoreError(
                "unexpected reply from the reserve script".into(),
            ));
        }
        for (v, u) in views.iter_mut().zip(&reply[1..]) {
            v.used = u64::try_from(*u).unwrap_or(0);
        }
        // The script refused exactly when some counter did not fit; `decide` sees the same.
        let fail = usize::try_from(reply[0]).unwrap_or(0);
        if fail == 0 && views.iter().any(|v| !v.fits()) {
            return Err(StoreError("reserve script and client disagree".into()));
        }
        Ok(decide(req, &views, lease_id))
    }

    async fn settle(
        self: Arc<Self>,
        ticket: Ticket,
        actual: Option<Settlement>,
    ) -> Result<(), StoreError> {
        let mut inv = self.settle.prepare_invoke();
        let mut n = 0usize;
        let member = format!("{:016x}-{:x}", self.instance, ticket.lease);
        let delta = |reserved: u64, actual: u64| -> i64 {
            i64::try_from(i128::from(actual) - i128::from(reserved)).unwrap_or(0)
        };
        for (scope, limits) in &ticket.scopes {
            if limits.concurrent_requests.is_some() {
                inv.key(self.key(scope, LimitKind::Concurrency, &ticket.windows));
                inv.arg("c").arg(&member);
                n += 1;
            }
            let Some(a) = actual else { continue };
            for (kind, d) in [
                (LimitKind::Tokens, delta(ticket.tokens, a.tokens)),
                (LimitKind::BudgetDay, delta(ticket.cost_pico, a.cost_pico)),
                (LimitKind::BudgetMonth, delta(ticket.cost_pico, a.cost_pico)),
            ] {
                if d != 0 && limits.get(kind).is_some() {
                    inv.key(self.key(scope, kind, &ticket.windows));
                    inv.arg("w").arg(d);
                    n += 1;
                }
            }
        }
        if n == 0 {
            return Ok(());
        }
        self.guarded(async {
            let mut con = self.connection().await?;
            inv.invoke_async::<i64>(&mut con).await.map_err(err)
        })
        .await
        .map(|_| ())
    }
}

impl LimitStore for RedisStore {
    fn reserve(&self, req: ReserveRequest) -> StoreFuture<Result<Decision, StoreError>> {
        StoreFuture::boxed(self.inner.clone().reserve(req))
    }

    fn settle(
        &self,
        ticket: Ticket,
        actual: Option<Settlement>,
    ) -> StoreFuture<Result<(), StoreError>> {
        StoreFuture::boxed(self.inner.clone().settle(ticket, actual))
    }
}
