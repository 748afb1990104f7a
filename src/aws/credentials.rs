//! AWS credentials and region, found the way the AWS CLI finds them:
//! environment variables, then the shared files of `AWS_PROFILE` (or
//! `default`), then the EC2 instance metadata service (IMDSv2). Inputs are
//! explicit ([`Env`]) so that the chain is tested without touching the
//! process environment. The secret never appears in `Debug` output or errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A set of credentials.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id (not secret; shown in errors to say which key was used).
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// Where they came from (`environment`, `profile dev`, `instance metadata`).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    /// Build from parts.
    pub fn new(id: &str, secret: &str, token: Option<&str>, source: &str) -> Credentials {
        Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: token.map(String::from),
            source: source.into(),
        }
    }

    /// For the signer only.
    pub(crate) fn to_sigv4(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "i2kit",
        )
    }

    /// Every secret string, so that output can be checked for leaks.
    pub fn secrets(&self) -> Vec<&str> {
        let mut v = vec![self.secret_access_key.as_str()];
        v.extend(self.session_token.as_deref());
        v
    }
}

/// What the chain looks at.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// Environment variables.
    pub vars: BTreeMap<String, String>,
    /// The home directory (`~/.aws/...`).
    pub home: Option<PathBuf>,
}

impl Env {
    /// The process's environment.
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        self.get(var)
            .map(PathBuf::from)
            .or_else(|| self.home.as_ref().map(|h| h.join(".aws").join(default)))
    }

    /// The profile in use.
    pub fn profile(&self, cli: Option<&str>) -> String {
        cli.or_else(|| self.get("AWS_PROFILE"))
            .unwrap_or("default")
            .to_string()
    }
}

/// Why credentials or region could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Nothing anywhere.
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure profile {profile:?} in {files} (aws configure), or run on EC2 with an instance role"
    )]
    None {
        /// Profile looked at.
        profile: String,
        /// Files looked at.
        files: String,
    },
    /// A profile named by AWS_PROFILE/--profile does not exist.
    #[error("AWS profile {0:?} is not in {1}")]
    NoProfile(String, String),
    /// Half a key pair.
    #[error("{0}: an access key id without a secret access key (or the other way round)")]
    Partial(String),
    /// No region.
    #[error(
        "no AWS region: pass --region, set AWS_REGION, or set region in profile {0:?} of ~/.aws/config"
    )]
    NoRegion(String),
}

/// Parse an AWS shared config/credentials file: `[section]` and `key = value`.
pub fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            out.entry(name.trim().to_string()).or_default();
        } else if let (Some(s), Some((k, v))) = (&section, l.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn read_ini(path: &Option<PathBuf>) -> BTreeMap<String, BTreeMap<String, String>> {
    path.as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_ini(&t))
        .unwrap_or_default()
}

/// The profile's settings: `[profile NAME]` (or `[default]`) of the config
/// file, overridden by `[NAME]` of the credentials file.
fn profile_settings(env: &Env, profile: &str) -> Option<BTreeMap<String, String>> {
    let config = read_ini(&env.file("AWS_CONFIG_FILE", "config"));
    let creds = read_ini(&env.file("AWS_SHARED_CREDENTIALS_FILE", "credentials"));
    let config_name = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let mut found = None::<BTreeMap<String, String>>;
    for m in [config.get(&config_name), creds.get(profile)]
        .into_iter()
        .flatten()
    {
        found.get_or_insert_with(BTreeMap::new).extend(m.clone());
    }
    found
}

fn files_looked_at(env: &Env) -> String {
    [
        env.file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        env.file("AWS_CONFIG_FILE", "config"),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.display().to_string())
    .collect::<Vec<_>>()
    .join(" and ")
}

/// Environment, then profile files, then IMDSv2 (unless disabled).
pub fn resolve(env: &Env, profile_cli: Option<&str>) -> Result<Credentials, CredentialsError> {
    match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials::new(
                id,
                secret,
                env.get("AWS_SESSION_TOKEN"),
                "environment",
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(CredentialsError::Partial("environment".into()));
        }
        (None, None) => {}
    }
    let profile = env.profile(profile_cli);
    let explicit = profile_cli.is_some() || env.get("AWS_PROFILE").is_some();
    match profile_settings(env, &profile) {
        Some(s) => match (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials::new(
                    id,
                    secret,
                    s.get("aws_session_token").map(String::as_str),
                    &format!("profile {profile}"),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(CredentialsError::Partial(format!("profile {profile}")));
            }
            (None, None) => {}
        },
        None if explicit => {
            return Err(CredentialsError::NoProfile(profile, files_looked_at(env)));
        }
        None => {}
    }
    if env.get("AWS_EC2_METADATA_DISABLED") != Some("true") {
        let endpoint = env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or("http://169.254.169.254");
        if let Some(c) = imds(endpoint) {
            return Ok(c);
        }
    }
    Err(CredentialsError::None {
        profile,
        files: files_looked_at(env),
    })
}

