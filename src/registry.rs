//! Registry client: manifests and blobs over the OCI distribution API, on top of
//! `oci-client` (auth challenges, token cache, HTTP). i2kit adds what a build
//! system needs around it: credentials from Docker's `config.json`, plain HTTP
//! for loopback and `--insecure-registry` hosts, retries with back-off on
//! transient failures, resumable blob downloads that stream into the store, and
//! errors that say which registry and image failed.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use crate::digest::Digest;
use crate::oci::{ACCEPTED_MANIFESTS, Descriptor};
use crate::reference::{DOCKER_HUB, RegistryRef};
use crate::store::{BlobWriter, Store, StoreError};

/// Attempts per request. With the back-off below (250 ms doubling, capped at
/// 4 s, ±25 % jitter) five attempts wait about 3.75 s in all: long enough to
/// ride out a registry restart or a burst of 429s, short enough that a dead
/// registry fails a pull within seconds.
pub const MAX_ATTEMPTS: u32 = 5;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(4);

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Credentials were refused or are needed.
    #[error("authentication failed for registry {registry}: {detail}")]
    Auth {
        /// The registry host.
        registry: String,
        /// What happened (never contains a secret).
        detail: String,
    },
    /// Unknown repository, tag, digest or blob.
    #[error("{what} not found in registry {registry} ({detail})")]
    NotFound {
        /// The registry host.
        registry: String,
        /// What was looked up.
        what: String,
        /// The registry's words.
        detail: String,
    },
    /// Anything else the registry or the network did.
    #[error("{what} from {registry} failed after {attempts} attempt(s): {detail}")]
    Failed {
        /// The registry host.
        registry: String,
        /// What was being fetched.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        detail: String,
    },
    /// Manifest bytes did not hash to the pinned digest.
    #[error("manifest of {reference} has digest {actual}, but {expected} was requested")]
    ManifestDigest {
        /// The reference.
        reference: String,
        /// Pinned digest.
        expected: Digest,
        /// Served digest.
        actual: Digest,
    },
    /// Reading Docker's credentials failed.
    #[error("reading registry credentials for {registry}: {detail}")]
    Credentials {
        /// The registry host.
        registry: String,
        /// What went wrong.
        detail: String,
    },
    /// Storing a blob failed (includes digest mismatches).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `HOST[:PORT]` spoken to over plain HTTP (loopback hosts always are).
    pub insecure: Vec<String>,
}

