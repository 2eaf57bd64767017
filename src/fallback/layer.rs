//! [`FallbackLayer`]: configuration only.

use std::sync::Arc;

use tower::Layer;
use tower::retry::budget::{Budget, TpsBudget};

use super::Fallback;

/// Layer for [`Fallback`]: holds the retry budget (shared by every service the layer builds).
#[derive(Clone)]
pub struct FallbackLayer {
    budget: Arc<dyn Budget + Send + Sync>,
}

impl std::fmt::Debug for FallbackLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer").finish_non_exhaustive()
    }
}

impl Default for FallbackLayer {
    fn default() -> Self {
        FallbackLayer::new()
    }
}

impl FallbackLayer {
    /// The default retry budget: tower's [`TpsBudget::default`] — fallbacks may add 20 % to
    /// the requests of the last 10 s, plus 10 a second as a floor.
    pub fn new() -> Self {
        FallbackLayer {
            budget: Arc::new(TpsBudget::default()),
        }
    }

    /// Use `budget`: every request deposits, every attempt after the first withdraws; when it
    /// is empty the chain stops and the best failure so far is answered (with
    /// `x-tollgate-fallback-stopped: retry-budget`).
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        self.budget = budget;
        self
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;
    fn layer(&self, inner: S) -> Fallback<S> {
        Fallback {
            inner,
            budget: self.budget.clone(),
        }
    }
}
