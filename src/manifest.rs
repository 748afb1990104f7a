//! The input manifest: a Kubernetes `apps/v1` Deployment (the subset that
//! describes one Pod) or the compact form of the original i2kit paper, both
//! normalised into one [`Pod`].
//!
//! Field policy (ARCHITECTURE.md, "Manifest"): fields with no meaning for a VM
//! image (selector, strategy, labels, …) are accepted; fields that would change
//! the Pod's behaviour and are not implemented (volumes, initContainers, env
//! valueFrom, …) are errors naming the field and file:line:col; fields that only
//! tune a running Pod (probes, resources) are kept for pod.json with a warning;
//! anything else is an unknown field — so a typo never passes silently.
//!
//! i2kit settings come from `metadata.annotations` (`i2kit.dev/…`) of a
//! Deployment, or the top-level `i2kit:` block of the compact form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::oci::Platform;
use crate::reference::ImageRef;

/// Default kernel image: Debian's cloud kernel in LinuxKit layout (see kernels/).
pub const DEFAULT_KERNEL: &str = "ghcr.io/i2kit/kernel:6.1-cloud";
/// Default init image: i2kit-init of this i2kit version.
pub const DEFAULT_INIT: &str = concat!("ghcr.io/i2kit/init:", env!("CARGO_PKG_VERSION"));
/// Default EFI stub image: systemd-boot's `linux*.efi.stub`.
pub const DEFAULT_STUB: &str = "ghcr.io/i2kit/efi-stub:252";
/// Default kernel profile: modules for both QEMU (virtio) and AWS (ena).
pub const DEFAULT_PROFILE: &str = "generic";
/// Kubernetes' default grace period.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

/// An error in the manifest, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ManifestError {
    /// The file (or `<input>`).
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

pub use i2kit_pod::{PortSpec, RestartPolicy};

/// One container of the Pod, as the manifest says it (image config not yet applied).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// DNS-1123 label.
    pub name: String,
    /// The image.
    pub image: ImageRef,
    /// Replaces the image ENTRYPOINT when set.
    pub command: Option<Vec<String>>,
    /// Replaces the image CMD when set.
    pub args: Option<Vec<String>>,
    /// Environment, in manifest order (later entries win).
    pub env: Vec<(String, String)>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Numeric uid.
    pub run_as_user: Option<u32>,
    /// Numeric gid.
    pub run_as_group: Option<u32>,
    /// Tuning fields kept for pod.json (probes, resources, …), by name.
    pub tuning: BTreeMap<String, serde_json::Value>,
}

/// i2kit's own settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Kernel image (LinuxKit layout: `/kernel`, `/kernel.tar`).
    pub kernel: ImageRef,
    /// Init image (`/sbin/i2kit-init`).
    pub init: ImageRef,
    /// EFI stub image.
    pub stub: ImageRef,
    /// Extra kernel command line.
    pub cmdline: String,
    /// Kernel profile (`qemu`, `aws`, `generic`).
    pub profile: String,
    /// Modules to preload instead of the profile's list.
    pub modules: Option<Vec<String>>,
    /// Target platform.
    pub platform: Platform,
}

/// The Pod a manifest describes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// Pod (and image) name.
    pub name: String,
    /// Replicas (informational: one image serves every replica).
    pub replicas: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Containers, in manifest order.
    pub containers: Vec<ContainerSpec>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Grace period on shutdown.
    pub termination_grace_period_seconds: u64,
    /// Hostname (defaults to the name).
    pub hostname: String,
    /// i2kit settings.
    pub settings: Settings,
    /// Fields accepted but only kept, to be shown to the user (not part of the plan).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Pod {
    /// Every image the build needs: kernel, init, stub, then containers.
    pub fn image_refs(&self) -> Vec<(String, ImageRef)> {
        let mut v = vec![
            ("kernel".to_string(), self.settings.kernel.clone()),
            ("init".to_string(), self.settings.init.clone()),
            ("stub".to_string(), self.settings.stub.clone()),
        ];
        for c in &self.containers {
            v.push((format!("container {}", c.name), c.image.clone()));
        }
        v
    }
}

// ---------- raw Kubernetes form ----------

