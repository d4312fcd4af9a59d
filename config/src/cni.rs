//! The `weft` CNI network config (one plugin entry of a conflist, as the runtime passes
//! it on stdin): `{"cniVersion":..,"name":..,"type":"weft","subnetFile":..,"bridge":..,
//! "mtu":..,"isDefaultGateway":..,"hairpinMode":..,"ipam":{..},"prevResult":{..}}`.
