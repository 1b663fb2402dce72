//! Where a process is placed on the host: its network namespace and control group, and what
//! the cgroup path names — the systemd unit, and the container (runtime, id, Kubernetes pod).
//!
//! Pure: the cgroup path comes from `/proc/<pid>/cgroup` ([`cgroup_path`] picks it from that
//! file's text); nothing here reads a file. The names recognised are those the runtimes give
//! their cgroups, with the systemd cgroup driver and with the cgroupfs one:
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | Docker | `…/docker-<id>.scope` | `/docker/<id>` |
//! | Podman (libpod) | `…/libpod-<id>.scope` (also `libpod-conmon-<id>.scope`: its monitor) | `/libpod_parent/libpod-<id>` |
//! | containerd (CRI) | `…/cri-containerd-<id>.scope` | `/kubepods/…/pod<uid>/<id>` |
//! | CRI-O | `…/crio-<id>.scope` (`crio-conmon-<id>.scope`: its monitor) | `/kubepods/…/pod<uid>/<id>` |
//! | Kubernetes pod | `…/kubepods-<qos>-pod<uid with _>.slice/…` | `/kubepods/<qos>/pod<uid>/…` |
//! | systemd-nspawn | `/machine.slice/systemd-nspawn@<name>.service`, `/machine.slice/machine-<name>.scope` | – |
//! | LXC | `/lxc.payload.<name>/…`, `/lxc/<name>/…` | – |
//!
//! Invariants: never panics, whatever the text; an id is returned only when it looks like
//! one (64 hex digits for Docker, Podman, containerd and CRI-O; a pod uid has 32 hex digits
//! in 8-4-4-4-12 form); the deepest container in a path wins (a container inside a pod).

use crate::NetNsId;

/// Where a process is placed (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Its network namespace, when it could be read.
    pub netns: Option<NetNsId>,
    /// Its control-group path (cgroup v2, else v1 `name=systemd`), e.g.
    /// `/system.slice/nginx.service`; `None` when it could not be read.
    pub cgroup: Option<String>,
}

/// A container a process runs in, as its cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Container<'a> {
    /// `docker`, `podman`, `containerd`, `cri-o`, `kubernetes` (a pod's container whose
    /// runtime the path does not name), `systemd-nspawn` or `lxc`.
    pub runtime: &'static str,
    /// The runtime's id (64 hex digits), or the machine's name for systemd-nspawn and LXC.
    pub id: &'a str,
    /// The Kubernetes pod uid (`8-4-4-4-12` hex), when the container is in a pod.
    pub pod: Option<PodUid<'a>>,
}

/// A Kubernetes pod uid as a cgroup path spells it: with `-` (cgroupfs) or `_` (systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodUid<'a>(&'a str);

impl PodUid<'_> {
    /// The uid in its usual form, with `-`.
    pub fn to_uid(self) -> String {
        self.0.replace('_', "-")
    }
}

impl Placement {
    /// The systemd unit: the deepest `.service` or `.scope` component of the cgroup path
    /// (`/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope` → `x.scope`).
    pub fn unit(&self) -> Option<&str> {
        let path = self.cgroup.as_deref()?;
        path.split('/')
            .rev()
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
    }

    /// The container the cgroup path names, if any (see the module doc).
    pub fn container(&self) -> Option<Container<'_>> {
        container_of(self.cgroup.as_deref()?)
    }
}

/// The container `path` names: the deepest component that names one, with the pod uid of
/// any component above it.
pub fn container_of(path: &str) -> Option<Container<'_>> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let pod = parts.iter().rev().find_map(|c| pod_uid(c));
    let found = (0..parts.len())
        .rev()
        .find_map(|i| named(&parts, i, pod.is_some()))?;
    Some(Container { pod, ..found })
}

