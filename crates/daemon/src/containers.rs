//! Container names, from the runtimes' own state on disk, read-only:
//!
//! | runtime | file | name |
//! |---|---|---|
//! | Podman | `/var/lib/containers/storage/<driver>-containers/containers.json` (`[{"id", "names"}…]`) | its first name |
//! | Docker | `/var/lib/docker/containers/<id>/config.v2.json` (`{"Name": "/web"}`) | `Name` without its `/` |
//! | containerd | the OCI bundle of the running task, `/run/containerd/io.containerd.runtime.v2.task/<containerd namespace>/<id>/config.json` (every namespace: `k8s.io`, `default`, `moby`…) | from its `annotations`: CRI's `io.kubernetes.cri.sandbox-namespace`, `…sandbox-name`, `…container-name` and `…container-type`; nerdctl's `nerdctl/name` |
//! | CRI-O | `/run/containers/storage/<driver>-containers/<id>/userdata/config.json` (OCI spec) | from its `annotations`: the kubelet's `io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, `io.kubernetes.container.name`, and `io.kubernetes.cri-o.ContainerType`; else from its name in Podman's `containers.json` (containers/storage's list, which CRI-O shares: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`) |
//! | `kubernetes` (a pod's container whose runtime the cgroup path does not name) | containerd's, then CRI-O's | as theirs |
//!
//! A Kubernetes container is named `<pod namespace>/<pod>/<container>`, and a pod's sandbox
//! (its pause container: container type `sandbox`, or `POD` in a CRI-O storage name)
//! `<pod namespace>/<pod>`; a nerdctl container by its nerdctl name. A CRI-O storage name
//! that is not in the `k8s_…` form is given as it is. Other runtimes' containers (and
//! containerd's that neither CRI nor nerdctl made) are named by id only.
//!
//! Invariants: the files are read on the refresher's thread only ([`ContainerNames::resolve`]),
//! never by a query; an id whose name was looked for and not found is remembered as such
//! until [`RETRY_AFTER`] (a container created after its first packets is named later). At
//! most [`MAX_CONTAINERS`] ids are cached; beyond, the cache starts again. An id is joined
//! to a path only when it is hex digits (never a path); a file is read up to
//! `MAX_STATE_FILE`, and at most `MAX_STATE_DIRS` entries of a directory listed (the
//! containerd namespaces, the storage drivers) are looked at. A file that does not parse
//! names nothing; nothing here panics on its content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Container ids remembered at once.
pub const MAX_CONTAINERS: usize = 4_096;
/// How long an id with no name found waits before its runtime's state is read again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The most of a runtime's state file read (Podman's list of every container).
const MAX_STATE_FILE: u64 = 16 << 20;
/// The most entries of a state directory looked at when it is listed (containerd's
/// namespaces, containers/storage's drivers).
const MAX_STATE_DIRS: usize = 64;

/// Where the runtimes keep their state (overridable for tests).
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// containers/storage's persistent root (Podman's and CRI-O's `containers.json`).
    pub podman: PathBuf,
    /// Docker's containers (`<id>/config.v2.json`).
    pub docker: PathBuf,
    /// containerd's runtime v2 tasks (`<namespace>/<id>/config.json`).
    pub containerd: PathBuf,
    /// containers/storage's run root (CRI-O's `<driver>-containers/<id>/userdata/config.json`).
    pub crio: PathBuf,
}

impl Default for StateDirs {
    fn default() -> Self {
        StateDirs {
            podman: PathBuf::from("/var/lib/containers/storage"),
            docker: PathBuf::from("/var/lib/docker/containers"),
            containerd: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"),
            crio: PathBuf::from("/run/containers/storage"),
        }
    }
}

/// Container id → its name (`None`: looked for, not found) and when it was looked for.
type NameMap = HashMap<String, (Option<Arc<str>>, Instant)>;

/// See the module doc. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ContainerNames {
    dirs: StateDirs,
    names: Arc<Mutex<NameMap>>,
}

