//! The host firewall state weft owns, kept in place while weftd runs: the masquerade
//! table (`--ip-masq`, [`crate::masq`]) and the forward accept rules
//! (`--forward-rules`, [`forward`]).
//!
//! [`HostRules`] is the thin I/O shell: `install` at data-plane start, `reconcile` every
//! reconcile period (it reads each feature back with one short program, puts back what
//! is missing or altered, counts it in `weft_dataplane_repairs_total{what}` and logs it
//! once per occurrence), `cleanup` for `--cleanup-on-exit` only: both stay when weftd
//! stops, so a restart never leaves pods without NAT or forwarding, and a starting
//! weftd replaces them in one transaction each. The decisions (scripts, parsing,
//! "present and as installed") are the pure functions of [`forward`], [`nft`] and
//! [`crate::masq`].
//!
//! Programs run through `tokio::process` with a deadline, so a hung `nft` or an
//! iptables waiting for the xtables lock holds up the data plane's control task for at
//! most `PROGRAM_TIMEOUT` (10 s) and blocks no thread (the workers carry packets
//! meanwhile).

pub mod forward;
pub mod nft;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt as _;
use weft_config::Settings;

use crate::masq;
use crate::metrics::{Metrics, Repair};
use forward::{Flavour, WeftRules};

/// How long one nft or iptables run may take (the legacy xtables lock wait included).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(10);
/// `iptables-restore --wait`: wait for the xtables lock (legacy) instead of failing when
/// another program holds it (flannel #933); the next reconcile retries after that.
const XTABLES_WAIT: &str = "--wait=5";
/// A filter table not in use is looked at again every this many reconciles (10 s): it
/// comes into use rarely (Docker started after weftd), and the look costs a program run.
const ADOPT_EVERY: u32 = 5;
/// Where the legacy x_tables list the tables loaded in this network namespace
/// (`thread-self`: weftd's threads, and the tests' in-process data planes, may sit in
/// another namespace than the process's first thread).
const LEGACY_TABLES: &str = "/proc/thread-self/net/ip_tables_names";

/// What the reconcile found, compared with what weft installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Intact,
    /// Gone, entirely or in part.
    Missing,
    /// There, but changed.
    Altered,
}

