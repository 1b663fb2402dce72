//! Reads pidcapd's usage log (JSON lines) and sums it per process.
//!
//! Invariants: a line that is not a JSON object is a test failure (panic naming the line).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::Counters;

/// Every line of the log at `path`, parsed; an absent file is an empty log.
pub fn read(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading usage log {}: {e}", path.display()),
    };
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("usage log {} line {}: {e}: {line:?}", path.display(), i + 1)
            });
            assert!(
                value.is_object(),
                "usage log line {} is not an object: {line}",
                i + 1
            );
            value
        })
        .collect()
}

/// The interval counters of all lines summed per pid (`None` = unknown).
pub fn sum_by_pid(lines: &[Value]) -> HashMap<Option<u64>, Counters> {
    let mut sums: HashMap<Option<u64>, Counters> = HashMap::new();
    for line in lines {
        let pid = line.get("pid").and_then(Value::as_u64);
        let sum = sums.entry(pid).or_default();
        sum.add(&Counters::from_json(line, ""));
    }
    sums
}
