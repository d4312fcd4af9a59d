//! etcd access in flannel's schema: the net-conf key, the subnet keys and their etcd
//! leases. Every call is bounded by a timeout (a dead endpoint must not hang the
//! daemon) and records whether etcd answered, for `/readyz`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;
use weft_proto::lease::{subnet_key, LeaseAttrs};

use super::peers::{decode_entry, SubnetEntry};
pub use super::store::{EtcdHealth, Reachability, StoredLease};

mod as_store;
pub use as_store::EtcdWatch;

/// How long one etcd request may take before the endpoint counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    BadOptions(String),
    /// The cause is said once, briefly ([`brief`]): not chained as a `source`, whose
    /// text (tonic's status with its transport error's `Debug`) would say it twice in
    /// hundreds of characters.
    #[error("etcd at {endpoints}: {op} failed: {}", brief(cause))]
    Etcd {
        endpoints: String,
        op: &'static str,
        cause: etcd_client::Error,
    },
    #[error(
        "etcd at {endpoints}: {op} timed out after {timeout:?} (is etcd running and reachable?)"
    )]
    Timeout {
        endpoints: String,
        op: &'static str,
        timeout: Duration,
    },
}

impl RegistryError {
    /// A configuration problem that retrying cannot fix (bad TLS files, bad endpoint
    /// URLs), as opposed to etcd being unreachable.
    pub fn is_permanent(&self) -> bool {
        // gRPC status codes: wrong or missing credentials do not fix themselves (etcd
        // answers a bad password or a missing user with INVALID_ARGUMENT).
        const INVALID_ARGUMENT: i32 = 3;
        const PERMISSION_DENIED: i32 = 7;
        const UNAUTHENTICATED: i32 = 16;
        match self {
            RegistryError::TlsFile { .. } | RegistryError::BadOptions(_) => true,
            RegistryError::Etcd { cause, .. } => match cause {
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => true,
                etcd_client::Error::GRpcStatus(status) => matches!(
                    i32::from(status.code()),
                    INVALID_ARGUMENT | PERMISSION_DENIED | UNAUTHENTICATED
                ),
                _ => false,
            },
            RegistryError::Timeout { .. } => false,
        }
    }
}

/// An etcd client error in a few words, on one line: for a gRPC status its code and
/// message, and for an unreachable endpoint the innermost cause (`connection refused`),
/// not the layers of transport errors around it.
pub fn brief(error: &etcd_client::Error) -> String {
    const UNAVAILABLE: i32 = 14;
    const DEADLINE_EXCEEDED: i32 = 4;
    let innermost = |error: &(dyn std::error::Error + 'static)| -> Option<String> {
        let mut cause = error.source()?;
        while let Some(next) = cause.source() {
            cause = next;
        }
        Some(cause.to_string())
    };
    let text = match error {
        etcd_client::Error::GRpcStatus(status) => match i32::from(status.code()) {
            UNAVAILABLE => format!(
                "unreachable: {}",
                innermost(status).unwrap_or_else(|| status.message().to_owned())
            ),
            DEADLINE_EXCEEDED => format!("timed out: {}", status.message()),
            _ => format!("{}: {}", status.code().description(), status.message()),
        },
        etcd_client::Error::TransportError(e) => {
            format!(
                "unreachable: {}",
                innermost(e).unwrap_or_else(|| e.to_string())
            )
        }
        other => other.to_string(),
    };
    weft_config::weftd::single_line(&text)
}

/// How to reach etcd (from weftd's or weftctl's flags).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl EtcdOptions {
    pub fn from_settings(settings: &weft_config::Settings) -> Self {
        EtcdOptions {
            endpoints: settings.etcd_endpoints.clone(),
            prefix: settings.etcd_prefix.clone(),
            cafile: settings.etcd_cafile.clone(),
            certfile: settings.etcd_certfile.clone(),
            keyfile: settings.etcd_keyfile.clone(),
            username: settings.etcd_username.clone(),
            password: settings.etcd_password.clone(),
        }
    }
}

/// The outcome of a create-if-absent.
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created,
    /// Someone holds the key already (it may have been created a moment ago).
    Exists(Option<StoredLease>),
}

/// An etcd client bound to one flannel prefix.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    endpoints: String,
    timeout: Duration,
    reachability: Arc<Reachability>,
    /// The open keep-alive stream of the lease this node renews (one at a time).
    keep_alive: Arc<tokio::sync::Mutex<Option<KeepAlive>>>,
}

