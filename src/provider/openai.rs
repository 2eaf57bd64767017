//! The OpenAI-compatible adapter (to be written).
