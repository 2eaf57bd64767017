//! [`RouteLayer`]: configuration only.

use tower::Layer;

use super::{Route, RouteHandle};

/// Layer for [`Route`]: holds the shared, hot-swappable table handle.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: RouteHandle,
}

impl RouteLayer {
    /// Route with the table behind `table` (keep a clone of the handle to reload).
    pub fn new(table: RouteHandle) -> Self {
        RouteLayer { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route::new(inner, self.table.clone())
    }
}
