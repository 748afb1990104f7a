//! The three EBS direct API calls that write a snapshot (REST-JSON).

use std::sync::atomic::AtomicBool;

use base64::Engine;

use super::client::{AwsError, Body, Client, Request};

/// The EBS block size: 512 KiB. Every block but the last is this long, and
/// the last is zero-padded to it.
pub const BLOCK_SIZE: u64 = 512 * 1024;

/// StartSnapshot's inputs.
#[derive(Clone, Debug)]
pub struct StartSnapshot {
    /// GiB.
    pub volume_size_gib: u64,
    /// (key, value).
    pub tags: Vec<(String, String)>,
    /// Idempotency token (same token, same snapshot).
    pub client_token: String,
    /// Description.
    pub description: String,
    /// Encrypt with this KMS key (ARN or id).
    pub kms_key: Option<String>,
}

/// base64 of raw bytes.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// StartSnapshot → snapshot id. Refuses a block size other than 512 KiB:
/// blocks are cut at that size whatever a server claims.
pub fn start_snapshot(
    c: &Client,
    s: &StartSnapshot,
    cancel: &AtomicBool,
) -> Result<String, AwsError> {
    let mut body = serde_json::json!({
        "VolumeSize": s.volume_size_gib,
        "ClientToken": s.client_token,
        "Description": s.description,
        "Timeout": 60,
        "Tags": s.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    });
    if let Some(k) = &s.kms_key {
        body["Encrypted"] = true.into();
        body["KmsKeyArn"] = k.clone().into();
    }
    let bytes = serde_json::to_vec(&body).expect("JSON");
    let r = Request {
        service: "ebs",
        action: "StartSnapshot",
        method: "POST",
        url: format!("{}/snapshots", c.endpoints.ebs),
        headers: vec![("content-type", "application/json".into())],
        body: Body::Signed(&bytes),
    };
    let resp = c.call(&r, &|_| false, cancel)?;
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|e| AwsError::Protocol {
            action: "StartSnapshot".into(),
            detail: format!("not JSON: {e}"),
        })?;
    let id = v["SnapshotId"].as_str().ok_or_else(|| AwsError::Protocol {
        action: "StartSnapshot".into(),
        detail: "no SnapshotId".into(),
    })?;
    match v["BlockSize"].as_u64() {
        Some(BLOCK_SIZE) | None => Ok(id.to_string()),
        Some(other) => Err(AwsError::Protocol {
            action: "StartSnapshot".into(),
            detail: format!(
                "block size {other} (EBS uses {BLOCK_SIZE}); snapshot {id} was started and is left to expire"
            ),
        }),
    }
}

/// Is this "the snapshot does not exist (yet)"? EBS answers so for a short
/// while after StartSnapshot.
pub fn not_found_yet(code: &str) -> bool {
    code == "ResourceNotFoundException"
}

/// PutSnapshotBlock of one full block with its SHA-256.
pub fn put_block(
    c: &Client,
    snapshot: &str,
    index: u64,
    data: &[u8],
    sha256: &[u8; 32],
    cancel: &AtomicBool,
) -> Result<(), AwsError> {
    let r = Request {
        service: "ebs",
        action: "PutSnapshotBlock",
        method: "PUT",
        url: format!("{}/snapshots/{snapshot}/blocks/{index}", c.endpoints.ebs),
        headers: vec![
            ("content-type", "application/octet-stream".into()),
            ("x-amz-data-length", data.len().to_string()),
            ("x-amz-checksum", b64(sha256)),
            ("x-amz-checksum-algorithm", "SHA256".into()),
        ],
        body: Body::Unsigned(data),
    };
    c.call(&r, &not_found_yet, cancel).map(|_| ())
}

/// CompleteSnapshot with the LINEAR aggregate checksum: SHA-256 over the
/// concatenated block digests in ascending block index.
pub fn complete(
    c: &Client,
    snapshot: &str,
    changed_blocks: u64,
    aggregate: &[u8; 32],
    cancel: &AtomicBool,
) -> Result<(), AwsError> {
    let r = Request {
        service: "ebs",
        action: "CompleteSnapshot",
        method: "POST",
        url: format!("{}/snapshots/completion/{snapshot}", c.endpoints.ebs),
        headers: vec![
            ("x-amz-changedblockscount", changed_blocks.to_string()),
            ("x-amz-checksum", b64(aggregate)),
            ("x-amz-checksum-algorithm", "SHA256".into()),
            ("x-amz-checksum-aggregation-method", "LINEAR".into()),
        ],
        body: Body::Signed(&[]),
    };
    c.call(&r, &not_found_yet, cancel).map(|_| ())
}