type Sp<T> = Spanned<T>;
type Reject = Option<Sp<IgnoredAny>>;

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8s {
    api_version: Sp<String>,
    kind: Sp<String>,
    metadata: Meta,
    spec: DeploymentSpec,
    #[serde(default)]
    status: Option<IgnoredAny>,
}

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: Option<Sp<String>>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, Sp<String>>,
    #[serde(default)]
    generate_name: Reject,
    #[serde(default)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    creation_timestamp: Option<IgnoredAny>,
}

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeploymentSpec {
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    selector: Option<IgnoredAny>,
    #[serde(default)]
    strategy: Option<IgnoredAny>,
    #[serde(default)]
    revision_history_limit: Option<IgnoredAny>,
    #[serde(default)]
    min_ready_seconds: Option<IgnoredAny>,
    #[serde(default)]
    progress_deadline_seconds: Option<IgnoredAny>,
    #[serde(default)]
    paused: Option<IgnoredAny>,
    template: Template,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    #[serde(default)]
    metadata: Meta,
    spec: PodSpec,
}

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    containers: Sp<Vec<K8sContainer>>,
    #[serde(default)]
    restart_policy: Option<Sp<String>>,
    #[serde(default)]
    termination_grace_period_seconds: Option<Sp<i64>>,
    #[serde(default)]
    hostname: Option<Sp<String>>,
    // Scheduling-only: no meaning inside one VM.
    #[serde(default)]
    node_selector: Option<IgnoredAny>,
    #[serde(default)]
    affinity: Option<IgnoredAny>,
    #[serde(default)]
    tolerations: Option<IgnoredAny>,
    #[serde(default)]
    priority_class_name: Option<IgnoredAny>,
    #[serde(default)]
    scheduler_name: Option<IgnoredAny>,
    #[serde(default)]
    service_account_name: Option<IgnoredAny>,
    #[serde(default)]
    dns_policy: Option<IgnoredAny>,
    // Change the Pod's behaviour; not implemented yet.
    #[serde(default)]
    volumes: Reject,
    #[serde(default)]
    init_containers: Reject,
    #[serde(default)]
    ephemeral_containers: Reject,
    #[serde(default)]
    host_network: Reject,
    #[serde(default)]
    host_pid: Reject,
    #[serde(default)]
    host_ipc: Reject,
    #[serde(default)]
    share_process_namespace: Reject,
    #[serde(default)]
    security_context: Reject,
    #[serde(default)]
    host_aliases: Reject,
    #[serde(default)]
    dns_config: Reject,
    #[serde(default)]
    subdomain: Reject,
    #[serde(default)]
    image_pull_secrets: Option<IgnoredAny>,
}

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sContainer {
    name: Sp<String>,
    #[serde(default)]
    image: Option<Sp<String>>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<K8sEnv>,
    #[serde(default)]
    ports: Vec<K8sPort>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
    #[serde(default)]
    image_pull_policy: Option<IgnoredAny>,
    #[serde(default)]
    termination_message_path: Option<IgnoredAny>,
    #[serde(default)]
    termination_message_policy: Option<IgnoredAny>,
    // Tuning: kept in pod.json, with a warning.
    #[serde(default)]
    resources: Option<Sp<serde_json::Value>>,
    #[serde(default)]
    liveness_probe: Option<Sp<serde_json::Value>>,
    #[serde(default)]
    readiness_probe: Option<Sp<serde_json::Value>>,
    #[serde(default)]
    startup_probe: Option<Sp<serde_json::Value>>,
    #[serde(default)]
    lifecycle: Reject,
    #[serde(default)]
    env_from: Reject,
    #[serde(default)]
    volume_mounts: Reject,
    #[serde(default)]
    volume_devices: Reject,
    #[serde(default)]
    stdin: Reject,
    #[serde(default)]
    tty: Reject,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sEnv {
    name: Sp<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Reject,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sPort {
    container_port: Sp<i64>,
    #[serde(default)]
    protocol: Option<Sp<String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    host_port: Reject,
    #[serde(default)]
    host_ip: Reject,
}

// Fields accepted because they mean nothing inside one VM are parsed and dropped.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecurityContext {
    #[serde(default)]
    run_as_user: Option<Sp<i64>>,
    #[serde(default)]
    run_as_group: Option<Sp<i64>>,
    #[serde(default)]
    run_as_non_root: Option<IgnoredAny>,
    #[serde(default)]
    privileged: Reject,
    #[serde(default)]
    capabilities: Reject,
    #[serde(default)]
    read_only_root_filesystem: Reject,
    #[serde(default)]
    allow_privilege_escalation: Reject,
}

// ---------- raw compact form ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Compact {
    name: Sp<String>,
    #[serde(default)]
    replicas: Option<u32>,
    containers: Sp<BTreeMap<String, Sp<CompactContainer>>>,
    #[serde(default)]
    i2kit: Option<CompactSettings>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactContainer {
    #[serde(default)]
    image: Option<Sp<String>>,
    #[serde(default)]
    ports: Vec<Sp<i64>>,
    #[serde(default)]
    command: Option<Command>,
    #[serde(default)]
    environment: Vec<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactSettings {
    #[serde(default)]
    kernel: Option<Sp<String>>,
    #[serde(default)]
    init: Option<Sp<String>>,
    #[serde(default)]
    stub: Option<Sp<String>>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    profile: Option<Sp<String>>,
    #[serde(default)]
    modules: Option<Vec<String>>,
    #[serde(default)]
    platform: Option<Sp<String>>,
    #[serde(default)]
    restart_policy: Option<Sp<String>>,
    #[serde(default)]
    termination_grace_period_seconds: Option<Sp<i64>>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    kind: Option<IgnoredAny>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<IgnoredAny>,
}

// ---------- parsing ----------

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn at<T>(
        &self,
        sp: &Sp<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            line: sp.referenced.line(),
            column: sp.referenced.column(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn nowhere(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        }
    }
    fn reject(&self, r: &Reject, field: &str, why: &str) -> Result<(), ManifestError> {
        match r {
            Some(sp) => Err(self.at(
                sp,
                field,
                format!("is not supported by i2kit yet ({why}); remove it"),
            )),
            None => Ok(()),
        }
    }
    fn image(
        &self,
        sp: &Option<Sp<String>>,
        field: &str,
        at: &Sp<String>,
    ) -> Result<ImageRef, ManifestError> {
        match sp {
            None => Err(self.at(at, field, "is missing: every container needs an image")),
            Some(s) if s.value.trim().is_empty() => {
                Err(self.at(s, field, "is empty: every container needs an image"))
            }
            Some(s) => s
                .value
                .parse()
                .map_err(|e| self.at(s, field, format!("{e}"))),
        }
    }
}

/// Kubernetes DNS-1123 label: ≤ 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes DNS-1123 subdomain (Deployment names): ≤ 253, dot-separated labels.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn parse_restart(
    ctx: &Ctx,
    sp: &Option<Sp<String>>,
    field: &str,
) -> Result<RestartPolicy, ManifestError> {
    match sp {
        None => Ok(RestartPolicy::Always),
        Some(s) => match s.value.as_str() {
            "Always" => Ok(RestartPolicy::Always),
            "OnFailure" => Ok(RestartPolicy::OnFailure),
            "Never" => Ok(RestartPolicy::Never),
            other => Err(ctx.at(
                s,
                field,
                format!("{other:?} is not one of Always, OnFailure, Never"),
            )),
        },
    }
}

fn parse_grace(ctx: &Ctx, sp: &Option<Sp<i64>>, field: &str) -> Result<u64, ManifestError> {
    match sp {
        None => Ok(DEFAULT_GRACE_SECONDS),
        Some(s) if (0..=86_400).contains(&s.value) => Ok(s.value as u64),
        Some(s) => Err(ctx.at(
            s,
            field,
            format!("{} is out of range 0..=86400 seconds", s.value),
        )),
    }
}

fn parse_port(ctx: &Ctx, sp: &Sp<i64>, field: &str) -> Result<u16, ManifestError> {
    if (1..=65535).contains(&sp.value) {
        Ok(sp.value as u16)
    } else {
        Err(ctx.at(
            sp,
            field,
            format!("port {} is out of range 1-65535", sp.value),
        ))
    }
}

fn parse_id(ctx: &Ctx, sp: &Option<Sp<i64>>, field: &str) -> Result<Option<u32>, ManifestError> {
    match sp {
        None => Ok(None),
        Some(s) if (0..=i64::from(u32::MAX - 1)).contains(&s.value) => Ok(Some(s.value as u32)),
        Some(s) => Err(ctx.at(s, field, format!("{} is not a valid numeric id", s.value))),
    }
}

struct RawSettings<'a> {
    kernel: Option<&'a Sp<String>>,
    init: Option<&'a Sp<String>>,
    stub: Option<&'a Sp<String>>,
    cmdline: Option<String>,
    profile: Option<&'a Sp<String>>,
    modules: Option<Vec<String>>,
    platform: Option<&'a Sp<String>>,
}

