//! Proxies in front of the real registry: a raw TCP throttle that can be killed
//! mid-transfer, and an HTTP proxy that enforces bearer-token auth (with its own
//! token endpoint) and injects transient failures.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards TCP to `upstream`, sleeping `delay` after every `chunk` bytes
/// sent to the client. `kill()` closes every connection and the listener.
pub struct TcpThrottle {
    pub port: u16,
    killed: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    pub bytes: Arc<AtomicU64>,
}

impl TcpThrottle {
    pub fn start(upstream: u16, chunk: usize, delay: Duration) -> TcpThrottle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let killed = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let bytes = Arc::new(AtomicU64::new(0));
        let (k, c, b) = (killed.clone(), conns.clone(), bytes.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if k.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let (k2, b2) = (k.clone(), b.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; chunk];
                    loop {
                        if k2.load(Ordering::SeqCst) {
                            break;
                        }
                        match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if c_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                b2.fetch_add(n as u64, Ordering::SeqCst);
                                std::thread::sleep(delay);
                            }
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        TcpThrottle {
            port,
            killed,
            conns,
            bytes,
        }
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Unblock accept(); the loop then sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// How the HTTP proxy misbehaves.
#[derive(Clone, Default)]
pub struct HttpFaults {
    /// Require `Authorization: Bearer <token>` obtained from /token with these basic credentials.
    pub bearer: Option<(String, String)>,
    /// Fail every Nth blob GET with this status (503, 429, 500).
    pub fail_every: Option<(u64, u16)>,
}

pub struct HttpProxy {
    pub port: u16,
    pub requests: Arc<AtomicU64>,
    pub injected: Arc<AtomicU64>,
    server: Arc<tiny_http::Server>,
}

const TOKEN: &str = "i2kit-test-token-0123456789";

impl HttpProxy {
    pub fn start(upstream: u16, faults: HttpFaults) -> HttpProxy {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let injected = Arc::new(AtomicU64::new(0));
        let blob_gets = Arc::new(AtomicU64::new(0));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        for _ in 0..8 {
            let (srv, reqs, inj, blobs, agent, faults) = (
                server.clone(),
                requests.clone(),
                injected.clone(),
                blob_gets.clone(),
                agent.clone(),
                faults.clone(),
            );
            std::thread::spawn(move || {
                while let Ok(req) = srv.recv() {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    handle(req, upstream, port, &agent, &faults, &blobs, &inj);
                }
            });
        }
        HttpProxy {
            port,
            requests,
            injected,
            server,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

fn handle(
    req: tiny_http::Request,
    upstream: u16,
    port: u16,
    agent: &ureq::Agent,
    faults: &HttpFaults,
    blob_gets: &AtomicU64,
    injected: &AtomicU64,
) {
    let url = req.url().to_string();
    let get = |n: &str| {
        req.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(n))
            .map(|h| h.value.as_str().to_string())
    };
    if let Some((user, pass)) = &faults.bearer {
        if url.starts_with("/token") {
            use base64_lite as b64;
            let want = format!("Basic {}", b64::encode(format!("{user}:{pass}").as_bytes()));
            let resp = if get("Authorization").as_deref() == Some(want.as_str()) {
                tiny_http::Response::from_string(format!(
                    r#"{{"token":"{TOKEN}","expires_in":300}}"#
                ))
                .with_header(header("Content-Type", "application/json"))
            } else {
                tiny_http::Response::from_string(
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                )
                .with_status_code(401)
            };
            let _ = req.respond(resp);
            return;
        }
        if get("Authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let resp = tiny_http::Response::from_string(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
            )
            .with_status_code(401)
            .with_header(header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="i2kit-test""#),
            ))
            .with_header(header("Content-Type", "application/json"));
            let _ = req.respond(resp);
            return;
        }
    }
    if let Some((every, status)) = faults.fail_every
        && url.contains("/blobs/")
        && req.method() == &tiny_http::Method::Get
        && blob_gets
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(every)
    {
        injected.fetch_add(1, Ordering::SeqCst);
        let _ = req
            .respond(tiny_http::Response::from_string("injected fault").with_status_code(status));
        return;
    }
    let target = format!("http://127.0.0.1:{upstream}{url}");
    let mut r = match req.method() {
        tiny_http::Method::Head => agent.head(&target),
        _ => agent.get(&target),
    };
    for h in ["Accept", "Range"] {
        if let Some(v) = get(h) {
            r = r.header(h, &v);
        }
    }
    let resp = match r.call() {
        Ok(r) => r,
        Err(_) => {
            let _ = req
                .respond(tiny_http::Response::from_string("upstream down").with_status_code(502));
            return;
        }
    };
    let status = resp.status().as_u16();
    let mut headers = Vec::new();
    for name in [
        "Content-Type",
        "Docker-Content-Digest",
        "Content-Range",
        "Accept-Ranges",
        "Docker-Distribution-Api-Version",
    ] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push(header(name, v));
        }
    }
    let len = resp
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = resp.into_body().into_reader();
    let _ = req.respond(tiny_http::Response::new(
        status.into(),
        headers,
        body,
        len,
        None,
    ));
}

/// Minimal base64 for the Basic header (test-only).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}
