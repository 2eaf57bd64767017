//! The Route layer: public model name → [`RouteDecision`] (ordered targets).
//!
//! A [`RouteTable`] maps each public model name to a [`ModelRoute`]:
//! - **ordered targets** (provider + exact upstream model), tried in order by Fallback;
//! - **aliases and pinned versions** resolve to exactly the configured model — a name that is
//!   not configured is a 404 (`model_not_found`), never a "closest match";
//! - **strategies** per model ([`Strategy`]): ordered, weighted, lowest latency (EWMA of time to
//!   first token from [`Health`](crate::health::Health)), cheapest;
//! - **weighted splits** ([`ModelRoute::split`]) for A/B tests and canaries, optionally sticky per
//!   key (`x-tollgate-sticky` header, else the id of the [`KeyIdentity`] Auth put in the
//!   request); the chosen variant is sent as `x-tollgate-variant`;
//! - **tiers** ([`ModelRoute::tier`], e.g. `tier:cheap`): the cheapest healthy target whose
//!   capabilities satisfy the request (tools, images, JSON mode, context window);
//! - **rules** ([`Rule`]) on request features (tools, images, JSON mode, stream, prompt size,
//!   an `x-tollgate-tag` header) that send a request to another model.
//!
//! **Cost thresholds** ([`MaxPrice`], in micro-USD per million tokens, the integer units of
//! [`Price`](crate::usage::Price)): a model may set one ([`ModelRoute::max_price`]), a virtual
//! key may set one ([`KeyIdentity::max_price`], read from the request extensions when Auth ran),
//! and a request may send `x-tollgate-max-price: input=3,output=15` (USD per million tokens,
//! either part optional; malformed: 400 naming the header). The effective threshold is the
//! minimum, per component, of the three — the header can only lower it, never raise it nor let
//! unpriced targets in. Route keeps only the candidates (after strategy ordering, capability
//! filtering and the client's fallback list) whose input and output prices are each within it,
//! so neither the first try nor any fallback reaches a dearer target, and a tier picks the
//! cheapest among those within it. A target without a known price is left out unless every
//! configured threshold says `allow_unpriced`. The targets left out travel in
//! [`RouteDecision::over_max_price`] and Fallback lists them in `x-tollgate-attempts` as
//! `provider/model/over_max_price/0`. When none is left the request is refused with 400
//! `no_target_within_max_price` (type `invalid_request_error`), naming the limit and the
//! cheapest candidate with its price; no upstream is called. Without any threshold this costs
//! one header lookup.
//!
//! Per-request controls, each allowed, ignored or refused by [`RoutePolicy`]:
//! the client's ordered fallback list (`"models": [...]`, appended after the model's own
//! targets), `x-tollgate-fallback: off` (exactly one attempt), and
//! `x-tollgate-timeout-ms` / `x-tollgate-first-token-timeout-ms` / `x-tollgate-idle-timeout-ms`
//! (which can only shorten the configured deadlines).
//!
//! The table lives behind a [`RouteHandle`] (`Arc<ArcSwap<RouteTable>>`): a reload stores a new
//! table; requests already routed keep theirs.
//!
//! Reads [`ParsedRequest`] (and [`KeyIdentity`], if present); writes [`RouteDecision`] down,
//! and reports [`Routed`] (model and variant) up, on the response or in the error's
//! [`context`](crate::error::GatewayError::context). A routing refusal (unknown model) reports
//! nothing.
//!
//! ```
//! use std::sync::Arc;
//! use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable, Variant};
//! use tollgate::target::Target;
//! # use tollgate::provider::{BoxFuture, Provider, UpstreamCall};
//! # struct P;
//! # impl Provider for P {
//! #     fn name(&self) -> &str { "openai" }
//! #     fn kind(&self) -> &'static str { "mock" }
//! #     fn call(&self, _: UpstreamCall) -> BoxFuture<Result<http::Response<tollgate::body::Body>, tollgate::error::GatewayError>> {
//! #         Box::pin(async { Ok(http::Response::new(tollgate::body::Body::empty())) })
//! #     }
//! # }
//! let openai: Arc<dyn Provider> = Arc::new(P);
//! let a = Target::new(openai.clone(), "gpt-4o-2024-08-06").into_arc();
//! let b = Target::new(openai.clone(), "gpt-4o-mini").into_arc();
//! let table = RouteTable::builder()
//!     .model(ModelRoute::new("gpt-4o", vec![a.clone(), b.clone()]))
//!     .alias("gpt-4o-latest", "gpt-4o")
//!     .model(
//!         ModelRoute::split(
//!             "canary",
//!             vec![Variant::new("stable", 90, vec![a.clone()]), Variant::new("new", 10, vec![b.clone()])],
//!         )
//!         .sticky(true),
//!     )
//!     .model(ModelRoute::tier("tier:cheap", vec![a, b]))
//!     .build()
//!     .expect("valid table");
//! let handle = RouteHandle::new(table);
//! let layer = RouteLayer::new(handle.clone());
//! # let _ = layer;
//! ```

