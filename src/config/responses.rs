//! `[responses]` -> the [`ResponseStoreHandle`] the gateway serves the Responses API from.

use std::sync::Arc;
use std::time::Duration;

use super::{Config, ConfigError};
use crate::store::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_TTL, MemoryResponseStore, ResponseStore,
    ResponseStoreHandle,
};

/// The response store `[responses]` names (`memory` by default), with its TTL. Does not
/// connect: a networked store connects on first use.
pub fn response_store(cfg: &Config) -> Result<ResponseStoreHandle, ConfigError> {
    let r = &cfg.responses;
    let file = cfg.source.as_str();
    let ttl = match r.ttl_secs {
        None => DEFAULT_TTL,
        Some(0) => {
            return Err(ConfigError::field(
                file,
                "responses.ttl_secs",
                "must be at least 1",
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    let store: Arc<dyn ResponseStore> = match r.store.as_deref() {
        None | Some("memory") => Arc::new(
            MemoryResponseStore::new(r.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES))
                .max_bytes(r.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)),
        ),
        Some("redis") => redis_store(cfg)?,
        Some("postgres") => postgres_store(cfg)?,
        Some(other) => {
            return Err(ConfigError::field(
                file,
                "responses.store",
                format!("unknown store `{other}`; expected memory, redis or postgres"),
            ));
        }
    };
    if (r.max_entries.is_some() || r.max_bytes.is_some())
        && r.store.as_deref().is_some_and(|s| s != "memory")
    {
        tracing::warn!(
            file,
            "responses.max_entries and max_bytes apply to the memory store only"
        );
    }
    Ok(ResponseStoreHandle::new(store, ttl))
}

#[cfg(feature = "redis")]
fn redis_store(cfg: &Config) -> Result<Arc<dyn ResponseStore>, ConfigError> {
    use crate::store::{RedisResponseStore, RedisStoreConfig};
    let file = cfg.source.as_str();
    let (raw, field) = match (&cfg.responses.redis_url, &cfg.limits.redis_url) {
        (Some(u), _) => (u.as_str(), "responses.redis_url"),
        (None, Some(u)) => (u.as_str(), "limits.redis_url"),
        (None, None) => ("redis://127.0.0.1:6379", "responses.redis_url"),
    };
    let url = super::interpolate(raw, file, field)?;
    let prefix = cfg
        .responses
        .redis_prefix
        .as_ref()
        .or(cfg.limits.redis_prefix.as_ref())
        .map_or("tollgate", |p| p.as_str());
    let store = RedisResponseStore::new(RedisStoreConfig::new(url).prefix(prefix))
        .map_err(|e| ConfigError::field(file, field, e))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
fn redis_store(cfg: &Config) -> Result<Arc<dyn ResponseStore>, ConfigError> {
    Err(ConfigError::field(
        &cfg.source,
        "responses.store",
        "this build has no Redis support (cargo feature `redis`)",
    ))
}

#[cfg(feature = "postgres")]
fn postgres_store(cfg: &Config) -> Result<Arc<dyn ResponseStore>, ConfigError> {
    use crate::store::{PostgresResponseStore, PostgresStoreConfig};
    let file = cfg.source.as_str();
    let usage = cfg.usage.postgres.as_ref();
    let (raw, field) = match (&cfg.responses.postgres_url, usage) {
        (Some(u), _) => (u.as_str(), "responses.postgres_url"),
        (None, Some(pg)) => (pg.url.as_str(), "usage.postgres.url"),
        (None, None) => {
            return Err(ConfigError::field(
                file,
                "responses.postgres_url",
                "the postgres store needs a connection string (or [usage.postgres] url)",
            ));
        }
    };
    let url = super::interpolate(raw, file, field)?;
    let mut pc = PostgresStoreConfig::new(url);
    if let Some(t) = &cfg.responses.postgres_table {
        pc = pc.table(t.as_str());
    }
    let store = PostgresResponseStore::new(pc)
        .map_err(|e| ConfigError::field(file, "responses.postgres_table", e))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
fn postgres_store(cfg: &Config) -> Result<Arc<dyn ResponseStore>, ConfigError> {
    Err(ConfigError::field(
        &cfg.source,
        "responses.store",
        "this build has no PostgreSQL support (cargo feature `postgres`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        let mut c: Config = toml::from_str(toml).unwrap();
        c.source = "test.toml".into();
        c
    }

    #[test]
    fn default_is_memory_for_seven_days() {
        let h = response_store(&cfg("")).unwrap();
        assert_eq!(h.ttl(), Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = response_store(&cfg("[responses]\nstore = \"disk\"")).unwrap_err();
        assert!(e.to_string().contains("responses.store"), "{e}");
        let e = response_store(&cfg("[responses]\nttl_secs = 0")).unwrap_err();
        assert!(e.to_string().contains("responses.ttl_secs"), "{e}");
        assert!(toml::from_str::<Config>("[responses]\nttl = 3").is_err());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_needs_a_url() {
        let e = response_store(&cfg("[responses]\nstore = \"postgres\"")).unwrap_err();
        assert!(e.to_string().contains("responses.postgres_url"), "{e}");
        let c = cfg(
            "[responses]\nstore = \"postgres\"\nttl_secs = 60\n[usage.postgres]\nurl = \"host=x\"",
        );
        assert_eq!(response_store(&c).unwrap().ttl(), Duration::from_secs(60));
    }
}
