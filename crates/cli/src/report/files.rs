//! Which files a report reads, in which order, and their lines.
//!
//! Default set: the daemon's default usage log and its rotated siblings in the same
//! directory, named as logrotate names them: `usage.jsonl.N` (N a number) or
//! `usage.jsonl-DIGITS` (`dateext`), either possibly ending in `.gz`. A file is
//! decompressed when its content starts with the gzip magic, whatever its name.
//!
//! Order: files are read oldest first, by the `ts` of their first readable line (a file
//! without one goes first; ties keep the given order), so the aggregator can tell a
//! repeated line from a new one whatever order the files were named in.
//!
//! Invariants: a line longer than [`MAX_LINE`] is malformed (skipped to its newline, never
//! held whole); I/O errors, a corrupt gzip stream included, are errors: a report that
//! silently missed part of a file could not match the log.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::aggregate::Aggregator;
use super::line::{self, LineError};

/// The daemon's default `--usage-log`.
pub const DEFAULT_LOG: &str = "/var/log/pidcap/usage.jsonl";

/// Longest line read (the daemon writes a few hundred bytes; exe paths are the longest part).
pub const MAX_LINE: usize = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `name` is a rotated sibling of the log named `base`.
pub fn is_rotated_name(base: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(base) else {
        return false;
    };
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let Some(suffix) = rest.strip_prefix('.').or_else(|| rest.strip_prefix('-')) else {
        return false;
    };
    !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
}

/// The log at `path` (if it exists) and its rotated siblings (unordered).
pub fn with_rotated(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut files = Vec::new();
    if path.exists() {
        files.push(path.to_owned());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if is_rotated_name(&base, &entry.file_name().to_string_lossy()) {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Opens a file, decompressing it if it is gzip.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead>> {
    let mut reader = BufReader::new(File::open(path)?);
    let head = reader.fill_buf()?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(reader))))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads the next line into `buf` (without its newline). `Ok(None)` at the end; `Ok(Some(
/// false))` for a line longer than [`MAX_LINE`], whose rest was skipped.
pub fn next_line(reader: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if fits && buf.len() + take <= MAX_LINE {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            fits = false;
            buf.clear();
        }
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(fits));
        }
    }
}

/// The `ts` of the first readable line, in milliseconds.
pub fn first_ts(reader: &mut dyn BufRead) -> io::Result<Option<i64>> {
    let mut buf = Vec::new();
    while let Some(fits) = next_line(reader, &mut buf)? {
        if let (true, Ok(line)) = (fits, line::parse(&buf)) {
            return Ok(Some(line.ts_ms));
        }
    }
    Ok(None)
}

/// A line that was not summed, for a warning: `(line number, why)`.
pub type Skipped = (u64, String);

/// Feeds every line of `reader` to `aggregator`; returns the lines that were skipped.
pub fn read_into(
    reader: &mut dyn BufRead,
    aggregator: &mut Aggregator,
) -> io::Result<Vec<Skipped>> {
    let mut skipped = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0;
    while let Some(fits) = next_line(reader, &mut buf)? {
        number += 1;
        if !fits {
            aggregator.malformed();
            skipped.push((number, format!("malformed: longer than {MAX_LINE} bytes")));
            continue;
        }
        match line::parse(&buf) {
            Ok(line) => {
                aggregator.add(&line);
            }
            Err(LineError::Malformed(why)) => {
                aggregator.malformed();
                skipped.push((number, format!("malformed: {why}")));
            }
            Err(LineError::Version(v)) => {
                aggregator.unsupported_version();
                skipped.push((number, format!("schema version {v}, not 1: skipped")));
            }
        }
    }
    Ok(skipped)
}

/// `paths` ordered oldest first (see the module doc).
pub fn oldest_first(paths: Vec<PathBuf>) -> io::Result<Vec<PathBuf>> {
    let mut keyed = Vec::with_capacity(paths.len());
    for path in paths {
        let ts = first_ts(&mut *open(&path).map_err(|e| in_file(&path, e))?)
            .map_err(|e| in_file(&path, e))?;
        keyed.push((ts, path));
    }
    keyed.sort_by_key(|(ts, _)| *ts);
    Ok(keyed.into_iter().map(|(_, path)| path).collect())
}

/// An I/O error naming its file.
pub fn in_file(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Reads a whole file (for tests and small tools).
#[cfg(test)]
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn rotated_names_are_logrotates() {
        for name in [
            "usage.jsonl.1",
            "usage.jsonl.2.gz",
            "usage.jsonl.10.gz",
            "usage.jsonl-20240101",
            "usage.jsonl-20240101.gz",
        ] {
            assert!(is_rotated_name("usage.jsonl", name), "{name}");
        }
        for name in [
            "usage.jsonl",
            "usage.jsonl.gz",
            "usage.jsonl.1.bak",
            "usage.jsonl.old",
            "usage.jsonl-",
            "usage.jsonl.",
            "other.jsonl.1",
            "usage.jsonl.tmp.1",
        ] {
            assert!(!is_rotated_name("usage.jsonl", name), "{name}");
        }
    }

    fn lines(text: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut reader = Cursor::new(text.to_vec());
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(fits) = next_line(&mut reader, &mut buf).unwrap() {
            out.push((fits, buf.clone()));
        }
        out
    }

    #[test]
    fn lines_split_on_newlines_and_overlong_ones_are_skipped_whole() {
        assert_eq!(
            lines(b"a\nbc\n\nlast"),
            [
                (true, b"a".to_vec()),
                (true, b"bc".to_vec()),
                (true, vec![]),
                (true, b"last".to_vec())
            ]
        );
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&long), [(false, vec![]), (true, b"ok".to_vec())]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn gzip_is_found_by_its_content() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("named.gz");
        std::fs::write(&plain, b"not compressed\n").unwrap();
        assert_eq!(read_all(&plain).unwrap(), b"not compressed\n");
        let packed = dir.path().join("usage.jsonl.1");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(b"compressed\n").unwrap();
        std::fs::write(&packed, gz.finish().unwrap()).unwrap();
        assert_eq!(read_all(&packed).unwrap(), b"compressed\n");
    }

    #[test]
    fn a_corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl.2.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff]).unwrap();
        assert!(read_all(&path).is_err());
    }
}