impl ContainerNames {
    pub fn new(dirs: StateDirs) -> ContainerNames {
        ContainerNames {
            dirs,
            names: Arc::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, NameMap> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached name of container `id`; never reads a file.
    pub fn name(&self, id: &str) -> Option<Arc<str>> {
        self.inner().get(id).and_then(|(name, _)| name.clone())
    }

    /// Reads the names of the `(runtime, id)` containers not named yet (blocking: the
    /// refresher's thread only). The containers/storage list (Podman's, CRI-O's) is read at
    /// most once per call.
    pub fn resolve<'a>(
        &self,
        containers: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: Instant,
    ) {
        let missing: Vec<(&str, &str)> = {
            let names = self.inner();
            containers
                .into_iter()
                .filter(|(_, id)| match names.get(*id) {
                    Some((Some(_), _)) => false,
                    Some((None, at)) => now.saturating_duration_since(*at) >= RETRY_AFTER,
                    None => true,
                })
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let mut storage: Option<HashMap<String, String>> = None;
        for (runtime, id) in missing {
            let mut storage_name = || {
                storage
                    .get_or_insert_with(|| podman_names(&self.dirs.podman))
                    .get(id)
                    .cloned()
            };
            let dirs = &self.dirs;
            let name = match runtime {
                "podman" => storage_name(),
                "docker" => docker_name(&dirs.docker, id),
                "containerd" => containerd_name(&dirs.containerd, id),
                "cri-o" => crio_name(&dirs.crio, id)
                    .or_else(|| storage_name().map(|n| crio_storage_name(&n))),
                "kubernetes" => containerd_name(&dirs.containerd, id)
                    .or_else(|| crio_name(&dirs.crio, id))
                    .or_else(|| storage_name().map(|n| crio_storage_name(&n))),
                _ => None,
            };
            let mut names = self.inner();
            if names.len() >= MAX_CONTAINERS {
                names.clear();
            }
            names.insert(id.to_string(), (name.map(Arc::from), now));
        }
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATE_FILE)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

/// Id → first name, from every `<driver>-containers/containers.json` under `dir`.
fn podman_names(dir: &Path) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return names;
    };
    for entry in entries.flatten().take(MAX_STATE_DIRS) {
        let is_list = entry.file_name().to_string_lossy().ends_with("-containers");
        let Some(list) = is_list
            .then(|| read_json(&entry.path().join("containers.json")))
            .flatten()
        else {
            continue;
        };
        for c in list.as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (c["id"].as_str(), c["names"][0].as_str()) {
                names.insert(id.to_string(), name.to_string());
            }
        }
    }
    names
}

/// Whether `id` may be joined to a path: 1 to 64 hex digits (an id is never a path).
fn is_hex_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name Docker gives container `id` (without its leading `/`).
fn docker_name(dir: &Path, id: &str) -> Option<String> {
    if !is_hex_id(id) {
        return None;
    }
    let config = read_json(&dir.join(id).join("config.v2.json"))?;
    let name = config["Name"].as_str()?;
    Some(name.trim_start_matches('/').to_string())
}

/// The non-empty string annotation `key` of an OCI spec (`None` for any other shape).
fn annotation<'a>(spec: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    spec["annotations"][key].as_str().filter(|v| !v.is_empty())
}

/// `<namespace>/<pod>/<container>`, or `<namespace>/<pod>` without a container (a sandbox).
fn pod_name(namespace: &str, pod: &str, container: Option<&str>) -> String {
    match container {
        Some(container) => format!("{namespace}/{pod}/{container}"),
        None => format!("{namespace}/{pod}"),
    }
}

