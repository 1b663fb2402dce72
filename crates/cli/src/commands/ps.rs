//! `pidcap ps`: one `processes` request, printed as a table sorted by traffic.

use std::io::Write;
use std::process::ExitCode;

use pidcap_proto::{ProcessRow, ProcessesReply, Request, UnknownRow};

use crate::cli::{PsArgs, SortKey};
use crate::client::Client;
use crate::format::{self, Align, Table};
use crate::names::{self, Names};

const COLUMNS: [(&str, Align); 8] = [
    ("PID", Align::Right),
    ("USER", Align::Left),
    ("COMM", Align::Left),
    ("RX", Align::Right),
    ("TX", Align::Right),
    ("RX/s", Align::Right),
    ("TX/s", Align::Right),
    ("ALIVE", Align::Left),
];

pub fn run(client: &mut Client, args: &PsArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if let Some(by) = args.by {
        return super::groups::run_once(client, by.into(), args.json, args.limit, out);
    }
    let reply = client.call::<ProcessesReply>(&Request::Processes)?;
    if args.json {
        super::write_raw(out, &reply.raw)?;
    } else {
        let users = names::load(names::PASSWD_FILE);
        out.write_all(render(reply.body, args.sort, args.limit, &users).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The table: processes sorted by `sort` (descending, ties by pid), at most `limit` of them,
/// then the unknown bucket as `<unknown>`, then a note if the list holds only the caller's
/// processes.
pub fn render(reply: ProcessesReply, sort: SortKey, limit: Option<usize>, users: &Names) -> String {
    let mut rows = reply.processes;
    sort_rows(&mut rows, sort);
    rows.truncate(limit.unwrap_or(usize::MAX));
    let mut table = Table::new(&COLUMNS);
    for row in &rows {
        table.push(process_cells(row, users));
    }
    table.push(unknown_cells(&reply.unknown));
    table.render() + &super::filtered_note(reply.filtered_to_uid)
}

/// Sorts busiest first by total bytes received, sent, or both; equal rows by pid.
pub fn sort_rows(rows: &mut [ProcessRow], sort: SortKey) {
    let key = |row: &ProcessRow| {
        let usage = &row.usage;
        match sort {
            SortKey::Rx => usage.rx_bytes_total,
            SortKey::Tx => usage.tx_bytes_total,
            SortKey::Total => usage.rx_bytes_total.saturating_add(usage.tx_bytes_total),
        }
    };
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.pid.cmp(&b.pid)));
}

fn process_cells(row: &ProcessRow, users: &Names) -> Vec<String> {
    let usage = &row.usage;
    vec![
        row.pid.to_string(),
        users.name(row.uid),
        row.comm.clone(),
        format::bytes(usage.rx_bytes_total),
        format::bytes(usage.tx_bytes_total),
        format::rate(usage.rx_bps),
        format::rate(usage.tx_bps),
        format::yes_no(row.alive).to_owned(),
    ]
}

fn unknown_cells(unknown: &UnknownRow) -> Vec<String> {
    vec![
        "-".into(),
        "-".into(),
        pidcap_proto::UNKNOWN_COMM.into(),
        format::bytes(unknown.rx_bytes_total),
        format::bytes(unknown.tx_bytes_total),
        format::rate(unknown.rx_bps),
        format::rate(unknown.tx_bps),
        "-".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_proto::Usage;

    fn row(pid: u32, comm: &str, rx: u64, tx: u64) -> ProcessRow {
        ProcessRow {
            pid,
            start_time: 1,
            comm: comm.into(),
            exe: None,
            uid: 0,
            usage: Usage {
                rx_bytes_total: rx,
                tx_bytes_total: tx,
                rx_bps: 2048.0,
                ..Usage::default()
            },
            alive: pid != 3,
            matched: Default::default(),
            placement: Default::default(),
        }
    }

    fn reply() -> ProcessesReply {
        ProcessesReply {
            processes: vec![
                row(1, "small", 10, 10),
                row(2, "receiver", 5000, 0),
                row(3, "sender", 0, 4000),
                row(4, "tie", 10, 10),
            ],
            unknown: Usage {
                rx_bytes_total: 2048,
                ..Usage::default()
            },
            filtered_to_uid: None,
        }
    }

    #[test]
    fn a_list_of_only_the_callers_processes_says_so() {
        let users = Names::default();
        let full = render(reply(), SortKey::Total, None, &users);
        assert!(!full.contains("only your processes"), "{full}");
        let own = ProcessesReply {
            filtered_to_uid: Some(1000),
            ..reply()
        };
        let text = render(own, SortKey::Total, None, &users);
        assert!(
            text.ends_with("(only your processes, uid 1000: root and members of the socket's group see every process)\n"),
            "{text}"
        );
    }

    fn comms(text: &str) -> Vec<String> {
        text.lines()
            .skip(1)
            .map(|line| line.split_whitespace().nth(2).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn sorts_by_total_by_default_and_puts_unknown_last() {
        let text = render(
            reply(),
            SortKey::Total,
            None,
            &Names::parse("root:x:0:0::/:\n"),
        );
        let expected = [
            "PID  USER  COMM            RX       TX     RX/s  TX/s  ALIVE",
            "  2  root  receiver   4.9 KiB      0 B  2.0 KiB   0 B  yes",
            "  3  root  sender         0 B  3.9 KiB  2.0 KiB   0 B  no",
            "  1  root  small         10 B     10 B  2.0 KiB   0 B  yes",
            "  4  root  tie           10 B     10 B  2.0 KiB   0 B  yes",
            "  -  -     <unknown>  2.0 KiB      0 B      0 B   0 B  -",
        ];
        assert_eq!(text, expected.join("\n") + "\n");
    }

    #[test]
    fn sort_keys_pick_the_direction() {
        let users = Names::default();
        let rx = render(reply(), SortKey::Rx, None, &users);
        assert_eq!(
            comms(&rx),
            ["receiver", "small", "tie", "sender", "<unknown>"]
        );
        let tx = render(reply(), SortKey::Tx, None, &users);
        assert_eq!(
            comms(&tx),
            ["sender", "small", "tie", "receiver", "<unknown>"]
        );
    }

    #[test]
    fn limit_keeps_the_unknown_row() {
        let text = render(reply(), SortKey::Total, Some(1), &Names::default());
        assert_eq!(comms(&text), ["receiver", "<unknown>"]);
        let text = render(reply(), SortKey::Total, Some(0), &Names::default());
        assert_eq!(comms(&text), ["<unknown>"]);
    }

    #[test]
    fn unknown_uid_prints_as_number() {
        let text = render(reply(), SortKey::Total, Some(1), &Names::default());
        assert!(text.lines().nth(1).unwrap().contains("  0  "), "{text}");
    }
}
