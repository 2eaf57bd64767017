//! [`StreamPassthroughLayer`]: configuration only.

use tower::Layer;

use super::StreamPassthrough;
use super::json::DEFAULT_JSON_CAP;
use crate::sse::DEFAULT_MAX_EVENT_BYTES;
use crate::usage::DEFAULT_MAX_USAGE_TOKENS;

/// Layer that applies [`StreamPassthrough`]: SSE hygiene, `include_usage` injection and
/// stripping, usage capture and in-band errors for streaming requests; usage capture for JSON
/// answers.
#[derive(Debug, Clone, Copy)]
pub struct StreamPassthroughLayer {
    pub(super) json_cap: usize,
    pub(super) max_event: usize,
    pub(super) max_usage: u64,
}

impl Default for StreamPassthroughLayer {
    fn default() -> Self {
        StreamPassthroughLayer {
            json_cap: DEFAULT_JSON_CAP,
            max_event: DEFAULT_MAX_EVENT_BYTES,
            max_usage: DEFAULT_MAX_USAGE_TOKENS,
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

    /// The most bytes one upstream SSE event (and so one line) may hold before the stream is
    /// ended with the in-band error (default 4 MiB): a broken upstream sending a huge event, or
    /// bytes without a line break, is not held in memory.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event = bytes;
        self
    }

    /// The largest usage count taken as exact (default 10 million tokens): a larger one (an
    /// upstream's 2^64 − 1) is recorded as an estimate with a reason, and a reservation settles
    /// at what it reserved.
    pub fn max_usage_tokens(mut self, tokens: u64) -> Self {
        self.max_usage = tokens;
        self
    }
}

impl<S> Layer<S> for StreamPassthroughLayer {
    type Service = StreamPassthrough<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamPassthrough {
            inner,
            config: *self,
        }
    }
}
