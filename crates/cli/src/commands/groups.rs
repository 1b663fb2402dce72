//! `pidcap ps --by KEY` and `pidcap top --by KEY`: one `groups` request per screen, printed
//! as a table of groups (user, unit, container or network namespace), busiest first.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use pidcap_proto::{GroupBy, GroupRow, GroupsReply, Request, Usage};

use crate::cli::TopSort;
use crate::client::Client;
use crate::format::{self, Align, Fit, Table};
use crate::terminal::Output;

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

/// Which groups `top --by` shows, in which order, how wide.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// `None`: as the daemon sorted them (total bytes); else rates descending, or by name.
    pub sort: Option<TopSort>,
    /// Lower-case text the group's name must contain.
    pub filter: Option<String>,
    pub limit: Option<usize>,
    pub width: Option<usize>,
}

/// `top --by`: a table every `interval`, `count` times or until interrupted; screens as
/// `top` writes them (see its module doc).
pub fn run_repeated(
    client: &mut Client,
    by: GroupBy,
    interval: Duration,
    count: Option<u64>,
    view: &GroupView,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut shown = 0;
    while count.is_none_or(|count| shown < count) {
        if shown > 0 {
            std::thread::sleep(interval);
        }
        let reply = client.call::<GroupsReply>(&Request::Groups { by })?;
        let body = render_view(&reply.body, view);
        out.write_all(super::top::screen(&body, output.escapes).as_bytes())?;
        out.flush()?;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// Groups by total bytes (as the daemon sorted them), at most `limit`, then the unknown
/// bucket; a note when only the caller's processes were grouped.
pub fn render(reply: &GroupsReply, limit: Option<usize>) -> String {
    let view = GroupView {
        limit,
        ..GroupView::default()
    };
    render_view(reply, &view)
}

/// The groups `view` selects, in its order, at most `limit`, then the unknown bucket (left
/// out when filtering: it is in no group); no line wider than `width`.
pub fn render_view(reply: &GroupsReply, view: &GroupView) -> String {
    let mut rows: Vec<(String, &GroupRow)> = reply
        .groups
        .iter()
        .map(|row| (group_name(reply.by, row), row))
        .filter(|(name, _)| {
            view.filter
                .as_deref()
                .is_none_or(|text| name.to_lowercase().contains(text))
        })
        .collect();
    if let Some(sort) = view.sort {
        sort_groups(&mut rows, sort);
    }
    let mut table = Table::new(&COLUMNS);
    for (name, row) in rows.iter().take(view.limit.unwrap_or(usize::MAX)) {
        table.push(cells(name, &row.processes.to_string(), &row.usage));
    }
    if view.filter.is_none() {
        table.push(cells(pidcap_proto::UNKNOWN_COMM, "-", &reply.unknown));
    }
    let text = match view.width {
        // GROUP narrows; then RX, TX and PROCS go.
        Some(width) => table.render_fit(Fit {
            width,
            flexible: 0,
            drop_order: &[2, 3, 1],
        }),
        None => table.render(),
    };
    text + &super::filtered_note(reply.filtered_to_uid)
}

/// Rates descending (ties by total bytes, then name), or by name (`pid` too: a group has
/// none).
fn sort_groups(rows: &mut [(String, &GroupRow)], sort: TopSort) {
    let rate = |u: &Usage| match sort {
        TopSort::Rx => u.rx_bps,
        TopSort::Tx => u.tx_bps,
        _ => u.rx_bps + u.tx_bps,
    };
    let total = |u: &Usage| u.rx_bytes_total.saturating_add(u.tx_bytes_total);
    rows.sort_by(|(an, a), (bn, b)| match sort {
        TopSort::Name | TopSort::Pid => an.cmp(bn),
        _ => rate(&b.usage)
            .total_cmp(&rate(&a.usage))
            .then(total(&b.usage).cmp(&total(&a.usage)))
            .then(an.cmp(bn)),
    });
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
    match by {
        GroupBy::Container => format::short_container(&key),
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

    fn rated(key: &str, rx_bps: f64, rx: u64) -> GroupRow {
        let mut row = group(Some(key), 1, rx);
        row.usage.rx_bps = rx_bps;
        row
    }

    fn units() -> GroupsReply {
        GroupsReply {
            by: GroupBy::Unit,
            groups: vec![
                rated("big-but-quiet.service", 0.0, 9000),
                rated("busy.service", 2048.0, 10),
                rated("a-long-long-long-long-unit-name.service", 10.0, 5),
            ],
            unknown: Usage::default(),
            filtered_to_uid: None,
        }
    }

    fn names(text: &str) -> Vec<&str> {
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect()
    }

    #[test]
    fn top_by_sorts_by_rate_or_name_and_filters_by_group_name() {
        let view = GroupView {
            sort: Some(TopSort::Total),
            ..GroupView::default()
        };
        assert_eq!(
            names(&render_view(&units(), &view)),
            [
                "busy.service",
                "a-long-long-long-long-unit-name.service",
                "big-but-quiet.service",
                "<unknown>"
            ]
        );
        let view = GroupView {
            sort: Some(TopSort::Name),
            filter: Some("b".into()),
            ..GroupView::default()
        };
        assert_eq!(
            names(&render_view(&units(), &view)),
            ["big-but-quiet.service", "busy.service"]
        );
    }

    #[test]
    fn top_by_fits_forty_and_eighty_columns() {
        for width in [40, 80] {
            let view = GroupView {
                width: Some(width),
                ..GroupView::default()
            };
            let text = render_view(&units(), &view);
            assert!(
                text.lines().all(|l| l.chars().count() <= width),
                "{width}:\n{text}"
            );
            assert!(text.contains("RX/s"), "{text}");
        }
        let view = GroupView {
            width: Some(40),
            ..GroupView::default()
        };
        let narrow = render_view(&units(), &view);
        assert!(narrow.contains("~"), "{narrow}");
        assert!(
            !narrow.contains("PROCS") || narrow.contains("a-long"),
            "{narrow}"
        );
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