/// A registry client shared by all pulls of one command.
pub struct Registry {
    client: Client,
    auth: tokio::sync::Mutex<HashMap<String, RegistryAuth>>,
    authorised: tokio::sync::Mutex<std::collections::HashSet<(String, String)>>,
    push_authorised: tokio::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// Bytes moved by one blob download, for progress.
pub trait BlobProgress: Send + Sync {
    /// `n` more bytes of `digest` arrived.
    fn advance(&self, digest: &Digest, n: u64);
    /// The download restarted from `offset` (after a retry).
    fn reset(&self, digest: &Digest, offset: u64);
}

impl BlobProgress for () {
    fn advance(&self, _: &Digest, _: u64) {}
    fn reset(&self, _: &Digest, _: u64) {}
}

enum Attempt<T> {
    Done(T),
    Retry(String),
    Fail(RegistryError),
}

impl Registry {
    /// A client for the given registries; loopback ones and `opts.insecure` use HTTP.
    pub fn new<'a>(
        opts: &RegistryOptions,
        refs: impl IntoIterator<Item = &'a RegistryRef>,
    ) -> Registry {
        // reqwest is built without a default TLS provider (ring, not aws-lc-rs).
        crate::init_tls();
        let mut plain: Vec<String> = opts.insecure.clone();
        for r in refs {
            if r.is_loopback() {
                plain.push(r.registry.clone());
            }
        }
        plain.sort();
        plain.dedup();
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(plain),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: None,
            user_agent: concat!("i2kit/", env!("CARGO_PKG_VERSION")),
            // One POST then one PUT with the whole blob (Content-Type
            // application/octet-stream): what distribution 2.8 handles best.
            use_monolithic_push: true,
            ..Default::default()
        };
        Registry {
            client: Client::new(config),
            auth: Default::default(),
            authorised: Default::default(),
            push_authorised: Default::default(),
        }
    }

    fn oci_ref(r: &RegistryRef) -> oci_client::Reference {
        match (&r.tag, &r.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                r.registry.clone(),
                r.repository.clone(),
                d.to_string(),
            ),
            (Some(t), None) => {
                oci_client::Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                "latest".into(),
            ),
        }
    }

    /// Credentials for a registry from Docker's config.json (`$DOCKER_CONFIG`,
    /// else `~/.docker/config.json`): `auths` entries and credential helpers.
    async fn credentials(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
        if let Some(a) = self.auth.lock().await.get(registry) {
            return Ok(a.clone());
        }
        // Docker keys Hub credentials under its v1 URL.
        let key = if registry == DOCKER_HUB {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.to_string()
        };
        let found = tokio::task::spawn_blocking(move || docker_credential::get_credential(&key))
            .await
            .map_err(|e| RegistryError::Credentials {
                registry: registry.to_string(),
                detail: e.to_string(),
            })?;
        use docker_credential::{CredentialRetrievalError as E, DockerCredential as C};
        let auth = match found {
            Ok(C::UsernamePassword(u, p)) => RegistryAuth::Basic(u, p),
            Ok(C::IdentityToken(_)) => {
                return Err(RegistryError::Credentials {
                    registry: registry.to_string(),
                    detail: "config.json holds an identity token, which i2kit cannot exchange; log in with a username and password or token".into(),
                });
            }
            Err(E::NoCredentialConfigured | E::ConfigNotFound | E::ConfigReadError) => {
                RegistryAuth::Anonymous
            }
            Err(E::HelperFailure { helper, stderr, .. }) => {
                return Err(RegistryError::Credentials {
                    registry: registry.to_string(),
                    detail: format!(
                        "credential helper docker-credential-{helper} failed: {}",
                        stderr.trim()
                    ),
                });
            }
            Err(e) => {
                return Err(RegistryError::Credentials {
                    registry: registry.to_string(),
                    detail: e.to_string(),
                });
            }
        };
        self.auth
            .lock()
            .await
            .insert(registry.to_string(), auth.clone());
        Ok(auth)
    }

    /// Authenticate once per repository so that refused credentials are an
    /// error of their own (oci-client would otherwise fall back to anonymous).
    async fn authorise(&self, r: &RegistryRef) -> Result<(), RegistryError> {
        let key = (r.registry.clone(), r.repository.clone());
        if self.authorised.lock().await.contains(&key) {
            return Ok(());
        }
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        retrying(&r.registry, "authentication", || async {
            match self
                .client
                .auth(&oref, &auth, RegistryOperation::Pull)
                .await
            {
                Ok(_) => Attempt::Done(()),
                Err(e) => classify(&r.registry, "authentication", &auth, e),
            }
        })
        .await?;
        self.authorised.lock().await.insert(key);
        Ok(())
    }

    /// Fetch a manifest (or index) by tag or digest; returns its bytes and digest.
    /// A pinned digest is checked against the bytes.
    pub async fn fetch_manifest(
        &self,
        r: &RegistryRef,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        self.authorise(r).await?;
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        let what = format!("manifest {r}");
        let bytes = retrying(&r.registry, &what, || async {
            match self
                .client
                .pull_manifest_raw(&oref, &auth, ACCEPTED_MANIFESTS)
                .await
            {
                Ok((bytes, _)) => Attempt::Done(bytes),
                Err(e) => classify(&r.registry, &what, &auth, e),
            }
        })
        .await?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = r.digest
            && expected != actual
        {
            return Err(RegistryError::ManifestDigest {
                reference: r.to_string(),
                expected,
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Authenticate for pushing to a repository (once).
    async fn authorise_push(&self, r: &RegistryRef) -> Result<(), RegistryError> {
        let key = (r.registry.clone(), r.repository.clone());
        if self.push_authorised.lock().await.contains(&key) {
            return Ok(());
        }
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        retrying(&r.registry, "authentication for push", || async {
            match self
                .client
                .auth(&oref, &auth, RegistryOperation::Push)
                .await
            {
                Ok(_) => Attempt::Done(()),
                Err(e) => classify(&r.registry, "authentication for push", &auth, e),
            }
        })
        .await?;
        self.push_authorised.lock().await.insert(key);
        Ok(())
    }

    /// The digest a tag points at, or None when the tag does not exist.
    pub async fn tag_digest(&self, r: &RegistryRef) -> Result<Option<Digest>, RegistryError> {
        match self.fetch_manifest(r).await {
            Ok((_, d)) => Ok(Some(d)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the repository of `r` holds blob `d` (HEAD).
    pub async fn blob_exists(&self, r: &RegistryRef, d: &Digest) -> Result<bool, RegistryError> {
        self.authorise_push(r).await?;
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        let what = format!("HEAD blob {d} in {}/{}", r.registry, r.repository);
        retrying(&r.registry, &what, || async {
            match self.client.blob_exists(&oref, &d.to_string()).await {
                Ok(b) => Attempt::Done(b),
                Err(e) => classify(&r.registry, &what, &auth, e),
            }
        })
        .await
    }

    /// Cross-repository mount of `d` from `from` (same registry); false when
    /// the registry declined (it then expects an upload).
    pub async fn mount_blob(&self, r: &RegistryRef, from: &RegistryRef, d: &Digest) -> bool {
        if self.authorise_push(r).await.is_err() {
            return false;
        }
        let (oref, src) = (Self::oci_ref(r), Self::oci_ref(from));
        // oci-client succeeds only on 201 Created: the blob is there. A
        // registry that declines answers 202 and the caller uploads.
        self.client
            .mount_blob(&oref, &src, &d.to_string())
            .await
            .is_ok()
    }

    /// Upload one blob of the store, streamed from disk (monolithic POST + PUT).
    pub async fn push_blob(
        &self,
        r: &RegistryRef,
        store: &Store,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        self.authorise_push(r).await?;
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        let what = format!(
            "upload of blob {} to {}/{}",
            desc.digest, r.registry, r.repository
        );
        let path = store.blob_path(&desc.digest);
        retrying(&r.registry, &what, || async {
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    return Attempt::Fail(RegistryError::Failed {
                        registry: r.registry.clone(),
                        what: what.clone(),
                        attempts: 1,
                        detail: format!("{}: {e}", path.display()),
                    });
                }
            };
            let stream = futures_util::stream::try_unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((bytes::Bytes::from(buf), f)))
            });
            match self
                .client
                .push_blob_stream(&oref, stream, &desc.digest.to_string(), Some(desc.size))
                .await
            {
                Ok(_) => Attempt::Done(()),
                Err(e) => classify(&r.registry, &what, &auth, e),
            }
        })
        .await
    }

    /// PUT manifest bytes as they are (never re-serialised) under `r`'s tag
    /// or digest; returns their digest.
    pub async fn push_manifest(
        &self,
        r: &RegistryRef,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        self.authorise_push(r).await?;
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        let what = format!("manifest upload to {r}");
        let ct = reqwest_header(media_type).map_err(|detail| RegistryError::Failed {
            registry: r.registry.clone(),
            what: what.clone(),
            attempts: 1,
            detail,
        })?;
        retrying(&r.registry, &what, || async {
            match self
                .client
                .push_manifest_raw(&oref, bytes.to_vec(), ct.clone())
                .await
            {
                Ok(_) => Attempt::Done(()),
                Err(e) => classify(&r.registry, &what, &auth, e),
            }
        })
        .await?;
        Ok(Digest::of(bytes))
    }

    /// Download a blob into the store unless it is there already. Verified
    /// against the descriptor's digest and size; resumes with a Range request
    /// after a dropped connection.
    pub async fn fetch_blob(
        &self,
        r: &RegistryRef,
        desc: &Descriptor,
        store: &Store,
        progress: &dyn BlobProgress,
    ) -> Result<bool, RegistryError> {
        if store.has_blob(&desc.digest, Some(desc.size)) {
            return Ok(false);
        }
        self.authorise(r).await?;
        let auth = self.credentials(&r.registry).await?;
        let oref = Self::oci_ref(r);
        let what = format!("blob {} of {}/{}", desc.digest, r.registry, r.repository);
        let layer = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: desc.size as i64,
            ..Default::default()
        };
        let mut w = store.blob_writer(&what, desc.digest, Some(desc.size))?;
        let mut backoff = Backoff::new();
        loop {
            match self
                .blob_attempt(&oref, &layer, &mut w, store, &what, &auth, progress)
                .await
            {
                Attempt::Done(()) => break,
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(why) => backoff.wait(&r.registry, &what, why).await?,
            }
        }
        w.commit()?;
        Ok(true)
    }

    /// One try at streaming a blob, resuming at what `w` already holds.
    #[allow(clippy::too_many_arguments)]
    async fn blob_attempt(
        &self,
        oref: &oci_client::Reference,
        layer: &oci_client::manifest::OciDescriptor,
        w: &mut BlobWriter,
        store: &Store,
        what: &str,
        auth: &RegistryAuth,
        progress: &dyn BlobProgress,
    ) -> Attempt<()> {
        let registry = oref.registry();
        let digest = w.expected().expect("registry blobs are announced");
        let offset = w.written();
        let resp = self
            .client
            .pull_blob_stream_partial(oref, layer, offset, None)
            .await;
        let mut stream = match resp {
            Ok(BlobResponse::Full(s)) => {
                if offset > 0 {
                    // The registry ignored the Range header: start over.
                    match store.blob_writer(what, digest, w.size()) {
                        Ok(fresh) => *w = fresh,
                        Err(e) => return Attempt::Fail(e.into()),
                    }
                    progress.reset(&digest, 0);
                }
                s.stream
            }
            Ok(BlobResponse::Partial(s)) => s.stream,
            Err(e) => return classify(registry, what, auth, e),
        };
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = w.write_all(&bytes) {
                        return Attempt::Fail(RegistryError::Failed {
                            registry: registry.to_string(),
                            what: what.to_string(),
                            attempts: 1,
                            detail: e.to_string(),
                        });
                    }
                    progress.advance(&digest, bytes.len() as u64);
                }
                // oci-client's own verification fired: our writer holds the
                // same bytes, and its commit reports both digests.
                Err(e) if is_digest_error(&e) => break,
                Err(e) => {
                    return Attempt::Retry(format!(
                        "connection lost after {} bytes: {e}",
                        w.written()
                    ));
                }
            }
        }
        Attempt::Done(())
    }
}

