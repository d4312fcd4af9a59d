//! etcd over TLS with client certificates: the subnet manager works with
//! `--etcd-cafile/--etcd-certfile/--etcd-keyfile`, and fails clearly without them or
//! with unusable ones. Certificates are made by the test with `openssl`; etcd runs on
//! loopback ports of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::sync::watch;
use weft_daemon::subnet::{ControlStatus, EtcdOptions, ManagerConfig, Registry, SubnetManager};
use weft_tests::etcd::free_port;
use weft_tests::netns::Child;

const PREFIX: &str = "/coreos.com/network";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=weft-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        let mut req = vec!["req", "-subj"];
        let subject = format!("/CN=weft-test-{name}");
        req.push(&subject);
        req.extend(ec);
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        std::fs::write(
            dir.join(&ext),
            format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
    }
}

struct TlsEtcd {
    _child: Child,
    endpoint: String,
    dir: PathBuf,
}

impl TlsEtcd {
    fn start(dir: &Path) -> TlsEtcd {
        let (client, peer) = (free_port().unwrap(), free_port().unwrap());
        let endpoint = format!("https://127.0.0.1:{client}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=tls")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=tls=http://127.0.0.1:{peer}"))
            .arg(format!("--cert-file={}", dir.join("server.crt").display()))
            .arg(format!("--key-file={}", dir.join("server.key").display()))
            .arg(format!(
                "--trusted-ca-file={}",
                dir.join("ca.crt").display()
            ))
            .arg("--client-cert-auth")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = Child::spawn(cmd).expect("spawn etcd");
        TlsEtcd {
            _child: child,
            endpoint,
            dir: dir.to_owned(),
        }
    }

    fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.endpoint.clone()],
            prefix: PREFIX.into(),
            cafile: Some(self.dir.join("ca.crt")),
            certfile: Some(self.dir.join("client.crt")),
            keyfile: Some(self.dir.join("client.key")),
            ..EtcdOptions::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_manager_works_over_tls_and_fails_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let etcd = TlsEtcd::start(dir.path());
    let opts = etcd.options();

    // With the certificates: wait for etcd to answer, write the config, lease a subnet.
    let registry = Registry::connect(&opts).await.expect("connect over TLS");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match registry.get_config().await {
            Ok(_) => break,
            Err(e) => {
                let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "etcd over TLS never answered: {e}\n{log}"
                );
                // Polling interval while etcd starts, not a synchronisation sleep.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut client = registry.client();
    client
        .put(
            format!("{PREFIX}/config"),
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
            None,
        )
        .await
        .unwrap();
    let manager = SubnetManager::new(
        registry,
        ManagerConfig::new(
            "192.0.2.21".parse().unwrap(),
            [2, 0, 0, 0, 0, 21],
            Duration::from_secs(60),
        ),
        ControlStatus::new(),
    );
    let (_tx, mut shutdown) = watch::channel(false);
    let netconf = manager.wait_for_netconf(&mut shutdown).await.unwrap();
    let held = manager.acquire(&netconf).await.expect("acquire over TLS");
    assert!(netconf.network.contains(&held.subnet));

    // Without a client certificate and CA: requests fail, naming the endpoint.
    let bare = EtcdOptions {
        cafile: None,
        certfile: None,
        keyfile: None,
        ..opts.clone()
    };
    let err = match Registry::connect(&bare).await {
        Ok(registry) => registry.get_config().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&etcd.endpoint), "{err}");

    // TLS files with a plain-http endpoint: refused up front.
    let plain = EtcdOptions {
        endpoints: vec![etcd.endpoint.replace("https://", "http://")],
        ..opts.clone()
    };
    let err = Registry::connect(&plain).await.unwrap_err();
    assert!(
        err.is_permanent() && err.to_string().contains("https://"),
        "{err}"
    );

    // A missing CA file: the error names the flag and the path.
    let missing = EtcdOptions {
        cafile: Some(dir.path().join("no-such-ca.crt")),
        ..opts.clone()
    };
    let err = Registry::connect(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("--etcd-cafile") && err.contains("no-such-ca.crt"),
        "{err}"
    );
}
