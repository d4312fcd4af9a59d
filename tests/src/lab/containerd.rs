//! containerd pods (being written).
