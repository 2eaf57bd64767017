//! [`AuthLayer`]: configuration only.

use std::sync::Arc;

use tower::Layer;

use super::{Auth, KeyValidator};

/// Layer for [`Auth`]: either a validator, or explicitly disabled.
#[derive(Clone)]
pub struct AuthLayer {
    pub(crate) validator: Option<Arc<dyn KeyValidator>>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("enabled", &self.validator.is_some())
            .finish()
    }
}

impl AuthLayer {
    /// Authenticate every request with `validator` (e.g. a [`StaticKeys`](super::StaticKeys)).
    pub fn new(validator: impl KeyValidator) -> Self {
        AuthLayer {
            validator: Some(Arc::new(validator)),
        }
    }

    /// Authenticate with a shared validator.
    pub fn from_arc(validator: Arc<dyn KeyValidator>) -> Self {
        AuthLayer {
            validator: Some(validator),
        }
    }

    /// Auth switched off, explicitly (a local single-user gateway): every request gets the
    /// [`KeyIdentity::anonymous`](super::KeyIdentity::anonymous) identity. Credential headers
    /// are still removed.
    pub fn disabled() -> Self {
        AuthLayer { validator: None }
    }

    /// The [`KeyCheck`](super::KeyCheck) layer for the same validator: placed in front of
    /// Parse, a request without a valid key is refused before a byte of its body is read.
    pub fn key_check(&self) -> super::KeyCheckLayer {
        super::KeyCheckLayer {
            validator: self.validator.clone(),
        }
    }

    /// Whether keys are checked.
    pub fn is_enabled(&self) -> bool {
        self.validator.is_some()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            validator: self.validator.clone(),
        }
    }
}
