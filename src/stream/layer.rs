//! [`StreamPassthroughLayer`]: configuration only.

use tower::Layer;

use super::StreamPassthrough;
use super::json::DEFAULT_JSON_CAP;

/// Layer that applies [`StreamPassthrough`]: SSE hygiene, `include_usage` injection and
/// stripping, usage capture and in-band errors for streaming requests; usage capture for JSON
/// answers.
#[derive(Debug, Clone, Copy)]
pub struct StreamPassthroughLayer {
    json_cap: usize,
}

impl Default for StreamPassthroughLayer {
    fn default() -> Self {
        StreamPassthroughLayer {
            json_cap: DEFAULT_JSON_CAP,
        }
    }
}

impl StreamPassthroughLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most bytes of a non-streaming JSON answer kept (by reference, no copy) to read its
    /// `usage` (default 8 MiB); a larger answer reports no usage.
    pub fn json_cap(mut self, bytes: usize) -> Self {
        self.json_cap = bytes;
        self
    }
}

impl<S> Layer<S> for StreamPassthroughLayer {
    type Service = StreamPassthrough<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamPassthrough {
            inner,
            json_cap: self.json_cap,
        }
    }
}
