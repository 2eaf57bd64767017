//! The header policy between a client and an upstream, both ways.
//!
//! Every built-in adapter holds one [`HeaderPolicy`] (configurable per provider) and applies it
//! where it builds the upstream request and where it reads the upstream answer:
//!
//! **Client → upstream** (an allow-list, [`DEFAULT_FORWARDED`]): `x-request-id` (the gateway's
//! id, for correlation), `anthropic-beta` and `openai-beta`. A provider may forward more
//! (`forward_headers = ["x-foo"]`) and add fixed headers (`headers = { "x-foo" = "bar" }`; a
//! fixed header replaces a client's of the same name, except the list-valued `anthropic-beta` and
//! `openai-beta`, which merge). The adapter chooses `anthropic-version` itself; with
//! `forward_headers = ["anthropic-version"]` the client's version is used on the `/v1/messages`
//! pass-through (the body is in that version's format). Nothing else of the client's goes
//! upstream; in
//! particular [`NEVER_FORWARDED`] — the client's credentials (`authorization`, `x-api-key`,
//! `api-key`, `x-goog-api-key`, `proxy-authorization`), `cookie`, and `openai-organization` /
//! `openai-project`, which would bill the client's organisation with the operator's key — can not
//! even be configured to.
//!
//! **Upstream → client** (an allow-list, [`DEFAULT_EXPOSED`]): `content-type`,
//! `content-encoding`, `cache-control`, `x-accel-buffering`, `retry-after`, `retry-after-ms`,
//! `x-should-retry`, `openai-processing-ms`; the upstream's request id (`x-request-id`, or
//! Anthropic's `request-id`) becomes `x-upstream-request-id` (the client's `x-request-id` is the
//! gateway's own). A provider may expose more (`expose_headers = ["x-ratelimit-remaining-requests"]`).
//! Everything else is dropped, notably `set-cookie`, `openai-organization`, `openai-project`,
//! `openai-version`, the upstream's `x-ratelimit-*` (its limits are the operator's account, not
//! the client's key; tollgate sends its own when a key has limits), `server`, hop-by-hop headers
//! and `content-length` (re-derived from the body). The gateway's own headers (`x-request-id`,
//! `x-tollgate-*`, the SSE anti-buffering pair) are added by its layers after this filter, so an
//! upstream can not spoof them.
//!
//! **Credentials in error messages**: the policy knows the credential values the adapter sends
//! (its API key and every configured fixed header); [`HeaderPolicy::scrub`] replaces them with
//! `[redacted]` in an upstream's error before it reaches the client or a log.
//!
//! The names are parsed once, when the provider is built; per request the policy is one pass
//! over the client's few headers and one over the upstream's, comparing pre-parsed
//! [`HeaderName`]s (no parsing; one small map for the kept response headers).

use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use crate::error::GatewayError;

/// Client request headers every provider forwards upstream.
pub const DEFAULT_FORWARDED: [HeaderName; 3] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
];

/// Client request headers that never go upstream, whatever the configuration says: credentials,
/// cookies, organisation and project, and the request's own framing.
pub const NEVER_FORWARDED: [&str; 12] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "openai-organization",
    "openai-project",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Upstream response headers every provider passes to the client.
pub const DEFAULT_EXPOSED: [HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    HeaderName::from_static("x-accel-buffering"),
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
    HeaderName::from_static("x-should-retry"),
    HeaderName::from_static("openai-processing-ms"),
];

/// Upstream response headers that can not be exposed (they describe the upstream connection,
/// not the answer).
pub const NEVER_EXPOSED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "x-upstream-request-id",
];

/// Upstream response headers that carry the upstream's request id.
pub(crate) const UPSTREAM_REQUEST_ID: [HeaderName; 2] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("request-id"),
];

/// The header the upstream's request id is renamed to.
pub(crate) static X_UPSTREAM_REQUEST_ID: HeaderName =
    HeaderName::from_static("x-upstream-request-id");