/// `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`.
pub fn region(
    env: &Env,
    cli: Option<&str>,
    profile_cli: Option<&str>,
) -> Result<String, CredentialsError> {
    if let Some(r) = cli
        .or_else(|| env.get("AWS_REGION"))
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
    {
        return Ok(r.to_string());
    }
    let profile = env.profile(profile_cli);
    profile_settings(env, &profile)
        .and_then(|s| s.get("region").cloned())
        .ok_or(CredentialsError::NoRegion(profile))
}

/// IMDSv2: a session token (PUT), the role name, then the role's credentials.
/// Short timeouts: off EC2 nothing answers and the chain must fail fast.
fn imds(endpoint: &str) -> Option<Credentials> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let base = endpoint.trim_end_matches('/');
    let token = agent
        .put(&format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send_empty()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let get = |path: &str| -> Option<String> {
        agent
            .get(&format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", &token)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    };
    let role = get("/latest/meta-data/iam/security-credentials/")?;
    let role = role.lines().next()?.trim().to_string();
    let v: serde_json::Value = serde_json::from_str(&get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))?)
    .ok()?;
    Some(Credentials::new(
        v["AccessKeyId"].as_str()?,
        v["SecretAccessKey"].as_str()?,
        v["Token"].as_str(),
        &format!("instance metadata (role {role})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], home: Option<&std::path::Path>) -> Env {
        let mut vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        Env {
            vars,
            home: home.map(|h| h.to_path_buf()),
        }
    }

    #[test]
    fn environment_wins_and_secrets_stay_hidden() {
        let e = env(
            &[
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
                ("AWS_SESSION_TOKEN", "tok"),
            ],
            None,
        );
        let c = resolve(&e, None).unwrap();
        assert_eq!(c.access_key_id, "AKIDENV");
        assert_eq!(c.source, "environment");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("tok\""), "{dbg}");
        assert!(matches!(
            resolve(&env(&[("AWS_ACCESS_KEY_ID", "A")], None), None),
            Err(CredentialsError::Partial(_))
        ));
    }

    #[test]
    fn profiles_from_the_shared_files() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n\n[dev]\n# comment\naws_access_key_id=AKIDDEV\naws_secret_access_key=x\naws_session_token = t\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\n[profile dev]\nregion=us-west-2\n",
        )
        .unwrap();
        let e = env(&[], Some(home.path()));
        assert_eq!(resolve(&e, None).unwrap().access_key_id, "AKIDDEFAULT");
        assert_eq!(region(&e, None, None).unwrap(), "eu-west-1");
        let dev = env(&[("AWS_PROFILE", "dev")], Some(home.path()));
        let c = resolve(&dev, None).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("AKIDDEV", "profile dev")
        );
        assert_eq!(region(&dev, None, None).unwrap(), "us-west-2");
        assert_eq!(
            region(&dev, Some("ap-south-1"), None).unwrap(),
            "ap-south-1"
        );
        let both = env(
            &[("AWS_PROFILE", "dev"), ("AWS_REGION", "sa-east-1")],
            Some(home.path()),
        );
        assert_eq!(region(&both, None, None).unwrap(), "sa-east-1");
        let e = env(&[], Some(home.path()));
        assert!(matches!(
            resolve(&e, Some("nope")),
            Err(CredentialsError::NoProfile(..))
        ));
        let empty = tempfile::tempdir().unwrap();
        let err = resolve(&env(&[], Some(empty.path())), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no AWS credentials found"), "{err}");
        assert!(matches!(
            region(&env(&[], Some(empty.path())), None, None),
            Err(CredentialsError::NoRegion(_))
        ));
    }

    #[test]
    fn instance_metadata_v2() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        std::thread::spawn(move || {
            for req in server.incoming_requests().take(3) {
                let url = req.url().to_string();
                let token_ok = req.headers().iter().any(|h| {
                    h.field.equiv("X-aws-ec2-metadata-token") && h.value.as_str() == "TOKEN"
                });
                let body = match (req.method().as_str(), url.as_str()) {
                    ("PUT", "/latest/api/token") => "TOKEN".to_string(),
                    (_, "/latest/meta-data/iam/security-credentials/") if token_ok => {
                        "builder-role\n".into()
                    }
                    (_, "/latest/meta-data/iam/security-credentials/builder-role") if token_ok => {
                        r#"{"AccessKeyId":"ASIAIMDS","SecretAccessKey":"x","Token":"y"}"#.into()
                    }
                    _ => {
                        let _ = req.respond(tiny_http::Response::empty(401));
                        continue;
                    }
                };
                let _ = req.respond(tiny_http::Response::from_string(body));
            }
        });
        let mut e = env(
            &[(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                &format!("http://{addr}"),
            )],
            None,
        );
        e.vars.remove("AWS_EC2_METADATA_DISABLED");
        let c = resolve(&e, None).unwrap();
        assert_eq!(c.access_key_id, "ASIAIMDS");
        assert_eq!(c.source, "instance metadata (role builder-role)");
    }
}
