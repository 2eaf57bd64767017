//! The operational endpoints: health, `/v1/models` per key, `/metrics`, and the admin service.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{Ready, ready};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tower::Service;

use super::stack::Stack;
use super::{MetricsRender, Shared};
use crate::auth::KeyIdentity;
use crate::body::Body;
use crate::config::ModelInfo;
use crate::error::{ErrorKind, GatewayError};
use crate::store::ResponseStoreHandle;
use crate::store::items::ItemsQuery;

const CREATED: u64 = 1_767_225_600; // 2026-01-01

/// The answer of an operational endpoint on the main listener, or `None` for the LLM stack.
pub(super) fn main_endpoint<B>(
    stack: &Stack,
    metrics: Option<&MetricsRender>,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    let get = req.method() == Method::GET;
    Some(match path {
        "/healthz" | "/health" if get => healthy(),
        "/metrics" if stack.metrics_on_main => match get {
            true => render(metrics),
            false => get_only(req.method(), path),
        },
        "/v1/models" | "/models" if get => match caller(stack, req.headers()) {
            Ok(id) => list_models(&stack.models, id.as_ref()),
            Err(e) => e.into_response(),
        },
        p if get && p.starts_with("/v1/models/") => match caller(stack, req.headers()) {
            Ok(id) => one_model(&stack.models, id.as_ref(), &p["/v1/models/".len()..]),
            Err(e) => e.into_response(),
        },
        "/v1/models" | "/models" | "/healthz" | "/health" => get_only(req.method(), path),
        p if p.starts_with("/v1/models/") => get_only(req.method(), "/v1/models/{id}"),
        _ => return None,
    })
}

/// The calling key's identity (`None` when auth is off), or the 401.
fn caller(stack: &Stack, headers: &HeaderMap) -> Result<Option<KeyIdentity>, GatewayError> {
    let Some(keys) = &stack.keys else {
        return Ok(None);
    };
    let Some(key) = crate::auth::credential(headers) else {
        crate::auth::refused("missing_key");
        return Err(crate::auth::unauthorized(crate::auth::MISSING_KEY));
    };
    match keys.lookup(&key) {
        Some(id) => Ok(Some(id)),
        None => {
            crate::auth::refused("unknown_key");
            Err(crate::auth::unauthorized(crate::auth::UNKNOWN_KEY))
        }
    }
}

fn allowed(id: Option<&KeyIdentity>, model: &ModelInfo) -> bool {
    id.is_none_or(|id| id.allows_model(&model.id))
}

