//! tc over netlink, just what attaching an eBPF classifier on kernels without tcx needs:
//! a `clsact` qdisc (`RTM_NEWQDISC`) and a `cls_bpf` filter in direct-action mode on its
//! ingress hook (`RTM_NEWTFILTER` with `TCA_BPF_FD`, `TCA_BPF_NAME`,
//! `TCA_BPF_FLAGS = TCA_BPF_FLAG_ACT_DIRECT`), as `tc qdisc add dev D clsact` and
//! `tc filter add dev D ingress prio P handle H bpf da fd F` do; and reading them back,
//! so a caller can see whether its filter is still there.
//!
//! Both `ensure_*` are idempotent: what is already there and right is success, without
//! a change.

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::{netlink_errno, request_error, Error, Netlink, Result};

/// `TC_H_CLSACT`: the parent a clsact qdisc hangs on (the same as `TC_H_INGRESS`, which
/// is why an `ingress` qdisc and a `clsact` one exclude each other).
const PARENT_CLSACT: TcHandle = TcHandle::CLSACT;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// The parent of filters on clsact's ingress hook (`TC_H_MIN_INGRESS`).
const INGRESS_HOOK: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};
/// `ETH_P_ALL`, in network byte order as `tcm_info`'s low half carries it.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A `cls_bpf` filter on a device's clsact ingress, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// `TCA_BPF_NAME`: the name given when attaching.
    pub name: Option<String>,
    /// The attached program's id (`TCA_BPF_ID`).
    pub program_id: Option<u32>,
    /// Direct-action mode (the program's return value is the verdict).
    pub direct_action: bool,
}

/// The filter [`Netlink::ensure_ingress_bpf`] attaches.
#[derive(Debug, Clone, Copy)]
pub struct IngressBpf<'a> {
    /// A loaded `BPF_PROG_TYPE_SCHED_CLS` program's descriptor.
    pub program_fd: std::os::fd::BorrowedFd<'a>,
    /// Its id (`bpf_prog_info.id`): how an existing filter is recognised as ours.
    pub program_id: u32,
    pub name: &'a str,
    pub priority: u16,
    pub handle: u32,
}

impl Netlink {
    /// Whether device `index` has a clsact qdisc.
    pub async fn has_clsact(&self, index: u32) -> Result<bool> {
        Ok(self.ingress_qdisc_kind(index).await?.as_deref() == Some("clsact"))
    }

    /// The kind of the qdisc on `index`'s ingress/clsact slot (`clsact`, `ingress`).
    async fn ingress_qdisc_kind(&self, index: u32) -> Result<Option<String>> {
        let messages: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(request_error(format!("listing the qdiscs of link {index}")))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == index as i32 && m.header.parent == PARENT_CLSACT)
            .find_map(kind_of))
    }

    /// Adds a clsact qdisc to device `index`: `true` when added, `false` when one was
    /// already there. An `ingress` qdisc in its place is an error naming it.
    pub async fn ensure_clsact(&self, index: u32) -> Result<bool> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = PARENT_CLSACT;
        message.header.handle = CLSACT_HANDLE;
        message
            .attributes
            .push(TcAttribute::Kind("clsact".to_owned()));
        let what = format!("adding a clsact qdisc to link {index}");
        match self
            .tc_request(
                RouteNetlinkMessage::NewQueueDiscipline(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {
                match self.ingress_qdisc_kind(index).await? {
                    Some(kind) if kind == "clsact" => Ok(false),
                    other => Err(Error::QdiscInTheWay {
                        index,
                        kind: other.unwrap_or_else(|| "unknown".to_owned()),
                    }),
                }
            }
            Err(e) => Err(request_error(what)(e)),
        }
    }

    /// The `cls_bpf` filters on device `index`'s clsact ingress (none without clsact).
    pub async fn ingress_bpf_filters(&self, index: u32) -> Result<Vec<BpfFilter>> {
        let mut request = TcMessage::with_index(index as i32);
        request.header.parent = INGRESS_HOOK;
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(request));
        message.header.flags = NLM_F_REQUEST | rtnetlink::packet_core::NLM_F_DUMP;
        let what = || format!("listing the ingress filters of link {index}");
        let mut responses = self
            .handle
            .clone()
            .request(message)
            .map_err(request_error(what()))?;
        let mut out = Vec::new();
        while let Some(reply) = responses.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    if let Some(filter) = bpf_filter(&m) {
                        out.push(filter);
                    }
                }
                NetlinkPayload::Error(e) => {
                    let e = rtnetlink::Error::NetlinkError(e);
                    // No clsact (or the device gone): no filters.
                    if matches!(netlink_errno(&e), Some(libc::EINVAL | libc::ENODEV)) {
                        return Ok(Vec::new());
                    }
                    return Err(request_error(what())(e));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Attaches `filter` to device `index`'s clsact ingress in direct-action mode,
    /// replacing whatever filter sits at its priority and handle; no request when the
    /// same program is already attached there. `true` when it attached.
    pub async fn ensure_ingress_bpf(&self, index: u32, filter: &IngressBpf<'_>) -> Result<bool> {
        use std::os::fd::AsRawFd as _;
        let present = self.ingress_bpf_filters(index).await?.into_iter().any(|f| {
            f.priority == filter.priority
                && f.handle == filter.handle
                && f.program_id == Some(filter.program_id)
                && f.direct_action
        });
        if present {
            return Ok(false);
        }
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = INGRESS_HOOK;
        message.header.handle = TcHandle::from(filter.handle);
        message.header.info = (u32::from(filter.priority) << 16) | u32::from(PROTOCOL_ALL);
        message.attributes.extend([
            TcAttribute::Kind("bpf".to_owned()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgFd(
                    filter.program_fd.as_raw_fd() as u32
                )),
                TcOption::Bpf(TcFilterBpfOption::ProgName(filter.name.to_owned())),
                TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
            ]),
        ]);
        self.tc_request(
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(request_error(format!(
            "attaching the bpf filter {} to the clsact ingress of link {index}",
            filter.name
        )))?;
        Ok(true)
    }

    async fn tc_request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut responses = self.handle.clone().request(message)?;
        while let Some(reply) = responses.next().await {
            if let NetlinkPayload::Error(e) = reply.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

fn kind_of(message: &TcMessage) -> Option<String> {
    message.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(kind) => Some(kind.clone()),
        _ => None,
    })
}

