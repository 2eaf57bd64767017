//! [`TimeoutLayer`]: configuration only.

use tower::Layer;

use super::Timeout;

/// Default cap on what the gate reads before resolving: 1 MiB.
pub const DEFAULT_MAX_PREREAD: usize = 1 << 20;

/// Layer for [`Timeout`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    pub(super) max_preread: usize,
    pub(super) inspect_json: bool,
}

impl Default for TimeoutLayer {
    fn default() -> Self {
        TimeoutLayer {
            max_preread: DEFAULT_MAX_PREREAD,
            inspect_json: true,
        }
    }
}

impl TimeoutLayer {
    /// Defaults: pre-read at most 1 MiB; inspect JSON answers for an `{"error": ...}`.
    pub fn new() -> Self {
        Self::default()
    }
    /// The most bytes read before resolving (a stream without a data event by then, or a
    /// larger JSON body, is passed on ungated).
    pub fn max_preread(mut self, bytes: usize) -> Self {
        self.max_preread = bytes;
        self
    }
    /// Whether a non-streaming answer's body is read (up to the cap) before resolving, so that
    /// an `{"error": ...}` inside a 2xx can fall back. On by default; off, a non-streaming
    /// answer resolves at its head.
    pub fn inspect_json(mut self, yes: bool) -> Self {
        self.inspect_json = yes;
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: *self,
        }
    }
}
