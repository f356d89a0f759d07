//! Embeds an extra CA certificate when `AZSIM_CA_FILE` names one at build time (the local
//! hub's `.azsim/hub/ca.pem`, to run the board against `azsim hub` on a laptop); otherwise
//! the firmware trusts only the two Azure roots in `certs/`.
//!
//! Sets `cfg(azsim_dps)` when `AZSIM_ID_SCOPE` is set: the board then provisions through DPS
//! first, and only such a build carries the DPS code.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=AZSIM_CA_FILE");
    println!("cargo::rerun-if-env-changed=AZSIM_ID_SCOPE");
    println!("cargo::rustc-check-cfg=cfg(azsim_dps)");
    if std::env::var_os("AZSIM_ID_SCOPE").is_some_and(|s| !s.is_empty()) {
        println!("cargo::rustc-cfg=azsim_dps");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let extra = match std::env::var_os("AZSIM_CA_FILE") {
        Some(path) if !path.is_empty() => {
            // Build scripts run in the package directory, not where cargo was invoked: a
            // relative path is taken from the workspace root (where `.azsim/hub` usually is).
            let mut path = PathBuf::from(path);
            if path.is_relative() {
                let manifest =
                    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
                path = manifest.join("../..").join(path);
            }
            println!("cargo::rerun-if-changed={}", path.display());
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => pem,
                Ok(_) => panic!("AZSIM_CA_FILE: {} holds no PEM certificate", path.display()),
                Err(e) => panic!("AZSIM_CA_FILE: cannot read {}: {e}", path.display()),
            }
        }
        _ => String::new(),
    };
    std::fs::write(out.join("extra_ca.pem"), extra).expect("write extra_ca.pem");
}
