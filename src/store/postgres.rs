//! [`PostgresResponseStore`] (feature `postgres`): responses shared by every replica through
//! one PostgreSQL table.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio_postgres::{Client, NoTls};

use super::{ResponseStore, ResponseStoreError, StoreFuture, StoredResponse};

/// Every this many puts, one bounded purge of expired rows.
const PURGE_EVERY: u64 = 64;
/// Most expired rows one purge deletes.
const PURGE_BATCH: u32 = 1_000;

/// Configuration of a [`PostgresResponseStore`].
#[derive(Debug, Clone)]
pub struct PostgresStoreConfig {
    /// Connection string or URL (never logged).
    pub url: String,
    /// Schema of the table (created if missing); default: the connection's (`public`).
    pub schema: Option<String>,
    /// Table name (default `tollgate_responses`), created if missing.
    pub table: String,
    /// Longest wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Longest wait for one operation once connected (default 5 s).
    pub query_timeout: Duration,
}

impl PostgresStoreConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresStoreConfig {
            url: url.into(),
            schema: None,
            table: "tollgate_responses".to_owned(),
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        }
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

    fn check(&self) -> Result<(), ResponseStoreError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !ok(&self.table) || self.schema.as_deref().is_some_and(|s| !ok(s)) {
            return Err(ResponseStoreError(
                "schema and table names are 1-63 ASCII letters, digits or `_`".into(),
            ));
        }
        Ok(())
    }

    fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}\"", self.table),
            None => format!("\"{}\"", self.table),
        }
    }
}

/// Responses in a PostgreSQL table, shared by every replica (feature `postgres`).
///
/// The table (created if missing) has one row per response, primary key `(owner, id)`, and
/// an `expires_at` column set from the database's clock at `put`. A read or delete ignores
/// expired rows; every 64th put deletes up to 1 000 expired rows (and
/// [`purge_expired`](Self::purge_expired) does on demand). Another owner's lookup matches no
/// row.
///
/// Connects lazily and reconnects after the connection breaks; an unreachable database is a
/// [`ResponseStoreError`] within the connect timeout, never a silent miss.
pub struct PostgresResponseStore {
    cfg: PostgresStoreConfig,
    table: String,
    client: ArcSwapOption<Client>,
    connecting: tokio::sync::Mutex<()>,
    puts: AtomicU64,
}

impl std::fmt::Debug for PostgresResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresResponseStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn db_err(e: &tokio_postgres::Error) -> ResponseStoreError {
    // A database error's text names no credential (the URL is not in it); keep its code.
    match e.code() {
        Some(c) => ResponseStoreError(format!("postgres: {}", c.code())),
        None if e.is_closed() => ResponseStoreError("postgres: connection closed".into()),
        None => ResponseStoreError("postgres: connection failed".into()),
    }
}

impl PostgresResponseStore {
    /// A store for `cfg`; does not connect yet (see [`connect`](Self::connect)). Fails only
    /// on a bad schema or table name.
    pub fn new(cfg: PostgresStoreConfig) -> Result<Self, ResponseStoreError> {
        cfg.check()?;
        Ok(PostgresResponseStore {
            table: cfg.qualified(),
            cfg,
            client: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            puts: AtomicU64::new(0),
        })
    }

    /// Connect now and create the table if it is missing.
    pub async fn connect(&self) -> Result<(), ResponseStoreError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<Arc<Client>, ResponseStoreError> {
        if let Some(c) = self.client.load_full().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.client.load_full().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let t = self.cfg.connect_timeout;
        let (client, conn) = tokio::time::timeout(t, tokio_postgres::connect(&self.cfg.url, NoTls))
            .await
            .map_err(|_| ResponseStoreError("postgres: connect timed out".into()))?
            .map_err(|e| db_err(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %db_err(&e), "postgres response store: connection ended");
            }
        });
        tokio::time::timeout(t, self.migrate(&client))
            .await
            .map_err(|_| ResponseStoreError("postgres: migration timed out".into()))??;
        let client = Arc::new(client);
        self.client.store(Some(client.clone()));
        Ok(client)
    }

    async fn migrate(&self, client: &Client) -> Result<(), ResponseStoreError> {
        let mut sql = String::from("SELECT pg_advisory_xact_lock(7406316840);");
        if let Some(s) = &self.cfg.schema {
            sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{s}\";"));
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                owner TEXT NOT NULL,
                id TEXT NOT NULL,
                model TEXT NOT NULL,
                target TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL,
                response BYTEA NOT NULL,
                conversation BYTEA NOT NULL,
                PRIMARY KEY (owner, id));
             CREATE INDEX IF NOT EXISTS \"{n}_expires_at\" ON {t} (expires_at);",
            t = self.table,
            n = self.cfg.table,
        ));
        // One transaction: the advisory lock keeps replicas starting together from racing.
        client
            .batch_execute(&format!("BEGIN;{sql}COMMIT;"))
            .await
            .map_err(|e| db_err(&e))
    }

    /// `op`, failed once the connect and query timeouts have passed.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, ResponseStoreError>>,
    ) -> Result<T, ResponseStoreError> {
        let limit = self.cfg.connect_timeout + self.cfg.query_timeout;
        tokio::time::timeout(limit, op)
            .await
            .map_err(|_| ResponseStoreError("postgres: timed out".into()))?
    }

    /// Delete up to 1 000 expired rows; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, ResponseStoreError> {
        let client = self.client().await?;
        let t = &self.table;
        let sql = format!(
            "DELETE FROM {t} WHERE ctid IN \
             (SELECT ctid FROM {t} WHERE expires_at <= now() LIMIT {PURGE_BATCH})"
        );
        client.execute(&sql, &[]).await.map_err(|e| db_err(&e))
    }

    async fn put_async(
        &self,
        owner: &str,
        r: StoredResponse,
        ttl: Duration,
    ) -> Result<(), ResponseStoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} (owner, id, model, target, created_at, expires_at, response, \
             conversation) VALUES ($1, $2, $3, $4, $5, now() + $6::float8 * interval \
             '1 millisecond', $7, $8) ON CONFLICT (owner, id) DO UPDATE SET model = \
             EXCLUDED.model, target = EXCLUDED.target, created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at, response = EXCLUDED.response, conversation = \
             EXCLUDED.conversation",
            self.table
        );
        let created = i64::try_from(r.created_at).unwrap_or(i64::MAX);
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        client
            .execute(
                &sql,
                &[
                    &owner,
                    &r.id,
                    &r.model,
                    &r.target,
                    &created,
                    &ttl_ms,
                    &r.response.as_ref(),
                    &r.conversation.as_ref(),
                ],
            )
            .await
            .map_err(|e| db_err(&e))?;
        if self.puts.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
            if let Err(e) = self.purge_expired().await {
                tracing::debug!(error = %e, "postgres response store: purge failed");
            }
        }
        Ok(())
    }

    async fn get_async(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<StoredResponse>, ResponseStoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT id, model, target, created_at, response, conversation FROM {} \
             WHERE owner = $1 AND id = $2 AND expires_at > now()",
            self.table
        );
        let row = client
            .query_opt(&sql, &[&owner, &id])
            .await
            .map_err(|e| db_err(&e))?;
        Ok(row.map(|row| StoredResponse {
            id: row.get(0),
            model: row.get(1),
            target: row.get(2),
            created_at: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
            response: Bytes::from(row.get::<_, Vec<u8>>(4)),
            conversation: Bytes::from(row.get::<_, Vec<u8>>(5)),
        }))
    }

    async fn delete_async(&self, owner: &str, id: &str) -> Result<bool, ResponseStoreError> {
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM {} WHERE owner = $1 AND id = $2 RETURNING expires_at > now()",
            self.table
        );
        let rows = client
            .query(&sql, &[&owner, &id])
            .await
            .map_err(|e| db_err(&e))?;
        Ok(rows.iter().any(|r| r.get::<_, bool>(0)))
    }
}

