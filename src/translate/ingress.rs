//! Anthropic-style ingress (to be written).
