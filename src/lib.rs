//! # tollgate
//!
//! Composable [Tower](https://docs.rs/tower) layers for LLM gateways: one OpenAI-compatible
//! endpoint in front of many providers, with explicit routing and fallback, true error codes,
//! exact usage and cost, and limits that hold. [`gateway`] (cargo feature `gateway`, on by
//! default) assembles them from a config file, with hot reload; the reference binary in
//! `examples/gateway` serves it. You can stack the layers in your own hyper or axum service
//! (`default-features = false` leaves the layers only).
//!
//! ## The stack (request flow, outside in)
//!
//! ```text
//! edge:   CatchPanic · request-id · Trace · ErrorResponse   GatewayError -> OpenAI-shaped JSON
//!         [KeyCheck]         optional: the key from the headers, before a byte of the body
//!         [BodyBudget]       optional: one budget of buffered request-body bytes (503 when spent)
//!         Parse              Incoming -> Request<Full<Bytes>> (capped) + ParsedRequest
//!         UsageMeter         pure observer: one UsageRecord per request, every outcome
//!         Auth               virtual key -> KeyIdentity (tenant, allowed models, limits)
//!         RateLimit          RPM / TPM / concurrency / budget: reserve, then settle in its body
//!         StreamPassthrough  SSE hygiene, include_usage injection and stripping, in-band errors;
//!                            reports the usage (UsageReport)
//!         Route              model name -> RouteDecision (alias, pin, split, tier, rules)
//!         Fallback           tries targets in order until the commit point; attempts header
//!         Timeout            per attempt: connect, first token, idle gap, total
//! leaf:   Dispatch           Attempt -> Provider (OpenAI-compatible, Anthropic, Gemini, Bedrock, mock)
//! ```
//!
//! Ordering rules:
//! - **Parse** buffers the request once, so Fallback can replay it; the response body is never
//!   buffered.
//! - **UsageMeter** sits right after Parse — outside Auth and RateLimit — so that refusals get a
//!   record too. It is a pure observer: it reads the reports the inner layers send up (below)
//!   and writes exactly one record when its body ends, fails or is dropped. No layer depends on
//!   it: without it, limits still settle and sticky splits still stick.
//! - **RateLimit** owns its reservation: the permit rides in its own response body and settles
//!   exactly once, with the usage StreamPassthrough reported, when that body ends — so a
//!   60-second stream holds its concurrency slot for 60 seconds.
//! - **Auth and RateLimit** run before anything that costs money.
//! - **Fallback** sits outside Timeout, so every attempt gets its own deadlines; it is inside
//!   UsageMeter, so exactly one winning attempt is metered and the failed ones are listed.
//! - **Order is checked, fail closed.** Any two of Parse, UsageMeter, Auth, RateLimit,
//!   StreamPassthrough, Route, Fallback and Timeout in the wrong order answer every request with
//!   500 `misconfigured_stack`, naming the layers (logged once per layer), never a silent pass:
//!   each layer marks the request as it goes by and refuses it when a layer that belongs inside
//!   it has already run. A layer that needs another's request extension and does not find it
//!   refuses the same way: Auth, RateLimit, StreamPassthrough and Route need Parse outside them;
//!   RateLimit with per-key limits needs Auth; Fallback needs Route; Timeout needs Fallback.
//!   [`ErrorResponse`](error::ErrorResponse) inside any layer does not compile (see
//!   [`ErrorResponseLayer`]). `tests/misorder.rs` has a test per pair.
//! - **Deadlines by default**: [`Target::new`](target::Target::new) has
//!   [`Timeouts::RECOMMENDED`](target::Timeouts::RECOMMENDED);
//!   `with_timeouts(Timeouts::NONE)` opts out.
//! - **Readiness**: every layer is ready when its inner service is; the edge
//!   ([`ErrorResponse`](error::ErrorResponse)) answers an inner readiness failure with that
//!   error and never calls the failed service again.
//! - **The commit point** is the first byte to the client: before it any retryable failure falls
//!   back (connect error, 408/429/5xx/529, a first-token timeout, an error as the first event of
//!   a 200 stream); after it a failure ends the stream with an in-band `data: {"error":…}` event
//!   and no `[DONE]`.
//!
//! ## Contracts between layers: facts flow down, reports flow up
//!
//! No shared mutable ledger: each fact goes down once as a request extension, each report comes
//! up once, written by one layer, on the response's extensions or on the error's
//! [`context`](error::GatewayError::context) (so refusals and exhausted chains are reported
//! too). All of them in one place: [`ext`].
//!
//! | down (request extension) | written by | read by |
//! |---|---|---|
//! | [`ParsedRequest`] | Parse | everyone |
//! | [`KeyIdentity`] | Auth | RateLimit, Route (sticky key), Dispatch |
//! | [`RouteDecision`](ext::RouteDecision) | Route | Fallback |
//! | [`Attempt`] | Fallback | Timeout, Dispatch |
//!
//! | up (response extension / error context) | written by | read by |
//! |---|---|---|
//! | [`KeyIdentity`] | Auth | UsageMeter |
//! | [`Routed`](ext::Routed) (model, variant) | Route | RateLimit (price), UsageMeter |
//! | [`ServedBy`](ext::ServedBy) (target, attempts) / the attempts | Fallback | CostReport, UsageMeter |
//! | [`UsageReport`](ext::UsageReport) (filled as the body goes by) | StreamPassthrough | RateLimit (settles), UsageMeter |
//!
//! The same stack serves the Anthropic-style ingress (`/v1/messages`): Parse reads the
//! Anthropic body ([`Api::Messages`](request::Api)), and Dispatch decides per attempt — an
//! Anthropic target gets the request passed through untouched, any other target gets it
//! translated to OpenAI's format and its answer translated back (streams event by event).
//!
//! Inner layers return [`GatewayError`]; exactly one edge layer,
//! [`ErrorResponse`](error::ErrorResponse), turns it into an OpenAI-shaped response that keeps the
//! upstream's status class (an upstream 429 stays 429, with `Retry-After` — also when the gateway
//! skips a target whose upstream asked it to wait; rate limiting never ejects a target, see
//! [`health`]).
//!
//! ## Stacking the layers in your own service
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tollgate::error::ErrorResponseLayer;
//! use tollgate::fallback::FallbackLayer;
//! use tollgate::meter::UsageMeterLayer;
//! use tollgate::provider::{Dispatch, Provider, mock::MockProvider};
//! use tollgate::request::ParseLayer;
//! use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
//! use tollgate::stream::StreamPassthroughLayer;
//! use tollgate::target::Target;
//! use tollgate::timeout::TimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // One public model, two targets: the first answers 503, the second serves.
//! let mock: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
//! let table = RouteTable::builder()
//!     .model(ModelRoute::new(
//!         "my-model",
//!         vec![
//!             Target::new(mock.clone(), "status?code=503").into_arc(),
//!             Target::new(mock.clone(), "ok").into_arc(),
//!         ],
//!     ))
//!     .build()
//!     .expect("a valid table");
//!
//! let gateway = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .layer(ParseLayer::new())
//!     .layer(UsageMeterLayer::new().on_record(|r: &tollgate::usage::UsageRecord| {
//!         println!("{} tokens, {:?}", r.usage.total_tokens, r.outcome)
//!     }))
//!     .layer(StreamPassthroughLayer::new())
//!     .layer(RouteLayer::new(RouteHandle::new(table)))
//!     .layer(FallbackLayer::new())
//!     .layer(TimeoutLayer::new())
//!     .service(Dispatch::new());
//!
//! let req = http::Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"my-model","messages":[{"role":"user","content":"hi"}]}"#,
//!     )))
//!     .unwrap();
//! let res = gateway.oneshot(req).await.unwrap(); // Error = Infallible
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["x-tollgate-attempts"].to_str().unwrap().split(';').count(), 2);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert!(std::str::from_utf8(&body).unwrap().contains("Hello there!"));
//! # }
//! ```
//!
//! In axum, the same stack is a `tower::Service<Request<axum::body::Body>>` and mounts with
//! `Router::route_service("/v1/chat/completions", gateway)`.
//!
//! Your own upstream instead of tollgate's providers: give Route targets made with
//! [`Target::for_leaf`](target::Target::for_leaf) and put any
//! `tower::Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError>` in
//! place of `Dispatch`; it reads the [`Attempt`] extension to know which target
//! it serves. Your own key store: implement [`KeyValidator`] and pass it to
//! [`AuthLayer::new`](auth::AuthLayer::new). `tests/library_user.rs` does both in an axum
//! `Router`, in under 100 lines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]

