//! The lab's nodes: creating a node's namespace and underlay link, and programming
//! kernel-flannel nodes for the current leases.

use anyhow::Context as _;

use super::*;

impl Lab {
    /// Programs every kernel-flannel node for the current leases in etcd (routes,
    /// neighbours, fdb; stale entries removed). Call it after weft nodes got or changed
    /// their leases. Idempotent.
    pub fn sync_kernel_nodes(&self) -> anyhow::Result<()> {
        let kernel = self.kernel_nodes();
        if kernel.is_empty() {
            return Ok(());
        }
        let leases = self.leases()?;
        for n in kernel {
            let node = self.node(n)?;
            let subnet = node.subnet.context("kernel node without a subnet")?;
            kernel::sync_node(
                &Netns::existing(&node.netns),
                subnet,
                self.info.vni,
                &leases,
            )
            .with_context(|| format!("programming kernel-flannel node {n}"))?;
        }
        Ok(())
    }

    pub(super) fn setup_kernel_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.info.nodes[i].clone();
        let taken: Vec<Ipv4Net> = self.leases()?.iter().map(|l| l.subnet).collect();
        let subnet = self
            .info
            .network
            .subnets(24)?
            .skip(1) // flannel's SubnetMin: the network's first subnet is not leased
            .find(|s| !taken.contains(s))
            .context("no free /24 left in the network")?;
        let ns = Netns::existing(&node.netns);
        let mac = kernel::setup_node(
            &ns,
            node.ip,
            subnet,
            self.info.vni,
            self.info.port,
            OVERLAY_MTU,
        )?;
        let lease = self.etcd.lease_grant(24 * 3600)?;
        self.etcd.put_with_lease(
            &kernel::lease_key(ETCD_PREFIX, subnet),
            &FlannelLease::vxlan_value(node.ip, self.info.vni, &mac),
            &lease,
        )?;
        std::fs::write(
            node.subnet_file(),
            format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={OVERLAY_MTU}\nFLANNEL_IPMASQ=false\n",
                self.info.network,
                kernel::gateway_cidr(subnet)
            ),
        )?;
        let n = &mut self.info.nodes[i];
        n.subnet = Some(subnet);
        n.vtep_mac = Some(mac);
        n.etcd_lease = Some(lease);
        self.save()
    }

    pub(super) fn create_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.info.nodes[i].clone();
        std::fs::create_dir_all(&node.dir)?;
        let ns = Netns::new(&node.netns)?.detach();
        let ns = Netns::existing(&ns);
        let ul = self.underlay();
        Veth::create(
            End::new(&ul, &node.name),
            End::with_addr(&ns, "eth0", &format!("{}/24", node.ip)),
            Some(UNDERLAY_MTU),
        )?
        .detach();
        link::Bridge::existing(&ul, "br0").attach(&node.name)?;
        ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }
}
