//! One module per subcommand. Each `run` talks to the daemon and writes to `out`; the text is
//! built by pure `render*` functions that the tests call directly.

use std::io::Write;

pub mod lookup;
pub mod process;
pub mod ps;
pub mod stats;
pub mod top;

/// Writes a reply line as received (`--json`), so fields a newer daemon adds are kept.
fn write_raw(out: &mut dyn Write, raw: &[u8]) -> std::io::Result<()> {
    out.write_all(raw)?;
    out.write_all(b"\n")?;
    out.flush()
}
