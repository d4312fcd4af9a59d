//! Data plane: TUN VTEP, userspace VXLAN/IPIP hot path, routes.
