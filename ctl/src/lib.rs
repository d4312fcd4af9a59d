pub mod etcd_source;
pub mod trace;