/// A keep-alive stream open for one etcd lease.
struct KeepAlive {
    lease_id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions, RegistryError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        // Notice a silently dead connection (no FIN/RST) within seconds; the watch
        // stream depends on it.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    match (&opts.username, &opts.password) {
        (Some(user), Some(password)) => connect = connect.with_user(user, password),
        (Some(_), None) => {
            return Err(RegistryError::BadOptions(
                "--etcd-username is set but --etcd-password is not".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(RegistryError::BadOptions(
                "--etcd-password is set but --etcd-username is not".into(),
            ))
        }
        (None, None) => {}
    }
    let wants_tls = opts.cafile.is_some() || opts.certfile.is_some() || opts.keyfile.is_some();
    if wants_tls {
        if let Some(plain) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(RegistryError::BadOptions(format!(
                "etcd TLS files are given but endpoint {plain} is plain http; use https://"
            )));
        }
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &opts.cafile {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_file(
                "--etcd-cafile",
                ca,
            )?));
        }
        match (&opts.certfile, &opts.keyfile) {
            (Some(cert), Some(key)) => {
                let cert = read_file("--etcd-certfile", cert)?;
                let key = read_file("--etcd-keyfile", key)?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(RegistryError::BadOptions(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ))
            }
        }
        connect = connect.with_tls(tls);
    }
    Ok(connect)
}

