//! The composite action (`.github/actions/azsim-hub/action.yml`): its `run:` steps executed as
//! GitHub Actions does, against a real `azsim hub start`.

use super::*;

/// One step of a composite action, as far as this action uses the syntax.
#[derive(Debug, Default)]
struct Step {
    name: String,
    cond: Option<String>,
    env: Vec<(String, String)>,
    run: String,
}

/// The inputs' defaults and the steps of `action.yml` (the restricted shape its header
/// describes: block scalars only for `run: |`).
fn parse_action(yaml: &str) -> (HashMap<String, String>, Vec<Step>) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut defaults = HashMap::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut section = "";
    let mut input = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent(line) == 0 {
            section = if t == "inputs:" { "inputs" } else { "" };
            if t == "runs:" {
                section = "runs";
            }
            continue;
        }
        match section {
            "inputs" if indent(line) == 2 => input = t.trim_end_matches(':').to_owned(),
            "inputs" => {
                if let Some(d) = t.strip_prefix("default:") {
                    defaults.insert(input.clone(), unquote(d));
                }
            }
            "runs" => {
                if let Some(name) = t.strip_prefix("- name:") {
                    steps.push(Step {
                        name: name.trim().to_owned(),
                        ..Default::default()
                    });
                    continue;
                }
                let Some(step) = steps.last_mut() else {
                    continue;
                };
                if let Some(c) = t.strip_prefix("if:") {
                    step.cond = Some(c.trim().to_owned());
                } else if t == "env:" {
                    let base = indent(line);
                    while i < lines.len() && indent(lines[i]) > base && !lines[i].trim().is_empty()
                    {
                        let (k, v) = lines[i].trim().split_once(':').unwrap();
                        step.env.push((k.to_owned(), v.trim().to_owned()));
                        i += 1;
                    }
                } else if t == "run: |" {
                    let base = indent(line);
                    let body_indent = indent(lines[i]);
                    while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > base)
                    {
                        let l = lines[i];
                        step.run.push_str(l.get(body_indent..).unwrap_or(""));
                        step.run.push('\n');
                        i += 1;
                    }
                }
            }
            _ => {}
        }
    }
    (defaults, steps)
}

/// `${{ inputs.X }}`, `${{ github.action_path }}`, `${{ runner.temp }}`.
fn expand(expr: &str, ctx: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start;
        let key = rest[start + 3..end].trim();
        out.push_str(
            ctx.get(key)
                .unwrap_or_else(|| panic!("unknown expression {key}")),
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The assignments of a `$GITHUB_ENV` file: `K=v` lines and the `K<<DELIM` multi-line form.
fn parse_github_env(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((k, delim)) = line.split_once("<<")
            && !k.contains('=')
        {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delim).collect();
            out.push((k.to_owned(), value.join("\n")));
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// `inputs.X == ''` / `inputs.X != ''`.
fn holds(cond: &str, ctx: &HashMap<String, String>) -> bool {
    let (lhs, eq) = if let Some((l, _)) = cond.split_once("!=") {
        (l, false)
    } else if let Some((l, _)) = cond.split_once("==") {
        (l, true)
    } else {
        panic!("unsupported if: {cond}")
    };
    let v = ctx
        .get(lhs.trim())
        .unwrap_or_else(|| panic!("unknown {lhs}"));
    v.is_empty() == eq
}

#[test]
fn the_composite_action_steps_start_a_hub_and_fill_github_env() {
    let action = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/actions/azsim-hub/action.yml");
    let (defaults, steps) = parse_action(&std::fs::read_to_string(&action).unwrap());
    assert!(steps.len() >= 2, "{steps:?}");
    assert!(defaults.contains_key("state-dir") && defaults.contains_key("device"));

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let _guard = StopOnDrop(state.clone());

    let mut ctx: HashMap<String, String> = defaults
        .into_iter()
        .map(|(k, v)| (format!("inputs.{k}"), v))
        .collect();
    // The install step is replaced by the binary this test run built.
    ctx.insert("inputs.azsim".into(), AZSIM.into());
    ctx.insert("inputs.state-dir".into(), state_arg(&state));
    ctx.insert("inputs.device".into(), "ci-device".into());
    ctx.insert("inputs.mqtt-port".into(), "0".into());
    ctx.insert("inputs.https-port".into(), "0".into());
    ctx.insert(
        "github.action_path".into(),
        action.parent().unwrap().display().to_string(),
    );
    ctx.insert("runner.temp".into(), tmp.path().display().to_string());

    // As Actions does: each step gets a fresh $GITHUB_ENV file, and what it wrote there is in
    // the environment of the steps after it.
    let mut exported: HashMap<String, String> = HashMap::new();
    let mut ran = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        if let Some(c) = &step.cond
            && !holds(c, &ctx)
        {
            continue;
        }
        let github_env = tmp.path().join(format!("github_env_{n}"));
        let github_path = tmp.path().join(format!("github_path_{n}"));
        std::fs::write(&github_env, "").unwrap();
        std::fs::write(&github_path, "").unwrap();
        let mut cmd = Command::new("bash");
        cmd.args([
            "--noprofile",
            "--norc",
            "-e",
            "-o",
            "pipefail",
            "-c",
            &step.run,
        ])
        .current_dir(tmp.path())
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env_remove("AZSIM")
        .envs(&exported)
        .env("GITHUB_ENV", &github_env)
        .env("GITHUB_PATH", &github_path);
        for (k, v) in &step.env {
            cmd.env(k, expand(v, &ctx));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "step {:?}: {}{}",
            step.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        exported.extend(parse_github_env(
            &std::fs::read_to_string(&github_env).unwrap(),
        ));
        ran.push(step.name.clone());
    }
    assert!(!ran.iter().any(|n| n.contains("Build")), "{ran:?}");
    let vars = &exported;
    assert_eq!(code(&status(&state)), 0, "the action left a running hub");
    assert_eq!(vars["AZSIM"], AZSIM);
    assert_eq!(vars.len(), 8, "{:?}", vars.keys());
    assert!(vars["EVENTHUB_CONNECTION_STRING"].contains(";EntityPath=localhost"));
    let ca = state.join("ca.pem").display().to_string();
    assert_eq!(vars["AZSIM_CA_FILE"], ca);
    assert_eq!(vars["NODE_EXTRA_CA_CERTS"], ca);
    assert!(vars["REQUESTS_CA_BUNDLE"].ends_with("ca-bundle.pem"));
    assert!(vars["SSL_CERT_FILE"].ends_with("ca-bundle.pem"));
    assert!(vars["IOTHUB_CONNECTION_STRING"].starts_with("HostName=localhost:"));
    assert!(
        vars["IOTHUB_DEVICE_CONNECTION_STRING"].contains(";DeviceId=ci-device;"),
        "{vars:?}"
    );

    // What a later step sees works: the device is in the registry.
    let out = Command::new(AZSIM)
        .args(["device", "show", "ci-device", "--connection-string"])
        .current_dir(tmp.path())
        .env(
            "IOTHUB_CONNECTION_STRING",
            &vars["IOTHUB_CONNECTION_STRING"],
        )
        .env("AZSIM_CA_FILE", &vars["AZSIM_CA_FILE"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        vars["IOTHUB_DEVICE_CONNECTION_STRING"]
    );
    assert_eq!(code(&stop(&state)), 0);
}