impl Check {
    fn word(self) -> &'static str {
        match self {
            Check::Intact => "intact",
            Check::Missing => "missing",
            Check::Altered => "altered",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {program} (is it installed?): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {PROGRAM_TIMEOUT:?}")]
    Timeout { program: String },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Unexpected(String),
}

/// Runs `program` with `args` (and `stdin`), returns its stdout.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let spawn_error = |source| FirewallError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let work = async {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.map_err(spawn_error)?;
            // Dropping the pipe closes it: the program sees the end of its input.
        }
        child.wait_with_output().await.map_err(spawn_error)
    };
    let output = tokio::time::timeout(PROGRAM_TIMEOUT, work)
        .await
        .map_err(|_| FirewallError::Timeout {
            program: program.to_owned(),
        })??;
    if !output.status.success() {
        return Err(FirewallError::Failed {
            program: program.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `program` is an executable file in `PATH`.
fn in_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A failure logged once, not every reconcile: again only when it changes, and a line
/// when it clears.
#[derive(Debug, Default)]
struct Trouble(Option<String>);

impl Trouble {
    fn report(&mut self, what: &str, error: &FirewallError) {
        let message = error.to_string();
        if self.0.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "{what} failed; retrying at every reconcile");
            self.0 = Some(message);
        }
    }

    fn clear(&mut self, what: &str) {
        if self.0.take().is_some() {
            tracing::info!("{what} works again");
        }
    }
}

/// The masquerade table as weft installed it.
#[derive(Debug, Default)]
struct Masquerade {
    /// `nft list table ip weft` read right after installing, normalized.
    installed: Option<String>,
    trouble: Trouble,
}

/// weft's rules in one iptables filter table.
#[derive(Debug)]
struct IptablesTable {
    flavour: Flavour,
    save: &'static str,
    restore: &'static str,
    /// weft's rules as read back right after installing them; `None` while this table
    /// is not in use (weft adds nothing to a filter table nobody uses).
    installed: Option<WeftRules>,
    trouble: Trouble,
}

#[derive(Debug, Default)]
struct ForwardRules {
    /// Filter tables whose iptables programs are installed; resolved at `install`.
    tables: Vec<IptablesTable>,
    /// nftables chains already warned about (`family table chain`).
    warned: BTreeSet<String>,
    /// Reconciles since unused filter tables were last looked at.
    since_adopt: u32,
}

/// weft's host firewall rules: created by [`HostRules::install`], kept by
/// [`HostRules::reconcile`], removed only by [`HostRules::cleanup`].
#[derive(Debug)]
pub struct HostRules {
    network: Ipv4Net,
    subnet: Ipv4Net,
    masq: Option<Masquerade>,
    forward: Option<ForwardRules>,
}

impl HostRules {
    /// The rules `settings` asks for, for the cluster `network` and this node's `subnet`.
    pub fn new(settings: &Settings, network: Ipv4Net, subnet: Ipv4Net) -> HostRules {
        HostRules {
            network,
            subnet,
            masq: settings.ip_masq.then(Masquerade::default),
            forward: settings.forward_rules.then(ForwardRules::default),
        }
    }

    /// Installs (or atomically replaces) the rules. A masquerade table nft refuses is an
    /// error (weftd cannot do what `--ip-masq` asks); forward rules that cannot be added
    /// are logged and retried at every reconcile (a host may need none). Rules a weftd
    /// with the feature on left behind (they outlive it) are removed when it is off.
    pub async fn install(&mut self) -> Result<(), FirewallError> {
        match &mut self.masq {
            Some(masq) => masq.installed = Some(install_masq(self.network, self.subnet).await?),
            None => remove_leftover_masq().await,
        }
        if self.forward.is_none() {
            remove_leftover_forward_rules().await;
        }
        if let Some(fwd) = &mut self.forward {
            for flavour in Flavour::ALL {
                match resolve_programs(flavour).await {
                    Some((save, restore)) => fwd.tables.push(IptablesTable {
                        flavour,
                        save,
                        restore,
                        installed: None,
                        trouble: Trouble::default(),
                    }),
                    None => tracing::debug!(
                        flavour = flavour.name(),
                        "not installed; no forward rules in its tables"
                    ),
                }
            }
            for table in &mut fwd.tables {
                table.adopt_if_in_use(self.network, false).await;
            }
            warn_about_blocking_nft_chains(fwd, self.network).await;
        }
        Ok(())
    }

    /// Puts back what is missing or altered (counted in `metrics`), and adds the forward
    /// rules to a filter table that came into use since (Docker started after weftd).
    pub async fn reconcile(&mut self, metrics: &Metrics) {
        if let Some(masq) = &mut self.masq {
            reconcile_masq(masq, self.network, self.subnet, metrics).await;
        }
        if let Some(fwd) = &mut self.forward {
            fwd.since_adopt += 1;
            let look_at_unused = fwd.since_adopt >= ADOPT_EVERY;
            if look_at_unused {
                fwd.since_adopt = 0;
            }
            for table in &mut fwd.tables {
                if table.installed.is_some() {
                    table.reconcile(self.network, metrics).await;
                } else if look_at_unused {
                    table.adopt_if_in_use(self.network, true).await;
                }
            }
        }
    }

    /// Removes weft's masquerade table and forward rules (`--cleanup-on-exit`).
    pub async fn cleanup(&mut self) {
        if self.masq.is_some() {
            match run("nft", &["-f", "-"], Some(&masq::removal())).await {
                Ok(_) => tracing::info!(
                    table = masq::TABLE,
                    "removed the masquerade table (--cleanup-on-exit)"
                ),
                Err(error) => tracing::warn!(%error, "removing the masquerade table"),
            }
        }
        if let Some(fwd) = &mut self.forward {
            for table in &mut fwd.tables {
                match table.remove().await {
                    Ok(true) => tracing::info!(
                        flavour = table.flavour.name(),
                        chain = forward::CHAIN,
                        "removed the forward rules (--cleanup-on-exit)"
                    ),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "removing the forward rules"),
                }
            }
        }
    }
}

/// Removes the masquerade table of an earlier weftd run with `--ip-masq`.
async fn remove_leftover_masq() {
    if !in_path("nft") {
        return;
    }
    let removed = match read_masq().await {
        Ok(Some(_)) => run("nft", &["-f", "-"], Some(&masq::removal())).await,
        Ok(None) => return,
        Err(error) => Err(error),
    };
    match removed {
        Ok(_) => tracing::info!(
            table = masq::TABLE,
            "removed the masquerade table an earlier weftd left (--ip-masq is off)"
        ),
        Err(error) => tracing::warn!(%error, "removing the masquerade table an earlier weftd left"),
    }
}

