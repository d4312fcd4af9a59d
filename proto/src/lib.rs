//! weft wire formats.
pub mod lease;