impl ResponseStore for PostgresResponseStore {
    fn put<'a>(
        &'a self,
        owner: &'a str,
        record: StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.bounded(self.put_async(owner, record, ttl)))
    }

    fn get<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredResponse>> {
        Box::pin(self.bounded(self.get_async(owner, id)))
    }

    fn delete<'a>(&'a self, owner: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(self.bounded(self.delete_async(owner, id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests as t;

    fn url() -> String {
        std::env::var("TOLLGATE_TEST_PG").unwrap_or_else(|_| {
            "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3".to_owned()
        })
    }

    /// A store on its own fresh schema, or `None` (skip) when PostgreSQL is unreachable and
    /// `TOLLGATE_REQUIRE_POSTGRES` is unset.
    async fn store() -> Option<PostgresResponseStore> {
        let schema = format!("tollgate_rs_{}", &crate::store::new_response_id()[5..21]);
        let s = PostgresResponseStore::new(PostgresStoreConfig::new(url()).schema(schema)).ok()?;
        match s.connect().await {
            Ok(()) => Some(s),
            Err(e) if std::env::var_os("TOLLGATE_REQUIRE_POSTGRES").is_some() => {
                panic!("TOLLGATE_REQUIRE_POSTGRES is set but postgres is not reachable: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: postgres not reachable: {e}");
                None
            }
        }
    }

    async fn drop_schema(s: &PostgresResponseStore) {
        let c = s.client().await.unwrap();
        let schema = s.cfg.schema.as_deref().unwrap();
        c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_owner_isolation() {
        let Some(s) = store().await else { return };
        t::owner_isolation(&s).await;
        drop_schema(&s).await;
    }

    #[tokio::test]
    async fn postgres_ttl_expiry_and_purge() {
        let Some(s) = store().await else { return };
        t::ttl_expiry(&s).await;
        // ttl_expiry's expired row went with its delete; one more expires unread: it stays
        // until purged, and the live one stays after.
        s.put("k", t::record("m"), Duration::from_millis(100))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let c = s.client().await.unwrap();
        let count = |c: Arc<Client>, t: String| async move {
            let row = c
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        };
        assert_eq!(count(c.clone(), s.table.clone()).await, 2);
        assert_eq!(s.purge_expired().await.unwrap(), 1);
        assert_eq!(count(c, s.table.clone()).await, 1);
        drop_schema(&s).await;
    }

    #[tokio::test]
    async fn postgres_overwrite() {
        let Some(s) = store().await else { return };
        t::overwrite(&s).await;
        drop_schema(&s).await;
    }

    #[tokio::test]
    async fn postgres_unreachable_is_an_error_and_names_no_secret() {
        let s = PostgresResponseStore::new(PostgresStoreConfig {
            connect_timeout: Duration::from_millis(500),
            ..PostgresStoreConfig::new("host=127.0.0.1 port=1 user=u password=hunter2 dbname=x")
        })
        .unwrap();
        let e = s.get("k", "resp_1").await.unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_table_names_are_refused() {
        assert!(PostgresResponseStore::new(PostgresStoreConfig::new("x").table("a;b")).is_err());
        assert!(PostgresResponseStore::new(PostgresStoreConfig::new("x").schema("s\"x")).is_err());
    }
}
