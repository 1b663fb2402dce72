//! Pure text formatting: sizes, rates, durations, tables and key/value listings.
//!
//! Every string that came from the daemon (and so, often, from a process: `comm`, `exe`,
//! `cmdline`) goes through [`clean`] before reaching the terminal, so a process cannot send
//! escape sequences to it.

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `0 B`, `1023 B`, `1.0 KiB`, `1.5 MiB`, … (binary units, one decimal above bytes).
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    // Move up while the one-decimal rendering would read 1024.0 or more.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate in bytes per second, in the units of [`bytes`]; negative or non-finite reads as 0.
pub fn rate(bps: f64) -> String {
    let bps = if bps.is_finite() && bps > 0.0 {
        bps.round()
    } else {
        0.0
    };
    // `as` saturates, so huge rates cannot wrap.
    bytes(bps as u64)
}

/// `45.2s`, `3m 05s`, `2h 03m 05s`, `4d 02h 03m`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1}s");
    }
    let total = seconds as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    match (days, hours) {
        (0, 0) => format!("{minutes}m {secs:02}s"),
        (0, _) => format!("{hours}h {minutes:02}m {secs:02}s"),
        _ => format!("{days}d {hours:02}h {minutes:02}m"),
    }
}

/// `yes` / `no`.
pub fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// Replaces control characters (escape, newline, …) with `?`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Joins arguments for display, quoting the ones a shell would split or lose.
pub fn command_line(args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|arg| quote(&clean(arg))).collect();
    quoted.join(" ")
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_alphanumeric() || "-_./:=@,+%[]".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: columns padded to their widest cell, separated by two spaces.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are cleaned of control characters. Missing cells render empty.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    /// The header line and every row, each ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut text = self.line(&header, &widths);
        for row in &self.rows {
            text.push_str(&self.line(row, &widths));
        }
        text
    }

    /// Like [`Table::render`], but no line is wider than `fit.width` characters.
    pub fn render_fit(&self, fit: Fit<'_>) -> String {
        let natural = self.widths();
        let mut keep = vec![true; self.columns.len()];
        let mut drops = fit.drop_order.iter();
        let widths = loop {
            let widths = self.narrowed(&natural, &keep, fit);
            if used(&widths, &keep) <= fit.width {
                break widths;
            }
            match drops.next() {
                Some(&column) if column < keep.len() => keep[column] = false,
                Some(_) => {}
                None => break widths,
            }
        };
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|cells| self.fitted_line(cells, &widths, &keep, fit.width))
            .collect()
    }

    /// `natural` with the flexible column narrowed as far as needed and allowed.
    fn narrowed(&self, natural: &[usize], keep: &[bool], fit: Fit<'_>) -> Vec<usize> {
        let mut widths = natural.to_vec();
        let excess = used(&widths, keep).saturating_sub(fit.width);
        if let Some(width) = widths.get_mut(fit.flexible) {
            let least = self.columns[fit.flexible].0.len().min(*width);
            *width = width.saturating_sub(excess).max(least);
        }
        widths
    }

    fn fitted_line(&self, cells: &[String], widths: &[usize], keep: &[bool], max: usize) -> String {
        let kept: Vec<(String, usize)> = (0..self.columns.len())
            .filter(|&i| keep[i])
            .map(|i| {
                let cell = cells.get(i).map_or("", String::as_str);
                (truncate(cell, widths[i]), i)
            })
            .collect();
        let (cells, columns): (Vec<String>, Vec<usize>) = kept.into_iter().unzip();
        let table = Table {
            columns: columns.iter().map(|&i| self.columns[i]).collect(),
            rows: Vec::new(),
        };
        let widths: Vec<usize> = columns.iter().map(|&i| widths[i]).collect();
        let line = table.line(&cells, &widths);
        truncate(line.trim_end_matches('\n'), max) + "\n"
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }

    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let padded: Vec<String> = self
            .columns
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, ((_, align), &width))| {
                let cell = cells.get(i).map_or("", String::as_str);
                match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                }
            })
            .collect();
        let mut line = padded.join("  ").trim_end().to_owned();
        line.push('\n');
        line
    }
}

/// Characters a line of the kept columns takes (two spaces between columns).
fn used(widths: &[usize], keep: &[bool]) -> usize {
    let kept: Vec<usize> = widths
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(w, _)| *w)
        .collect();
    kept.iter().sum::<usize>() + 2 * kept.len().saturating_sub(1)
}

/// A container key `runtime:id` as people read it: a 64-digit id cut to 12 digits, as
/// `docker ps` shows it; other keys unchanged.
pub fn short_container(key: &str) -> String {
    match key.split_once(':') {
        Some((runtime, id)) if id.len() == 64 && id.is_ascii() => {
            format!("{runtime}:{}", &id[..12])
        }
        _ => key.to_owned(),
    }
}

