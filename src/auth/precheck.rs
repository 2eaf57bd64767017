//! [`KeyCheck`]: the key checked from the headers, before Parse reads the body.
//!
//! Placed in front of [`ParseLayer`](crate::request::ParseLayer), it validates the key alone
//! (headers only). A request without a valid key is marked refused: Parse then reads none of its
//! body, the UsageMeter still sees it (its record has no key and no model), and [`Auth`] answers
//! the 401. A valid key travels to [`Auth`], which does not validate it again and checks the
//! model allow-list once Parse has read the model. Without this layer Auth validates the key
//! itself, after the body was read. A validator error leaves the request unmarked (Auth tries
//! again).
//!
//! ```
//! use tollgate::auth::{AuthLayer, StaticKeys};
//! use tollgate::request::ParseLayer;
//! use tower::ServiceBuilder;
//!
//! let auth = AuthLayer::new(StaticKeys::from_entries([])?);
//! let front = ServiceBuilder::new()
//!     .layer(auth.key_check())
//!     .layer(ParseLayer::new())
//!     // UsageMeter ... then the AuthLayer itself
//!     .layer(auth);
//! # let _ = front;
//! # Ok::<(), tollgate::error::GatewayError>(())
//! ```
//!
//! [`Auth`]: super::Auth

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::GatewayError;

use super::{KeyIdentity, KeyValidator, MISSING_KEY, UNKNOWN_KEY, ValidateFuture, credential};

/// What [`KeyCheck`] found, for Parse and Auth (only this crate's layers write it).
#[derive(Clone, Debug)]
pub(crate) enum PreAuth {
    /// A valid key: Auth admits it without validating it again.
    Admitted(KeyIdentity),
    /// No key, or an unknown one: Parse skips the body, Auth answers 401.
    Refused {
        reason: &'static str,
        message: &'static str,
    },
}

/// Whether [`KeyCheck`] refused the request (Parse then reads none of its body).
pub(crate) fn refused_early(ext: &http::Extensions) -> bool {
    matches!(ext.get::<PreAuth>(), Some(PreAuth::Refused { .. }))
}

/// Layer for [`KeyCheck`]; made by [`AuthLayer::key_check`](super::AuthLayer::key_check).
#[derive(Clone)]
pub struct KeyCheckLayer {
    pub(super) validator: Option<Arc<dyn KeyValidator>>,
}

impl std::fmt::Debug for KeyCheckLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCheckLayer")
            .field("enabled", &self.validator.is_some())
            .finish()
    }
}

impl<S> Layer<S> for KeyCheckLayer {
    type Service = KeyCheck<S>;
    fn layer(&self, inner: S) -> KeyCheck<S> {
        KeyCheck {
            inner,
            validator: self.validator.clone(),
        }
    }
}

/// Validates the key from the headers before the body is read. In front of Parse: a request
/// without a valid key is marked refused, Parse reads none of its body, the UsageMeter records
/// it and [`Auth`](super::Auth) answers 401; a valid key is not validated again by Auth, which
/// checks the model allow-list. Made by [`AuthLayer::key_check`](super::AuthLayer::key_check).
#[derive(Clone)]
pub struct KeyCheck<S> {
    inner: S,
    validator: Option<Arc<dyn KeyValidator>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for KeyCheck<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCheck")
            .field("inner", &self.inner)
            .field("enabled", &self.validator.is_some())
            .finish()
    }
}

impl<S, B> Service<Request<B>> for KeyCheck<S>
where
    S: Service<Request<B>, Error = GatewayError> + Clone,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = KeyCheckFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(validator) = &self.validator else {
            return KeyCheckFuture::calling(inner.call(req));
        };
        match credential(req.headers()) {
            None => {
                req.extensions_mut().insert(PreAuth::Refused {
                    reason: "missing_key",
                    message: MISSING_KEY,
                });
                KeyCheckFuture::calling(inner.call(req))
            }
            Some(key) => KeyCheckFuture {
                state: State::Validating {
                    fut: validator.validate(key),
                    req: Some(req),
                    inner: Some(inner),
                },
            },
        }
    }
}

pin_project! {
    /// Future of [`KeyCheck`].
    pub struct KeyCheckFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Validating {
            fut: ValidateFuture,
            req: Option<Request<B>>,
            inner: Option<S>,
        },
        Calling { #[pin] fut: S::Future },
    }
}

impl<S, B> KeyCheckFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn calling(fut: S::Future) -> Self {
        KeyCheckFuture {
            state: State::Calling { fut },
        }
    }
}

impl<S, B> Future for KeyCheckFuture<S, B>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Output = Result<S::Response, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Validating { fut, req, inner } => {
                    let found = ready!(fut.as_mut().poll(cx));
                    let (Some(mut req), Some(mut inner)) = (req.take(), inner.take()) else {
                        return Poll::Ready(Err(GatewayError::internal("polled after completion")));
                    };
                    match found {
                        Ok(Some(id)) => {
                            req.extensions_mut().insert(PreAuth::Admitted(id));
                        }
                        Ok(None) => {
                            req.extensions_mut().insert(PreAuth::Refused {
                                reason: "unknown_key",
                                message: UNKNOWN_KEY,
                            });
                        }
                        // The validator failed: Auth tries again after Parse.
                        Err(_) => {}
                    }
                    let fut = inner.call(req);
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => return fut.poll(cx),
            }
        }
    }
}
