use super::*;

fn parse(text: &str) -> Result<Pod, ManifestError> {
    parse_manifest(text, Path::new("m.yml"))
}

fn fixture(name: &str) -> Pod {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    load_manifest(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn paper_compact_example() {
    let pod = fixture("paper-nginx.yml");
    assert_eq!(pod.name, "nginx");
    assert_eq!(pod.replicas, 2);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(
        pod.containers[0].image.to_string(),
        "docker.io/library/nginx:1.25"
    );
    assert_eq!(pod.containers[0].ports[0].container_port, 80);
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
    assert_eq!(pod.settings.kernel.to_string(), DEFAULT_KERNEL);
    assert_eq!(pod.settings.platform, Platform::linux_amd64());
}

#[test]
fn kubernetes_docs_nginx_deployment_parses_as_is() {
    let pod = fixture("k8s-nginx-deployment.yml");
    assert_eq!(pod.name, "nginx-deployment");
    assert_eq!(pod.replicas, 3);
    assert_eq!(pod.hostname, "nginx-deployment");
    assert_eq!(pod.labels.get("app").map(String::as_str), Some("nginx"));
    assert_eq!(pod.termination_grace_period_seconds, DEFAULT_GRACE_SECONDS);
}

#[test]
fn multi_container_deployment() {
    let pod = fixture("multi-container.yml");
    let web = &pod.containers[0];
    assert_eq!(web.name, "web");
    assert!(web.image.digest().is_some());
    assert_eq!(web.command.as_deref(), Some(&["/app/web".to_string()][..]));
    assert_eq!(web.args.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        web.env,
        vec![
            ("MODE".into(), "production".into()),
            ("EMPTY".into(), String::new())
        ]
    );
    assert_eq!(web.ports[1].protocol, "UDP");
    assert_eq!(
        (web.run_as_user, web.run_as_group),
        (Some(1000), Some(1000))
    );
    assert!(web.tuning.contains_key("resources") && web.tuning.contains_key("readinessProbe"));
    assert_eq!(pod.warnings.len(), 2, "{:?}", pod.warnings);
    assert!(
        pod.warnings[0].starts_with("m.yml:") || pod.warnings[0].contains("multi-container.yml:")
    );
    assert_eq!(pod.settings.profile, "aws");
    assert_eq!(pod.settings.cmdline, "quiet");
    assert_eq!(pod.settings.platform.to_string(), "linux/arm64");
    assert_eq!(pod.termination_grace_period_seconds, 10);
    assert_eq!(
        pod.containers[1].image.to_string(),
        "docker.io/library/redis:7"
    );
    let refs: Vec<String> = pod.image_refs().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        refs,
        ["kernel", "init", "stub", "container web", "container cache"]
    );
}

const K8S_HEAD: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n";

/// (manifest, expected line:col, expected words in the message)
#[test]
fn every_error_names_file_line_column_and_field() {
    let cases: &[(String, &str, &[&str])] = &[
        (format!("{K8S_HEAD}      - name: a\n        image: x\n        bogus: 1\n"), "m.yml:11:9", &["unknown field `bogus`"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n        ports:\n        - containerPort: 70000\n"), "m.yml:12:26", &["containerPort", "out of range"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n        ports:\n        - containerPort: eighty\n"), "m.yml:12:26", &["invalid"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n      - name: a\n        image: y\n"), "m.yml:11:15", &["duplicate container name"]),
        (format!("{K8S_HEAD}      - name: Web_1\n        image: x\n"), "m.yml:9:15", &["DNS-1123"]),
        (format!("{K8S_HEAD}      - name: a\n"), "m.yml:9:15", &["image", "missing"]),
        (format!("{K8S_HEAD}      - name: a\n        image: \"\"\n"), "m.yml:10:16", &["image", "empty"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n        env:\n        - name: A\n          valueFrom:\n            secretKeyRef: {{name: s, key: k}}\n"), "m.yml:14:13", &["env[0].valueFrom", "not supported"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n      volumes: []\n"), "m.yml:11:16", &["spec.template.spec.volumes", "not supported"]),
        (format!("{K8S_HEAD}      - name: a\n        image: UPPER/case\n"), "m.yml:10:16", &["lowercase"]),
        (format!("{K8S_HEAD}      - name: a\n        image: x\n      restartPolicy: Sometimes\n"), "m.yml:11:22", &["Always, OnFailure, Never"]),
        ("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: a}\nspec: {template: {spec: {containers: []}}}\n".to_string(), "m.yml:2:7", &["StatefulSet"]),
        ("name: a\ncontainers:\n  web:\n    image: x\n    ports: [0]\n".to_string(), "m.yml:5:13", &["out of range"]),
        ("name: a\ncontainers:\n  web:\n    image: x\n    environment: [NOEQUALS]\n".to_string(), "m.yml:5:19", &["KEY=VALUE"]),
        ("name: a\ncontainers:\n  web:\n    image: x\n    imagee: y\n".to_string(), "m.yml:5:5", &["unknown field `imagee`"]),
        ("name: a\ncontainers:\n  web:\n    image: x\ni2kit:\n  profile: laptop\n".to_string(), "m.yml:6:12", &["unknown kernel profile"]),
        ("name: a\ncontainers:\n  web:\n    image: x\ni2kit:\n  platform: linux/s390x\n".to_string(), "m.yml:6:13", &["linux/amd64 and linux/arm64"]),
        ("name: a\ncontainers: [\n".to_string(), "m.yml:", &[""]),
        ("name: a\ncontainers:\n  web:\n    image: x\n  web:\n    image: y\n".to_string(), "m.yml:5:3", &["duplicate"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  annotations:\n    i2kit.dev/kernal: x\nspec:\n  template:\n    spec:\n      containers:\n      - {name: a, image: x}\n".to_string(), "m.yml:6:23", &["unknown i2kit setting"]),
    ];
    for (text, at, words) in cases {
        let e = parse(text).expect_err(text).to_string();
        assert!(
            e.starts_with(at),
            "{text}\n→ {e}\n(expected to start with {at})"
        );
        for w in *words {
            assert!(e.contains(w), "{text}\n→ {e}\n(expected {w:?})");
        }
    }
}

#[test]
fn compact_command_forms() {
    let pod = parse("name: a\ncontainers:\n  b:\n    image: x\n    command: echo hi\n  c:\n    image: y\n    command: [echo, hi]\n").unwrap();
    assert_eq!(
        pod.containers[0].command.as_ref().unwrap(),
        &["/bin/sh", "-c", "echo hi"]
    );
    assert_eq!(pod.containers[1].command.as_ref().unwrap(), &["echo", "hi"]);
}
