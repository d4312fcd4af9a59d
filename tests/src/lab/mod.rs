//! The multi-node lab topology (being written).

pub mod state;