/// Cuts `text` to at most `width` characters, marking a cut with a final `~` (ASCII, so a
/// dumb terminal shows it too).
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    if width == 0 {
        kept
    } else {
        kept + "~"
    }
}

/// How a [`Table`] gives way to a narrow terminal: first the `flexible` column narrows (to
/// no less than its header), then the columns of `drop_order` go, in that order; a line
/// still too wide is cut.
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    pub width: usize,
    pub flexible: usize,
    pub drop_order: &'a [usize],
}

/// `key  value` lines with the values aligned; values are cleaned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {}\n", clean(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rates_round_and_clamp() {
        assert_eq!(rate(0.0), "0 B");
        assert_eq!(rate(99.6), "100 B");
        assert_eq!(rate(2048.0), "2.0 KiB");
        assert_eq!(rate(-5.0), "0 B");
        assert_eq!(rate(f64::NAN), "0 B");
        assert_eq!(rate(f64::INFINITY), "0 B");
        assert_eq!(rate(1e300), "16.0 EiB");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.0), "0.0s");
        assert_eq!(duration(45.25), "45.2s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(7385.0), "2h 03m 05s");
        assert_eq!(duration(4.0 * 86_400.0 + 7385.0), "4d 02h 03m");
        assert_eq!(duration(f64::NAN), "?");
        assert_eq!(duration(-1.0), "?");
    }

    #[test]
    fn clean_removes_terminal_escapes() {
        assert_eq!(clean("evil\x1b[2J\nname\t"), "evil?[2J?name?");
        assert_eq!(clean("ünïcode ok"), "ünïcode ok");
    }

    #[test]
    fn command_line_quotes_what_a_shell_would_split() {
        let args: Vec<String> = ["curl", "-H", "X: y", "", "it's", "http://[::1]:80/a?b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            command_line(&args),
            r#"curl -H 'X: y' '' 'it'\''s' 'http://[::1]:80/a?b'"#
        );
    }

    #[test]
    fn table_pads_and_aligns_columns() {
        let mut table = Table::new(&[("PID", Align::Right), ("COMM", Align::Left)]);
        table.push(vec!["7".into(), "sshd".into()]);
        table.push(vec!["12345".into(), "x\x1b".into()]);
        table.push(vec!["1".into()]);
        assert_eq!(
            table.render(),
            "  PID  COMM\n    7  sshd\n12345  x?\n    1\n"
        );
    }

    fn wide_table() -> Table {
        let mut table = Table::new(&[
            ("PID", Align::Right),
            ("COMM", Align::Left),
            ("RX/s", Align::Right),
            ("TOTAL", Align::Right),
        ]);
        table.push(vec![
            "1234".into(),
            "a-rather-long-command-name".into(),
            "12.5 KiB".into(),
            "1.0 GiB".into(),
        ]);
        table
    }

    #[test]
    fn fit_keeps_a_table_that_fits_as_it_is() {
        let table = wide_table();
        let fit = Fit {
            width: 80,
            flexible: 1,
            drop_order: &[3],
        };
        assert_eq!(table.render_fit(fit), table.render());
    }

    #[test]
    fn fit_narrows_the_flexible_column_then_drops_columns_then_cuts() {
        let table = wide_table();
        let narrowed = table.render_fit(Fit {
            width: 40,
            flexible: 1,
            drop_order: &[3],
        });
        assert_eq!(
            narrowed,
            " PID  COMM                 RX/s    TOTAL\n1234  a-rather-long-~  12.5 KiB  1.0 GiB\n"
        );
        let dropped = table.render_fit(Fit {
            width: 24,
            flexible: 1,
            drop_order: &[3],
        });
        assert_eq!(
            dropped,
            " PID  COMM          RX/s\n1234  a-rathe~  12.5 KiB\n"
        );
        let cut = table.render_fit(Fit {
            width: 10,
            flexible: 1,
            drop_order: &[3],
        });
        for line in cut.lines() {
            assert!(line.chars().count() <= 10, "{cut}");
        }
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc~");
        assert_eq!(truncate("ünïcödé", 3), "ün~");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn short_container_cuts_long_ids_only() {
        let id = "ab".repeat(32);
        assert_eq!(
            short_container(&format!("docker:{id}")),
            "docker:abababababab"
        );
        assert_eq!(short_container("systemd-nspawn:web"), "systemd-nspawn:web");
    }

    #[test]
    fn key_values_align_values() {
        assert_eq!(
            key_values(&[("a", "1".into()), ("long", "two\nlines".into())]),
            "a     1\nlong  two?lines\n"
        );
    }
}