/// The container component `parts[i]` names, if it names one.
fn named<'a>(parts: &[&'a str], i: usize, in_pod: bool) -> Option<Container<'a>> {
    let c = parts[i];
    let parent = i.checked_sub(1).map(|p| parts[p]);
    let scoped = |prefix: &str| {
        c.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".scope"))
            .filter(|id| is_hex_id(id))
    };
    let found = |runtime, id| {
        Some(Container {
            runtime,
            id,
            pod: None,
        })
    };
    if let Some(id) = scoped("docker-") {
        return found("docker", id);
    }
    if let Some(id) = scoped("libpod-") {
        return found("podman", id);
    }
    if let Some(id) = scoped("cri-containerd-") {
        return found("containerd", id);
    }
    if let Some(id) = scoped("crio-") {
        return found("cri-o", id);
    }
    if let Some(name) = c
        .strip_prefix("systemd-nspawn@")
        .and_then(|r| r.strip_suffix(".service"))
        .or_else(|| {
            (parent == Some("machine.slice"))
                .then(|| c.strip_prefix("machine-")?.strip_suffix(".scope"))
                .flatten()
        })
    {
        return found("systemd-nspawn", name);
    }
    if let Some(name) = c.strip_prefix("lxc.payload.") {
        return found("lxc", name);
    }
    if parent == Some("lxc") {
        return found("lxc", c);
    }
    match parent {
        Some("docker") if is_hex_id(c) => found("docker", c),
        Some("libpod_parent") => c
            .strip_prefix("libpod-")
            .filter(|id| is_hex_id(id))
            .and_then(|id| found("podman", id)),
        Some(p) if in_pod && pod_uid(p).is_some() && is_hex_id(c) => found("kubernetes", c),
        _ => None,
    }
}

/// The pod uid of a pod's cgroup component: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid>.slice` / `kubepods-pod<uid>.slice` (systemd, `_` for `-`).
fn pod_uid(c: &str) -> Option<PodUid<'_>> {
    let uid = match c.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None => c.strip_prefix("pod")?,
    };
    is_uid(uid).then_some(PodUid(uid))
}

