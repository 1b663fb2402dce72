//! `pidcap top`: a `watch` stream, one screen per frame, like nethogs.
//!
//! On a terminal every frame clears the screen and redraws from the top; otherwise frames are
//! printed one after another, separated by a blank line, so the output can be logged.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use pidcap_proto::{decode_reply, RateRow, Request, WatchFrame, WatchRequest};

use crate::cli::TopArgs;
use crate::client::Client;
use crate::format::{self, Align, Table};

/// Clear screen, cursor home.
pub const CLEAR_AND_HOME: &str = "\x1b[2J\x1b[H";

const COLUMNS: [(&str, Align); 6] = [
    ("PID", Align::Right),
    ("COMM", Align::Left),
    ("RX/s", Align::Right),
    ("TX/s", Align::Right),
    ("RX TOTAL", Align::Right),
    ("TX TOTAL", Align::Right),
];

pub fn run(client: &mut Client, args: &TopArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if let Some(by) = args.by {
        let interval = Duration::from_millis(args.interval);
        return super::groups::run_repeated(
            client,
            by.into(),
            interval,
            args.count,
            args.limit,
            out,
        );
    }
    // A frame is due every interval; allow several to go missing before giving up.
    client.set_timeout(Duration::from_millis(args.interval) * 5 + Duration::from_secs(10))?;
    client.send(&Request::Watch(WatchRequest {
        interval_ms: Some(args.interval),
    }))?;
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0;
    while args.count.is_none_or(|count| shown < count) {
        let Some(line) = client.next_line()? else {
            bail!("the daemon closed the watch stream");
        };
        let frame: WatchFrame = decode_reply(&line)?;
        out.write_all(screen(&frame, args.limit, terminal).as_bytes())?;
        out.flush()?;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// What one frame prints: the whole screen on a terminal, a block plus a blank line otherwise.
pub fn screen(frame: &WatchFrame, limit: Option<usize>, terminal: bool) -> String {
    let body = render(frame, limit);
    if terminal {
        format!("{CLEAR_AND_HOME}{body}")
    } else {
        format!("{body}\n")
    }
}

/// Header, processes by current rate (busiest first; ties by total, then pid), at most
/// `limit` of them, the unknown bucket, and a total over everything in the frame.
pub fn render(frame: &WatchFrame, limit: Option<usize>) -> String {
    let mut rows = frame.processes.clone();
    rows.sort_by(|a, b| {
        let rate = |r: &RateRow| r.rx_bps + r.tx_bps;
        let total = |r: &RateRow| r.rx_bytes_total.saturating_add(r.tx_bytes_total);
        rate(b)
            .total_cmp(&rate(a))
            .then(total(b).cmp(&total(a)))
            .then(a.pid.cmp(&b.pid))
    });
    let mut table = Table::new(&COLUMNS);
    for row in rows.iter().take(limit.unwrap_or(usize::MAX)) {
        table.push(cells(row, &row.pid.map_or("-".into(), |p| p.to_string())));
    }
    table.push(cells(&frame.unknown, "-"));
    table.push(cells(&sum(frame), ""));
    let header = format!(
        "pidcap top  {}  every {} ms  {} processes\n\n",
        format::clean(&frame.ts),
        frame.interval_ms,
        frame.processes.len()
    );
    header + &table.render() + &super::filtered_note(frame.filtered_to_uid)
}

fn cells(row: &RateRow, pid: &str) -> Vec<String> {
    vec![
        pid.to_owned(),
        row.comm.clone(),
        format::rate(row.rx_bps),
        format::rate(row.tx_bps),
        format::bytes(row.rx_bytes_total),
        format::bytes(row.tx_bytes_total),
    ]
}

fn sum(frame: &WatchFrame) -> RateRow {
    let mut total = RateRow {
        pid: None,
        comm: "TOTAL".into(),
        rx_bps: 0.0,
        tx_bps: 0.0,
        rx_bytes_total: 0,
        tx_bytes_total: 0,
    };
    for row in frame.processes.iter().chain([&frame.unknown]) {
        total.rx_bps += row.rx_bps;
        total.tx_bps += row.tx_bps;
        total.rx_bytes_total = total.rx_bytes_total.saturating_add(row.rx_bytes_total);
        total.tx_bytes_total = total.tx_bytes_total.saturating_add(row.tx_bytes_total);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(pid: Option<u32>, comm: &str, rx_bps: f64, total: u64) -> RateRow {
        RateRow {
            pid,
            comm: comm.into(),
            rx_bps,
            tx_bps: 0.0,
            rx_bytes_total: total,
            tx_bytes_total: 0,
        }
    }

    fn frame() -> WatchFrame {
        WatchFrame {
            ts: "2024-05-01T12:00:00Z".into(),
            interval_ms: 1000,
            processes: vec![
                rate(Some(10), "idle", 0.0, 50),
                rate(Some(20), "busy", 4096.0, 100),
                rate(Some(30), "idle2", 0.0, 70),
            ],
            unknown: rate(None, "<unknown>", 1024.0, 10),
            filtered_to_uid: None,
        }
    }

    #[test]
    fn a_frame_of_only_the_callers_processes_says_so() {
        assert!(!render(&frame(), None).contains("only your processes"));
        let own = WatchFrame {
            filtered_to_uid: Some(1000),
            ..frame()
        };
        assert!(render(&own, None).contains("only your processes, uid 1000"));
    }

    #[test]
    fn busiest_first_then_unknown_then_total() {
        let expected = [
            "pidcap top  2024-05-01T12:00:00Z  every 1000 ms  3 processes",
            "",
            "PID  COMM          RX/s  TX/s  RX TOTAL  TX TOTAL",
            " 20  busy       4.0 KiB   0 B     100 B       0 B",
            " 30  idle2          0 B   0 B      70 B       0 B",
            " 10  idle           0 B   0 B      50 B       0 B",
            "  -  <unknown>  1.0 KiB   0 B      10 B       0 B",
            "     TOTAL      5.0 KiB   0 B     230 B       0 B",
        ];
        assert_eq!(render(&frame(), None), expected.join("\n") + "\n");
    }

    #[test]
    fn limit_cuts_processes_but_not_unknown_or_total() {
        let text = render(&frame(), Some(1));
        let comms: Vec<&str> = text
            .lines()
            .skip(3)
            .map(|l| {
                l.split_whitespace()
                    .find(|w| w.chars().any(char::is_alphabetic))
                    .unwrap()
            })
            .collect();
        assert_eq!(comms, ["busy", "<unknown>", "TOTAL"]);
    }

    #[test]
    fn terminal_frames_clear_the_screen_and_plain_frames_do_not() {
        let tty = screen(&frame(), None, true);
        assert!(tty.starts_with(CLEAR_AND_HOME));
        let plain = screen(&frame(), None, false);
        assert!(!plain.contains('\x1b'));
        assert!(plain.ends_with("\n\n"));
    }
}
