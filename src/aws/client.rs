//! Signed requests to AWS APIs with retries. SigV4 comes from `aws-sigv4`
//! (the AWS-maintained signer, ~1/20 of the SDK's compile cost); HTTP from
//! `ureq` (blocking: the uploader runs its own pool of workers).

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

use super::credentials::Credentials;

/// Where the two services live.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// EBS direct APIs (`https://ebs.REGION.amazonaws.com`).
    pub ebs: String,
    /// EC2 query API (`https://ec2.REGION.amazonaws.com`).
    pub ec2: String,
}

impl Endpoints {
    /// The public endpoints of `region`, or one override for both (moto,
    /// LocalStack, a VPC endpoint proxy).
    pub fn new(region: &str, override_url: Option<&str>) -> Endpoints {
        match override_url {
            Some(u) => Endpoints {
                ebs: u.trim_end_matches('/').into(),
                ec2: u.trim_end_matches('/').into(),
            },
            None => Endpoints {
                ebs: format!("https://ebs.{region}.amazonaws.com"),
                ec2: format!("https://ec2.{region}.amazonaws.com"),
            },
        }
    }
}

/// How a body is signed.
pub enum Body<'a> {
    /// Hashed into the signature (EC2 query, small JSON).
    Signed(&'a [u8]),
    /// Sent as `UNSIGNED-PAYLOAD` with a signed `x-amz-content-sha256` header
    /// (EBS blocks: they carry their own `x-amz-Checksum`).
    Unsigned(&'a [u8]),
}

/// A finished exchange.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What went wrong talking to AWS.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The service answered with an error.
    #[error("{action}: {code}: {message} (HTTP {status}{})", attempts_note(*.attempts))]
    Api {
        /// Operation.
        action: String,
        /// HTTP status.
        status: u16,
        /// AWS error code (`ThrottlingException`, `AuthFailure`, …).
        code: String,
        /// Its message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer.
    #[error("{action}: cannot reach {endpoint}: {detail} (after {attempts} attempts)")]
    Transport {
        /// Operation.
        action: String,
        /// Where.
        endpoint: String,
        /// Transport error text.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The signer refused the request (a bug or a bad endpoint URL).
    #[error("{action}: cannot sign the request: {0}", action = .1)]
    Sign(String, String),
    /// The answer was not what the API documents.
    #[error("{action}: unexpected response: {detail}")]
    Protocol {
        /// Operation.
        action: String,
        /// What was wrong.
        detail: String,
    },
    /// Stopped by the user.
    #[error("interrupted")]
    Interrupted,
}

fn attempts_note(n: u32) -> String {
    if n > 1 {
        format!(", after {n} attempts")
    } else {
        String::new()
    }
}

impl AwsError {
    /// The AWS error code, if the service sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Retry schedule: capped exponential back-off with jitter.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all (≥ 1).
    pub max_attempts: u32,
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            max_attempts: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// Wait before attempt `n + 1` (n ≥ 1): full jitter between half and all
    /// of min(cap, base·2^(n-1)).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.cap);
        exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// Error codes and statuses worth another attempt.
pub fn retryable(status: u16, code: &str) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
        || code.contains("Throttl")
        || matches!(
            code,
            "RequestLimitExceeded"
                | "ServiceUnavailable"
                | "InternalError"
                | "InternalServerException"
                | "RequestTimeout"
                | "RequestTimeoutException"
        )
}

/// A signed client for one region and credential set.
pub struct Client {
    agent: ureq::Agent,
    creds: Credentials,
    region: String,
    /// Endpoints.
    pub endpoints: Endpoints,
    /// Retry schedule.
    pub retry: Retry,
}

/// One request, before signing.
pub struct Request<'a> {
    /// `ebs` or `ec2`: the signing name.
    pub service: &'static str,
    /// Operation name, for errors.
    pub action: &'a str,
    /// HTTP method.
    pub method: &'static str,
    /// Full URL.
    pub url: String,
    /// Extra headers (signed).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Body<'a>,
}

impl Client {
    /// A client; `timeout` bounds each request.
    pub fn new(
        creds: Credentials,
        region: &str,
        endpoints: Endpoints,
        timeout: Duration,
    ) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("i2kit/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            creds,
            region: region.into(),
            endpoints,
            retry: Retry::default(),
        }
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The access key id in use (for messages).
    pub fn key_id(&self) -> &str {
        &self.creds.access_key_id
    }

    /// Sign and send once.
    pub fn send_once(&self, r: &Request<'_>, now: SystemTime) -> Result<Response, AwsError> {
        let (bytes, signable) = match r.body {
            Body::Signed(b) => (b, SignableBody::Bytes(b)),
            Body::Unsigned(b) => (b, SignableBody::UnsignedPayload),
        };
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = self.creds.to_sigv4().into();
        let sign_err = |e: String| AwsError::Sign(e, r.action.to_string());
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(r.service)
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| sign_err(e.to_string()))?
            .into();
        let signable_req = SignableRequest::new(
            r.method,
            &r.url,
            r.headers.iter().map(|(k, v)| (*k, v.as_str())),
            signable,
        )
        .map_err(|e| sign_err(e.to_string()))?;
        let (instructions, _) = sign(signable_req, &params)
            .map_err(|e| sign_err(e.to_string()))?
            .into_parts();
        let mut builder = http::Request::builder().method(r.method).uri(&r.url);
        for (k, v) in &r.headers {
            builder = builder.header(*k, v);
        }
        for (k, v) in instructions.headers() {
            builder = builder.header(k, v);
        }
        let req = builder
            .body(bytes.to_vec())
            .map_err(|e| sign_err(e.to_string()))?;
        let mut resp = self.agent.run(req).map_err(|e| AwsError::Transport {
            action: r.action.into(),
            endpoint: r.url.split('/').take(3).collect::<Vec<_>>().join("/"),
            detail: e.to_string(),
            attempts: 1,
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| AwsError::Transport {
                action: r.action.into(),
                endpoint: r.url.clone(),
                detail: format!("reading the response: {e}"),
                attempts: 1,
            })?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Send with retries; `ok` says which statuses are success, `extra_retry`
    /// which API errors are also worth retrying here (e.g. a snapshot that
    /// does not exist yet right after StartSnapshot).
    pub fn call(
        &self,
        r: &Request<'_>,
        extra_retry: &dyn Fn(&str) -> bool,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Response, AwsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(AwsError::Interrupted);
            }
            let result = self
                .send_once(r, SystemTime::now())
                .and_then(|resp| match resp.status {
                    200..=299 => Ok(resp),
                    s => {
                        let (code, message) =
                            parse_error(&resp.body, resp.header("x-amzn-errortype"));
                        Err(AwsError::Api {
                            action: r.action.into(),
                            status: s,
                            code,
                            message,
                            attempts: attempt,
                        })
                    }
                });
            let again = match &result {
                Ok(_) => false,
                Err(AwsError::Transport { .. }) => true,
                Err(AwsError::Api { status, code, .. }) => {
                    retryable(*status, code) || extra_retry(code)
                }
                Err(_) => false,
            };
            if !again || attempt >= self.retry.max_attempts {
                return result.map_err(|e| match e {
                    AwsError::Transport {
                        action,
                        endpoint,
                        detail,
                        ..
                    } => AwsError::Transport {
                        action,
                        endpoint,
                        detail,
                        attempts: attempt,
                    },
                    other => other,
                });
            }
            std::thread::sleep(self.retry.delay(attempt));
        }
    }
}

