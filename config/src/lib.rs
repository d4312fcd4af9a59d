//! weft's configuration: flannel's net-conf (`<prefix>/config` in etcd), weftd's
//! settings (flags > `WEFTD_*` env > TOML file > defaults), the `weft` CNI network
//! config and flannel's `subnet.env`. Every invalid value is rejected with an error that
//! names the field, the value and what is allowed.

pub mod cni;
pub mod netconf;
pub mod subnet_env;
pub mod weftd;

pub use netconf::{Backend, NetConf, NetConfError};
pub use subnet_env::{SubnetEnv, SubnetEnvError};
pub use weftd::{LogFormat, Settings, SettingsError, TcAttach};
