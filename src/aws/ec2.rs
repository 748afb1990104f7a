//! The EC2 query-API calls around the upload: find an earlier AMI, wait for
//! the snapshot, register the image, clean up.

use std::sync::atomic::AtomicBool;

use super::client::{AwsError, Body, Client, Request};
use super::xml;

const VERSION: &str = "2016-11-15";

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The form body of a query-API call.
pub fn form(action: &str, params: &[(String, String)]) -> String {
    let mut s = format!("Action={action}&Version={VERSION}");
    for (k, v) in params {
        s.push('&');
        s.push_str(&encode(k));
        s.push('=');
        s.push_str(&encode(v));
    }
    s
}

/// Call `action`; the XML answer.
pub fn query(
    c: &Client,
    action: &str,
    params: &[(String, String)],
    cancel: &AtomicBool,
) -> Result<String, AwsError> {
    let body = form(action, params);
    let r = Request {
        service: "ec2",
        action,
        method: "POST",
        url: format!("{}/", c.endpoints.ec2),
        headers: vec![(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        )],
        body: Body::Signed(body.as_bytes()),
    };
    let resp = c.call(&r, &|code| code == "InvalidSnapshot.NotFound", cancel)?;
    Ok(String::from_utf8_lossy(&resp.body).into_owned())
}

fn p(k: impl Into<String>, v: impl Into<String>) -> (String, String) {
    (k.into(), v.into())
}

/// AMIs of this account tagged with `key=value`.
pub fn images_tagged(
    c: &Client,
    key: &str,
    value: &str,
    cancel: &AtomicBool,
) -> Result<Vec<String>, AwsError> {
    let x = query(
        c,
        "DescribeImages",
        &[
            p("Owner.1", "self"),
            p("Filter.1.Name", format!("tag:{key}")),
            p("Filter.1.Value.1", value),
        ],
        cancel,
    )?;
    Ok(xml::all(&x, "imageId"))
}

/// A snapshot's state (`pending`, `completed`, `error`).
pub fn snapshot_state(
    c: &Client,
    id: &str,
    cancel: &AtomicBool,
) -> Result<Option<String>, AwsError> {
    let x = query(c, "DescribeSnapshots", &[p("SnapshotId.1", id)], cancel)?;
    Ok(xml::first(&x, "status"))
}

/// DeleteSnapshot.
pub fn delete_snapshot(c: &Client, id: &str, cancel: &AtomicBool) -> Result<(), AwsError> {
    query(c, "DeleteSnapshot", &[p("SnapshotId", id)], cancel).map(|_| ())
}

/// CreateTags on one resource.
pub fn create_tags(
    c: &Client,
    resource: &str,
    tags: &[(String, String)],
    cancel: &AtomicBool,
) -> Result<(), AwsError> {
    let mut params = vec![p("ResourceId.1", resource)];
    for (i, (k, v)) in tags.iter().enumerate() {
        params.push(p(format!("Tag.{}.Key", i + 1), k));
        params.push(p(format!("Tag.{}.Value", i + 1), v));
    }
    query(c, "CreateTags", &params, cancel).map(|_| ())
}

/// RegisterImage's inputs.
#[derive(Clone, Debug)]
pub struct Register {
    /// AMI name.
    pub name: String,
    /// Description.
    pub description: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// `uefi` or `uefi-preferred`.
    pub boot_mode: String,
    /// Root snapshot.
    pub snapshot: String,
    /// Root volume size, GiB.
    pub root_volume_gib: u64,
    /// NitroTPM v2.0.
    pub tpm: bool,
    /// Tags on the AMI.
    pub tags: Vec<(String, String)>,
}

/// The RegisterImage parameters (also what the tests compare with moto's
/// request recorder).
pub fn register_params(r: &Register) -> Vec<(String, String)> {
    let mut v = vec![
        p("Name", &r.name),
        p("Description", &r.description),
        p("Architecture", &r.architecture),
        p("BootMode", &r.boot_mode),
        p("EnaSupport", "true"),
        p("SriovNetSupport", "simple"),
        p("VirtualizationType", "hvm"),
        p("RootDeviceName", "/dev/xvda"),
        p("ImdsSupport", "v2.0"),
        p("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        p("BlockDeviceMapping.1.Ebs.SnapshotId", &r.snapshot),
        p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        p(
            "BlockDeviceMapping.1.Ebs.VolumeSize",
            r.root_volume_gib.to_string(),
        ),
        p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ];
    if r.tpm {
        v.push(p("TpmSupport", "v2.0"));
    }
    if !r.tags.is_empty() {
        v.push(p("TagSpecification.1.ResourceType", "image"));
        for (i, (k, val)) in r.tags.iter().enumerate() {
            v.push(p(format!("TagSpecification.1.Tag.{}.Key", i + 1), k));
            v.push(p(format!("TagSpecification.1.Tag.{}.Value", i + 1), val));
        }
    }
    v
}

/// RegisterImage → AMI id.
pub fn register_image(c: &Client, r: &Register, cancel: &AtomicBool) -> Result<String, AwsError> {
    let x = query(c, "RegisterImage", &register_params(r), cancel)?;
    xml::first(&x, "imageId").ok_or_else(|| AwsError::Protocol {
        action: "RegisterImage".into(),
        detail: "no imageId in the answer".into(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_encoding_follows_sigv4_rules() {
        let f = super::form(
            "DescribeImages",
            &[("Filter.1.Name".into(), "tag:i2kit:image-sha256".into())],
        );
        assert_eq!(
            f,
            "Action=DescribeImages&Version=2016-11-15&Filter.1.Name=tag%3Ai2kit%3Aimage-sha256"
        );
        assert_eq!(super::encode("a b/c~"), "a%20b%2Fc~");
    }
}