impl Registry {
    /// Builds a client. With a username this authenticates, so it fails while etcd is
    /// unreachable; without one it connects lazily and the first request tells.
    pub async fn connect(opts: &EtcdOptions) -> Result<Registry, RegistryError> {
        if opts.endpoints.is_empty() {
            return Err(RegistryError::BadOptions(
                "--etcd-endpoints is empty".into(),
            ));
        }
        let endpoints = opts.endpoints.join(",");
        let connect = connect_options(opts)?;
        let reachability = Arc::new(Reachability::default());
        let client = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&opts.endpoints, Some(connect)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(cause)) => {
                reachability.failed(brief(&cause));
                return Err(RegistryError::Etcd {
                    endpoints,
                    op: "connect",
                    cause,
                });
            }
            Err(_) => {
                return Err(RegistryError::Timeout {
                    endpoints,
                    op: "connect",
                    timeout: REQUEST_TIMEOUT,
                })
            }
        };
        Ok(Registry {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_owned(),
            endpoints,
            timeout: REQUEST_TIMEOUT,
            reachability,
            keep_alive: Arc::default(),
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn reachability(&self) -> Arc<Reachability> {
        self.reachability.clone()
    }

    /// `<prefix>/config`
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/subnets/`
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `<prefix>/subnets/10.244.1.0-24`
    pub fn subnet_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// The raw client, for the few callers that need more (tests, benches).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => {
                self.reachability.ok();
                Ok(value)
            }
            Ok(Err(cause)) => {
                self.reachability.failed(brief(&cause));
                Err(RegistryError::Etcd {
                    endpoints: self.endpoints.clone(),
                    op,
                    cause,
                })
            }
            Err(_) => {
                self.reachability
                    .failed(format!("{op} timed out after {:?}", self.timeout));
                Err(RegistryError::Timeout {
                    endpoints: self.endpoints.clone(),
                    op,
                    timeout: self.timeout,
                })
            }
        }
    }

    /// The net-conf JSON, `None` while the key does not exist.
    pub async fn get_config(&self) -> Result<Option<String>, RegistryError> {
        let mut client = self.client.clone();
        let resp = self
            .call("get config", client.get(self.config_key(), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every subnet key (skipping ones that do not parse) and the revision of the list.
    pub async fn list_subnets(&self) -> Result<(Vec<StoredLease>, i64), RegistryError> {
        let mut client = self.client.clone();
        let resp = self
            .call(
                "list subnets",
                client.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp.kvs().iter().filter_map(stored_lease).collect();
        Ok((leases, revision))
    }

    /// One subnet key, `None` when absent.
    pub async fn get_subnet(&self, subnet: Ipv4Net) -> Result<Option<StoredLease>, RegistryError> {
        let mut client = self.client.clone();
        let resp = self
            .call("get subnet", client.get(self.subnet_key(subnet), None))
            .await?;
        Ok(resp.kvs().first().and_then(stored_lease))
    }

    /// Grants an etcd lease of `ttl`; returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, RegistryError> {
        let mut client = self.client.clone();
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let resp = self
            .call("grant lease", client.lease_grant(secs, None))
            .await?;
        Ok(resp.id())
    }

    /// Revokes an etcd lease (deleting the keys attached to it). A lease that is already
    /// gone is not an error.
    pub async fn revoke(&self, lease_id: i64) -> Result<(), RegistryError> {
        let mut client = self.client.clone();
        match self
            .call("revoke lease", client.lease_revoke(lease_id))
            .await
        {
            Ok(_) => Ok(()),
            Err(RegistryError::Etcd {
                cause: etcd_client::Error::GRpcStatus(status),
                ..
            }) if status.message().contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the subnet key only if it does not exist (`create_revision == 0`),
    /// attached to `lease_id` (0 = no lease).
    pub async fn create_subnet(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        lease_id: i64,
    ) -> Result<CreateOutcome, RegistryError> {
        let key = self.subnet_key(subnet);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put_leased(key.clone(), attrs, lease_id)])
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let resp = self.call("create subnet", client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(CreateOutcome::Created);
        }
        let existing = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(stored_lease),
            _ => None,
        });
        Ok(CreateOutcome::Exists(existing))
    }

    /// Rewrites an existing subnet key (our own, found by PublicIP) with `attrs`
    /// attached to `lease_id` (0 = none), only if nobody changed it since
    /// `mod_revision`. Returns false when it changed.
    pub async fn replace_subnet(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        lease_id: i64,
        mod_revision: i64,
    ) -> Result<bool, RegistryError> {
        let key = self.subnet_key(subnet);
        let txn = Txn::new()
            .when([unchanged_since(key.clone(), mod_revision)])
            .and_then([put_leased(key, attrs, lease_id)]);
        let mut client = self.client.clone();
        let resp = self.call("update subnet", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Deletes a subnet key if it is unchanged since `mod_revision`.
    pub async fn delete_subnet(
        &self,
        subnet: Ipv4Net,
        mod_revision: i64,
    ) -> Result<bool, RegistryError> {
        let key = self.subnet_key(subnet);
        let txn = Txn::new()
            .when([unchanged_since(key.clone(), mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        let mut client = self.client.clone();
        let resp = self.call("delete subnet", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Seconds left on an etcd lease; `None` when it does not exist (expired, revoked)
    /// or for id 0 (a reservation).
    pub async fn time_to_live(&self, lease_id: i64) -> Result<Option<i64>, RegistryError> {
        if lease_id == 0 {
            return Ok(None);
        }
        let mut client = self.client.clone();
        let resp = self
            .call(
                "lease time-to-live",
                client.lease_time_to_live(lease_id, None),
            )
            .await?;
        Ok((resp.ttl() > 0).then_some(resp.ttl()))
    }

    /// Opens a keep-alive stream for `lease_id`. `Ok(None)` when the lease no longer
    /// exists.
    pub async fn keep_alive(
        &self,
        lease_id: i64,
    ) -> Result<Option<(LeaseKeeper, LeaseKeepAliveStream)>, RegistryError> {
        let mut client = self.client.clone();
        match self
            .call("open lease keep-alive", client.lease_keep_alive(lease_id))
            .await
        {
            Ok(pair) => Ok(Some(pair)),
            Err(RegistryError::Etcd {
                cause: etcd_client::Error::LeaseKeepAliveError(msg),
                ..
            }) if msg.contains("not found") => {
                // etcd answered: it is reachable, the lease is just gone.
                self.reachability.ok();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one keep-alive on an open stream and waits for its answer: the remaining
    /// TTL, 0 when the lease is gone.
    pub async fn keep_alive_once(
        &self,
        keeper: &mut LeaseKeeper,
        stream: &mut LeaseKeepAliveStream,
    ) -> Result<i64, RegistryError> {
        self.call("lease keep-alive", keeper.keep_alive()).await?;
        let resp = self.call("lease keep-alive", stream.message()).await?;
        match resp {
            Some(resp) => Ok(resp.ttl()),
            None => Err(RegistryError::Etcd {
                endpoints: self.endpoints.clone(),
                op: "lease keep-alive",
                cause: etcd_client::Error::LeaseKeepAliveError("stream closed".into()),
            }),
        }
    }

    /// Watches every subnet key from `start_revision` on.
    pub async fn watch_subnets(&self, start_revision: i64) -> Result<WatchStream, RegistryError> {
        let mut client = self.client.clone();
        self.call(
            "watch subnets",
            client.watch(
                self.subnets_prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(start_revision),
                ),
            ),
        )
        .await
    }

    /// Marks etcd unreachable after a failure observed outside [`Registry`]'s calls
    /// (a watch stream that broke).
    pub fn note_failure(&self, error: String) {
        self.reachability.failed(error);
    }

    /// Marks etcd reachable after a success observed outside [`Registry`]'s calls.
    pub fn note_success(&self) {
        self.reachability.ok();
    }
}

/// Writes a subnet record to `key`, attached to etcd lease `lease_id` (0 = none).
fn put_leased(key: String, attrs: &LeaseAttrs, lease_id: i64) -> TxnOp {
    TxnOp::put(
        key,
        attrs.to_json(),
        Some(PutOptions::new().with_lease(lease_id)),
    )
}

/// `key` has not been written (nor deleted) since `mod_revision`.
fn unchanged_since(key: String, mod_revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, mod_revision)
}

/// Wall-clock expiry of a lease with `ttl_secs` left.
pub fn expiry_from_ttl(ttl_secs: i64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

/// A subnet key as stored (with its etcd lease and revision); `None` for a key that is
/// not a valid subnet lease.
fn stored_lease(kv: &KeyValue) -> Option<StoredLease> {
    let SubnetEntry { subnet, attrs } = decode_entry(kv.key(), kv.value())?;
    Some(StoredLease {
        subnet,
        attrs,
        lease_id: kv.lease(),
        mod_revision: kv.mod_revision(),
    })
}
