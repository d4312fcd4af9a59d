//! Subnet lease manager (etcd, flannel schema).
