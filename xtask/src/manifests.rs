//! deploy/kubernetes as a cluster would receive it: rendered by `kubectl
//! kustomize`, every object validated against its API schema (the core kinds
//! by kubernetes-validate, the PodMonitor by
//! deploy/kubernetes/tests/podmonitor.schema.json, which kubernetes-validate
//! has no schema for), then checked for what sonde itself needs of them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::workspace;

/// The directories users apply, and the kinds each must render.
const KUSTOMIZATIONS: [(&str, &[&str]); 2] = [
    ("deploy/kubernetes", &[POD_MONITOR]),
    ("deploy/kubernetes/base", &[]),
];
const CORE_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "DaemonSet",
];
const POD_MONITOR: &str = "PodMonitor";
const PODMONITOR_SCHEMA: &str = "deploy/kubernetes/tests/podmonitor.schema.json";
/// The capabilities sonde's container holds, and no other (see the
/// DaemonSet's comments for why each).
const CAPABILITIES: [&str; 3] = ["BPF", "PERFMON", "SYS_PTRACE"];
/// The job label the alerts of deploy/prometheus select on.
const JOB: &str = "sonde";

pub fn check() -> Result<()> {
    for (dir, extra_kinds) in KUSTOMIZATIONS {
        let objects = render(dir)?;
        let mut kinds: Vec<&str> = objects.iter().map(kind).collect();
        let mut expected: Vec<&str> = CORE_KINDS.iter().chain(extra_kinds).copied().collect();
        kinds.sort_unstable();
        expected.sort_unstable();
        ensure!(
            kinds == expected,
            "{dir} renders {kinds:?}, expected {expected:?}"
        );
        validate_schemas(&objects).with_context(|| format!("validating {dir}"))?;
        let problems = problems(&objects);
        ensure!(problems.is_empty(), "{dir}:\n  {}", problems.join("\n  "));
        eprintln!(
            "{dir}: {} objects valid and as sonde needs them",
            objects.len()
        );
    }
    Ok(())
}

