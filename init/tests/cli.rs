//! i2kit-init outside a VM: it refuses to act as init and validates pod.json.

use std::process::Command;

fn init() -> Command {
    Command::new(env!("CARGO_BIN_EXE_i2kit-init"))
}

#[test]
fn refuses_to_run_unless_pid_1() {
    let out = init().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as PID 1"));
}

#[test]
fn check_validates_pod_json() {
    let dir = tempfile_dir();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"version":1,"name":"web","hostname":"web","restartPolicy":"Never",
            "terminationGracePeriodSeconds":5,"kernelRelease":"6.1","modules":[],
            "containers":[{"name":"c","image":"x","rootfs":"/containers/c/rootfs","argv":["sh"],
            "env":[],"workingDir":"/","uid":0,"gid":0,"ports":[]}]}"#,
    )
    .unwrap();
    let out = init().arg("--check").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod web with 1 container(s): ok"));

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"version":1,"name":"web""#).unwrap();
    let out = init().arg("--check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EOF while parsing"));

    let out = init()
        .arg("--check")
        .arg(dir.join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("i2kit-init-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
