//! A real AWS-API server on loopback: moto (`pip install 'moto[server]'`),
//! through tests/common/moto_server.py, with its request recorder on; plus a
//! fault-injecting HTTP proxy in front of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use i2kit::aws::client::{Body, Client, Endpoints, Request};
use i2kit::aws::credentials::Credentials;

pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        // scripts/install-deps.sh puts moto in target/moto-venv when the
        // system python3 lacks it.
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/python3");
        let python = if venv.exists() {
            venv
        } else {
            "python3".into()
        };
        let child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("I2KIT_MOTO_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("python3 with moto[server] (pip install 'moto[server]')");
        let m = Moto {
            child,
            port,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while ureq::get(&format!("{}/moto-api/", m.url())).call().is_err() {
            assert!(Instant::now() < until, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn post(&self, path: &str, body: &str) -> String {
        ureq::post(&format!("{}{path}", self.url()))
            .send(body)
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Forget what was recorded so far.
    pub fn reset_recording(&self) {
        self.post("/moto-api/recorder/reset-recording", "");
    }

    /// Every request since the last reset: (method, url, headers, body).
    pub fn recording(&self) -> Vec<Recorded> {
        let text = ureq::get(&format!(
            "{}/moto-api/recorder/download-recording",
            self.url()
        ))
        .call()
        .unwrap()
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap();
        // moto appends one JSON object per request, not always newline-separated.
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map(|v| {
                let v = v.unwrap();
                let body = match (v["body"].as_str(), v["body_encoded"].as_bool()) {
                    (Some(b), Some(true)) => base64_decode(b),
                    (Some(b), _) => b.as_bytes().to_vec(),
                    _ => Vec::new(),
                };
                Recorded {
                    method: v["method"].as_str().unwrap_or("").into(),
                    url: v["url"].as_str().unwrap_or("").into(),
                    headers: v["headers"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    body,
                }
            })
            .collect()
    }

    /// Enforce signatures and IAM permissions after `free_actions` more calls.
    pub fn reset_auth(&self, free_actions: u32) {
        self.post("/moto-api/reset-auth", &free_actions.to_string());
    }

    /// A client signed with `(id, secret)`.
    pub fn client(&self, id: &str, secret: &str) -> Client {
        Client::new(
            Credentials::new(id, secret, None, "test"),
            "us-east-1",
            Endpoints::new("us-east-1", Some(&self.url())),
            Duration::from_secs(30),
        )
    }

    /// An IAM user allowed everything; its (access key id, secret).
    /// Uses three actions (CreateUser, CreateAccessKey, PutUserPolicy).
    pub fn admin_user(&self, name: &str) -> (String, String) {
        let c = self.client("AKIDBOOTSTRAP", "bootstrap");
        let iam = |body: String| {
            let never = std::sync::atomic::AtomicBool::new(false);
            let r = Request {
                service: "iam",
                action: "iam",
                method: "POST",
                url: format!("{}/", self.url()),
                headers: vec![(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body: Body::Signed(body.as_bytes()),
            };
            String::from_utf8(c.call(&r, &|_| false, &never).unwrap().body).unwrap()
        };
        iam(format!(
            "Action=CreateUser&Version=2010-05-08&UserName={name}"
        ));
        let keys = iam(format!(
            "Action=CreateAccessKey&Version=2010-05-08&UserName={name}"
        ));
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        iam(format!(
            "Action=PutUserPolicy&Version=2010-05-08&UserName={name}&PolicyName=all&PolicyDocument={policy}"
        ));
        (
            i2kit::aws::xml::first(&keys, "AccessKeyId").unwrap(),
            i2kit::aws::xml::first(&keys, "SecretAccessKey").unwrap(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Recorded {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    /// The form parameters of a query-API call.
    pub fn form(&self) -> Vec<(String, String)> {
        String::from_utf8_lossy(&self.body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    }
    pub fn action(&self) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(v) = hex {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Read a snapshot back block by block (ListSnapshotBlocks + GetSnapshotBlock).
pub fn read_snapshot(c: &Client, snapshot: &str) -> std::collections::BTreeMap<u64, Vec<u8>> {
    let never = std::sync::atomic::AtomicBool::new(false);
    let get = |url: String| {
        let r = Request {
            service: "ebs",
            action: "read",
            method: "GET",
            url,
            headers: vec![],
            body: Body::Signed(&[]),
        };
        c.call(&r, &|_| false, &never).unwrap()
    };
    let list: serde_json::Value = serde_json::from_slice(
        &get(format!("{}/snapshots/{snapshot}/blocks", c.endpoints.ebs)).body,
    )
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for b in list["Blocks"].as_array().unwrap() {
        // moto returns the index as a string.
        let idx: u64 = match &b["BlockIndex"] {
            serde_json::Value::String(s) => s.parse().unwrap(),
            v => v.as_u64().unwrap(),
        };
        let token = b["BlockToken"].as_str().unwrap();
        let data = get(format!(
            "{}/snapshots/{snapshot}/blocks/{idx}?blockToken={token}",
            c.endpoints.ebs
        ));
        out.insert(idx, data.body);
    }
    out
}

/// An HTTP proxy in front of moto that fails every `every`-th
/// PutSnapshotBlock, in turn with 503, a throttling error and
/// ResourceNotFoundException.
pub struct FaultProxy {
    pub port: u16,
    pub injected: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: u16, every: usize) -> FaultProxy {
        Self::start_with(upstream, every, Duration::ZERO)
    }

    /// Also delay every block PUT by `delay`.
    pub fn start_with(upstream: u16, every: usize, delay: Duration) -> FaultProxy {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let injected = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let server = Arc::new(server);
        for _ in 0..8 {
            let (server, injected, count) = (server.clone(), injected.clone(), count.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for mut req in server.incoming_requests() {
                    let is_block = req.method().as_str() == "PUT" && req.url().contains("/blocks/");
                    if is_block {
                        std::thread::sleep(delay);
                    }
                    if is_block && count.fetch_add(1, Ordering::SeqCst) % every == every - 1 {
                        let n = injected.fetch_add(1, Ordering::SeqCst);
                        // 503, throttling, and the "snapshot does not exist yet"
                        // answer EBS gives right after StartSnapshot.
                        let (status, kind, msg) = match n % 3 {
                            0 => (503, "ServiceUnavailableException", "try later"),
                            1 => (400, "ThrottlingException", "Rate exceeded"),
                            _ => (
                                404,
                                "ResourceNotFoundException",
                                "The snapshot does not exist",
                            ),
                        };
                        let resp =
                            tiny_http::Response::from_string(format!("{{\"Message\":\"{msg}\"}}"))
                                .with_status_code(status)
                                .with_header(
                                    tiny_http::Header::from_bytes("x-amzn-ErrorType", kind)
                                        .unwrap(),
                                );
                        let _ = req.respond(resp);
                        continue;
                    }
                    let mut body = Vec::new();
                    let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
                    let mut b = http::Request::builder()
                        .method(req.method().as_str())
                        .uri(format!("http://127.0.0.1:{upstream}{}", req.url()));
                    for h in req.headers() {
                        let name = h.field.as_str().as_str().to_ascii_lowercase();
                        if !matches!(
                            name.as_str(),
                            "host" | "content-length" | "connection" | "transfer-encoding"
                        ) {
                            b = b.header(name, h.value.as_str());
                        }
                    }
                    let mut resp = match agent.run(b.body(body).unwrap()) {
                        Ok(r) => r,
                        Err(_) => {
                            let _ = req.respond(tiny_http::Response::empty(502));
                            continue;
                        }
                    };
                    let status = resp.status().as_u16();
                    let mut out = tiny_http::Response::from_data(
                        resp.body_mut().read_to_vec().unwrap_or_default(),
                    )
                    .with_status_code(status);
                    for (k, v) in resp.headers() {
                        let hop = matches!(
                            k.as_str(),
                            "content-length" | "transfer-encoding" | "connection"
                        );
                        if let (false, Ok(h)) =
                            (hop, tiny_http::Header::from_bytes(k.as_str(), v.as_bytes()))
                        {
                            out.add_header(h);
                        }
                    }
                    let _ = req.respond(out);
                }
            });
        }
        FaultProxy { port, injected }
    }
}