/// 64 lowercase hex digits.
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A uid in 8-4-4-4-12 hex form, with `-` or `_` between the groups.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split(['-', '_']).collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The cgroup path of a `/proc/<pid>/cgroup` file's text (`hierarchy:controllers:path` per
/// line): the first of the unified (`0::`) and the `name=systemd` paths that names a
/// container, else the first of them that is not the root, else any path that names a
/// container (a v1 controller's), else the unified path. `None` when no line parses.
pub fn cgroup_path(text: &str) -> Option<String> {
    let mut unified = None;
    let mut systemd = None;
    let mut others = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match controllers {
            "" => unified = Some(path),
            "name=systemd" => systemd = Some(path),
            _ => others.push(path),
        }
    }
    let main: Vec<&str> = [unified, systemd].into_iter().flatten().collect();
    let pick = main
        .iter()
        .find(|p| container_of(p).is_some())
        .or_else(|| main.iter().find(|p| **p != "/"))
        .or_else(|| others.iter().find(|p| container_of(p).is_some()))
        .or(main.first())
        .or(others.first());
    pick.map(|p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1b5d0a9c8e7f6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a";
    const POD: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    fn placed(path: &str) -> Placement {
        Placement {
            netns: None,
            cgroup: Some(path.to_string()),
        }
    }

    fn container(path: &str) -> Option<(&'static str, String, Option<String>)> {
        let c = container_of(path)?;
        Some((c.runtime, c.id.to_string(), c.pod.map(PodUid::to_uid)))
    }

    #[test]
    fn each_runtime_s_cgroup_names_are_recognised() {
        let pod_systemd = POD.replace('-', "_");
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker", None),
            (format!("/docker/{ID}"), "docker", None),
            (format!("/machine.slice/libpod-{ID}.scope/container"), "podman", None),
            (format!("/libpod_parent/libpod-{ID}"), "podman", None),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_systemd}.slice/cri-containerd-{ID}.scope"),
                "containerd",
                Some(POD),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_systemd}.slice/crio-{ID}.scope"),
                "cri-o",
                Some(POD),
            ),
            (format!("/kubepods/besteffort/pod{POD}/{ID}"), "kubernetes", Some(POD)),
            (format!("/kubepods/pod{POD}/{ID}"), "kubernetes", Some(POD)),
        ];
        for (path, runtime, pod) in cases {
            let expected = (runtime, ID.to_string(), pod.map(str::to_string));
            assert_eq!(container(&path), Some(expected), "{path}");
        }
    }

    #[test]
    fn machines_are_named_by_their_name() {
        for (path, runtime, name) in [
            (
                "/machine.slice/systemd-nspawn@web.service",
                "systemd-nspawn",
                "web",
            ),
            (
                "/machine.slice/machine-web.scope/payload",
                "systemd-nspawn",
                "web",
            ),
            ("/lxc.payload.db/init.scope", "lxc", "db"),
            ("/lxc/db", "lxc", "db"),
        ] {
            assert_eq!(
                container(path),
                Some((runtime, name.to_string(), None)),
                "{path}"
            );
        }
    }

    #[test]
    fn ordinary_paths_name_no_container() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foot.scope",
            "/system.slice/docker.service",
            "/docker/not-an-id",
            &format!("/system.slice/docker-{}.scope", &ID[..63]),
            "/machine.slice",
            "/kubepods/besteffort/podnot-a-uid/abc",
        ] {
            assert_eq!(container(path), None, "{path}");
        }
    }

    #[test]
    fn the_unit_is_the_deepest_service_or_scope() {
        let cases = [
            ("/system.slice/nginx.service", Some("nginx.service")),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                Some("user@1000.service"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foot.scope",
                Some("app-foot.scope"),
            ),
            ("/system.slice/docker-x.scope/init", Some("docker-x.scope")),
            ("/", None),
            ("/kubepods/besteffort", None),
        ];
        for (path, unit) in cases {
            assert_eq!(placed(path).unit(), unit, "{path}");
        }
    }

    #[test]
    fn the_cgroup_file_gives_the_most_telling_path() {
        // Hybrid (this test machine's layout): v2 root, v1 name=systemd names the unit.
        let hybrid = "9:name=systemd:/system.slice/nginx.service\n4:memory:/x\n0::/\n";
        assert_eq!(
            cgroup_path(hybrid).as_deref(),
            Some("/system.slice/nginx.service")
        );
        // Pure v2.
        assert_eq!(
            cgroup_path("0::/system.slice/sshd.service\n").as_deref(),
            Some("/system.slice/sshd.service")
        );
        // A container seen only in a v1 controller's path (cgroupfs driver on v1).
        let v1 = format!("9:name=systemd:/\n4:memory:/docker/{ID}\n0::/\n");
        assert_eq!(cgroup_path(&v1), Some(format!("/docker/{ID}")));
        // The container wins over a less telling unified path.
        let both = format!("9:name=systemd:/system.slice/docker-{ID}.scope\n0::/system.slice\n");
        assert_eq!(
            cgroup_path(&both),
            Some(format!("/system.slice/docker-{ID}.scope"))
        );
        assert_eq!(cgroup_path("0::/\n").as_deref(), Some("/"));
        assert_eq!(cgroup_path("garbage\n"), None);
        assert_eq!(cgroup_path(""), None);
    }
}

#[cfg(test)]
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the text, parsing gives an answer (or none) without panicking, and a
        /// container's id is always part of the path it came from.
        #[test]
        fn any_text(text in "[-_a-z0-9:/.@=\n]{0,200}") {
            if let Some(path) = cgroup_path(&text) {
                let placed = Placement { netns: None, cgroup: Some(path.clone()) };
                let _ = placed.unit();
                if let Some(c) = placed.container() {
                    prop_assert!(path.contains(c.id));
                }
            }
        }
    }
}