/// A filter dump entry as a [`BpfFilter`], if it is a `cls_bpf` one with a handle (the
/// dump also lists each priority's chain head, without handle or options).
fn bpf_filter(message: &TcMessage) -> Option<BpfFilter> {
    if kind_of(message).as_deref() != Some("bpf") {
        return None;
    }
    let handle = u32::from(message.header.handle);
    if handle == 0 {
        return None;
    }
    let mut filter = BpfFilter {
        priority: (message.header.info >> 16) as u16,
        handle,
        name: None,
        program_id: None,
        direct_action: false,
    };
    for attribute in &message.attributes {
        let TcAttribute::Options(options) = attribute else {
            continue;
        };
        for option in options {
            match option {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => {
                    filter.name = Some(name.clone());
                }
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.program_id = Some(*id),
                TcOption::Bpf(TcFilterBpfOption::Flags(flags)) => {
                    filter.direct_action = flags.contains(TcBpfFlags::DirectAction);
                }
                _ => {}
            }
        }
    }
    Some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_the_kernels() {
        assert_eq!(u32::from(PARENT_CLSACT), 0xffff_fff1);
        assert_eq!(u32::from(CLSACT_HANDLE), 0xffff_0000);
        assert_eq!(u32::from(INGRESS_HOOK), 0xffff_fff2);
        // tc prints `protocol all` as 0x0003; tcm_info carries it big-endian.
        assert_eq!(PROTOCOL_ALL.to_ne_bytes(), [0x00, 0x03]);
    }

    #[test]
    fn a_dumped_bpf_filter_reads_back() {
        let mut message = TcMessage::with_index(5);
        message.header.handle = TcHandle::from(1);
        message.header.info = (1 << 16) | u32::from(PROTOCOL_ALL);
        message.attributes = vec![
            TcAttribute::Kind("bpf".into()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgName("weft_encap".into())),
                TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
                TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
            ]),
        ];
        assert_eq!(
            bpf_filter(&message),
            Some(BpfFilter {
                priority: 1,
                handle: 1,
                name: Some("weft_encap".into()),
                program_id: Some(42),
                direct_action: true,
            })
        );
        // A chain head (handle 0) and another classifier are not filters of ours.
        message.header.handle = TcHandle::from(0);
        assert_eq!(bpf_filter(&message), None);
        message.header.handle = TcHandle::from(1);
        message.attributes[0] = TcAttribute::Kind("u32".into());
        assert_eq!(bpf_filter(&message), None);
    }
}
