//! `pidcap report`'s engine: usage-log lines in, per-process or per-group sums out.
//!
//! Pure apart from [`files`], which opens files and decompresses them; the aggregation
//! ([`aggregate`]) never touches I/O and keeps memory bounded by rows, not lines. Nothing here
//! talks to the daemon: a report works from the files alone, with the daemon stopped.

pub mod aggregate;
pub mod files;
pub mod line;
pub mod time;

#[cfg(test)]
mod proptests;

use std::path::{Path, PathBuf};

pub use aggregate::{Aggregator, By, Report, Row, RowKey};
pub use time::Window;

/// Lines skipped in one file, for warnings.
#[derive(Debug)]
pub struct FileWarnings {
    pub path: PathBuf,
    pub skipped: Vec<files::Skipped>,
}

/// Reads `paths` oldest first into one report. Fails on the first I/O error, naming the file.
pub fn build(
    paths: Vec<PathBuf>,
    by: By,
    window: Window,
) -> std::io::Result<(Report, Vec<FileWarnings>)> {
    let mut aggregator = Aggregator::new(by, window);
    let mut warnings = Vec::new();
    for path in files::oldest_first(paths)? {
        let skipped = read_file(&path, &mut aggregator).map_err(|e| files::in_file(&path, e))?;
        if !skipped.is_empty() {
            warnings.push(FileWarnings { path, skipped });
        }
    }
    Ok((aggregator.finish(), warnings))
}

fn read_file(path: &Path, aggregator: &mut Aggregator) -> std::io::Result<Vec<files::Skipped>> {
    let mut reader = files::open(path)?;
    files::read_into(&mut *reader, aggregator)
}
