//! The container image and the Kubernetes manifests agree with the config they ship (no cluster
//! or container builder here): the ConfigMap holds `deploy/tollgate.toml`, the container ports
//! are the listeners' and the admin listener's, the probes ask the admin listener's `/status`,
//! the grace period outlasts `drain_timeout`, every file the config names is in a mounted volume
//! or the image, and the image runs `tollgate run` as a non-root user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tollgate_tests::workspace_dir;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn manifests() -> Vec<Value> {
    let text = read("deploy/kubernetes.yaml");
    yaml_rust2::YamlLoader::load_from_str(&text)
        .expect("deploy/kubernetes.yaml is YAML")
        .iter()
        .map(to_json)
        .collect()
}

/// A YAML document as JSON, for indexing (manifests use strings, integers, booleans, lists and
/// maps with string keys).
fn to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => items.iter().map(to_json).collect(),
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML: {other:?}"),
    }
}

fn kind<'a>(manifests: &'a [Value], kind: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn port(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a duration in whole seconds: {duration}"))
}

#[test]
fn manifests_and_image_agree_with_the_shipped_config() {
    let shipped: toml::Table = read("deploy/tollgate.toml").parse().unwrap();
    let manifests = manifests();
    let config_map = kind(&manifests, "ConfigMap");
    let mounted: toml::Table = config_map["data"]["tollgate.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(mounted, shipped, "the ConfigMap holds deploy/tollgate.toml");

    let deployment = kind(&manifests, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tollgate")
        .unwrap();
    let container_port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };

    // Ports: each listener's, and the admin listener's.
    let listeners = shipped["listeners"].as_array().unwrap();
    for listener in listeners {
        let name = listener["name"].as_str().unwrap();
        assert_eq!(
            container_port(name),
            port(listener["address"].as_str().unwrap()),
            "listener {name}"
        );
    }
    let admin_port = port(shipped["admin"]["address"].as_str().unwrap());
    assert_eq!(container_port("admin"), admin_port);
    let service = kind(&manifests, "Service");
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = port["targetPort"].as_str().unwrap();
        assert!(
            listeners.iter().any(|l| l["name"].as_str() == Some(target)),
            "the Service sends traffic to a listener, not to {target}"
        );
    }

    // Probes on the admin listener's /status.
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/status", "{probe}");
        assert_eq!(get["port"], "admin", "{probe}");
    }
    // The reloader posts to the admin listener's port.
    let reloader = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "reloader")
        .unwrap();
    assert!(
        reloader["command"]
            .to_string()
            .contains(&format!("127.0.0.1:{admin_port}/reload"))
    );

    // Graceful termination outlasts the drain.
    let drain = seconds(shipped["drain_timeout"].as_str().unwrap());
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > drain,
        "grace {grace}s must outlast drain_timeout {drain}s"
    );

    // Every file the config names is mounted: the config itself, certificates, ticket keys.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let mounted_path = |path: &str| mounts.iter().any(|m| path.starts_with(&format!("{m}/")));
    let args = container["args"].to_string();
    assert!(args.contains("/etc/tollgate/config/tollgate.toml"));
    assert!(mounted_path("/etc/tollgate/config/tollgate.toml"));
    assert!(mounted_path(shipped["pid_file"].as_str().unwrap()));
    for listener in listeners {
        for key in listener["session_ticket_keys"].as_array().unwrap() {
            assert!(mounted_path(key.as_str().unwrap()), "{key}");
        }
        for certificate in listener["certificates"].as_array().unwrap() {
            assert!(mounted_path(certificate["cert"].as_str().unwrap()));
            assert!(mounted_path(certificate["key"].as_str().unwrap()));
        }
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The image: non-root, `tollgate run` with this config, the plugins the config names.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ENTRYPOINT [\"tollgate\", \"run\"]"));
    assert!(dockerfile.contains("COPY deploy/tollgate.toml /etc/tollgate/config/tollgate.toml"));
    let user = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert_eq!(
        user.split(':').next(),
        Some(pod["securityContext"]["runAsUser"].to_string().as_str())
    );
    for plugin in shipped["plugins"].as_array().unwrap() {
        let path = plugin["path"].as_str().unwrap();
        let file = path.rsplit('/').next().unwrap();
        assert!(path.starts_with("/usr/share/tollgate/plugins/"), "{path}");
        assert!(
            dockerfile.contains(&format!("/{file}")),
            "{file} is in the image"
        );
    }
}
