//! One module per subcommand. Each `run` talks to the daemon and writes to `out`; the text is
//! built by pure `render*` functions that the tests call directly.

use std::io::Write;

pub mod capture;
pub mod groups;
pub mod lookup;
pub mod process;
pub mod ps;
pub mod report;
pub mod stats;
pub mod top;

/// The line that tells a person a reply lists only their own processes (`filtered_to_uid`).
pub fn filtered_note(filtered_to_uid: Option<u32>) -> String {
    match filtered_to_uid {
        Some(uid) => format!(
            "(only your processes, uid {uid}: root and members of the socket's group see every \
             process)\n"
        ),
        None => String::new(),
    }
}

/// Writes a reply line as received (`--json`), so fields a newer daemon adds are kept.
fn write_raw(out: &mut dyn Write, raw: &[u8]) -> std::io::Result<()> {
    out.write_all(raw)?;
    out.write_all(b"\n")?;
    out.flush()
}