fn settings(ctx: &Ctx, raw: RawSettings, prefix: &str) -> Result<Settings, ManifestError> {
    let image =
        |sp: Option<&Sp<String>>, key: &str, default: &str| -> Result<ImageRef, ManifestError> {
            match sp {
                Some(s) => s
                    .value
                    .parse()
                    .map_err(|e| ctx.at(s, format!("{prefix}{key}"), format!("{e}"))),
                None => Ok(default.parse().expect("default references parse")),
            }
        };
    let profile = match raw.profile {
        Some(s) if crate::kernel_profile::profile(&s.value).is_none() => {
            return Err(ctx.at(
                s,
                format!("{prefix}profile"),
                format!(
                    "unknown kernel profile {:?}; known: {}",
                    s.value,
                    crate::kernel_profile::PROFILES
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Some(s) => s.value.clone(),
        None => DEFAULT_PROFILE.to_string(),
    };
    let platform = match raw.platform {
        Some(s) => {
            let p: Platform = s
                .value
                .parse()
                .map_err(|e| ctx.at(s, format!("{prefix}platform"), format!("{e}")))?;
            if p.os != "linux" || !matches!(p.architecture.as_str(), "amd64" | "arm64") {
                return Err(ctx.at(
                    s,
                    format!("{prefix}platform"),
                    "only linux/amd64 and linux/arm64 are supported",
                ));
            }
            p
        }
        None => Platform::linux_amd64(),
    };
    Ok(Settings {
        kernel: image(raw.kernel, "kernel", DEFAULT_KERNEL)?,
        init: image(raw.init, "init", DEFAULT_INIT)?,
        stub: image(raw.stub, "stub", DEFAULT_STUB)?,
        cmdline: raw.cmdline.unwrap_or_default(),
        profile,
        modules: raw.modules,
        platform,
    })
}

/// Parse a manifest from text; `file` is only used in messages.
pub fn parse_manifest(text: &str, file: &Path) -> Result<Pod, ManifestError> {
    let ctx = Ctx { file };
    let yaml_err = |e: serde_saphyr::Error| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        // The first line of the rendered error, without the "error: line L column C: " lead.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let msg = first
            .split_once(": ")
            .map(|(_, rest)| rest)
            .and_then(|rest| {
                if rest.starts_with("line ") {
                    rest.split_once(": ").map(|x| x.1)
                } else {
                    Some(rest)
                }
            })
            .unwrap_or(first);
        ManifestError {
            file: file.to_path_buf(),
            line,
            column,
            field: String::new(),
            message: msg.to_string(),
        }
    };
    let probe: Probe = serde_saphyr::from_str(text).map_err(yaml_err)?;
    if probe.kind.is_some() || probe.api_version.is_some() {
        let raw: K8s = serde_saphyr::from_str(text).map_err(yaml_err)?;
        from_k8s(&ctx, raw)
    } else {
        let raw: Compact = serde_saphyr::from_str(text).map_err(yaml_err)?;
        from_compact(&ctx, raw)
    }
}

/// Read and parse a manifest file.
pub fn load_manifest(path: &Path) -> Result<Pod, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse_manifest(&text, path)
}

fn from_k8s(ctx: &Ctx, raw: K8s) -> Result<Pod, ManifestError> {
    if raw.api_version.value != "apps/v1" {
        return Err(ctx.at(
            &raw.api_version,
            "apiVersion",
            format!("{:?} is not supported; use apps/v1", raw.api_version.value),
        ));
    }
    if raw.kind.value != "Deployment" {
        return Err(ctx.at(
            &raw.kind,
            "kind",
            format!(
                "{:?} is not supported; i2kit builds a Deployment",
                raw.kind.value
            ),
        ));
    }
    let name = raw
        .metadata
        .name
        .as_ref()
        .ok_or_else(|| ctx.nowhere("metadata.name", "is missing"))?;
    ctx.reject(
        &raw.metadata.generate_name,
        "metadata.generateName",
        "an image needs a fixed name",
    )?;
    if !is_dns1123_subdomain(&name.value) {
        return Err(ctx.at(
            name,
            "metadata.name",
            format!(
                "{:?} is not a valid DNS-1123 name (lowercase letters, digits, '-' and '.')",
                name.value
            ),
        ));
    }
    let spec = raw.spec.template.spec;
    let p = "spec.template.spec";
    for (r, f, why) in [
        (&spec.volumes, "volumes", "volumes"),
        (&spec.init_containers, "initContainers", "init containers"),
        (
            &spec.ephemeral_containers,
            "ephemeralContainers",
            "ephemeral containers",
        ),
        (
            &spec.host_network,
            "hostNetwork",
            "the Pod always owns the VM's network",
        ),
        (&spec.host_pid, "hostPID", "host namespaces"),
        (&spec.host_ipc, "hostIPC", "host namespaces"),
        (
            &spec.share_process_namespace,
            "shareProcessNamespace",
            "shared PID namespace",
        ),
        (
            &spec.security_context,
            "securityContext",
            "pod-level security context; set runAsUser/runAsGroup per container",
        ),
        (&spec.host_aliases, "hostAliases", "host aliases"),
        (
            &spec.dns_config,
            "dnsConfig",
            "DNS config; DHCP provides resolvers",
        ),
        (&spec.subdomain, "subdomain", "subdomains"),
    ] {
        ctx.reject(r, &format!("{p}.{f}"), why)?;
    }
    let mut warnings = Vec::new();
    let mut containers = Vec::new();
    if spec.containers.value.is_empty() {
        return Err(ctx.at(
            &spec.containers,
            format!("{p}.containers"),
            "needs at least one container",
        ));
    }
    for (i, c) in spec.containers.value.iter().enumerate() {
        let f = format!("{p}.containers[{i}]");
        for (r, name, why) in [
            (&c.lifecycle, "lifecycle", "lifecycle hooks"),
            (
                &c.env_from,
                "envFrom",
                "environment from ConfigMaps/Secrets",
            ),
            (&c.volume_mounts, "volumeMounts", "volumes"),
            (&c.volume_devices, "volumeDevices", "volumes"),
            (&c.stdin, "stdin", "interactive containers"),
            (&c.tty, "tty", "interactive containers"),
        ] {
            ctx.reject(r, &format!("{f}.{name}"), why)?;
        }
        let mut env = Vec::new();
        for (j, e) in c.env.iter().enumerate() {
            ctx.reject(
                &e.value_from,
                &format!("{f}.env[{j}].valueFrom"),
                "valueFrom needs a Kubernetes API server; use value",
            )?;
            if e.name.value.is_empty() || e.name.value.contains('=') {
                return Err(ctx.at(
                    &e.name,
                    format!("{f}.env[{j}].name"),
                    "must be non-empty and contain no '='",
                ));
            }
            env.push((e.name.value.clone(), e.value.clone().unwrap_or_default()));
        }
        let mut ports = Vec::new();
        for (j, port) in c.ports.iter().enumerate() {
            ctx.reject(
                &port.host_port,
                &format!("{f}.ports[{j}].hostPort"),
                "the VM's ports are the Pod's ports",
            )?;
            ctx.reject(
                &port.host_ip,
                &format!("{f}.ports[{j}].hostIP"),
                "the VM's ports are the Pod's ports",
            )?;
            let n = parse_port(
                ctx,
                &port.container_port,
                &format!("{f}.ports[{j}].containerPort"),
            )?;
            let protocol = match &port.protocol {
                None => "TCP".to_string(),
                Some(s) if matches!(s.value.as_str(), "TCP" | "UDP" | "SCTP") => s.value.clone(),
                Some(s) => {
                    return Err(ctx.at(
                        s,
                        format!("{f}.ports[{j}].protocol"),
                        format!("{:?} is not one of TCP, UDP, SCTP", s.value),
                    ));
                }
            };
            ports.push(PortSpec {
                container_port: n,
                protocol,
                name: port.name.clone(),
            });
        }
        let mut tuning = BTreeMap::new();
        for (key, v) in [
            ("resources", &c.resources),
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(v) = v {
                warnings.push(format!(
                    "{}:{}:{}: {f}.{key} is kept in pod.json but not enforced by i2kit-init",
                    ctx.file.display(),
                    v.referenced.line(),
                    v.referenced.column()
                ));
                tuning.insert(key.to_string(), v.value.clone());
            }
        }
        let (run_as_user, run_as_group) = match &c.security_context {
            Some(sc) => {
                ctx.reject(
                    &sc.privileged,
                    &format!("{f}.securityContext.privileged"),
                    "privileged containers",
                )?;
                ctx.reject(
                    &sc.capabilities,
                    &format!("{f}.securityContext.capabilities"),
                    "capability changes",
                )?;
                ctx.reject(
                    &sc.read_only_root_filesystem,
                    &format!("{f}.securityContext.readOnlyRootFilesystem"),
                    "read-only root",
                )?;
                ctx.reject(
                    &sc.allow_privilege_escalation,
                    &format!("{f}.securityContext.allowPrivilegeEscalation"),
                    "no_new_privs control",
                )?;
                (
                    parse_id(
                        ctx,
                        &sc.run_as_user,
                        &format!("{f}.securityContext.runAsUser"),
                    )?,
                    parse_id(
                        ctx,
                        &sc.run_as_group,
                        &format!("{f}.securityContext.runAsGroup"),
                    )?,
                )
            }
            None => (None, None),
        };
        containers.push((
            &c.name,
            ContainerSpec {
                name: c.name.value.clone(),
                image: ctx.image(&c.image, &format!("{f}.image"), &c.name)?,
                command: c.command.clone(),
                args: c.args.clone(),
                env,
                ports,
                working_dir: c.working_dir.clone(),
                run_as_user,
                run_as_group,
                tuning,
            },
        ));
    }
    let containers = check_names(ctx, containers, &format!("{p}.containers"))?;
    let ann = &raw.metadata.annotations;
    let get = |k: &str| ann.get(&format!("i2kit.dev/{k}"));
    for (k, v) in ann {
        if let Some(key) = k.strip_prefix("i2kit.dev/")
            && ![
                "kernel", "init", "stub", "cmdline", "profile", "modules", "platform",
            ]
            .contains(&key)
        {
            return Err(ctx.at(v, format!("metadata.annotations.{k}"), "unknown i2kit setting; known: kernel, init, stub, cmdline, profile, modules, platform"));
        }
    }
    let settings = settings(
        ctx,
        RawSettings {
            kernel: get("kernel"),
            init: get("init"),
            stub: get("stub"),
            cmdline: get("cmdline").map(|s| s.value.clone()),
            profile: get("profile"),
            modules: get("modules").map(|s| {
                s.value
                    .split([',', ' '])
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect()
            }),
            platform: get("platform"),
        },
        "metadata.annotations.i2kit.dev/",
    )?;
    let hostname = match &spec.hostname {
        Some(h) if !is_dns1123_label(&h.value) => {
            return Err(ctx.at(
                h,
                format!("{p}.hostname"),
                format!("{:?} is not a valid DNS-1123 label", h.value),
            ));
        }
        Some(h) => h.value.clone(),
        None => name.value.clone(),
    };
    let mut labels = raw.metadata.labels.clone();
    labels.extend(raw.spec.template.metadata.labels.clone());
    Ok(Pod {
        name: name.value.clone(),
        replicas: raw.spec.replicas.unwrap_or(1),
        labels,
        containers,
        restart_policy: parse_restart(ctx, &spec.restart_policy, &format!("{p}.restartPolicy"))?,
        termination_grace_period_seconds: parse_grace(
            ctx,
            &spec.termination_grace_period_seconds,
            &format!("{p}.terminationGracePeriodSeconds"),
        )?,
        hostname,
        settings,
        warnings,
    })
}

fn check_names(
    ctx: &Ctx,
    containers: Vec<(&Sp<String>, ContainerSpec)>,
    field: &str,
) -> Result<Vec<ContainerSpec>, ManifestError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, (sp, c)) in containers.into_iter().enumerate() {
        if !is_dns1123_label(&c.name) {
            return Err(ctx.at(sp, format!("{field}[{i}].name"), format!("{:?} is not a valid DNS-1123 label (≤ 63 lowercase letters, digits or '-', alphanumeric at both ends)", c.name)));
        }
        if !seen.insert(c.name.clone()) {
            return Err(ctx.at(
                sp,
                format!("{field}[{i}].name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

fn from_compact(ctx: &Ctx, raw: Compact) -> Result<Pod, ManifestError> {
    if !is_dns1123_subdomain(&raw.name.value) {
        return Err(ctx.at(
            &raw.name,
            "name",
            format!(
                "{:?} is not a valid DNS-1123 name (lowercase letters, digits, '-' and '.')",
                raw.name.value
            ),
        ));
    }
    if raw.containers.value.is_empty() {
        return Err(ctx.at(
            &raw.containers,
            "containers",
            "needs at least one container",
        ));
    }
    // Compact containers are a YAML mapping: order them by name, which is also
    // what a reader sees sorted; duplicate keys are a YAML error already.
    let mut containers = Vec::new();
    let names: Vec<Sp<String>> = raw
        .containers
        .value
        .iter()
        .map(|(k, v)| Spanned {
            value: k.clone(),
            referenced: v.referenced,
            defined: v.defined,
        })
        .collect();
    for ((name, c), name_sp) in raw.containers.value.iter().zip(&names) {
        let f = format!("containers.{name}");
        let mut env = Vec::new();
        for (j, e) in c.value.environment.iter().enumerate() {
            match e.value.split_once('=') {
                Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(ctx.at(
                        e,
                        format!("{f}.environment[{j}]"),
                        format!("{:?} is not KEY=VALUE", e.value),
                    ));
                }
            }
        }
        let ports = c
            .value
            .ports
            .iter()
            .enumerate()
            .map(|(j, p)| {
                Ok(PortSpec {
                    container_port: parse_port(ctx, p, &format!("{f}.ports[{j}]"))?,
                    protocol: "TCP".into(),
                    name: None,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        let command = match &c.value.command {
            None => None,
            // A string is Docker's shell form.
            Some(Command::Shell(s)) => {
                Some(vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()])
            }
            Some(Command::Argv(v)) => Some(v.clone()),
        };
        containers.push((
            name_sp,
            ContainerSpec {
                name: name.clone(),
                image: ctx.image(&c.value.image, &format!("{f}.image"), name_sp)?,
                command,
                args: None,
                env,
                ports,
                working_dir: None,
                run_as_user: None,
                run_as_group: None,
                tuning: BTreeMap::new(),
            },
        ));
    }
    let containers = check_names(ctx, containers, "containers")?;
    let s = raw.i2kit.as_ref();
    let settings = settings(
        ctx,
        RawSettings {
            kernel: s.and_then(|s| s.kernel.as_ref()),
            init: s.and_then(|s| s.init.as_ref()),
            stub: s.and_then(|s| s.stub.as_ref()),
            cmdline: s.and_then(|s| s.cmdline.clone()),
            profile: s.and_then(|s| s.profile.as_ref()),
            modules: s.and_then(|s| s.modules.clone()),
            platform: s.and_then(|s| s.platform.as_ref()),
        },
        "i2kit.",
    )?;
    let none = None;
    Ok(Pod {
        name: raw.name.value.clone(),
        replicas: raw.replicas.unwrap_or(1),
        labels: BTreeMap::new(),
        containers,
        restart_policy: parse_restart(
            ctx,
            s.map_or(&none, |s| &s.restart_policy),
            "i2kit.restart_policy",
        )?,
        termination_grace_period_seconds: parse_grace(
            ctx,
            s.map_or(&None, |s| &s.termination_grace_period_seconds),
            "i2kit.termination_grace_period_seconds",
        )?,
        hostname: raw.name.value.clone(),
        settings,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
