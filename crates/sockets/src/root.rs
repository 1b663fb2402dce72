//! Where procfs is mounted. Every reader of this crate is a method of [`ProcRoot`], so tests
//! point the whole crate at a fixture directory.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The root of a procfs mount (`/proc` by default, a fixture directory in tests).
///
/// `<root>/net/*` describes the namespace of the *reading* process (it is a link to
/// `self/net`), whatever `NetNsId` the caller labels the entries with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot {
    path: PathBuf,
}

impl ProcRoot {
    /// A procfs root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ProcRoot { path: path.into() }
    }

    /// The directory this root reads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn pid_dir(&self, pid: u32) -> PathBuf {
        self.path.join(pid.to_string())
    }
}

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot::new("/proc")
    }
}

/// Reads a whole (small) procfs file, classifying the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::from_io(path, e))
}

/// Reads at most `limit` bytes from the start of a file, classifying the error.
pub(crate) fn read_file_prefix(path: &Path, limit: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(limit as u64).read_to_end(&mut bytes))
        .map_err(|e| Error::from_io(path, e))?;
    Ok(bytes)
}

/// Reads a symlink's target, classifying the error.
pub(crate) fn read_link(path: &Path) -> Result<PathBuf> {
    fs::read_link(path).map_err(|e| Error::from_io(path, e))
}
