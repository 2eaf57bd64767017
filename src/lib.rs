//! tollgate: composable Tower layers for LLM gateways.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod error;
pub mod request;
pub mod usage;
