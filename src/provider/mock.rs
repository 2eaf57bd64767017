//! The scripted mock provider (to be written).