/// `kubectl kustomize dir`, as JSON values (PyYAML reads kubectl's YAML).
pub fn render(dir: &str) -> Result<Vec<Value>> {
    let yaml = output(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(workspace::root().join(dir)),
        None,
    )?;
    let json = output(
        Command::new("python3").args([
            "-c",
            "import json, sys, yaml; \
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ]),
        Some(&yaml),
    )?;
    Ok(serde_json::from_str(&json)?)
}

fn validate_schemas(objects: &[Value]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sonde-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = validate_in(&dir, objects);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn validate_in(dir: &Path, objects: &[Value]) -> Result<()> {
    // JSON is YAML: one document per object.
    let core = dir.join("core.yaml");
    let mut stream = String::new();
    for object in objects.iter().filter(|o| kind(o) != POD_MONITOR) {
        stream.push_str("---\n");
        stream.push_str(&object.to_string());
        stream.push('\n');
    }
    std::fs::write(&core, stream)?;
    // --strict rejects fields the schema does not know. An object without a
    // schema is only a warning to the tool, and an error here.
    let report = output(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&core),
        None,
    )?;
    ensure!(report.trim().is_empty(), "kubernetes-validate:\n{report}");

    for (index, monitor) in objects
        .iter()
        .filter(|o| kind(o) == POD_MONITOR)
        .enumerate()
    {
        let path = dir.join(format!("podmonitor-{index}.json"));
        std::fs::write(&path, monitor.to_string())?;
        output(
            Command::new("python3")
                .args([
                    "-c",
                    "import json, sys, jsonschema; \
                     jsonschema.Draft202012Validator(json.load(open(sys.argv[2])))\
                     .validate(json.load(open(sys.argv[1])))",
                ])
                .arg(&path)
                .arg(workspace::root().join(PODMONITOR_SCHEMA)),
            None,
        )
        .context("PodMonitor schema")?;
    }
    Ok(())
}

/// Runs `command` with `stdin`, returns its stdout; its stdout and stderr
/// are the error when it fails.
fn output(command: &mut Command, stdin: Option<&str>) -> Result<String> {
    let line = crate::cmd::display(command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}` (run cargo xtask setup)"))?;
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// What sonde needs of the rendered objects, beyond schema validity: each
/// problem as a sentence; none when all is well.
pub fn problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let daemonsets: Vec<&Value> = objects.iter().filter(|o| kind(o) == "DaemonSet").collect();
    let [daemonset] = daemonsets[..] else {
        return vec![format!("{} DaemonSets, expected 1", daemonsets.len())];
    };
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    if spec["hostPID"] != Value::Bool(true) {
        problems.push(
            "hostPID is not true: sonde could not read /proc of the pids the kernel reports".into(),
        );
    }
    if !array_at(spec, "/tolerations")
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none())
    {
        problems.push("no toleration of every taint: some nodes would go unobserved".into());
    }
    let containers = array_at(spec, "/containers");
    let [container] = containers else {
        problems.push(format!("{} containers, expected 1", containers.len()));
        return problems;
    };
    let security = &container["securityContext"];
    if security["privileged"] == Value::Bool(true) {
        problems.push("the container is privileged: it must hold only its capabilities".into());
    }
    if security["readOnlyRootFilesystem"] != Value::Bool(true) {
        problems.push("the root filesystem is not read-only".into());
    }
    if security["allowPrivilegeEscalation"] != Value::Bool(false) {
        problems.push("privilege escalation is not disallowed".into());
    }
    let dropped: Vec<&str> = array_at(security, "/capabilities/drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut added: Vec<&str> = array_at(security, "/capabilities/add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    added.sort_unstable();
    if dropped != ["ALL"] || added != CAPABILITIES {
        problems.push(format!(
            "capabilities drop {dropped:?} add {added:?}: expected drop [\"ALL\"] add {CAPABILITIES:?}"
        ));
    }
    for mount in array_at(container, "/volumeMounts") {
        if mount["readOnly"] != Value::Bool(true) {
            problems.push(format!("volume mount {} is writable", mount["mountPath"]));
        }
    }
    if !array_at(container, "/env").iter().any(|var| {
        var["name"] == "SONDE_NODE_NAME"
            && var.pointer("/valueFrom/fieldRef/fieldPath") == Some(&Value::from("spec.nodeName"))
    }) {
        problems.push(
            "SONDE_NODE_NAME is not set from spec.nodeName: pods could not be watched".into(),
        );
    }
    problems.extend(config_problems(objects, spec, container));
    problems.extend(port_problems(objects, pod, container));
    problems
}

/// The container is started with `--config PATH`, and PATH is the config
/// file of the rendered ConfigMap, mounted there.
fn config_problems(objects: &[Value], spec: &Value, container: &Value) -> Vec<String> {
    let args: Vec<&str> = array_at(container, "/args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let Some(path) = args
        .windows(2)
        .find(|pair| pair[0] == "--config")
        .map(|pair| Path::new(pair[1]))
    else {
        return vec![format!("args {args:?} have no `--config PATH`")];
    };
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return vec![format!("--config {} is not a file path", path.display())];
    };
    let mount = array_at(container, "/volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir));
    let Some(volume_name) = mount.and_then(|m| m["name"].as_str()) else {
        return vec![format!("nothing is mounted at {}", dir.display())];
    };
    let config_map = array_at(spec, "/volumes")
        .iter()
        .find(|v| v["name"] == volume_name)
        .and_then(|v| str_at(v, "/configMap/name"));
    let Some(config_map) = config_map else {
        return vec![format!("volume {volume_name} is not a ConfigMap")];
    };
    let rendered = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && o["metadata"]["name"] == config_map);
    let file = file.to_string_lossy();
    match rendered.and_then(|c| c["data"][file.as_ref()].as_str()) {
        Some(_) => Vec::new(),
        None => vec![format!(
            "ConfigMap {config_map} (mounted at {}) has no {file}",
            dir.display()
        )],
    }
}

/// Probes, scrape annotations, PodMonitor and config all name the port
/// sonde serves on.
fn port_problems(objects: &[Value], pod: &Value, container: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let ports = array_at(container, "/ports");
    let [port] = ports else {
        return vec![format!("{} container ports, expected 1", ports.len())];
    };
    let (Some(name), Some(number)) = (port["name"].as_str(), port["containerPort"].as_u64()) else {
        return vec!["the container port has no name or number".into()];
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        let on_port = get["port"] == name || get["port"].as_u64() == Some(number);
        if get["path"] != path || !on_port {
            problems.push(format!(
                "{probe} is {get}, expected GET {path} on port {name}"
            ));
        }
    }
    let annotations = &pod["metadata"]["annotations"];
    if annotations["prometheus.io/scrape"] != "true"
        || annotations["prometheus.io/port"] != number.to_string().as_str()
        || annotations["prometheus.io/path"] != "/metrics"
    {
        problems.push(format!(
            "scrape annotations {annotations} do not name /metrics on {number}"
        ));
    }
    let config = objects
        .iter()
        .filter(|o| kind(o) == "ConfigMap")
        .filter_map(|c| c["data"]["sonde.yaml"].as_str())
        .next()
        .unwrap_or_default();
    let addr = config
        .lines()
        .find_map(|line| line.strip_prefix("metrics-addr:"))
        .map(str::trim);
    if addr.and_then(|a| a.rsplit_once(':')).map(|(_, p)| p) != Some(number.to_string().as_str()) {
        problems.push(format!(
            "sonde.yaml's metrics-addr {addr:?} is not port {number}"
        ));
    }
    let labels = &pod["metadata"]["labels"];
    for monitor in objects.iter().filter(|o| kind(o) == POD_MONITOR) {
        let spec = &monitor["spec"];
        let selected = spec["selector"]["matchLabels"]
            .as_object()
            .is_some_and(|wanted| wanted.iter().all(|(k, v)| &labels[k] == v));
        if !selected {
            problems.push("the PodMonitor's selector does not match the pods".into());
        }
        let job = spec["jobLabel"].as_str().map(|l| &labels[l]);
        if job.and_then(Value::as_str) != Some(JOB) {
            problems.push(format!(
                "the PodMonitor's job is not `{JOB}`, which the alerts select"
            ));
        }
        for endpoint in array_at(spec, "/podMetricsEndpoints") {
            if endpoint["port"] != name || endpoint["path"] != "/metrics" {
                problems.push(format!(
                    "PodMonitor endpoint {endpoint} is not /metrics on port {name}"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real render, each case changed in one place: every check must
    /// name what the change broke, and the untouched render must pass.
    #[test]
    fn finds_what_sonde_needs_broken() {
        let objects = render("deploy/kubernetes").expect("render (cargo xtask setup?)");
        assert_eq!(problems(&objects), Vec::<String>::new());
        let container = "/spec/template/spec/containers/0";
        let cases: [(&str, Value, &str); 13] = [
            ("/spec/template/spec/hostPID", false.into(), "hostPID"),
            (
                &format!("{container}/securityContext/privileged"),
                true.into(),
                "privileged",
            ),
            (
                &format!("{container}/securityContext/readOnlyRootFilesystem"),
                false.into(),
                "read-only",
            ),
            (
                &format!("{container}/securityContext/capabilities/add/2"),
                "SYS_ADMIN".into(),
                "capabilities",
            ),
            (
                &format!("{container}/args/1"),
                "/etc/other/sonde.yaml".into(),
                "nothing is mounted at /etc/other",
            ),
            (
                &format!("{container}/args/1"),
                "/etc/sonde/other.yaml".into(),
                "has no other.yaml",
            ),
            (
                &format!("{container}/livenessProbe/httpGet/path"),
                "/readyz".into(),
                "livenessProbe",
            ),
            (
                &format!("{container}/readinessProbe/httpGet/port"),
                9090.into(),
                "readinessProbe",
            ),
            (
                &format!("{container}/ports/0/containerPort"),
                9090.into(),
                "9090",
            ),
            (
                &format!("{container}/volumeMounts/1/readOnly"),
                false.into(),
                "writable",
            ),
            (
                &format!("{container}/env/0/valueFrom/fieldRef/fieldPath"),
                "metadata.name".into(),
                "SONDE_NODE_NAME",
            ),
            (
                "/spec/template/spec/tolerations/0/effect",
                "NoSchedule".into(),
                "toleration",
            ),
            (
                "/spec/template/metadata/labels/app.kubernetes.io~1name",
                "other".into(),
                "PodMonitor",
            ),
        ];
        for (pointer, value, expected) in cases {
            let mut changed = objects.clone();
            let daemonset = changed.iter_mut().find(|o| kind(o) == "DaemonSet").unwrap();
            match daemonset.pointer_mut(pointer) {
                Some(slot) => *slot = value,
                None => {
                    let (parent, key) = pointer.rsplit_once('/').unwrap();
                    daemonset.pointer_mut(parent).unwrap()[key] = value;
                }
            }
            let found = problems(&changed).join("\n");
            assert!(
                found.contains(expected),
                "{pointer}: {found:?} lacks {expected:?}"
            );
        }
    }
}
