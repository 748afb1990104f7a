//! OCI image-spec and Docker v2 schema 2 documents: descriptors, manifests,
//! indexes, platforms and the parts of the image config i2kit reads.
//!
//! Both media-type families are accepted everywhere; a manifest is kept as the
//! exact bytes the registry served (its digest is over those bytes), and these
//! types are only a parsed view of them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker v2 schema 1 (signed) manifest — rejected.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker v2 schema 1 manifest — rejected.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Annotation naming a manifest in an image layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Every manifest media type i2kit asks a registry for (the Accept header).
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Platform, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor with no platform or annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An OS/architecture/variant triple.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

/// What is wrong with a platform string.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(String);

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: normalise_arch(parts[1]).to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version: None,
        })
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Platform {
    /// `linux/amd64`, the default target.
    pub fn linux_amd64() -> Platform {
        "linux/amd64".parse().expect("constant platform parses")
    }

    /// Does an index entry's platform satisfy this requested platform?
    /// An unspecified variant matches any; arm64 entries without a variant count as `v8`.
    pub fn matches(&self, offered: &Platform) -> bool {
        if self.os != offered.os || self.architecture != normalise_arch(&offered.architecture) {
            return false;
        }
        match (&self.variant, &offered.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type (optional in OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type (optional in OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest document of either kind, parsed from the bytes a source served.
#[derive(Clone, Debug)]
pub enum ManifestDoc {
    /// A single-platform image.
    Image(Box<Manifest>),
    /// An index of platform images.
    Index(Index),
}

/// Why manifest bytes were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Docker schema 1.
    #[error(
        "{0} is a Docker v2 schema 1 manifest, which is deprecated and unsupported; re-push the image with a current client (docker push / skopeo copy --format v2s2)"
    )]
    Schema1(String),
    /// Not JSON of the expected shape.
    #[error("{what} is not a valid image manifest or index: {source}")]
    Malformed {
        /// Which document.
        what: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A media type we do not know.
    #[error("{what} has unsupported media type {media_type:?}")]
    MediaType {
        /// Which document.
        what: String,
        /// The media type.
        media_type: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl ManifestDoc {
    /// Parse manifest bytes; `content_type` is what the source said (may be empty).
    pub fn parse(
        what: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestDoc, ManifestError> {
        let malformed = |source| ManifestError::Malformed {
            what: what.to_string(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
        let media_type = probe
            .media_type
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| content_type.to_string());
        if probe.schema_version == Some(1)
            || media_type == DOCKER_SCHEMA1
            || media_type == DOCKER_SCHEMA1_SIGNED
        {
            return Err(ManifestError::Schema1(what.to_string()));
        }
        let is_index = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            // OCI allows an absent mediaType: decide by shape.
            "" | "application/json" => probe.manifests.is_some(),
            other => {
                return Err(ManifestError::MediaType {
                    what: what.to_string(),
                    media_type: other.to_string(),
                });
            }
        };
        if is_index {
            Ok(ManifestDoc::Index(
                serde_json::from_slice(bytes).map_err(malformed)?,
            ))
        } else {
            Ok(ManifestDoc::Image(Box::new(
                serde_json::from_slice(bytes).map_err(malformed)?,
            )))
        }
    }

    /// The media type to record in a descriptor pointing at this document.
    pub fn media_type(&self) -> &str {
        match self {
            ManifestDoc::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
            ManifestDoc::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
        }
    }
}

/// The image config fields i2kit reads (`application/vnd.oci.image.config.v1+json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// GOARCH.
    #[serde(default)]
    pub architecture: String,
    /// GOOS.
    #[serde(default)]
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime defaults.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// The `config` object of an image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `USER`.
    #[serde(default)]
    pub user: Option<String>,
    /// `ENV`, as `K=V`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WORKDIR`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `EXPOSE`.
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// The `rootfs` object of an image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layers.
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let v8 = Platform {
            variant: Some("v8".into()),
            ..p.clone()
        };
        assert!(p.matches(&v8));
        assert!(v8.matches(&p), "arm64 without variant is v8");
        let amd: Platform = "linux/x86_64".parse().unwrap();
        assert_eq!(amd.to_string(), "linux/amd64");
        assert!(!amd.matches(&p));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        let v6: Platform = "linux/arm/v6".parse().unwrap();
        assert!(!v7.matches(&v6));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
    }

    #[test]
    fn schema1_is_rejected_with_advice() {
        let e = ManifestDoc::parse("x", "", br#"{"schemaVersion":1,"name":"a","fsLayers":[]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        let e =
            ManifestDoc::parse("x", DOCKER_SCHEMA1_SIGNED, br#"{"schemaVersion":1}"#).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1(_)));
    }

    #[test]
    fn kinds_by_media_type_and_shape() {
        let d = Digest::of(b"c");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            ManifestDoc::parse("m", "", m.as_bytes()).unwrap(),
            ManifestDoc::Image(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestDoc::parse("i", "", i.as_bytes()).unwrap(),
            ManifestDoc::Index(_)
        ));
        let bad = r#"{"schemaVersion":2,"mediaType":"text/plain"}"#;
        assert!(matches!(
            ManifestDoc::parse("b", "", bad.as_bytes()),
            Err(ManifestError::MediaType { .. })
        ));
        assert!(matches!(
            ManifestDoc::parse("j", "", b"{not json"),
            Err(ManifestError::Malformed { .. })
        ));
    }
}