use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;

use crate::auth::KeyIdentity;
use crate::body::Body;
use crate::error::GatewayError;
use crate::ext::Routed;
use crate::order::{self, Checked};
use crate::request::ParsedRequest;

mod future;
mod layer;
mod table;

pub use self::future::ResponseFuture;
pub use self::layer::RouteLayer;
pub use self::table::{
    ClientControl, Condition, DEFAULT_OUTPUT_ESTIMATE, FALLBACK_HEADER, FIRST_TOKEN_TIMEOUT_HEADER,
    IDLE_TIMEOUT_HEADER, MAX_PRICE_HEADER, ModelRoute, RouteHandle, RouteInput, RoutePolicy,
    RouteTable, RouteTableBuilder, RouteTableError, Rule, STICKY_HEADER, Strategy, TAG_HEADER,
    TIMEOUT_HEADER, VARIANT_HEADER, Variant, model_not_found, satisfies,
};
pub use crate::pricing::MaxPrice;
pub use crate::target::RouteDecision;

/// Routes each request through the current [`RouteTable`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    table: RouteHandle,
}

impl<S> Route<S> {
    /// Wrap `inner`, routing with the table behind `table`.
    pub fn new(inner: S, table: RouteHandle) -> Self {
        Route { inner, table }
    }
    /// The layer.
    pub fn layer(table: RouteHandle) -> RouteLayer {
        RouteLayer::new(table)
    }
    /// The table handle.
    pub fn table(&self) -> &RouteHandle {
        &self.table
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Full<Bytes>>> for Route<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        if let Err(e) = order::enter(req.extensions_mut(), Checked::Route) {
            return ResponseFuture::failed(e);
        }
        let decision = {
            let Some(parsed) = req.extensions().get::<ParsedRequest>() else {
                static LOGGED: AtomicBool = AtomicBool::new(false);
                return ResponseFuture::failed(GatewayError::misconfigured_stack(
                    "RouteLayer",
                    "ParseLayer",
                    "ParsedRequest",
                    &LOGGED,
                ));
            };
            let key = req.extensions().get::<KeyIdentity>();
            let key_id = key.map(|k| &*k.key_id);
            let key_max_price = key.and_then(|k| k.max_price);
            let table = self.table.load();
            let routed = table.route(
                parsed,
                table::RouteInput {
                    headers: Some(req.headers()),
                    key_id,
                    key_max_price,
                },
            );
            match routed {
                Ok(d) => d,
                Err(e) => return ResponseFuture::failed(e),
            }
        };
        let routed = Routed {
            model: decision.model.clone(),
            variant: decision.variant.clone(),
        };
        req.extensions_mut().insert(decision);
        ResponseFuture::inner(self.inner.call(req), routed)
    }
}

#[cfg(test)]
mod tests;