/// A bad header-policy setting (names the header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderPolicyError(pub String);

/// What crosses between a client and one provider's upstream, both ways; see the module docs.
#[derive(Clone)]
pub struct HeaderPolicy {
    forwarded: Arc<[HeaderName]>,
    exposed: Arc<[HeaderName]>,
    secrets: Arc<[Box<str>]>,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy {
            forwarded: Arc::from(DEFAULT_FORWARDED.as_slice()),
            exposed: Arc::from(DEFAULT_EXPOSED.as_slice()),
            secrets: Arc::from(Vec::new()),
        }
    }
}

impl std::fmt::Debug for HeaderPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderPolicy")
            .field("forwarded", &self.forwarded)
            .field("exposed", &self.exposed)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

fn parse_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    refused: &[&str],
    why: &str,
) -> Result<Vec<HeaderName>, HeaderPolicyError> {
    let mut out = Vec::new();
    for n in names {
        let name = HeaderName::try_from(n.trim())
            .map_err(|_| HeaderPolicyError(format!("`{n}` is not a valid header name")))?;
        if refused.contains(&name.as_str()) {
            return Err(HeaderPolicyError(format!("`{name}` {why}")));
        }
        out.push(name);
    }
    Ok(out)
}

impl HeaderPolicy {
    /// Forward these client headers upstream too (besides [`DEFAULT_FORWARDED`]). Refuses the
    /// names in [`NEVER_FORWARDED`].
    pub fn forward<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, HeaderPolicyError> {
        let extra = parse_names(names, &NEVER_FORWARDED, "is never forwarded upstream")?;
        self.forwarded = self.forwarded.iter().cloned().chain(extra).collect();
        Ok(self)
    }

    /// Pass these upstream response headers to the client too (besides [`DEFAULT_EXPOSED`]).
    /// Refuses the names in [`NEVER_EXPOSED`].
    pub fn expose<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, HeaderPolicyError> {
        let extra = parse_names(names, &NEVER_EXPOSED, "can not be exposed to clients")?;
        self.exposed = self.exposed.iter().cloned().chain(extra).collect();
        Ok(self)
    }

    /// Remember the credentials the adapter sends upstream, for [`scrub`](Self::scrub): every
    /// sensitive value of `sent` (and, for `Bearer X`, `X` alone).
    pub(crate) fn with_secrets_of(mut self, sent: &HeaderMap) -> Self {
        let mut secrets: Vec<Box<str>> = self.secrets.iter().cloned().collect();
        for v in sent.values().filter(|v| v.is_sensitive()) {
            let Ok(s) = v.to_str() else { continue };
            let s = s.trim();
            if let Some(token) = s.strip_prefix("Bearer ") {
                secrets.push(token.trim().into());
            }
            secrets.push(s.into());
        }
        // Longest first, so a key is replaced before a shorter secret inside it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        self.secrets = secrets.into();
        self
    }

    /// The client headers forwarded upstream.
    pub fn forwarded(&self) -> &[HeaderName] {
        &self.forwarded
    }

    /// The upstream response headers passed to the client.
    pub fn exposed(&self) -> &[HeaderName] {
        &self.exposed
    }

    /// Copy the forwarded client headers into the upstream request's `out` (a header already
    /// in `out` is replaced; the first value of a repeated client header wins).
    pub fn copy_forwarded(&self, client: &HeaderMap, out: &mut HeaderMap) {
        for name in self.forwarded.iter() {
            if let Some(v) = client.get(name) {
                out.insert(name.clone(), v.clone());
            }
        }
    }

