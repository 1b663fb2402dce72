//! `pidcap ps --by KEY` and `pidcap top --by KEY`: one `groups` request per screen, printed
//! as a table of groups (user, unit, container or network namespace), busiest first.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use pidcap_proto::{GroupBy, GroupRow, GroupsReply, Request, Usage};

use crate::client::Client;
use crate::format::{self, Align, Table};

const COLUMNS: [(&str, Align); 6] = [
    ("GROUP", Align::Left),
    ("PROCS", Align::Right),
    ("RX", Align::Right),
    ("TX", Align::Right),
    ("RX/s", Align::Right),
    ("TX/s", Align::Right),
];

/// `ps --by`: one table.
pub fn run_once(
    client: &mut Client,
    by: GroupBy,
    json: bool,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let reply = client.call::<GroupsReply>(&Request::Groups { by })?;
    if json {
        super::write_raw(out, &reply.raw)?;
    } else {
        out.write_all(render(&reply.body, limit).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `top --by`: a table every `interval`, `count` times or until interrupted.
pub fn run_repeated(
    client: &mut Client,
    by: GroupBy,
    interval: Duration,
    count: Option<u64>,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0;
    while count.is_none_or(|count| shown < count) {
        if shown > 0 {
            std::thread::sleep(interval);
        }
        let reply = client.call::<GroupsReply>(&Request::Groups { by })?;
        let body = render(&reply.body, limit);
        let screen = if terminal {
            format!("{}{body}", super::top::CLEAR_AND_HOME)
        } else {
            format!("{body}\n")
        };
        out.write_all(screen.as_bytes())?;
        out.flush()?;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// Groups by total bytes (as the daemon sorted them), at most `limit`, then the unknown
/// bucket; a note when only the caller's processes were grouped.
pub fn render(reply: &GroupsReply, limit: Option<usize>) -> String {
    let mut table = Table::new(&COLUMNS);
    for row in reply.groups.iter().take(limit.unwrap_or(usize::MAX)) {
        let name = group_name(reply.by, row);
        table.push(cells(&name, &row.processes.to_string(), &row.usage));
    }
    table.push(cells(pidcap_proto::UNKNOWN_COMM, "-", &reply.unknown));
    table.render() + &super::filtered_note(reply.filtered_to_uid)
}

/// How a group's key reads: a container's id cut to 12 digits (as `docker ps` shows it),
/// the processes without the key in parentheses.
fn group_name(by: GroupBy, row: &GroupRow) -> String {
    let Some(key) = &row.key else {
        return match by {
            GroupBy::User => "(no user)",
            GroupBy::Unit => "(no unit)",
            GroupBy::Container => "(host)",
            GroupBy::Netns => "(unknown netns)",
        }
        .into();
    };
    let key = format::clean(key);
    match (by, key.split_once(':')) {
        (GroupBy::Container, Some((runtime, id))) if id.len() == 64 => {
            format!("{runtime}:{}", &id[..12])
        }
        _ => key,
    }
}

fn cells(name: &str, processes: &str, usage: &Usage) -> Vec<String> {
    vec![
        name.to_owned(),
        processes.to_owned(),
        format::bytes(usage.rx_bytes_total),
        format::bytes(usage.tx_bytes_total),
        format::rate(usage.rx_bps),
        format::rate(usage.tx_bps),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(key: Option<&str>, processes: u64, rx: u64) -> GroupRow {
        GroupRow {
            key: key.map(str::to_string),
            processes,
            usage: Usage {
                rx_bytes_total: rx,
                ..Usage::default()
            },
        }
    }

    #[test]
    fn containers_show_short_ids_and_the_host_apart() {
        let id = "ab".repeat(32);
        let reply = GroupsReply {
            by: GroupBy::Container,
            groups: vec![
                group(Some(&format!("docker:{id}")), 3, 4096),
                group(Some("systemd-nspawn:web"), 1, 2048),
                group(None, 12, 1024),
            ],
            unknown: Usage::default(),
            filtered_to_uid: None,
        };
        let text = render(&reply, None);
        let expected = [
            "GROUP                PROCS       RX   TX  RX/s  TX/s",
            "docker:abababababab      3  4.0 KiB  0 B   0 B   0 B",
            "systemd-nspawn:web       1  2.0 KiB  0 B   0 B   0 B",
            "(host)                  12  1.0 KiB  0 B   0 B   0 B",
            "<unknown>                -      0 B  0 B   0 B   0 B",
        ];
        assert_eq!(text, expected.join("\n") + "\n");
        let limited = render(&reply, Some(1));
        assert_eq!(limited.lines().count(), 3, "{limited}");
    }

    #[test]
    fn untrusted_keys_are_cleaned() {
        let reply = GroupsReply {
            by: GroupBy::Unit,
            groups: vec![group(Some("evil\u{1b}[2J.service"), 1, 1)],
            unknown: Usage::default(),
            filtered_to_uid: Some(1000),
        };
        let text = render(&reply, None);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("only your processes"), "{text}");
    }
}