/// (code, message) from an EC2 XML error, an EBS JSON error or the
/// `x-amzn-ErrorType` header.
pub fn parse_error(body: &[u8], error_type: Option<&str>) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let code = error_type
            .map(|t| t.split(':').next().unwrap_or(t).to_string())
            .or_else(|| {
                v["__type"]
                    .as_str()
                    .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            })
            .or_else(|| v["Reason"].as_str().map(String::from))
            .unwrap_or_else(|| "Unknown".into());
        let message = v["Message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .unwrap_or("")
            .to_string();
        return (code, message);
    }
    let code = super::xml::first(&text, "Code");
    let message = super::xml::first(&text, "Message");
    match (code, error_type) {
        (Some(c), _) => (c, message.unwrap_or_default()),
        (None, Some(t)) => (
            t.split(':').next().unwrap_or(t).to_string(),
            message.unwrap_or_default(),
        ),
        (None, None) => ("Unknown".into(), text.chars().take(200).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the AWS SigV4 documentation and test suite
    /// (`get-vanilla`): a GET of `/` on example.amazonaws.com.
    #[test]
    fn signer_matches_the_aws_test_suite() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            "test",
        );
        let identity = creds.to_sigv4().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("service")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)) // 20150830T123600Z
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let req = SignableRequest::new(
            "GET",
            "https://example.amazonaws.com/",
            std::iter::empty(),
            SignableBody::Bytes(&[]),
        )
        .unwrap();
        let (_, signature) = sign(req, &params).unwrap().into_parts();
        assert_eq!(
            signature,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn errors_from_both_protocols() {
        let ec2 = br#"<?xml version="1.0"?><Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(
            parse_error(ec2, None),
            (
                "AuthFailure".into(),
                "AWS was not able to validate the provided access credentials".into()
            )
        );
        let ebs = br#"{"Message":"Rate exceeded"}"#;
        assert_eq!(
            parse_error(ebs, Some("ThrottlingException:http://internal")),
            ("ThrottlingException".into(), "Rate exceeded".into())
        );
        assert_eq!(parse_error(b"<html>bad gateway</html>", None).0, "Unknown");
        assert!(
            retryable(503, "")
                && retryable(400, "ThrottlingException")
                && retryable(400, "RequestLimitExceeded")
        );
        assert!(!retryable(403, "AuthFailure") && !retryable(400, "ValidationException"));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let r = Retry::default();
        for n in 1..30 {
            let d = r.delay(n);
            assert!(d <= r.cap, "{n}: {d:?}");
            assert!(d >= r.base.mul_f64(0.5), "{n}: {d:?}");
        }
        assert!(r.delay(3) <= Duration::from_millis(800));
    }
}