/// The name of containerd's task `id`, from its bundle's spec in whichever containerd
/// namespace holds it.
fn containerd_name(dir: &Path, id: &str) -> Option<String> {
    if !is_hex_id(id) {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .take(MAX_STATE_DIRS)
        .find_map(|ns| containerd_spec_name(&read_json(&ns.path().join(id).join("config.json"))?))
}

/// The name a containerd bundle's spec gives: CRI's annotations (containerd's
/// `pkg/cri/annotations`), else nerdctl's label (`pkg/labels`, passed on as an annotation).
fn containerd_spec_name(spec: &serde_json::Value) -> Option<String> {
    let cri = || {
        let namespace = annotation(spec, "io.kubernetes.cri.sandbox-namespace")?;
        let pod = annotation(spec, "io.kubernetes.cri.sandbox-name")?;
        let container = match annotation(spec, "io.kubernetes.cri.container-type") {
            Some("sandbox") => None,
            _ => Some(annotation(spec, "io.kubernetes.cri.container-name")?),
        };
        Some(pod_name(namespace, pod, container))
    };
    cri().or_else(|| annotation(spec, "nerdctl/name").map(str::to_string))
}

/// The name of CRI-O's container `id`, from its spec under every
/// `<driver>-containers/<id>/userdata/` of the run root.
fn crio_name(dir: &Path, id: &str) -> Option<String> {
    if !is_hex_id(id) {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .take(MAX_STATE_DIRS)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-containers"))
        .find_map(|e| {
            let spec = read_json(&e.path().join(id).join("userdata").join("config.json"))?;
            crio_spec_name(&spec)
        })
}

/// The name a CRI-O spec gives: the kubelet's labels, which CRI-O passes on as
/// annotations, and CRI-O's container type.
fn crio_spec_name(spec: &serde_json::Value) -> Option<String> {
    let namespace = annotation(spec, "io.kubernetes.pod.namespace")?;
    let pod = annotation(spec, "io.kubernetes.pod.name")?;
    let container = match annotation(spec, "io.kubernetes.cri-o.ContainerType") {
        Some("sandbox") => None,
        _ => Some(annotation(spec, "io.kubernetes.container.name")?),
    };
    Some(pod_name(namespace, pod, container))
}

/// The name of a CRI-O container from its containers/storage name,
/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>` (`POD` for the sandbox); any other
/// name as it is.
fn crio_storage_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('_').collect();
    match parts[..] {
        ["k8s", container, pod, namespace, uid, attempt]
            if [container, pod, namespace, uid, attempt]
                .iter()
                .all(|p| !p.is_empty()) =>
        {
            pod_name(namespace, pod, (container != "POD").then_some(container))
        }
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN_ID: &str = "3fbd49381c1a68afdbc312a6c5dc49f2949f5ee91e2a1cb8eb3a548643b75c61";
    const DOCKER_ID: &str = "d0c4e2000000000000000000000000000000000000000000000000000000d0c4";

    fn fixture() -> (tempfile::TempDir, ContainerNames) {
        let dir = tempfile::tempdir().unwrap();
        let podman = dir.path().join("storage/overlay-containers");
        std::fs::create_dir_all(&podman).unwrap();
        let list = format!(
            r#"[{{"id":"{PODMAN_ID}","names":["web"],"image":"x","layer":"y","metadata":"{{}}","created":"2026-12-06T05:01:00Z"}}]"#
        );
        std::fs::write(podman.join("containers.json"), list).unwrap();
        let docker = dir.path().join("docker").join(DOCKER_ID);
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(docker.join("config.v2.json"), r#"{"ID":"x","Name":"/db"}"#).unwrap();
        let names = ContainerNames::new(StateDirs {
            podman: dir.path().join("storage"),
            docker: dir.path().join("docker"),
            containerd: dir.path().join("containerd"),
            crio: dir.path().join("run-storage"),
        });
        (dir, names)
    }

    /// Writes `text` at `dir/path`, making its directories.
    fn put(dir: &tempfile::TempDir, path: &str, text: &str) {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// An OCI spec with these annotations (and what else a bundle's spec has).
    fn spec(annotations: &[(&str, &str)]) -> String {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/pause"]},
            "root": {"path": "rootfs"},
            "annotations": annotations,
        })
        .to_string()
    }

    /// The name `id` gets from a cache that has not looked for it yet.
    fn fresh(names: &ContainerNames, runtime: &str, id: &str) -> Option<String> {
        resolved(&ContainerNames::new(names.dirs.clone()), runtime, id)
    }

    fn resolved(names: &ContainerNames, runtime: &str, id: &str) -> Option<String> {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        names.resolve([(runtime, id)], now);
        names.name(id).map(|n| n.to_string())
    }

    const CRI_CONTAINER: &[(&str, &str)] = &[
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", "nginx"),
        ("io.kubernetes.cri.sandbox-name", "web-7d4b9c-x2x9z"),
        ("io.kubernetes.cri.sandbox-namespace", "shop"),
        ("io.kubernetes.cri.sandbox-id", "5a4d"),
    ];

    #[test]
    fn a_containerd_cri_container_is_named_namespace_pod_container() {
        let (dir, names) = fixture();
        let id = "c0".repeat(32);
        put(&dir, "containerd/default/.keep", "");
        put(
            &dir,
            &format!("containerd/k8s.io/{id}/config.json"),
            &spec(CRI_CONTAINER),
        );
        assert_eq!(
            resolved(&names, "containerd", &id).as_deref(),
            Some("shop/web-7d4b9c-x2x9z/nginx")
        );
    }

    #[test]
    fn a_containerd_cri_sandbox_is_named_namespace_pod() {
        let (dir, names) = fixture();
        let id = "5a".repeat(32);
        let sandbox = spec(&[
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-name", "web-7d4b9c-x2x9z"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-log-directory", "/var/log/pods/x"),
        ]);
        put(
            &dir,
            &format!("containerd/k8s.io/{id}/config.json"),
            &sandbox,
        );
        assert_eq!(
            resolved(&names, "containerd", &id).as_deref(),
            Some("shop/web-7d4b9c-x2x9z")
        );
        // A container without its pod's namespace is not named half.
        let half = "5b".repeat(32);
        let no_namespace = spec(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", "nginx"),
            ("io.kubernetes.cri.sandbox-name", "web"),
        ]);
        put(
            &dir,
            &format!("containerd/k8s.io/{half}/config.json"),
            &no_namespace,
        );
        assert_eq!(resolved(&names, "containerd", &half), None);
    }

    #[test]
    fn a_nerdctl_container_is_named_by_its_nerdctl_name() {
        let (dir, names) = fixture();
        let id = "ed".repeat(32);
        let nerdctl = spec(&[
            ("nerdctl/name", "redis-1"),
            ("nerdctl/namespace", "default"),
            ("nerdctl/networks", "[\"bridge\"]"),
        ]);
        put(
            &dir,
            &format!("containerd/default/{id}/config.json"),
            &nerdctl,
        );
        assert_eq!(
            resolved(&names, "containerd", &id).as_deref(),
            Some("redis-1")
        );
        // containerd's own (ctr, moby) tasks carry no name.
        let bare = "ee".repeat(32);
        put(
            &dir,
            &format!("containerd/moby/{bare}/config.json"),
            &spec(&[]),
        );
        assert_eq!(resolved(&names, "containerd", &bare), None);
    }

    #[test]
    fn a_crio_container_is_named_from_its_userdata_spec() {
        let (dir, names) = fixture();
        let (id, sandbox) = ("c1".repeat(32), "c2".repeat(32));
        let container = spec(&[
            ("io.kubernetes.cri-o.ContainerType", "container"),
            ("io.kubernetes.cri-o.Name", "k8s_api_billing-0_pay_uid_0"),
            ("io.kubernetes.container.name", "api"),
            ("io.kubernetes.pod.name", "billing-0"),
            ("io.kubernetes.pod.namespace", "pay"),
        ]);
        let pause = spec(&[
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
            ("io.kubernetes.pod.name", "billing-0"),
            ("io.kubernetes.pod.namespace", "pay"),
        ]);
        put(&dir, "run-storage/overlay-layers/x", "");
        put(
            &dir,
            &format!("run-storage/overlay-containers/{id}/userdata/config.json"),
            &container,
        );
        put(
            &dir,
            &format!("run-storage/overlay-containers/{sandbox}/userdata/config.json"),
            &pause,
        );
        assert_eq!(
            resolved(&names, "cri-o", &id).as_deref(),
            Some("pay/billing-0/api")
        );
        assert_eq!(
            resolved(&names, "cri-o", &sandbox).as_deref(),
            Some("pay/billing-0")
        );
        // Only `<driver>-containers` directories hold containers.
        let layer = "c3".repeat(32);
        put(
            &dir,
            &format!("run-storage/overlay-layers/{layer}/userdata/config.json"),
            &container,
        );
        assert_eq!(resolved(&names, "cri-o", &layer), None);
    }

    #[test]
    fn a_crio_container_without_its_spec_is_named_from_the_storage_list() {
        let (dir, names) = fixture();
        let (id, sandbox, other) = ("d1".repeat(32), "d2".repeat(32), "d3".repeat(32));
        let uid = "8c7d5e0a-2f3b-4c1d-9e8f-0a1b2c3d4e5f";
        let list = format!(
            r#"[{{"id":"{id}","names":["k8s_api_billing-0_pay_{uid}_2"]}},
                {{"id":"{sandbox}","names":["k8s_POD_billing-0_pay_{uid}_0"]}},
                {{"id":"{other}","names":["k8s_odd_name"]}}]"#
        );
        put(&dir, "storage/overlay-containers/containers.json", &list);
        assert_eq!(
            resolved(&names, "cri-o", &id).as_deref(),
            Some("pay/billing-0/api")
        );
        assert_eq!(
            resolved(&names, "cri-o", &sandbox).as_deref(),
            Some("pay/billing-0")
        );
        assert_eq!(
            resolved(&names, "cri-o", &other).as_deref(),
            Some("k8s_odd_name")
        );
        // The spec, when there is one, wins over the list.
        let spec_named = spec(&[
            ("io.kubernetes.container.name", "api-v2"),
            ("io.kubernetes.pod.name", "billing-1"),
            ("io.kubernetes.pod.namespace", "pay"),
        ]);
        let fresh = "d4".repeat(32);
        let list = format!(r#"[{{"id":"{fresh}","names":["k8s_api_billing-0_pay_{uid}_0"]}}]"#);
        put(&dir, "storage/vfs-containers/containers.json", &list);
        put(
            &dir,
            &format!("run-storage/vfs-containers/{fresh}/userdata/config.json"),
            &spec_named,
        );
        assert_eq!(
            resolved(&names, "cri-o", &fresh).as_deref(),
            Some("pay/billing-1/api-v2")
        );
    }

    #[test]
    fn a_kubernetes_container_is_looked_for_in_containerd_then_crio() {
        let (dir, names) = fixture();
        let (in_containerd, in_crio, in_list) = ("e1".repeat(32), "e2".repeat(32), "e3".repeat(32));
        put(
            &dir,
            &format!("containerd/k8s.io/{in_containerd}/config.json"),
            &spec(CRI_CONTAINER),
        );
        let crio = spec(&[
            ("io.kubernetes.container.name", "db"),
            ("io.kubernetes.pod.name", "pg-0"),
            ("io.kubernetes.pod.namespace", "data"),
        ]);
        put(
            &dir,
            &format!("run-storage/overlay-containers/{in_crio}/userdata/config.json"),
            &crio,
        );
        let list = format!(r#"[{{"id":"{in_list}","names":["k8s_cache_redis-0_data_u_0"]}}]"#);
        put(&dir, "storage/overlay-containers/containers.json", &list);
        assert_eq!(
            resolved(&names, "kubernetes", &in_containerd).as_deref(),
            Some("shop/web-7d4b9c-x2x9z/nginx")
        );
        assert_eq!(
            resolved(&names, "kubernetes", &in_crio).as_deref(),
            Some("data/pg-0/db")
        );
        assert_eq!(
            resolved(&names, "kubernetes", &in_list).as_deref(),
            Some("data/redis-0/cache")
        );
    }

    #[test]
    fn an_id_that_is_a_path_reads_nothing() {
        let (dir, names) = fixture();
        // What `<root>/<namespace or driver>/../../evil/…` would reach.
        let evil = spec(&[
            ("nerdctl/name", "evil"),
            ("io.kubernetes.container.name", "evil"),
            ("io.kubernetes.pod.name", "evil"),
            ("io.kubernetes.pod.namespace", "evil"),
        ]);
        put(&dir, "containerd/k8s.io/.keep", "");
        put(&dir, "run-storage/overlay-containers/.keep", "");
        put(&dir, "evil/config.json", &evil);
        put(&dir, "evil/userdata/config.json", &evil);
        put(&dir, "docker/evil/config.v2.json", r#"{"Name":"/evil"}"#);
        put(&dir, "evil/config.v2.json", r#"{"Name":"/evil"}"#);
        // And what an empty id would reach.
        put(&dir, "containerd/k8s.io/config.json", &evil);
        put(
            &dir,
            "run-storage/overlay-containers/userdata/config.json",
            &evil,
        );
        put(&dir, "docker/config.v2.json", r#"{"Name":"/evil"}"#);
        for runtime in ["containerd", "cri-o", "kubernetes", "docker"] {
            for id in [
                "../../evil",
                "../evil",
                "evil",
                "/evil",
                "",
                "abc/../../../evil",
            ] {
                assert_eq!(fresh(&names, runtime, id), None, "{runtime} {id:?}");
            }
        }
        assert!(!is_hex_id(&"a".repeat(65)));
        assert!(is_hex_id(&"aF0".repeat(2)));
    }

    #[test]
    fn truncated_or_odd_specs_name_nothing() {
        let (dir, names) = fixture();
        let bodies = [
            r#"{"annotations":{"nerdctl/name":"#.to_string(),
            String::new(),
            "\u{0}\u{ff}garbage".to_string(),
            r#"{"annotations":["nerdctl/name","x"]}"#.to_string(),
            r#"{"annotations":{"nerdctl/name":7,"io.kubernetes.cri.sandbox-name":null}}"#
                .to_string(),
            r#"{"annotations":{"nerdctl/name":""}}"#.to_string(),
            r#"["not","a","spec"]"#.to_string(),
            r#"{"annotations":{"io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.pod.name":"p"}}"#
                .to_string(),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let id = format!("{:064x}", 0xbad0 + i);
            put(&dir, &format!("containerd/k8s.io/{id}/config.json"), body);
            put(
                &dir,
                &format!("run-storage/overlay-containers/{id}/userdata/config.json"),
                body,
            );
            for runtime in ["containerd", "cri-o", "kubernetes"] {
                assert_eq!(fresh(&names, runtime, &id), None, "{runtime} {body:?}");
            }
        }
    }

    #[test]
    fn an_id_in_no_namespace_is_unnamed_until_its_task_appears() {
        let (dir, names) = fixture();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let id = "f0".repeat(32);
        for ns in ["default", "k8s.io", "moby"] {
            put(
                &dir,
                &format!("containerd/{ns}/{}/config.json", "f1".repeat(32)),
                &spec(CRI_CONTAINER),
            );
        }
        names.resolve([("containerd", id.as_str())], now);
        assert_eq!(names.name(&id), None);
        put(
            &dir,
            &format!("containerd/moby/{id}/config.json"),
            &spec(&[("nerdctl/name", "late")]),
        );
        names.resolve([("containerd", id.as_str())], now + RETRY_AFTER / 2);
        assert_eq!(names.name(&id), None, "not looked for again yet");
        names.resolve([("containerd", id.as_str())], now + RETRY_AFTER);
        assert_eq!(names.name(&id).as_deref(), Some("late"));
        // No containerd state at all.
        std::fs::remove_dir_all(dir.path().join("containerd")).unwrap();
        let gone = "f2".repeat(32);
        assert_eq!(resolved(&names, "containerd", &gone), None);
    }

    #[test]
    fn crio_storage_names_are_parsed_strictly() {
        assert_eq!(crio_storage_name("k8s_a_p_n_u_0"), "n/p/a");
        assert_eq!(crio_storage_name("k8s_POD_p_n_u_0"), "n/p");
        assert_eq!(crio_storage_name("k8s_a_p__u_0"), "k8s_a_p__u_0");
        assert_eq!(
            crio_storage_name("k8s_a_p_n_u_0_extra"),
            "k8s_a_p_n_u_0_extra"
        );
        assert_eq!(crio_storage_name("web"), "web");
        assert_eq!(crio_storage_name(""), "");
    }

    #[test]
    fn podman_and_docker_names_come_from_their_state_files() {
        let (_dir, names) = fixture();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        assert_eq!(names.name(PODMAN_ID), None, "nothing before resolve");
        names.resolve(
            [
                ("podman", PODMAN_ID),
                ("docker", DOCKER_ID),
                ("cri-o", "abc"),
            ],
            now,
        );
        assert_eq!(names.name(PODMAN_ID).as_deref(), Some("web"));
        assert_eq!(names.name(DOCKER_ID).as_deref(), Some("db"));
        assert_eq!(names.name("abc"), None);
    }

    #[test]
    fn unknown_ids_are_looked_for_again_after_a_while_and_bad_files_name_nothing() {
        let (dir, names) = fixture();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let late = "1".repeat(64);
        names.resolve([("podman", late.as_str())], now);
        assert_eq!(names.name(&late), None);
        let list = format!(r#"[{{"id":"{late}","names":["late"]}}]"#);
        std::fs::write(
            dir.path()
                .join("storage/overlay-containers/containers.json"),
            list,
        )
        .unwrap();
        names.resolve([("podman", late.as_str())], now + RETRY_AFTER / 2);
        assert_eq!(names.name(&late), None, "not looked for again yet");
        names.resolve([("podman", late.as_str())], now + RETRY_AFTER);
        assert_eq!(names.name(&late).as_deref(), Some("late"));
        std::fs::write(
            dir.path()
                .join("storage/overlay-containers/containers.json"),
            "[{",
        )
        .unwrap();
        let other = "2".repeat(64);
        names.resolve([("podman", other.as_str()), ("docker", "../../etc")], now);
        assert_eq!(names.name(&other), None);
        assert_eq!(names.name("../../etc"), None);
    }
}
