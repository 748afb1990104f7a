//! The contract between the i2kit builder and i2kit-init, and the init's pure
//! logic (unit-tested on the build machine, linked into the static init).
//!
//! `/etc/i2kit/pod.json` is the resolved Pod, written by the builder and read
//! by i2kit-init. [`PodSpec`] is the one definition of its schema:
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "nginx", "hostname": "nginx",
//!   "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
//!   "kernelRelease": "6.1.0-56-cloud-amd64",
//!   "modules": ["kernel/drivers/virtio/virtio_ring.ko", …],   // load order, under /lib/modules/<release>/
//!   "containers": [{
//!     "name": "nginx", "image": "docker.io/library/nginx:1.25@sha256:…",
//!     "rootfs": "/containers/nginx/rootfs",
//!     "argv": ["nginx", "-g", "daemon off;"], "env": ["PATH=…", "K=V"],
//!     "workingDir": "/", "uid": 0, "gid": 0,
//!     "ports": [{"containerPort": 80, "protocol": "TCP"}],
//!     "tuning": {"readinessProbe": {…}}                        // kept, not enforced
//!   }]
//! }
//! ```
//! The argv is final (Kubernetes rules applied by the builder: `command`
//! replaces ENTRYPOINT, `args` replaces CMD; `argv[0]` without a slash is
//! looked up in the container's `PATH`); env is image ENV then manifest env;
//! uid/gid are numeric.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub mod backoff;
pub mod dhcp;

/// Schema version.
pub const POD_SPEC_VERSION: u32 = 1;
/// Where the builder writes it in the initramfs (relative to `/`).
pub const POD_SPEC_PATH: &str = "etc/i2kit/pod.json";

/// How the init restarts containers (Kubernetes `restartPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Restart whatever the exit status (the Deployment default).
    Always,
    /// Restart on a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `status` (0 = success) runs again.
    pub fn restarts(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

/// A container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Port number, 1-65535.
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Optional port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The resolved Pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// [`POD_SPEC_VERSION`].
    pub version: u32,
    /// Pod name.
    pub name: String,
    /// Hostname to set.
    pub hostname: String,
    /// Restart policy for every container.
    pub restart_policy: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL on shutdown.
    pub termination_grace_period_seconds: u64,
    /// `uname -r` of the kernel the modules belong to.
    pub kernel_release: String,
    /// Modules to load, in order, relative to `/lib/modules/<kernelRelease>/`.
    pub modules: Vec<String>,
    /// Containers, in manifest order.
    pub containers: Vec<ContainerRun>,
}

/// One container, ready to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRun {
    /// DNS-1123 label.
    pub name: String,
    /// The image, pinned.
    pub image: String,
    /// Absolute path of its root filesystem in the initramfs.
    pub rootfs: String,
    /// Final argv.
    pub argv: Vec<String>,
    /// `K=V`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub working_dir: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric gid.
    pub gid: u32,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Probes, resources: kept for tools, not enforced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tuning: BTreeMap<String, serde_json::Value>,
}

/// Why a pod.json cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum PodJsonError {
    /// Not JSON, or not this schema.
    #[error("{0}")]
    Parse(#[from] serde_json::Error),
    /// Parsed, but cannot be run as it is.
    #[error("{0}")]
    Invalid(String),
}

impl PodSpec {
    /// Parse and validate pod.json bytes.
    pub fn from_json(bytes: &[u8]) -> Result<PodSpec, PodJsonError> {
        let spec: PodSpec = serde_json::from_slice(bytes)?;
        spec.validate().map_err(PodJsonError::Invalid)?;
        Ok(spec)
    }

    /// What the init relies on: a known version, unique names, runnable argv,
    /// absolute paths, module paths that stay under `/lib/modules/<release>/`.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != POD_SPEC_VERSION {
            return Err(format!(
                "version {} is not supported (this init reads version {POD_SPEC_VERSION}); rebuild the image with a matching i2kit",
                self.version
            ));
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return Err(format!("hostname {:?} must be 1-64 bytes", self.hostname));
        }
        if !self.modules.is_empty() && !safe_component(&self.kernel_release) {
            return Err(format!(
                "kernelRelease {:?} is not a plain name",
                self.kernel_release
            ));
        }
        for m in &self.modules {
            if m.starts_with('/') || m.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(format!(
                    "module path {m:?} must be relative, without . or .."
                ));
            }
        }
        let mut names = BTreeSet::new();
        for c in &self.containers {
            if !safe_component(&c.name) {
                return Err(format!("container name {:?} is not a plain name", c.name));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("container {} appears twice", c.name));
            }
            let ctx = |what: String| format!("container {}: {what}", c.name);
            if c.argv.first().is_none_or(|a| a.is_empty()) {
                return Err(ctx("argv is empty".into()));
            }
            for (what, p) in [("rootfs", &c.rootfs), ("workingDir", &c.working_dir)] {
                if !p.starts_with('/') {
                    return Err(ctx(format!("{what} {p:?} is not absolute")));
                }
            }
            if c.rootfs.split('/').any(|s| s == "..") || c.rootfs == "/" {
                return Err(ctx(format!(
                    "rootfs {:?} must be a directory below /",
                    c.rootfs
                )));
            }
            if let Some(bad) = c.env.iter().find(|kv| !kv.contains('=')) {
                return Err(ctx(format!("env entry {bad:?} is not K=V")));
            }
            let nul = |s: &String| s.contains('\0');
            if c.argv.iter().chain(&c.env).any(nul) || nul(&c.working_dir) || nul(&c.rootfs) {
                return Err(ctx("a string contains a NUL byte".into()));
            }
        }
        Ok(())
    }
}

fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// `PATH` from a `K=V` list (the default a shell would use when unset).
pub fn path_of(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Where `argv0` may live, in lookup order (execvp rules: a name with a slash
/// is used as is; empty PATH entries mean the working directory).
pub fn exec_candidates(argv0: &str, env: &[String], working_dir: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    path_of(env)
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { working_dir } else { dir };
            format!("{}/{argv0}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// `/etc/hosts` for the Pod's containers (the kubelet writes the same shape).
pub fn hosts_file(hostname: &str, ip: Option<std::net::Ipv4Addr>) -> String {
    let mut s = String::from(
        "# Written by i2kit-init.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    match ip {
        Some(ip) => s.push_str(&format!("{ip}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "version": 1, "name": "web", "hostname": "web",
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "kernelRelease": "6.1.0-56-cloud-amd64",
            "modules": ["kernel/drivers/virtio/virtio_ring.ko"],
            "containers": [{
                "name": "web", "image": "r/web@sha256:00", "rootfs": "/containers/web/rootfs",
                "argv": ["httpd", "-f"], "env": ["PATH=/bin", "A=1"], "workingDir": "/",
                "uid": 0, "gid": 0, "ports": [{"containerPort": 80, "protocol": "TCP"}]
            }]
        })
    }

    fn parse(v: &serde_json::Value) -> Result<PodSpec, String> {
        PodSpec::from_json(&serde_json::to_vec(v).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_builder_pod_json_round_trips() {
        let p = parse(&good()).unwrap();
        assert_eq!(p.containers[0].argv, ["httpd", "-f"]);
        assert_eq!(p.restart_policy, RestartPolicy::Always);
        let again = PodSpec::from_json(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn malformed_pod_json_is_refused_with_the_reason() {
        assert!(PodSpec::from_json(b"").is_err());
        assert!(PodSpec::from_json(b"{\"version\": 1").is_err());
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(Edit, &str)] = &[
            (|v| v["version"] = 2.into(), "version 2 is not supported"),
            (|v| v["surprise"] = 1.into(), "unknown field `surprise`"),
            (
                |v| v["restartPolicy"] = "Sometimes".into(),
                "unknown variant `Sometimes`",
            ),
            (
                |v| v["containers"][0]["argv"] = serde_json::json!([]),
                "argv is empty",
            ),
            (
                |v| v["containers"][0]["rootfs"] = "rel".into(),
                "rootfs \"rel\" is not absolute",
            ),
            (
                |v| v["containers"][0]["rootfs"] = "/a/../..".into(),
                "must be a directory below /",
            ),
            (
                |v| v["containers"][0]["env"] = serde_json::json!(["NOEQUALS"]),
                "not K=V",
            ),
            (
                |v| v["containers"][0]["name"] = "../x".into(),
                "not a plain name",
            ),
            (
                |v| v["modules"] = serde_json::json!(["../../etc/x.ko"]),
                "must be relative",
            ),
            (
                |v| v["modules"] = serde_json::json!(["/abs.ko"]),
                "must be relative",
            ),
            (|v| v["kernelRelease"] = "..".into(), "not a plain name"),
            (|v| v["containers"][0]["uid"] = (-1).into(), "invalid value"),
            (
                |v| {
                    let c = v["containers"][0].clone();
                    v["containers"].as_array_mut().unwrap().push(c);
                },
                "appears twice",
            ),
            (
                |v| v["containers"][0]["argv"][0] = "a\0b".into(),
                "NUL byte",
            ),
        ];
        for (edit, want) in cases {
            let mut v = good();
            edit(&mut v);
            let err = parse(&v).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn restart_policies() {
        use RestartPolicy::*;
        assert!(Always.restarts(true) && Always.restarts(false));
        assert!(!OnFailure.restarts(true) && OnFailure.restarts(false));
        assert!(!Never.restarts(true) && !Never.restarts(false));
    }

    #[test]
    fn executable_lookup_follows_execvp() {
        let env = vec!["PATH=/usr/bin:/bin:".to_string()];
        assert_eq!(
            exec_candidates("httpd", &env, "/www"),
            ["/usr/bin/httpd", "/bin/httpd", "/www/httpd"]
        );
        assert_eq!(exec_candidates("./run", &env, "/"), ["./run"]);
        assert_eq!(exec_candidates("/bin/sh", &[], "/"), ["/bin/sh"]);
        assert_eq!(
            exec_candidates("sh", &[], "/")[3],
            "/usr/bin/sh",
            "default PATH"
        );
        let twice = vec!["PATH=/a".to_string(), "PATH=/b".to_string()];
        assert_eq!(
            exec_candidates("x", &twice, "/"),
            ["/b/x"],
            "the last PATH wins"
        );
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let h = hosts_file("web", Some(std::net::Ipv4Addr::new(10, 0, 2, 15)));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.0.2.15\tweb\n"));
        assert!(hosts_file("web", None).ends_with("127.0.1.1\tweb\n"));
    }
}
