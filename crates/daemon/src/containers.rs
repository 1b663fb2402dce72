//! Container names, from the runtimes' own state on disk, read-only: Podman's
//! `/var/lib/containers/storage/<driver>-containers/containers.json` (`[{"id", "names"}…]`)
//! and Docker's `/var/lib/docker/containers/<id>/config.v2.json` (`{"Name": "/web"}`). Other
//! runtimes (containerd, CRI-O, Kubernetes) keep their names behind an API: their
//! containers are named by id only.
//!
//! Invariants: the files are read on the refresher's thread only ([`ContainerNames::resolve`]),
//! never by a query; an id whose name was looked for and not found is remembered as such
//! until [`RETRY_AFTER`] (a container created after its first packets is named later). At
//! most [`MAX_CONTAINERS`] ids are cached; beyond, the cache starts again. A file that does
//! not parse names nothing; nothing here panics on its content.

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

/// Where the runtimes keep their state (overridable for tests).
#[derive(Debug, Clone)]
pub struct StateDirs {
    pub podman: PathBuf,
    pub docker: PathBuf,
}

impl Default for StateDirs {
    fn default() -> Self {
        StateDirs {
            podman: PathBuf::from("/var/lib/containers/storage"),
            docker: PathBuf::from("/var/lib/docker/containers"),
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
    /// refresher's thread only). Podman's list is read at most once per call.
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
        let mut podman: Option<HashMap<String, String>> = None;
        for (runtime, id) in missing {
            let name = match runtime {
                "podman" => podman
                    .get_or_insert_with(|| podman_names(&self.dirs.podman))
                    .get(id)
                    .cloned(),
                "docker" => docker_name(&self.dirs.docker, id),
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
    for entry in entries.flatten() {
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

/// The name Docker gives container `id` (without its leading `/`).
fn docker_name(dir: &Path, id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None; // an id is never a path
    }
    let config = read_json(&dir.join(id).join("config.v2.json"))?;
    let name = config["Name"].as_str()?;
    Some(name.trim_start_matches('/').to_string())
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
        });
        (dir, names)
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
