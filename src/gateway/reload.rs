//! [`Reloader`]: apply a new config to a running gateway, every section it can, atomically.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::Shared;
use super::stack::{self, Fixed};
use crate::config::{Config, ConfigError, HealthRegistry};

/// Applies a new config to a running [`Gateway`](super::Gateway).
///
/// Applied, all at once (a request sees the old config or the new one, never a mix; requests
/// in flight finish with what they were admitted by): virtual keys (switching auth **on**
/// too), models, routes, tiers and rules, timeouts, providers, prices, limits (global, per
/// model, per key, default max tokens, store-error policy: the counters are kept, so a lowered
/// limit applies to what the window already counted), usage options (the JSON-lines file and
/// its queue: new records go to the new file; `report_cost`; `max_usage_tokens`), `[server]
/// max_body_bytes`, `max_upload_bytes`, `max_sse_event_bytes`, `max_translated_event_bytes`,
/// `max_translated_body_bytes` and `metrics` (`drain_ms` is read at start). Circuit state and
/// latency history are kept per target.
///
/// Refused, naming the field, because they need a restart: `[server] listen`, `workers`,
/// `runtime`, `admin_listen`; `[limits] store`, `redis_url`, `redis_prefix`; `[responses]`;
/// `[usage.postgres]`; switching auth off.
///
/// Refused as unsafe: an empty, binary or unparsable file (see [`Config::parse`]); auth on
/// with no keys (every request would get 401); a config that serves no model.
///
/// A refused reload changes nothing: the old config stays.
pub struct Reloader {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// What the next reload is compared with and builds on.
struct State {
    config: Config,
    health: HealthRegistry,
    fixed: Fixed,
}

impl Reloader {
    pub(super) fn new(
        shared: Arc<Shared>,
        config: Config,
        health: HealthRegistry,
        fixed: Fixed,
    ) -> Self {
        Reloader {
            shared,
            state: Mutex::new(State {
                config,
                health,
                fixed,
            }),
        }
    }

    /// Read, parse and apply `path`. Errors name the file, the line or field, never a value.
    pub fn reload_file(&self, path: &Path) -> Result<(), ConfigError> {
        self.reload(&Config::load(path)?)
    }

    /// Apply `cfg`, or refuse it and keep the old config.
    pub fn reload(&self, cfg: &Config) -> Result<(), ConfigError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        needs_restart(&state.config, cfg)?;
        refuse_unsafe(cfg)?;
        let mut health = state.health.clone();
        let current = self.shared.current.load_full();
        let next = stack::build(cfg, &state.fixed, &mut health, current.jsonl.as_ref())?;
        if next.models.is_empty() {
            return Err(ConfigError::field(
                file(cfg),
                "models",
                "every model's providers are switched off: the gateway would serve nothing",
            ));
        }
        drop(current);
        self.shared.current.store(Arc::new(next));
        state.health = health;
        state.config = cfg.clone();
        Ok(())
    }
}

fn file(cfg: &Config) -> &str {
    if cfg.source.is_empty() {
        "<config>"
    } else {
        &cfg.source
    }
}

/// The first field whose change needs a restart.
fn needs_restart(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let store = |c: &Config| c.limits.store.clone().unwrap_or_else(|| "memory".into());
    let changed = [
        ("server.listen", old.server.listen != new.server.listen),
        ("server.workers", old.server.workers != new.server.workers),
        ("server.runtime", old.server.runtime != new.server.runtime),
        (
            "server.admin_listen",
            old.server.admin_listen != new.server.admin_listen,
        ),
        ("limits.store", store(old) != store(new)),
        (
            "limits.redis_url",
            old.limits.redis_url != new.limits.redis_url,
        ),
        (
            "limits.redis_prefix",
            old.limits.redis_prefix != new.limits.redis_prefix,
        ),
        ("usage.postgres", old.usage.postgres != new.usage.postgres),
        ("responses", old.responses != new.responses),
    ];
    if let Some((field, _)) = changed.iter().find(|(_, c)| *c) {
        return Err(ConfigError::field(
            file(new),
            field,
            "changed, and that needs a restart; the reload is refused and the old config stays",
        ));
    }
    if old.auth.enabled != Some(false) && new.auth.enabled == Some(false) {
        return Err(ConfigError::field(
            file(new),
            "auth.enabled",
            "switching auth off needs a restart; the reload is refused and the old config stays",
        ));
    }
    Ok(())
}

/// A config that would take the gateway down.
fn refuse_unsafe(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.auth.enabled != Some(false) && cfg.auth.keys.is_empty() {
        return Err(ConfigError::field(
            file(cfg),
            "auth.keys",
            "auth is on and there are no keys: every request would get 401; the reload is refused",
        ));
    }
    if cfg.models.is_empty() {
        return Err(ConfigError::field(
            file(cfg),
            "models",
            "no model: the gateway would serve nothing; the reload is refused",
        ));
    }
    Ok(())
}
