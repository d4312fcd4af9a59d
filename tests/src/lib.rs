//! weft lab harness.
