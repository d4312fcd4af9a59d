//! GC: removes the attachments not in `cni.dev/valid-attachments` (their veths and
//! addresses).

use std::collections::HashSet;

use weft_netlink::Netlink;

use super::{host_veth_name, Invocation, HOST_VETH_PREFIX};
use crate::delegate;
use crate::error::{code, CniError};
use crate::ipam::Store;

pub async fn gc(inv: &Invocation<'_>) -> Result<(), CniError> {
    let conf = &inv.conf;
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments (the attachments still in use)",
            )
        })?
        .into_iter()
        .collect();
    let host = Netlink::connect()?;
    match conf.ipam_type() {
        None => {
            let Some(store) = Store::open_existing(&conf.data_dir, &conf.name)? else {
                return Ok(());
            };
            // Every veth of ours has an allocation (ADD allocates first, DEL deletes the
            // veth first), so the stale allocations name exactly the stale veths.
            let stale = store.retain_only(&valid)?;
            for a in stale {
                host.delete_link_named(&host_veth_name(&a.container_id, &a.ifname))
                    .await?;
            }
            Ok(())
        }
        Some(plugin) => {
            // Without our own store, stale veths are found on the bridge by name.
            let expected: HashSet<String> = valid
                .iter()
                .map(|(id, ifname)| host_veth_name(id, ifname))
                .collect();
            if let Some(bridge) = host.link(&conf.bridge).await? {
                let stale = host.links().await?.into_iter().filter(|link| {
                    link.name.starts_with(HOST_VETH_PREFIX)
                        && link.master == Some(bridge.index)
                        && !expected.contains(&link.name)
                });
                for link in stale {
                    host.delete_link_named(&link.name).await?;
                }
            }
            if delegate::supports(&inv.env.cni_path, plugin, "1.1.0")? {
                delegate::exec(&inv.env.cni_path, plugin, "GC", inv.stdin)?;
            }
            Ok(())
        }
    }
}
