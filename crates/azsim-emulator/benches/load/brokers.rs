//! The other broker the load bench compares: Debian's mosquitto started with a TLS listener and
//! a certificate from an rcgen CA (the client TLS configuration for either is
//! `common::client_tls`).

use super::*;

pub(super) struct Mosquitto {
    pub(super) child: Child,
    pub(super) port: u16,
    pub(super) ca_file: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

pub(super) fn start_mosquitto(dir: &Path) -> Result<Mosquitto, String> {
    let bin = find_mosquitto().ok_or(
        "mosquitto not found (Debian: `apt-get install -y mosquitto`); skipping the comparison",
    )?;
    // A CA and a server certificate for localhost, like the hub's.
    let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "azsim load bench CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let srv_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut srv_params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| e.to_string())?;
    srv_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let srv = srv_params
        .signed_by(&srv_key, &issuer)
        .map_err(|e| e.to_string())?;
    let ca_file = dir.join("mosq-ca.pem");
    let cert_file = dir.join("mosq-server.pem");
    let key_file = dir.join("mosq-server.key");
    let conf_file = dir.join("mosquitto.conf");
    std::fs::write(&ca_file, ca.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&cert_file, srv.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, srv_key.serialize_pem()).map_err(|e| e.to_string())?;
    let port = free_port();
    let mut conf = String::new();
    let _ = writeln!(conf, "per_listener_settings false");
    let _ = writeln!(conf, "allow_anonymous true");
    let _ = writeln!(conf, "persistence false");
    // Running as root, mosquitto would switch to its own user and lose the temp files.
    let _ = writeln!(conf, "user root");
    let _ = writeln!(conf, "log_dest stderr");
    let _ = writeln!(conf, "log_type error");
    let _ = writeln!(conf, "max_connections -1");
    let _ = writeln!(conf, "set_tcp_nodelay true");
    let _ = writeln!(conf, "listener {port} 127.0.0.1");
    let _ = writeln!(conf, "cafile {}", ca_file.display());
    let _ = writeln!(conf, "certfile {}", cert_file.display());
    let _ = writeln!(conf, "keyfile {}", key_file.display());
    std::fs::write(&conf_file, conf).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&conf_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let m = Mosquitto {
        child,
        port,
        ca_file,
    };
    // Ready when the port accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto did not open its port within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(m)
}
