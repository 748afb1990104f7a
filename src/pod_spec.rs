//! Builder side of `/etc/i2kit/pod.json`: how a manifest container and its
//! image config become a [`ContainerRun`]. The schema itself lives in the
//! `i2kit-pod` crate, shared with i2kit-init.

use crate::manifest::ContainerSpec;
use crate::oci::ImageConfig;

pub use i2kit_pod::{ContainerRun, POD_SPEC_PATH, POD_SPEC_VERSION, PodSpec};

/// Why a container cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodSpecError {
    /// Nothing to run.
    #[error(
        "container {0}: nothing to run — the image has no ENTRYPOINT or CMD and the manifest sets no command"
    )]
    NoCommand(String),
    /// A user name that /etc/passwd does not list.
    #[error("container {container}: user {user:?} (image USER) is not in the image's /etc/passwd")]
    UnknownUser {
        /// The container.
        container: String,
        /// The name.
        user: String,
    },
    /// A group name that /etc/group does not list.
    #[error("container {container}: group {group:?} (image USER) is not in the image's /etc/group")]
    UnknownGroup {
        /// The container.
        container: String,
        /// The name.
        group: String,
    },
}

/// Kubernetes' argv rule.
pub fn argv(c: &ContainerSpec, cfg: &ImageConfig) -> Result<Vec<String>, PodSpecError> {
    let rc = cfg.config.clone().unwrap_or_default();
    let v = match (&c.command, &c.args) {
        (Some(cmd), args) => cmd.iter().chain(args.iter().flatten()).cloned().collect(),
        (None, Some(args)) => rc
            .entrypoint
            .unwrap_or_default()
            .into_iter()
            .chain(args.iter().cloned())
            .collect(),
        (None, None) => rc
            .entrypoint
            .unwrap_or_default()
            .into_iter()
            .chain(rc.cmd.unwrap_or_default())
            .collect::<Vec<_>>(),
    };
    if v.is_empty() {
        return Err(PodSpecError::NoCommand(c.name.clone()));
    }
    Ok(v)
}

