//! [`AuthFuture`]: validate, then call the inner service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::{KeyIdentity, ValidateFuture, admit};
use crate::body::Body;
use crate::error::GatewayError;

pin_project! {
    /// Future of [`Auth`](super::Auth).
    pub struct AuthFuture<S, B>
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
        Failed { error: Option<GatewayError> },
        Validating {
            fut: ValidateFuture,
            req: Option<Request<B>>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            // Reported on the way back: on the response, or in the error's context.
            id: Option<KeyIdentity>,
        },
    }
}

impl<S, B> AuthFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn failed(error: GatewayError) -> Self {
        AuthFuture {
            state: State::Failed { error: Some(error) },
        }
    }
    pub(super) fn validating(fut: ValidateFuture, req: Request<B>, inner: S) -> Self {
        AuthFuture {
            state: State::Validating {
                fut,
                req: Some(req),
                inner: Some(inner),
            },
        }
    }
    pub(super) fn calling(fut: S::Future, id: KeyIdentity) -> Self {
        AuthFuture {
            state: State::Calling { fut, id: Some(id) },
        }
    }
}

impl<S, B> Future for AuthFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| GatewayError::internal("polled after completion"))));
                }
                StateProj::Validating { fut, req, inner } => {
                    let found: Result<Option<KeyIdentity>, GatewayError> =
                        ready!(fut.as_mut().poll(cx));
                    let (Some(req), Some(mut inner)) = (req.take(), inner.take()) else {
                        return Poll::Ready(Err(GatewayError::internal("polled after completion")));
                    };
                    match found.and_then(|id| admit(id, req)) {
                        Ok((req, id)) => {
                            let fut = inner.call(req);
                            this.state.set(State::Calling { fut, id: Some(id) });
                        }
                        Err(e) => this.state.set(State::Failed { error: Some(e) }),
                    }
                }
                StateProj::Calling { fut, id } => {
                    let res = ready!(fut.poll(cx));
                    let Some(id) = id.take() else {
                        return Poll::Ready(res);
                    };
                    return Poll::Ready(match res {
                        Ok(mut res) => {
                            res.extensions_mut().insert(id);
                            Ok(res)
                        }
                        Err(mut e) => {
                            e.context_mut().key = Some(id);
                            Err(e)
                        }
                    });
                }
            }
        }
    }
}
