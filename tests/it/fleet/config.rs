//! What a fleet is started with: bad input exits 2 naming the flag, and the Kubernetes job
//! manifests (devices created by the fleet, or provisioned through DPS) run one shard per pod
//! with memory for its devices and their secrets from Secrets.

#[tokio::test]
async fn bad_input_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    for (args, flag) in [
        (vec!["--devices", "0"], "--devices"),
        (vec!["--devices", "10", "--shard", "3/3"], "--shard"),
        (
            vec!["--connection-strings", missing],
            "--connection-strings",
        ),
        (
            vec!["--devices", "10", "--connect-rate", "0"],
            "--connect-rate",
        ),
        (
            vec!["--devices", "10", "--connect-rate", "lots"],
            "--connect-rate",
        ),
        (vec!["--devices", "10", "--interval", "0s"], "--interval"),
        (vec!["--devices", "10", "--threads", "5000"], "--threads"),
        (
            vec!["--devices", "10", "--timer-resolution", "2s"],
            "--timer-resolution",
        ),
        (
            vec!["--devices", "10", "--group-key", "not base64!"],
            "--group-key",
        ),
        (
            vec![
                "--devices",
                "10",
                "--group-key",
                "a2V5",
                "--provisioning-host",
                "dps.example",
            ],
            "--id-scope",
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("fleet")
            .args(&args)
            .arg("--state")
            .arg(dir.path().join("hub"))
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
            .env_remove("AZSIM_FLEET_DPS_GROUP_KEY")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("hub").exists(), "bad input starts no hub");
}

/// `key: value` of the first line of `yaml` whose key is `key` (the manifests are plain YAML).
fn yaml_value<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
        .trim()
        .trim_matches('"')
}

/// The argument after `flag` in the container's `args` list.
fn yaml_arg<'a>(yaml: &'a str, flag: &str) -> &'a str {
    let mut lines = yaml.lines().map(str::trim);
    lines
        .find(|l| *l == format!("- {flag}"))
        .unwrap_or_else(|| panic!("no {flag} in the args"));
    lines
        .next()
        .and_then(|l| l.strip_prefix("- "))
        .unwrap()
        .trim_matches('"')
}

#[test]
fn the_kubernetes_job_runs_one_shard_per_pod_with_memory_for_its_devices() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let dps = std::fs::read_to_string(dir.join("fleet-dps-job.yaml")).unwrap();
    assert_eq!(yaml_value(&dps, "completions"), yaml_arg(&dps, "--shards"));
    assert_eq!(yaml_value(&dps, "parallelism"), yaml_arg(&dps, "--shards"));
    assert!(
        dps.contains("AZSIM_FLEET_DPS_GROUP_KEY")
            && dps.contains("secretKeyRef")
            && !dps.contains("- --group-key"),
        "the DPS job's group key comes from a Secret"
    );
    assert!(!yaml_arg(&dps, "--id-scope").is_empty());
    let job = std::fs::read_to_string(dir.join("fleet-job.yaml")).unwrap();
    assert_eq!(yaml_value(&job, "completionMode"), "Indexed");
    let completions: u64 = yaml_value(&job, "completions").parse().unwrap();
    let parallelism: u64 = yaml_value(&job, "parallelism").parse().unwrap();
    let shards: u64 = yaml_arg(&job, "--shards").parse().unwrap();
    assert_eq!((completions, parallelism), (shards, shards));
    let devices: u64 = yaml_arg(&job, "--devices").parse().unwrap();
    // The measured cost of a device (README: ~31 KiB) plus the process must fit the request.
    let request_mib: u64 = yaml_value(&job, "memory")
        .strip_suffix("Mi")
        .unwrap()
        .parse()
        .unwrap();
    let need_mib = (devices / shards) * 31 / 1024 + 20;
    assert!(request_mib >= need_mib, "{request_mib} Mi < {need_mib} Mi");
    assert!(
        job.contains("AZSIM_FLEET_HUB_CONNECTION_STRING") && job.contains("secretKeyRef"),
        "the connection string comes from a Secret"
    );

    // Schema validation, offline: kubernetes-validate from PyPI carries the schemas.
    let python = std::env::var_os("AZSIM_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        std::path::PathBuf::from,
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    match std::process::Command::new(&python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&files)
        .output()
    {
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            crate::support::skip(&format!(
                "schema check: kubernetes-validate is not installed in {python:?}"
            ));
        }
        Ok(out) => assert!(
            out.status.success(),
            "kubernetes-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => crate::support::skip(&format!("schema check: {python:?}: {e}")),
    }
}