// Curated re-exports: the layers and what building a stack needs, so the common case reads
// `tollgate::ParseLayer`; the modules stay reachable for the rest.
pub use auth::{AuthLayer, KeyValidator, StaticKeys};
pub use body::Body;
pub use error::{ErrorResponseLayer, GatewayError};
pub use ext::{Attempt, KeyIdentity, ParsedRequest};
pub use fallback::FallbackLayer;
#[cfg(feature = "gateway")]
pub use gateway::{Gateway, Reloader};
pub use meter::UsageMeterLayer;
pub use provider::{Dispatch, Provider};
pub use ratelimit::{Limits, RateLimitLayer};
pub use request::ParseLayer;
pub use route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
pub use stream::StreamPassthroughLayer;
pub use target::{Target, Timeouts};
pub use timeout::TimeoutLayer;
pub use usage::UsageRecord;

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod ext;
pub mod fallback;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod health;
mod jsonscan;
pub mod meter;
pub mod metrics;
pub mod money;
mod order;
pub mod pricing;
pub mod provider;
mod query;
pub mod ratelimit;
#[cfg(feature = "gateway")]
mod reqid;
pub mod request;
pub mod route;
pub mod secret;
pub mod sink;
pub mod sse;
pub mod store;
pub mod stream;
pub mod target;
pub mod timeout;
pub mod translate;
pub mod usage;