/// Removes the forward rules of an earlier weftd run with `--forward-rules`.
async fn remove_leftover_forward_rules() {
    for flavour in Flavour::ALL {
        let Some((save, restore)) = resolve_programs(flavour).await else {
            continue;
        };
        let mut table = IptablesTable {
            flavour,
            save,
            restore,
            installed: None,
            trouble: Trouble::default(),
        };
        match table.remove().await {
            Ok(true) => tracing::info!(
                flavour = flavour.name(),
                chain = forward::CHAIN,
                "removed the forward rules an earlier weftd left (--forward-rules is off)"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "removing the forward rules an earlier weftd left")
            }
        }
    }
}

/// Replaces the masquerade table in one transaction and reads it back.
async fn install_masq(network: Ipv4Net, subnet: Ipv4Net) -> Result<String, FirewallError> {
    run("nft", &["-f", "-"], Some(&masq::ruleset(network, subnet))).await?;
    match read_masq().await? {
        Some(listing) if masq::looks_installed(&listing) => Ok(listing),
        other => Err(FirewallError::Unexpected(format!(
            "nft accepted table ip {} but lists {other:?}",
            masq::TABLE
        ))),
    }
}

/// `nft list table ip weft`, normalized; `None` when the table does not exist.
async fn read_masq() -> Result<Option<String>, FirewallError> {
    match run("nft", &["list", "table", "ip", masq::TABLE], None).await {
        Ok(listing) => Ok(Some(masq::normalize_listing(&listing))),
        Err(FirewallError::Failed { stderr, .. }) if masq::is_absent_error(&stderr) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Masquerade table now vs. as installed.
fn check_masq(now: Option<&str>, installed: Option<&str>) -> Check {
    match (now, installed) {
        (None, _) => Check::Missing,
        (Some(now), Some(installed)) if now == installed => Check::Intact,
        (Some(_), _) => Check::Altered,
    }
}

async fn reconcile_masq(
    masq: &mut Masquerade,
    network: Ipv4Net,
    subnet: Ipv4Net,
    metrics: &Metrics,
) {
    const WHAT: &str = "keeping the masquerade table";
    let now = match read_masq().await {
        Ok(now) => now,
        Err(error) => return masq.trouble.report(WHAT, &error),
    };
    let found = check_masq(now.as_deref(), masq.installed.as_deref());
    if found == Check::Intact {
        return masq.trouble.clear(WHAT);
    }
    match install_masq(network, subnet).await {
        Ok(listing) => {
            masq.installed = Some(listing);
            metrics.count_repair(Repair::Masquerade);
            masq.trouble.clear(WHAT);
            tracing::warn!(
                table = masq::TABLE,
                "the masquerade table was {}: put back",
                found.word()
            );
        }
        Err(error) => masq.trouble.report(WHAT, &error),
    }
}

/// The `(save, restore)` programs of `flavour`, if installed. A plain `iptables-save`
/// counts only when its `--version` names this flavour.
async fn resolve_programs(flavour: Flavour) -> Option<(&'static str, &'static str)> {
    for (save, restore) in flavour.programs() {
        if !(in_path(save) && in_path(restore)) {
            continue;
        }
        if save.contains(match flavour {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
        }) {
            return Some((save, restore));
        }
        let version = run(save, &["--version"], None).await.ok()?;
        if version.contains("nf_tables") == (flavour == Flavour::Nft) {
            return Some((save, restore));
        }
    }
    None
}

/// Whether the legacy x_tables filter table is loaded in this namespace (it is loaded
/// on first use, so a host that never ran iptables-legacy has none).
fn legacy_filter_loaded() -> bool {
    std::fs::read_to_string(Path::new(LEGACY_TABLES))
        .is_ok_and(|names| names.lines().any(|name| name.trim() == "filter"))
}

impl IptablesTable {
    async fn read(&self) -> Result<forward::FilterTable, FirewallError> {
        Ok(forward::parse_save(
            &run(self.save, &["-t", "filter"], None).await?,
        ))
    }

    /// Adds weft's rules if the table is in use; `later`: found at a reconcile, not at
    /// start (logged, since it means the host's firewall changed under weftd).
    async fn adopt_if_in_use(&mut self, network: Ipv4Net, later: bool) {
        let what = format!(
            "adding the forward rules to the {} filter table",
            self.flavour.name()
        );
        // The legacy tables say whether they exist without running a program.
        if self.flavour == Flavour::Legacy && !legacy_filter_loaded() {
            return;
        }
        let table = match self.read().await {
            Ok(table) => table,
            Err(error) => return self.trouble.report(&what, &error),
        };
        if !table.in_use() {
            return;
        }
        match self.install(network, &table.weft).await {
            Ok(()) => {
                self.trouble.clear(&what);
                tracing::info!(
                    flavour = self.flavour.name(),
                    forward_policy = table.forward_policy.as_deref().unwrap_or("?"),
                    chain = forward::CHAIN,
                    "{} accept rules for {network} in filter FORWARD",
                    if later {
                        "the filter table came into use: added"
                    } else {
                        "added"
                    }
                );
            }
            Err(error) => self.trouble.report(&what, &error),
        }
    }

    /// One restore transaction, then reads the rules back as the reference.
    async fn install(&mut self, network: Ipv4Net, now: &WeftRules) -> Result<(), FirewallError> {
        let script = forward::install_script(network, now);
        run(self.restore, &[XTABLES_WAIT, "--noflush"], Some(&script)).await?;
        let back = self.read().await?.weft;
        if !forward::looks_installed(&back, network) {
            return Err(FirewallError::Unexpected(format!(
                "{} accepted weft's forward rules but {} shows {back:?}",
                self.restore, self.save
            )));
        }
        self.installed = Some(back);
        Ok(())
    }

    async fn reconcile(&mut self, network: Ipv4Net, metrics: &Metrics) {
        let what = format!(
            "keeping the forward rules in the {} filter table",
            self.flavour.name()
        );
        let now = match self.read().await {
            Ok(table) => table.weft,
            Err(error) => return self.trouble.report(&what, &error),
        };
        let Some(installed) = &self.installed else {
            return;
        };
        let found = forward::check(&now, installed);
        if found == Check::Intact {
            return self.trouble.clear(&what);
        }
        match self.install(network, &now).await {
            Ok(()) => {
                metrics.count_repair(Repair::ForwardRules);
                self.trouble.clear(&what);
                tracing::warn!(
                    flavour = self.flavour.name(),
                    chain = forward::CHAIN,
                    "the forward rules were {}: put back",
                    found.word()
                );
            }
            Err(error) => self.trouble.report(&what, &error),
        }
    }

    /// Removes weft's rules from this table; `true` when there were some.
    async fn remove(&mut self) -> Result<bool, FirewallError> {
        if self.flavour == Flavour::Legacy && !legacy_filter_loaded() {
            return Ok(false);
        }
        let now = self.read().await?.weft;
        self.installed = None;
        match forward::removal_script(&now) {
            Some(script) => {
                run(self.restore, &[XTABLES_WAIT, "--noflush"], Some(&script)).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Logs, once per chain, every nftables forward chain that may drop pod traffic and
/// that weft cannot add accepts to (another table's drop is final).
async fn warn_about_blocking_nft_chains(fwd: &mut ForwardRules, network: Ipv4Net) {
    if !in_path("nft") {
        return;
    }
    let ruleset = match run("nft", &["-j", "list", "ruleset"], None).await {
        Ok(json) => json,
        Err(error) => {
            tracing::warn!(%error, "cannot list the nftables ruleset to look for forward chains that drop pod traffic");
            return;
        }
    };
    let chains = match nft::forward_chains(&ruleset) {
        Ok(chains) => chains,
        Err(error) => {
            tracing::warn!(%error, "cannot read the nftables ruleset");
            return;
        }
    };
    let iptables_nft_handled = fwd
        .tables
        .iter()
        .any(|t| t.flavour == Flavour::Nft && t.installed.is_some());
    for chain in nft::blocking(&chains, iptables_nft_handled) {
        if fwd.warned.insert(chain.path()) {
            tracing::warn!(
                chain = %chain.path(),
                "nftables chain {} (hook forward, {}) may drop pod traffic between nodes: weft \
                 cannot overrule a drop in a table it does not own; add `ip saddr {network} accept` \
                 and `ip daddr {network} accept` to that chain, before its drop rules",
                chain.path(),
                chain.reason()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_check_tells_missing_altered_and_intact() {
        assert_eq!(check_masq(None, Some("table ip weft {")), Check::Missing);
        assert_eq!(check_masq(None, None), Check::Missing);
        assert_eq!(
            check_masq(Some("table ip weft {"), Some("table ip weft {")),
            Check::Intact
        );
        assert_eq!(
            check_masq(Some("table ip weft { x"), Some("table ip weft {")),
            Check::Altered
        );
        // Never read back (a failed install): whatever is there is replaced.
        assert_eq!(check_masq(Some("table ip weft {"), None), Check::Altered);
    }
}
