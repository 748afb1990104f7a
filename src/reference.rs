//! Image references: `registry[:port]/repo/path[:tag][@sha256:…]`, Docker Hub
//! normalisation, and `oci:PATH[:tag]` local image layouts (skopeo's spelling).
//!
//! Grammar: distribution's `reference` package (docker/distribution
//! `reference/reference.go`). A name is slash-separated path components of
//! lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`; the first
//! component is a registry host when it contains `.` or `:` or is `localhost`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An image in a local OCI image layout directory.
    Layout(LayoutRef),
}

/// An image in a registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryRef {
    /// `host[:port]`, normalised (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Pinned manifest digest.
    pub digest: Option<Digest>,
}

/// An image in a local OCI image layout (`oci:PATH[:tag]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayoutRef {
    /// The layout directory.
    pub path: PathBuf,
    /// The `org.opencontainers.image.ref.name` to select; the only entry when absent.
    pub tag: Option<String>,
    /// Pinned manifest digest (set by a lock file, not by the user's spelling).
    pub digest: Option<Digest>,
}

/// What is wrong with a reference string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {problem}")]
pub struct ReferenceError {
    /// The reference as the user wrote it.
    pub input: String,
    /// Which part is wrong, and how.
    pub problem: String,
}

fn err(input: &str, problem: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_string(),
        problem: problem.into(),
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-"+
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[\w][\w.-]{0,127}`
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

fn check_registry(input: &str, host: &str) -> Result<(), ReferenceError> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [ipv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(err(input, format!("registry {host:?} has an unclosed '['")));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(
                input,
                format!("registry {host:?} is not a valid IPv6 address"),
            ));
        }
        match after {
            "" => return Ok(()),
            p if p.starts_with(':') => (addr, Some(&p[1..])),
            _ => return Err(err(input, format!("registry {host:?}: junk after ']'"))),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|&p| p > 0).is_none()
    {
        return Err(err(
            input,
            format!("registry port {p:?} is not a number between 1 and 65535"),
        ));
    }
    if !host.starts_with('[') {
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(err(
                input,
                format!("registry host {name:?} is not a valid host name"),
            ));
        }
    }
    Ok(())
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = input.strip_prefix("oci:") {
            return parse_layout(input, rest).map(ImageRef::Layout);
        }
        parse_registry(input).map(ImageRef::Registry)
    }
}

fn parse_layout(input: &str, rest: &str) -> Result<LayoutRef, ReferenceError> {
    if rest.is_empty() {
        return Err(err(
            input,
            "oci: needs a directory path, as in oci:PATH[:tag]",
        ));
    }
    // skopeo splits PATH and tag at a colon; a tag never holds '/', a path usually does.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => {
            if !valid_tag(t) {
                return Err(err(
                    input,
                    format!(
                        "tag {t:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
                    ),
                ));
            }
            (p, Some(t.to_string()))
        }
        _ => (rest, None),
    };
    Ok(LayoutRef {
        path: PathBuf::from(path),
        tag,
        digest: None,
    })
}

fn parse_registry(input: &str) -> Result<RegistryRef, ReferenceError> {
    if input.is_empty() {
        return Err(err(input, "it is empty"));
    }
    if input.trim() != input || input.contains(char::is_whitespace) {
        return Err(err(input, "it contains whitespace"));
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((n, d)) => {
            let digest = d
                .parse::<Digest>()
                .map_err(|e| err(input, format!("digest part: {e}")))?;
            (n, Some(digest))
        }
        None => (input, None),
    };
    // The tag is after the last ':' that follows the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => {
            let (n, t) = name_tag.split_at(last_slash + i);
            let t = &t[1..];
            if !valid_tag(t) {
                return Err(err(
                    input,
                    format!(
                        "tag {t:?} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
                    ),
                ));
            }
            (n, Some(t.to_string()))
        }
        None => (name_tag, None),
    };
    if name.is_empty() {
        return Err(err(input, "the repository name is empty"));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    let has_registry = parts.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.starts_with('['));
    let registry = if has_registry {
        check_registry(input, first)?;
        parts.remove(0);
        match first {
            // Docker Hub's aliases all mean one registry.
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => first.to_string(),
        }
    } else {
        DOCKER_HUB.to_string()
    };
    for c in &parts {
        if !valid_path_component(c) {
            let hint = if c.bytes().any(|b| b.is_ascii_uppercase()) {
                " (repository names must be lowercase)"
            } else {
                ""
            };
            return Err(err(
                input,
                format!(
                    "repository component {c:?} is invalid{hint}: use lowercase letters, digits and single '.', '_', '__' or '-' separators"
                ),
            ));
        }
    }
    let mut repository = parts.join("/");
    if registry == DOCKER_HUB && parts.len() == 1 {
        repository = format!("library/{repository}");
    }
    if repository.len() > 255 {
        return Err(err(
            input,
            "the repository name is longer than 255 characters",
        ));
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.path.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::Layout(l) => l.fmt(f),
        }
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ImageRef {
    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<Digest> {
        match self {
            ImageRef::Registry(r) => r.digest,
            ImageRef::Layout(l) => l.digest,
        }
    }

    /// The same reference pinned to `digest` (tag kept for readability).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        let mut r = self.clone();
        match &mut r {
            ImageRef::Registry(x) => x.digest = Some(digest),
            ImageRef::Layout(x) => x.digest = Some(digest),
        }
        r
    }

    /// The same reference without its digest (what a lock file keys on).
    pub fn without_digest(&self) -> ImageRef {
        let mut r = self.clone();
        match &mut r {
            ImageRef::Registry(x) => {
                x.digest = None;
                if x.tag.is_none() {
                    // A digest-only reference has no tag to fall back on; keep the digest.
                    return self.clone();
                }
            }
            ImageRef::Layout(x) => x.digest = None,
        }
        r
    }
}

impl RegistryRef {
    /// The registry host without port, for the plain-HTTP decision.
    pub fn host(&self) -> &str {
        let r = self.registry.as_str();
        if let Some(rest) = r.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        r.split(':').next().unwrap_or(r)
    }

    /// True for `localhost`, `127.0.0.0/8` and `[::1]` registries, which are spoken
    /// to over plain HTTP, as docker and containerd do.
    pub fn is_loopback(&self) -> bool {
        let h = self.host();
        h == "localhost"
            || h.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
            || h.parse::<std::net::Ipv6Addr>()
                .is_ok_and(|a| a.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("expected a registry ref, got {other:?}"),
        }
    }

    #[test]
    fn normalisation_table() {
        let d = Digest::of(b"x");
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("index.docker.io/user/app:v1", "docker.io/user/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
            ("127.0.0.1:5000/app:1.0", "127.0.0.1:5000/app:1.0"),
            ("[::1]:5000/app", "[::1]:5000/app:latest"),
            (
                "ghcr.io/org/my_app__x.y-z:v1.2-rc_3",
                "ghcr.io/org/my_app__x.y-z:v1.2-rc_3",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(reg(input).to_string(), want, "input {input}");
        }
        let r = reg(&format!("busybox@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        let r = reg(&format!("quay.io:443/x/y:tag@{d}"));
        assert_eq!((r.tag.as_deref(), r.digest), (Some("tag"), Some(d)));
        assert_eq!(r.registry, "quay.io:443");
    }

    #[test]
    fn malformed_references_name_the_part() {
        let cases = [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-bad", "tag"),
            ("busybox@sha256:abc", "digest part"),
            ("busybox@md5:abc", "digest part"),
            ("localhost:99999/app", "port"),
            ("local_host.io/app", "host"),
            ("a//b", "repository component"),
            ("a/-b", "repository component"),
            ("foo bar", "whitespace"),
            ("oci:", "directory"),
            ("oci:dir:bad tag", "tag"),
        ];
        for (input, part) in cases {
            let e = input.parse::<ImageRef>().unwrap_err();
            assert!(
                e.to_string().contains(part),
                "{input:?} → {e} (wanted {part:?})"
            );
        }
    }

    #[test]
    fn oci_layouts() {
        let l = |s: &str| match s.parse::<ImageRef>().unwrap() {
            ImageRef::Layout(l) => l,
            other => panic!("{other:?}"),
        };
        assert_eq!(l("oci:./dir").path, PathBuf::from("./dir"));
        assert_eq!(l("oci:./dir").tag, None);
        assert_eq!(l("oci:/a/b:v1").tag.as_deref(), Some("v1"));
        assert_eq!(l("oci:/a/b:v1").path, PathBuf::from("/a/b"));
        assert_eq!(l("oci:/a/b:v1").to_string(), "oci:/a/b:v1");
    }

    #[test]
    fn loopback_detection() {
        assert!(reg("localhost:5000/a").is_loopback());
        assert!(reg("127.0.0.9:5000/a").is_loopback());
        assert!(reg("[::1]:5000/a").is_loopback());
        assert!(!reg("registry.example:5000/a").is_loopback());
        assert!(!reg("busybox").is_loopback());
    }
}
