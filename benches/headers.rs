//! The header policy on the hot path (`tollgate::provider::headers`): what one request costs.
//!
//! - `forward`: the client headers the official openai Python SDK sends (12, with its
//!   credential and an organisation) → the upstream request's allowed ones;
//! - `filter_response`: the 14 headers OpenAI answers a chat completion with → the allow-list,
//!   the request id renamed (the map is rebuilt from a clone per iteration; `clone_only` is that
//!   clone alone, to subtract).
//!
//! Run with `cargo bench --bench headers`.

use divan::{Bencher, black_box};
use http::{HeaderMap, HeaderValue};
use tollgate::provider::headers::HeaderPolicy;

fn main() {
    divan::main();
}

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn client() -> HeaderMap {
    map(&[
        ("host", "127.0.0.1:8080"),
        ("authorization", "Bearer sk-client"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 3.57.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "3.57.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-retry-count", "0"),
        ("openai-organization", "org-client"),
        ("x-request-id", "0193f0c2-5b7e-7c4e-9a57-1d2c3b4a5f60"),
        ("content-length", "120"),
    ])
}

fn upstream() -> HeaderMap {
    map(&[
        ("date", "Tue, 01 Dec 2026 12:00:00 GMT"),
        ("content-type", "application/json"),
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
        ("openai-organization", "org-operator"),
        ("openai-processing-ms", "412"),
        ("openai-version", "2020-10-01"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-request-id", "req_abc123"),
        ("set-cookie", "__cf_bm=abc; path=/; HttpOnly"),
        ("server", "cloudflare"),
        ("cf-ray", "8f1e2d3c4b5a6978-AMS"),
    ])
}

#[divan::bench]
fn forward(b: Bencher) {
    let policy = HeaderPolicy::default();
    let client = client();
    b.bench_local(|| {
        let mut out = HeaderMap::with_capacity(8);
        policy.copy_forwarded(black_box(&client), &mut out);
        out
    });
}

#[divan::bench]
fn filter_response(b: Bencher) {
    let policy = HeaderPolicy::default();
    let up = upstream();
    b.bench_local(|| {
        let mut h = black_box(&up).clone();
        policy.filter_response(&mut h);
        h
    });
}

#[divan::bench]
fn clone_only(b: Bencher) {
    let up = upstream();
    b.bench_local(|| black_box(&up).clone());
}