    /// Keep only the exposed upstream response headers, and rename the upstream's request id to
    /// `x-upstream-request-id`: one pass over the upstream's headers into a new, small map.
    pub fn filter_response(&self, headers: &mut HeaderMap) {
        // Sized by what it comes to hold (the few kept here and those the stack adds on the way
        // out), not by the allow-list: hyper keeps this map's capacity for the connection's
        // life (it parses the next request head into it), an open stream included.
        let mut kept = HeaderMap::new();
        for (name, value) in headers.iter() {
            if self.exposed.contains(name) {
                kept.append(name.clone(), value.clone());
            } else if UPSTREAM_REQUEST_ID.contains(name) {
                kept.insert(X_UPSTREAM_REQUEST_ID.clone(), value.clone());
            }
        }
        *headers = kept;
    }

    /// Replace every credential this provider sends upstream in `e` with `[redacted]`.
    pub fn scrub(&self, mut e: GatewayError) -> GatewayError {
        for s in self.secrets.iter() {
            e = e.redact(s);
        }
        e
    }
}

/// A sensitive header value (its `Debug` prints nothing of it).
pub(crate) fn sensitive(value: HeaderValue) -> HeaderValue {
    let mut v = value;
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwards_only_the_allow_list() {
        let p = HeaderPolicy::default().forward(["x-foo"]).unwrap();
        let client = map(&[
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("x-goog-api-key", "client"),
            ("openai-organization", "org-client"),
            ("openai-project", "proj"),
            ("cookie", "a=b"),
            ("anthropic-beta", "tools-2024"),
            ("openai-beta", "assistants=v2"),
            ("x-request-id", "req-1"),
            ("x-foo", "bar"),
            ("x-stainless-lang", "python"),
        ]);
        let mut out = HeaderMap::new();
        p.copy_forwarded(&client, &mut out);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["anthropic-beta", "openai-beta", "x-foo", "x-request-id"]
        );
    }

    #[test]
    fn credentials_and_organisation_can_not_be_forwarded() {
        for n in NEVER_FORWARDED {
            let e = HeaderPolicy::default().forward([n]).unwrap_err();
            assert!(e.0.contains(n), "{e}");
        }
        assert!(HeaderPolicy::default().forward(["bad name"]).is_err());
        assert!(HeaderPolicy::default().expose(["content-length"]).is_err());
    }

    #[test]
    fn response_keeps_the_allow_list_and_renames_the_request_id() {
        let p = HeaderPolicy::default()
            .expose(["x-ratelimit-limit-requests"])
            .unwrap();
        let mut h = map(&[
            ("content-type", "application/json"),
            ("set-cookie", "__cf_bm=x"),
            ("set-cookie", "_cfuvid=y"),
            ("openai-organization", "org-operator"),
            ("openai-project", "proj_operator"),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "120"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-limit-requests", "60"),
            ("server", "cloudflare"),
            ("x-request-id", "req_up"),
            ("connection", "keep-alive"),
            ("content-length", "10"),
            ("x-tollgate-attempts", "spoofed"),
            ("retry-after", "1"),
        ]);
        p.filter_response(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-type",
                "openai-processing-ms",
                "retry-after",
                "x-ratelimit-limit-requests",
                "x-upstream-request-id"
            ]
        );
        assert_eq!(h["x-upstream-request-id"], "req_up");
        let mut h = map(&[("request-id", "req_ant")]);
        p.filter_response(&mut h);
        assert_eq!(h["x-upstream-request-id"], "req_ant");
    }

    #[test]
    fn scrubs_the_credentials_it_sends() {
        let sent = {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                sensitive(HeaderValue::from_static("Bearer sk-upstream-secret-1")),
            );
            h.insert(
                "x-custom",
                sensitive(HeaderValue::from_static("custom-secret-2")),
            );
            h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
            h
        };
        let p = HeaderPolicy::default().with_secrets_of(&sent);
        let e = GatewayError::upstream_status(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided: sk-upstream-secret-1 (custom-secret-2) at 2023-06-01",
            None,
        );
        let e = p.scrub(e);
        assert_eq!(
            e.message(),
            "Incorrect API key provided: [redacted] ([redacted]) at 2023-06-01"
        );
    }
}
