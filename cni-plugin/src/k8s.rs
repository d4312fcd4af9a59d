//! The Kubernetes pod an attachment belongs to, from `CNI_ARGS`.
//!
//! containerd's and CRI-O's CRI pass `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;
//! K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`. weft keeps the pod's
//! namespace, name and UID in the attachment's IPAM record, so an address on a node can
//! be traced to its pod without asking the runtime.

use crate::error::{code, CniError};

/// A pod by namespace, name and (when the runtime sends it) UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl PodRef {
    /// The pod named in `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`), or `None` when
    /// it names none (not a Kubernetes runtime). Keys weft does not use are ignored,
    /// whether or not `IgnoreUnknown` is set; a pair that is not `KEY=VALUE`, or a
    /// value with a control character, is an error naming it.
    pub fn from_cni_args(args: &str) -> Result<Option<PodRef>, CniError> {
        let (mut namespace, mut name, mut uid) = (None, None, None);
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE (pairs are separated by ';')"),
                ));
            };
            if value.chars().any(char::is_control) {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: the value of {key} has a control character: {value:?}"),
                ));
            }
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "K8S_POD_NAMESPACE" => namespace = value,
                "K8S_POD_NAME" => name = value,
                "K8S_POD_UID" => uid = value,
                _ => {}
            }
        }
        Ok(match (namespace, name) {
            (Some(namespace), Some(name)) => Some(PodRef {
                namespace,
                name,
                uid,
            }),
            _ => None,
        })
    }

    /// The IPAM record's third line: the same `KEY=VALUE;...` form as `CNI_ARGS`.
    pub fn record_line(&self) -> String {
        let mut line = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
            self.namespace, self.name
        );
        if let Some(uid) = &self.uid {
            line.push_str(";K8S_POD_UID=");
            line.push_str(uid);
        }
        line
    }

    /// The pod of an IPAM record's third line; `None` for anything else.
    pub fn from_record_line(line: &str) -> Option<PodRef> {
        PodRef::from_cni_args(line.trim()).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_cri_args_name_the_pod() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=5f6d940b-1bd0-4cd9-ae64-0f5b27b21473";
        let pod = PodRef::from_cni_args(args).unwrap().unwrap();
        assert_eq!(pod.namespace, "kube-system");
        assert_eq!(pod.name, "coredns-5d78c9869d-abcde");
        assert_eq!(
            pod.uid.as_deref(),
            Some("5f6d940b-1bd0-4cd9-ae64-0f5b27b21473")
        );
        assert_eq!(
            pod.record_line(),
            "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde;K8S_POD_UID=5f6d940b-1bd0-4cd9-ae64-0f5b27b21473"
        );
        assert_eq!(PodRef::from_record_line(&pod.record_line()), Some(pod));
    }

    #[test]
    fn no_pod_without_namespace_and_name() {
        assert_eq!(PodRef::from_cni_args("").unwrap(), None);
        assert_eq!(PodRef::from_cni_args("IgnoreUnknown=1").unwrap(), None);
        assert_eq!(
            PodRef::from_cni_args("K8S_POD_NAME=web").unwrap(),
            None,
            "a name without a namespace is no pod"
        );
        let pod = PodRef::from_cni_args("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;")
            .unwrap()
            .unwrap();
        assert_eq!(pod.uid, None);
        assert_eq!(pod.record_line(), "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b");
    }

    #[test]
    fn malformed_args_are_refused_by_name() {
        let err = PodRef::from_cni_args("K8S_POD_NAME=a;garbage").unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("\"garbage\""), "{}", err.msg);
        let err = PodRef::from_cni_args("K8S_POD_NAME=a\r\nb").unwrap_err();
        assert!(err.msg.contains("K8S_POD_NAME"), "{}", err.msg);
        assert!(PodRef::from_cni_args("=x").is_err());
    }
}