fn model_json(m: &ModelInfo) -> serde_json::Value {
    serde_json::json!({"id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by})
}

fn list_models(models: &[ModelInfo], id: Option<&KeyIdentity>) -> Response<Body> {
    let data: Vec<serde_json::Value> = models
        .iter()
        .filter(|m| allowed(id, m))
        .map(model_json)
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    json(StatusCode::OK, Bytes::from(body.to_string()))
}

fn one_model(models: &[ModelInfo], id: Option<&KeyIdentity>, name: &str) -> Response<Body> {
    match models.iter().find(|m| m.id == name && allowed(id, m)) {
        Some(m) => json(StatusCode::OK, Bytes::from(model_json(m).to_string())),
        None => crate::route::model_not_found(name).into_response(),
    }
}

fn healthy() -> Response<Body> {
    json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

fn render(metrics: Option<&MetricsRender>) -> Response<Body> {
    match metrics {
        Some(render) => {
            let mut r = Response::new(Body::from(render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => GatewayError::new(ErrorKind::NotFound, "metrics are not enabled").into_response(),
    }
}

fn get_only(method: &Method, path: &str) -> Response<Body> {
    GatewayError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {path}; use GET"),
    )
    .with_header(header::ALLOW, HeaderValue::from_static("GET"))
    .into_response()
}

fn not_found(path: &str) -> Response<Body> {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("Unknown path {path} on the admin listener; it serves /healthz and /metrics."),
    )
    .into_response()
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The service of `[server] admin_listen`: `GET /healthz` and `GET /metrics` (unless
/// `[server] metrics = "off"`); nothing of the LLM stack.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }
}

impl<B> Service<Request<B>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stack = self.shared.current.load();
        let path = req.uri().path();
        let get = req.method() == Method::GET;
        let res = match path {
            "/healthz" | "/health" if get => healthy(),
            "/metrics" if get && stack.metrics_on_admin => render(self.shared.metrics.as_ref()),
            "/healthz" | "/health" | "/metrics" if !get => get_only(req.method(), path),
            _ => not_found(path),
        };
        ready(Ok(res))
    }
}

/// A response of an endpoint that waits on something (the response store).
pub(super) type OpFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// `GET` / `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`, answered
/// from the response store for the calling key; `None` for every other request
/// (`POST /v1/responses` goes to the LLM stack).
pub(super) fn responses_endpoint<B>(
    stack: &Stack,
    store: &ResponseStoreHandle,
    req: &Request<B>,
) -> Option<OpFuture> {
    let path = req.uri().path();
    let rest = path
        .strip_prefix("/v1/responses/")
        .or_else(|| path.strip_prefix("/responses/"))?;
    let (id, op) = match (rest.strip_suffix("/input_items"), req.method()) {
        (Some(id), &Method::GET) => (id, Op::Items),
        (Some(_), _) => return None,
        (None, &Method::GET) => (rest, Op::Get),
        (None, &Method::DELETE) => (rest, Op::Delete),
        (None, _) => return None,
    };
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let owner = match caller(stack, req.headers()) {
        Ok(key) => ResponseStoreHandle::owner_of(key.as_ref()).to_owned(),
        Err(e) => return Some(Box::pin(ready(Ok(e.into_response())))),
    };
    if !crate::store::is_response_id(id) {
        return Some(Box::pin(ready(Ok(response_not_found(None)))));
    }
    let query = match op {
        Op::Items => match ItemsQuery::parse(req.uri().query()) {
            Ok(q) => Some(q),
            Err(e) => return Some(Box::pin(ready(Ok(e.into_response())))),
        },
        _ => None,
    };
    let (store, id) = (store.clone(), id.to_owned());
    Some(Box::pin(async move {
        let res = match op {
            Op::Delete => store.delete(&owner, &id).await.map(|found| match found {
                true => deleted(&id),
                false => response_not_found(Some(&id)),
            }),
            _ => store.get(&owner, &id).await.map(|r| match (r, &query) {
                (None, _) => response_not_found(Some(&id)),
                (Some(r), None) => json(StatusCode::OK, r.response),
                (Some(r), Some(q)) => match crate::store::items::list(&r, q) {
                    Ok(list) => json(StatusCode::OK, list),
                    Err(e) => e.into_response(),
                },
            }),
        };
        Ok(res.unwrap_or_else(|e| store_unavailable(&e)))
    }))
}

/// What a request to a stored response asks.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Delete,
    Items,
}

/// 404 in OpenAI's words; the same whether the id is unknown, expired or another key's.
fn response_not_found(id: Option<&str>) -> Response<Body> {
    let msg = match id {
        Some(id) => format!("Response with id '{id}' not found."),
        None => "No response with that id.".to_owned(),
    };
    GatewayError::new(ErrorKind::NotFound, msg)
        .with_param("response_id")
        .into_response()
}

fn deleted(id: &str) -> Response<Body> {
    let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
    json(StatusCode::OK, Bytes::from(body.to_string()))
}

fn store_unavailable(e: &crate::store::ResponseStoreError) -> Response<Body> {
    tracing::warn!(error = %e, "response store unavailable");
    GatewayError::new(
        ErrorKind::Internal,
        "The response store cannot be reached right now; try again shortly.",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
    .with_code("response_store_unavailable")
    .with_retry_after(std::time::Duration::from_secs(1))
    .into_response()
}
