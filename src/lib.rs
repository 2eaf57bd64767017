//! tollgate: composable Tower layers for LLM gateways.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod config;
pub mod error;
pub mod fallback;
pub mod health;
pub mod meter;
pub mod metrics;
pub mod pricing;
pub mod provider;
pub mod request;
pub mod route;
pub mod secret;
pub mod sink;
pub mod sse;
pub mod stream;
pub mod target;
pub mod timeout;
pub mod usage;