/// Capped exponential back-off with jitter, over at most [`MAX_ATTEMPTS`] tries.
struct Backoff {
    attempt: u32,
    delay: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            attempt: 1,
            delay: BACKOFF_START,
        }
    }

    /// Sleep before the next try, or give up with `why` once the budget is spent.
    async fn wait(&mut self, registry: &str, what: &str, why: String) -> Result<(), RegistryError> {
        if self.attempt >= MAX_ATTEMPTS {
            return Err(RegistryError::Failed {
                registry: registry.to_string(),
                what: what.to_string(),
                attempts: self.attempt,
                detail: why,
            });
        }
        let jitter = rand::random_range(0.75..1.25);
        tokio::time::sleep(self.delay.mul_f64(jitter)).await;
        self.delay = (self.delay * 2).min(BACKOFF_CAP);
        self.attempt += 1;
        Ok(())
    }
}

fn reqwest_header(v: &str) -> Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(v).map_err(|e| format!("media type {v:?}: {e}"))
}

fn is_digest_error(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        inner
            .downcast_ref::<oci_client::errors::DigestError>()
            .is_some()
    })
}

async fn retrying<T, F, Fut>(registry: &str, what: &str, mut op: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(why) => backoff.wait(registry, what, why).await?,
        }
    }
}

/// Sort an oci-client error into retry / fail, with a message that names the registry.
fn classify<T>(
    registry: &str,
    what: &str,
    auth: &RegistryAuth,
    e: OciDistributionError,
) -> Attempt<T> {
    let creds = match auth {
        RegistryAuth::Anonymous => {
            "no credentials are configured for it (docker login, or $DOCKER_CONFIG/config.json)"
        }
        _ => "the credentials from Docker's config.json were refused",
    };
    let auth_err = |detail: String| {
        Attempt::Fail(RegistryError::Auth {
            registry: registry.to_string(),
            detail,
        })
    };
    match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => auth_err(creds.to_string()),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Attempt::Retry(detail)
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                auth_err(format!("{creds} ({detail})"))
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Attempt::Fail(RegistryError::NotFound {
                    registry: registry.to_string(),
                    what: what.to_string(),
                    detail,
                })
            } else {
                Attempt::Fail(RegistryError::Failed {
                    registry: registry.to_string(),
                    what: what.to_string(),
                    attempts: 1,
                    detail,
                })
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let detail = format!("HTTP {code}: {}", message.trim());
            match code {
                429 | 500..=599 => Attempt::Retry(detail),
                401 | 403 => auth_err(format!("{creds} (HTTP {code})")),
                404 => Attempt::Fail(RegistryError::NotFound {
                    registry: registry.to_string(),
                    what: what.to_string(),
                    detail,
                }),
                _ => Attempt::Fail(RegistryError::Failed {
                    registry: registry.to_string(),
                    what: what.to_string(),
                    attempts: 1,
                    detail,
                }),
            }
        }
        OciDistributionError::RequestError(re) => {
            let detail = error_chain(&re);
            if re.is_connect()
                || re.is_timeout()
                || re.is_request()
                || re.is_body()
                || re.is_decode()
            {
                Attempt::Retry(detail)
            } else {
                Attempt::Fail(RegistryError::Failed {
                    registry: registry.to_string(),
                    what: what.to_string(),
                    attempts: 1,
                    detail,
                })
            }
        }
        OciDistributionError::IoError(io) => Attempt::Retry(io.to_string()),
        other => Attempt::Fail(RegistryError::Failed {
            registry: registry.to_string(),
            what: what.to_string(),
            attempts: 1,
            detail: other.to_string(),
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
