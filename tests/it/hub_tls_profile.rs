//! Azure's TLS profile as the hub's default (issue 15): every TLS listener presents an RSA-2048
//! chain (server certificate, intermediate, root) over TLS 1.2 only, with IoT Hub's ECDHE-RSA
//! AES-GCM suites; a TLS 1.3-only client is refused. `--tls modern` keeps one ECDSA P-256
//! certificate and TLS 1.3. Real handshakes against real hubs; the official Python device SDK
//! runs against the default profile in `hub_x509` and `service_python_sdk`, the firmware loop's
//! host test and the `azsim run` tests use the default too (`TestHub::start`).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use x509_parser::public_key::PublicKey;

use crate::support::TestHub;

/// What a handshake with `port` negotiated: version, suite and the chain's key kinds (leaf
/// first); or the handshake's error.
async fn handshake(
    hub: &TestHub,
    port: u16,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite, Vec<String>), String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(azsim::tls::root_store(Some(&hub.ca_file)).unwrap())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = s.get_ref();
    let version = conn.protocol_version().unwrap();
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    let keys = conn
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            match c.public_key().parsed().unwrap() {
                PublicKey::RSA(k) => format!("RSA-{}", k.key_size()),
                PublicKey::EC(p) => format!("EC-{}", p.key_size()),
                _ => "other".to_owned(),
            }
        })
        .collect();
    let _ = s.shutdown().await;
    Ok((version, suite, keys))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[tokio::test]
async fn the_default_profile_is_azure_s_rsa_chain_over_tls_1_2_on_every_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(azsim_emulator::HubConfig::new(tmp.path().join("hub"))).await;
    for port in [hub.mqtt_port, hub.https_port] {
        let (version, suite, keys) = handshake(&hub, port, BOTH).await.unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2, "port {port}");
        assert!(
            matches!(
                suite,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ),
            "{suite:?}"
        );
        assert_eq!(
            keys,
            ["RSA-2048", "RSA-2048", "RSA-2048"],
            "leaf, intermediate, root"
        );
        let refused = handshake(&hub, port, TLS13_ONLY).await;
        assert!(
            refused.is_err(),
            "a TLS 1.3-only client must be refused: {refused:?}"
        );
    }
    // The hub keeps serving after the refusals: a device connects over MQTT.
    let key = {
        hub.create_device("d1").await;
        hub.device_key("d1").await
    };
    let (_c, _el) = hub.connect("d1", &key, true).await;
    hub.stop().await;
}

#[tokio::test]
async fn the_modern_profile_is_one_ecdsa_certificate_with_tls_1_3() {
    let hub =
        TestHub::start_configured(|c| c.tls = azsim_emulator::state_dir::TlsProfile::Modern).await;
    let (version, _, keys) = handshake(&hub, hub.mqtt_port, BOTH).await.unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(keys, ["EC-256", "EC-256"], "leaf, CA");
    assert!(handshake(&hub, hub.mqtt_port, TLS13_ONLY).await.is_ok());
    hub.stop().await;
}

/// An existing state directory keeps working across a profile change: the hub makes a new CA
/// for the new profile, says so in its log, and clients that read the new `ca.pem` connect.
#[cfg(unix)]
#[test]
fn a_state_dir_from_another_profile_gets_a_new_ca_and_the_log_says_so() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let run_hub = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args([
                "hub",
                "--mqtt-port",
                "0",
                "--https-port",
                "0",
                "--dashboard-port",
                "off",
                "--json",
            ])
            .args(extra)
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(!line.is_empty(), "the hub printed nothing");
        let ca = std::fs::read_to_string(state.join("ca.pem")).unwrap();
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        (ca, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (modern_ca, _) = run_hub(&["--tls", "modern"]);
    let (modern_again, log) = run_hub(&["--tls", "modern"]);
    assert_eq!(modern_ca, modern_again, "same profile, same CA");
    assert!(!log.contains("TLS profile changed"), "{log}");
    let (azure_ca, log) = run_hub(&[]);
    assert_ne!(azure_ca, modern_ca);
    assert!(log.contains("TLS profile changed"), "{log}");
    assert!(
        log.contains("modern") && log.contains("azure"),
        "from and to: {log}"
    );
    let (code, err) = {
        let out = Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(["hub", "--tls", "rsa", "--state"])
            .arg(&state)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!((code, err.contains("--tls")), (Some(2), true), "{err}");
}
