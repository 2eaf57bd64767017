//! [`StreamPassthroughLayer`]: configuration only.

use tower::Layer;

use super::StreamPassthrough;

/// Layer that applies [`StreamPassthrough`]: SSE hygiene, `include_usage` injection and
/// stripping, usage capture and in-band errors for streaming requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamPassthroughLayer {
    _priv: (),
}

impl StreamPassthroughLayer {
    /// A new layer.
    pub fn new() -> Self {
        StreamPassthroughLayer { _priv: () }
    }
}

impl<S> Layer<S> for StreamPassthroughLayer {
    type Service = StreamPassthrough<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamPassthrough::new(inner)
    }
}
