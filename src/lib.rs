//! tollgate: composable Tower layers for LLM gateways.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod provider;
pub mod ratelimit;
pub mod request;
pub mod secret;
pub mod target;
pub mod usage;
