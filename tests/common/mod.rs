//! Shared test harness: a real Debian `docker-registry` (distribution 2.8) on a
//! free loopback port, deterministic OCI image layouts built by the tests,
//! skopeo to push them, HTTP/TCP proxies for auth and fault injection, and a
//! runner for the real `i2kit` binary.
#![allow(dead_code)]

pub mod boot;
pub mod images;
pub mod moto;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The i2kit binary under test.
pub fn i2kit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_i2kit"));
    c.env_remove("I2KIT_STORE")
        .env("DOCKER_CONFIG", "/nonexistent-docker-config");
    c
}

/// Run i2kit with args; returns (status ok, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    run_cmd(i2kit().args(args))
}

pub fn run_cmd(c: &mut Command) -> (bool, String, String) {
    let out: Output = c.stdin(Stdio::null()).output().expect("i2kit runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running docker-registry; killed on drop.
pub struct TestRegistry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

pub enum Auth {
    None,
    Htpasswd { user: String, password: String },
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        Self::start_with(Auth::None)
    }

    pub fn start_with(auth: Auth) -> TestRegistry {
        Self::launch(auth, free_port())
    }

    /// An empty registry on a given port (to stand in for another one).
    pub fn start_at(port: u16) -> TestRegistry {
        Self::launch(Auth::None, port)
    }

    fn launch(auth: Auth, port: u16) -> TestRegistry {
        let bin = which("docker-registry")
            .expect("docker-registry is installed (apt-get install docker-registry)");
        let dir = tempfile::tempdir().unwrap();
        let auth_section = match &auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils)");
                assert!(out.status.success());
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: i2kit-test\n    path: {}\n",
                    path.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_section}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let r = TestRegistry { port, dir, child };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {}", self.port);
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Path of a blob in the registry's storage (to tamper with it).
    pub fn blob_data(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&digest_hex[..2])
            .join(digest_hex)
            .join("data")
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Push an OCI layout entry to this registry with skopeo (`--all` keeps indexes).
    pub fn push(&self, layout: &Path, name: &str, repo_tag: &str) {
        skopeo_push(layout, name, &format!("{}/{}", self.host(), repo_tag), None);
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn skopeo_push(layout: &Path, name: &str, dest: &str, creds: Option<&str>) {
    let mut c = Command::new("skopeo");
    c.args([
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(cr) = creds {
        c.args(["--dest-creds", cr]);
    }
    let out = c
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "skopeo copy to {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Files under `dir/blobs/sha256` (names only).
pub fn blob_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("blobs/sha256"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