/// Image ENV, then manifest env; a later key replaces an earlier one in place.
pub fn env(c: &ContainerSpec, cfg: &ImageConfig) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let image_env = cfg
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    let image_pairs = image_env.into_iter().map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (kv, String::new()),
    });
    for (k, v) in image_pairs.chain(c.env.iter().cloned()) {
        match out.iter_mut().find(|(ek, _)| *ek == k) {
            Some(e) => e.1 = v,
            None => out.push((k, v)),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn lookup(db: Option<&[u8]>, name: &str, id_field: usize) -> Option<(u32, Option<u32>)> {
    let text = std::str::from_utf8(db?).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) {
            let id = f.get(id_field)?.parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// uid/gid: the manifest's securityContext, else the image USER (`uid`,
/// `uid:gid`, `name`, `name:group`, resolved through the image's passwd/group),
/// else 0:0. A user without a group takes its passwd primary group.
pub fn user(
    c: &ContainerSpec,
    cfg: &ImageConfig,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
) -> Result<(u32, u32), PodSpecError> {
    let spec = cfg
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (spec.clone(), None),
    };
    let (mut uid, mut primary) = (0u32, None);
    if let Some(x) = c.run_as_user {
        uid = x;
        primary = passwd_gid_of(passwd, x);
    } else if !u.is_empty() {
        match u.parse::<u32>() {
            Ok(x) => {
                uid = x;
                primary = passwd_gid_of(passwd, x);
            }
            Err(_) => {
                let (x, gid) = lookup(passwd, &u, 2).ok_or_else(|| PodSpecError::UnknownUser {
                    container: c.name.clone(),
                    user: u.clone(),
                })?;
                uid = x;
                primary = gid;
            }
        }
    }
    let gid = if let Some(x) = c.run_as_group {
        x
    } else if let Some(g) = g.filter(|g| !g.is_empty()) {
        match g.parse::<u32>() {
            Ok(x) => x,
            Err(_) => {
                lookup(group, &g, 2)
                    .ok_or_else(|| PodSpecError::UnknownGroup {
                        container: c.name.clone(),
                        group: g.clone(),
                    })?
                    .0
            }
        }
    } else {
        primary.unwrap_or(0)
    };
    Ok((uid, gid))
}

fn passwd_gid_of(passwd: Option<&[u8]>, uid: u32) -> Option<u32> {
    let text = std::str::from_utf8(passwd?).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RuntimeConfig;
    use std::collections::BTreeMap;

    fn spec(command: Option<&[&str]>, args: Option<&[&str]>) -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: "busybox".parse().unwrap(),
            command: command.map(|v| v.iter().map(|s| s.to_string()).collect()),
            args: args.map(|v| v.iter().map(|s| s.to_string()).collect()),
            env: vec![("B".into(), "manifest".into()), ("C".into(), "3".into())],
            ports: vec![],
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            tuning: BTreeMap::new(),
        }
    }

    fn cfg(ep: Option<&[&str]>, cmd: Option<&[&str]>, user: &str) -> ImageConfig {
        ImageConfig {
            config: Some(RuntimeConfig {
                entrypoint: ep.map(|v| v.iter().map(|s| s.to_string()).collect()),
                cmd: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
                env: Some(vec!["A=1".into(), "B=image".into()]),
                user: Some(user.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn kubernetes_argv_rules() {
        let img = cfg(Some(&["/ep"]), Some(&["cmd-arg"]), "");
        type Case<'a> = (Option<&'a [&'a str]>, Option<&'a [&'a str]>, &'a [&'a str]);
        let cases: &[Case] = &[
            (None, None, &["/ep", "cmd-arg"]),
            (None, Some(&["x"]), &["/ep", "x"]),
            (Some(&["/bin/sh"]), None, &["/bin/sh"]),
            (
                Some(&["/bin/sh"]),
                Some(&["-c", "y"]),
                &["/bin/sh", "-c", "y"],
            ),
        ];
        for (command, args, want) in cases {
            assert_eq!(argv(&spec(*command, *args), &img).unwrap(), *want);
        }
        assert_eq!(
            argv(&spec(None, None), &ImageConfig::default()),
            Err(PodSpecError::NoCommand("c".into()))
        );
    }

    #[test]
    fn env_merges_in_place() {
        assert_eq!(
            env(&spec(None, None), &cfg(None, None, "")),
            ["A=1", "B=manifest", "C=3"]
        );
    }

    #[test]
    fn users_resolve_through_passwd_and_group() {
        let passwd = b"root:x:0:0::/root:/bin/sh\nnginx:x:101:102::/:/bin/false\n";
        let group = b"root:x:0:\nwww:x:33:\n";
        let p = Some(&passwd[..]);
        let g = Some(&group[..]);
        let s = spec(None, None);
        let cases = [
            ("", (0, 0)),
            ("nginx", (101, 102)),
            ("101", (101, 102)),
            ("nginx:www", (101, 33)),
            ("5:6", (5, 6)),
            ("1000", (1000, 0)),
        ];
        for (u, want) in cases {
            assert_eq!(
                user(&s, &cfg(None, None, u), p, g).unwrap(),
                want,
                "USER {u}"
            );
        }
        assert!(matches!(
            user(&s, &cfg(None, None, "ghost"), p, g),
            Err(PodSpecError::UnknownUser { .. })
        ));
        assert!(matches!(
            user(&s, &cfg(None, None, "nginx:nogroup"), p, g),
            Err(PodSpecError::UnknownGroup { .. })
        ));
        let mut s2 = spec(None, None);
        s2.run_as_user = Some(101);
        assert_eq!(
            user(&s2, &cfg(None, None, "5:6"), p, g).unwrap(),
            (101, 6),
            "runAsUser wins, image group kept"
        );
    }
}
