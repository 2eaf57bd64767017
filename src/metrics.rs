//! Metric names, all in one place. Recorded through the [`metrics`] facade; the exporter
//! (Prometheus in the reference gateway) is the application's choice.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions where they exist (dots become
//! underscores in Prometheus). Labels are bounded: model after alias resolution, provider,
//! outcome, status class, error kind, token type — never a key, a prompt or a request id.

/// Histogram of tokens per request; label `gen_ai.token.type` = `input` | `output`.
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Histogram of request duration, seconds.
pub const OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// Histogram of time to first token (first streamed event, or the head for non-streaming), seconds.
pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
/// Histogram of time per output token after the first, seconds.
pub const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
/// Counter of finished requests; labels `outcome`, `status_class`, `model`, `provider`.
pub const REQUESTS: &str = "tollgate_requests_total";
/// Counter of cost, pico-USD; labels `model`, `provider`.
pub const COST_PICO_USD: &str = "tollgate_cost_pico_usd_total";
/// Histogram of the gateway's own time per request (excluding upstream waits), seconds.
pub const GATEWAY_OVERHEAD: &str = "tollgate_gateway_overhead_seconds";
/// Counter of fallbacks (an attempt after the first); labels `model`, `from`, `reason`.
pub const FALLBACKS: &str = "tollgate_fallbacks_total";
/// Counter of upstream attempts; labels `target`, `result`.
pub const ATTEMPTS: &str = "tollgate_upstream_attempts_total";
/// Gauge of circuit state per target (0 closed, 1 half-open, 2 open); label `target`.
pub const CIRCUIT_STATE: &str = "tollgate_circuit_state";
/// Counter of circuit-breaker ejections (a target's own failures: never 429s); label `target`.
pub const EJECTIONS: &str = "tollgate_circuit_ejections_total";
/// Counter of requests refused by a limit; labels `limit`, `scope`.
pub const LIMIT_REFUSALS: &str = "tollgate_ratelimit_refused_total";
/// Counter of limit-store failures (e.g. Redis unreachable); labels `op`, `policy`.
pub const LIMIT_STORE_ERRORS: &str = "tollgate_ratelimit_store_errors_total";
/// Counter of requests refused by Auth; label `reason`.
pub const AUTH_REFUSALS: &str = "tollgate_auth_refused_total";
/// Counter of usage records dropped by a sink (queue full, write error); label `sink`.
pub const RECORDS_DROPPED: &str = "tollgate_usage_records_dropped_total";
/// Gauge of the bytes of usage records a sink holds in its local spool file while its
/// database is away; label `sink`.
pub const SPOOL_BYTES: &str = "tollgate_usage_spool_bytes";
/// Counter of upstream access-token fetches (Entra ID, service accounts); labels `provider`,
/// `outcome` = `ok` | `refused` | `unavailable`.
pub const UPSTREAM_TOKEN_FETCHES: &str = "tollgate_upstream_token_fetches_total";

/// `2xx`, `4xx`, `5xx` (bounded label for a status code).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
