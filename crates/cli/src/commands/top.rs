//! `pidcap top`: a `processes` request every interval, one screen per reply, like nethogs.
//!
//! It asks `processes` rather than streaming `watch` frames because only `processes` rows
//! carry what the filter and the quality column need (executable, unit, container, bytes per
//! match quality), and one connection must do: a user outside the socket group may hold few
//! (README "Who sees what"). The rates are the daemon's, the same as a `watch` frame's.
//!
//! On a terminal that understands escapes every screen clears and redraws from the top;
//! otherwise (a pipe, a file, `TERM=dumb`) screens are printed one after another, separated
//! by a blank line, with no escape sequence at all. No line is wider than the terminal
//! (`COLUMNS`, else the terminal's width): columns narrow, then go, then lines are cut.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use pidcap_proto::{MatchBytes, ProcessRow, ProcessesReply, Request};

use crate::cli::{TopArgs, TopSort};
use crate::client::Client;
use crate::format::{self, Align, Fit, Table};
use crate::names::{self, Names};
use crate::terminal::Output;

/// Clear screen, cursor home.
pub const CLEAR_AND_HOME: &str = "\x1b[2J\x1b[H";

const COLUMNS: [(&str, Align); 8] = [
    ("PID", Align::Right),
    ("USER", Align::Left),
    ("COMM", Align::Left),
    ("RX/s", Align::Right),
    ("TX/s", Align::Right),
    ("RX TOTAL", Align::Right),
    ("TX TOTAL", Align::Right),
    ("EXACT", Align::Right),
];
/// COMM narrows first; then TX TOTAL, RX TOTAL, USER and EXACT go, in that order.
const COMM: usize = 2;
const DROP_ORDER: [usize; 4] = [6, 5, 1, 7];

/// Which processes a screen shows, and in which order.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub sort: Option<TopSort>,
    /// Lower-case text to find in comm, exe, unit or container.
    pub filter: Option<String>,
    pub pid: Option<u32>,
    pub limit: Option<usize>,
}

impl View {
    fn from_args(args: &TopArgs) -> View {
        View {
            sort: Some(args.sort),
            filter: args.filter.as_ref().map(|f| f.to_lowercase()),
            pid: args.pid,
            limit: args.limit,
        }
    }

    /// A filtered view leaves the unknown bucket out: it matches no process.
    fn filtered(&self) -> bool {
        self.filter.is_some() || self.pid.is_some()
    }

    fn matches(&self, row: &ProcessRow) -> bool {
        self.pid.is_none_or(|pid| row.pid == pid)
            && self
                .filter
                .as_deref()
                .is_none_or(|text| searchable(row).any(|field| field.to_lowercase().contains(text)))
    }
}

/// The fields `--filter` looks in.
fn searchable(row: &ProcessRow) -> impl Iterator<Item = String> + '_ {
    let placement = &row.placement;
    let container = placement.container.as_ref();
    [
        Some(row.comm.clone()),
        row.exe.clone(),
        placement.unit.clone(),
        container.map(|c| format!("{}:{}", c.runtime, c.id)),
        container.and_then(|c| c.name.clone()),
    ]
    .into_iter()
    .flatten()
}

pub fn run(client: &mut Client, args: &TopArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let output = Output::detect();
    let interval = Duration::from_millis(args.interval);
    if let Some(by) = args.by {
        let view = super::groups::GroupView {
            sort: Some(args.sort),
            filter: args.filter.as_ref().map(|f| f.to_lowercase()),
            limit: args.limit,
            width: output.width,
        };
        return super::groups::run_repeated(
            client,
            by.into(),
            interval,
            args.count,
            &view,
            output,
            out,
        );
    }
    let view = View::from_args(args);
    let users = names::load(names::PASSWD_FILE);
    let mut shown = 0;
    while args.count.is_none_or(|count| shown < count) {
        if shown > 0 {
            std::thread::sleep(interval);
        }
        let reply = client.call::<ProcessesReply>(&Request::Processes)?;
        let ts = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let frame = Frame {
            ts: &ts,
            interval_ms: args.interval,
            width: output.width,
        };
        let body = render(&reply.body, &view, &users, frame);
        out.write_all(screen(&body, output.escapes).as_bytes())?;
        out.flush()?;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// One screen: the whole screen redrawn with escapes, a block plus a blank line without.
pub fn screen(body: &str, escapes: bool) -> String {
    if escapes {
        format!("{CLEAR_AND_HOME}{body}")
    } else {
        format!("{body}\n")
    }
}

/// What a screen says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub ts: &'a str,
    pub interval_ms: u64,
    pub width: Option<usize>,
}

/// Header, the matching processes in `view`'s order (at most `limit`), the unknown bucket
/// (unfiltered views only), and a total over every matching row, limit or not. Processes
/// that exited and no longer send are left out, as `watch` does.
pub fn render(reply: &ProcessesReply, view: &View, users: &Names, frame: Frame<'_>) -> String {
    let live: Vec<&ProcessRow> = reply.processes.iter().filter(|r| is_live(r)).collect();
    let mut rows: Vec<&ProcessRow> = live.iter().copied().filter(|r| view.matches(r)).collect();
    sort_rows(&mut rows, view.sort.unwrap_or(TopSort::Total));
    let mut table = Table::new(&COLUMNS);
    for row in rows.iter().take(view.limit.unwrap_or(usize::MAX)) {
        table.push(process_cells(row, users));
    }
    let mut total = Sum::default();
    rows.iter().for_each(|r| total.add(&r.usage, &r.matched));
    if !view.filtered() {
        table.push(sum_cells(
            "-",
            pidcap_proto::UNKNOWN_COMM,
            &Sum::of_unknown(reply),
        ));
        total.add(&reply.unknown, &MatchBytes::default());
    }
    table.push(sum_cells("", "TOTAL", &total));
    let header = header(frame, live.len(), view.filtered().then_some(rows.len()));
    let table = match frame.width {
        Some(width) => table.render_fit(Fit {
            width,
            flexible: COMM,
            drop_order: &DROP_ORDER,
        }),
        None => table.render(),
    };
    header + &table + &super::filtered_note(reply.filtered_to_uid)
}

fn header(frame: Frame<'_>, live: usize, matching: Option<usize>) -> String {
    let matching = matching.map_or(String::new(), |n| format!(", {n} shown"));
    let text = format!(
        "pidcap top  {}  every {} ms  {live} processes{matching}",
        format::clean(frame.ts),
        frame.interval_ms
    );
    let text = frame
        .width
        .map_or(text.clone(), |w| format::truncate(&text, w));
    text + "\n\n"
}

fn is_live(row: &ProcessRow) -> bool {
    row.alive || row.usage.rx_bps + row.usage.tx_bps > 0.0
}

/// Rates descending (ties: total bytes descending, then pid), or name or pid ascending.
pub fn sort_rows(rows: &mut [&ProcessRow], sort: TopSort) {
    let rate = |r: &ProcessRow| match sort {
        TopSort::Rx => r.usage.rx_bps,
        TopSort::Tx => r.usage.tx_bps,
        _ => r.usage.rx_bps + r.usage.tx_bps,
    };
    let total = |r: &ProcessRow| {
        r.usage
            .rx_bytes_total
            .saturating_add(r.usage.tx_bytes_total)
    };
    rows.sort_by(|a, b| match sort {
        TopSort::Name => a
            .comm
            .to_lowercase()
            .cmp(&b.comm.to_lowercase())
            .then(a.pid.cmp(&b.pid)),
        TopSort::Pid => a.pid.cmp(&b.pid).then(a.start_time.cmp(&b.start_time)),
        _ => rate(b)
            .total_cmp(&rate(a))
            .then(total(b).cmp(&total(a)))
            .then(a.pid.cmp(&b.pid)),
    });
}

/// The share of a row's credited bytes matched exactly (its socket's own four-tuple), rounded
/// down so that `100%` means every byte; `-` before any byte was credited.
pub fn exact_share(matched: &MatchBytes) -> String {
    let all = [
        matched.exact,
        matched.wildcard,
        matched.recent,
        matched.late,
        matched.packet_sender,
    ]
    .iter()
    .fold(0u128, |sum, &n| sum + u128::from(n));
    if all == 0 {
        return "-".into();
    }
    format!("{}%", u128::from(matched.exact) * 100 / all)
}

fn process_cells(row: &ProcessRow, users: &Names) -> Vec<String> {
    let usage = &row.usage;
    let user = row
        .placement
        .user
        .clone()
        .unwrap_or_else(|| users.name(row.uid));
    vec![
        row.pid.to_string(),
        user,
        row.comm.clone(),
        format::rate(usage.rx_bps),
        format::rate(usage.tx_bps),
        format::bytes(usage.rx_bytes_total),
        format::bytes(usage.tx_bytes_total),
        exact_share(&row.matched),
    ]
}

/// Rates, totals and match bytes summed over rows.
#[derive(Debug, Default)]
struct Sum {
    rx_bps: f64,
    tx_bps: f64,
    rx_total: u64,
    tx_total: u64,
    matched: MatchBytes,
}

impl Sum {
    fn of_unknown(reply: &ProcessesReply) -> Sum {
        let mut sum = Sum::default();
        sum.add(&reply.unknown, &MatchBytes::default());
        sum
    }

    fn add(&mut self, usage: &pidcap_proto::Usage, matched: &MatchBytes) {
        self.rx_bps += usage.rx_bps;
        self.tx_bps += usage.tx_bps;
        self.rx_total = self.rx_total.saturating_add(usage.rx_bytes_total);
        self.tx_total = self.tx_total.saturating_add(usage.tx_bytes_total);
        self.matched.exact = self.matched.exact.saturating_add(matched.exact);
        self.matched.wildcard = self.matched.wildcard.saturating_add(matched.wildcard);
        self.matched.recent = self.matched.recent.saturating_add(matched.recent);
        self.matched.late = self.matched.late.saturating_add(matched.late);
        self.matched.packet_sender =
            (self.matched.packet_sender).saturating_add(matched.packet_sender);
    }
}

fn sum_cells(pid: &str, name: &str, sum: &Sum) -> Vec<String> {
    vec![
        pid.to_owned(),
        String::new(),
        name.to_owned(),
        format::rate(sum.rx_bps),
        format::rate(sum.tx_bps),
        format::bytes(sum.rx_total),
        format::bytes(sum.tx_total),
        exact_share(&sum.matched),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_proto::{ContainerRef, PlacementFields, Usage};

    fn row(pid: u32, comm: &str, rx_bps: f64, total: u64, exact: u64, wildcard: u64) -> ProcessRow {
        ProcessRow {
            pid,
            start_time: 1,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}")),
            uid: 0,
            usage: Usage {
                rx_bps,
                rx_bytes_total: total,
                ..Usage::default()
            },
            alive: true,
            matched: MatchBytes {
                exact,
                wildcard,
                ..MatchBytes::default()
            },
            placement: PlacementFields::default(),
        }
    }

    fn reply() -> ProcessesReply {
        let mut nginx = row(40, "nginx", 100.0, 500, 1, 0);
        nginx.placement.unit = Some("nginx.service".into());
        nginx.placement.user = Some("www-data".into());
        let mut web = row(50, "python3", 0.0, 60, 0, 0);
        web.placement.container = Some(ContainerRef {
            runtime: "docker".into(),
            id: "ab".repeat(32),
            pod: None,
            name: Some("shop-web".into()),
        });
        let mut gone = row(60, "exited", 0.0, 999, 0, 0);
        gone.alive = false;
        ProcessesReply {
            processes: vec![
                row(10, "idle", 0.0, 50, 50, 0),
                row(20, "busy", 4096.0, 100, 97, 3),
                row(30, "idle2", 0.0, 70, 0, 70),
                nginx,
                web,
                gone,
            ],
            unknown: Usage {
                rx_bps: 1024.0,
                rx_bytes_total: 10,
                ..Usage::default()
            },
            filtered_to_uid: None,
        }
    }

    fn frame(width: Option<usize>) -> Frame<'static> {
        Frame {
            ts: "2024-05-01T12:00:00Z",
            interval_ms: 1000,
            width,
        }
    }

    fn view(sort: TopSort) -> View {
        View {
            sort: Some(sort),
            ..View::default()
        }
    }

    fn text(view: &View, width: Option<usize>) -> String {
        render(
            &reply(),
            view,
            &Names::parse("root:x:0:0::/:\n"),
            frame(width),
        )
    }

    /// The names in the rows of a screen, in order.
    fn comms(text: &str) -> Vec<String> {
        const NAMES: [&str; 8] = [
            "busy",
            "idle",
            "idle2",
            "nginx",
            "python3",
            "exited",
            "<unknown>",
            "TOTAL",
        ];
        text.lines()
            .skip(3)
            .filter_map(|l| l.split_whitespace().find(|w| NAMES.contains(w)))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn busiest_first_then_unknown_then_total_at_full_width() {
        let expected = [
            "pidcap top  2024-05-01T12:00:00Z  every 1000 ms  5 processes",
            "",
            "PID  USER      COMM          RX/s  TX/s  RX TOTAL  TX TOTAL  EXACT",
            " 20  root      busy       4.0 KiB   0 B     100 B       0 B    97%",
            " 40  www-data  nginx        100 B   0 B     500 B       0 B   100%",
            " 30  root      idle2          0 B   0 B      70 B       0 B     0%",
            " 50  root      python3        0 B   0 B      60 B       0 B      -",
            " 10  root      idle           0 B   0 B      50 B       0 B   100%",
            "  -            <unknown>  1.0 KiB   0 B      10 B       0 B      -",
            "               TOTAL      5.1 KiB   0 B     790 B       0 B    66%",
        ];
        assert_eq!(
            text(&view(TopSort::Total), None),
            expected.join("\n") + "\n"
        );
    }

    #[test]
    fn sort_keys_order_the_rows() {
        let by_name = comms(&text(&view(TopSort::Name), None));
        assert_eq!(by_name[..5], ["busy", "idle", "idle2", "nginx", "python3"]);
        let by_pid = comms(&text(&view(TopSort::Pid), None));
        assert_eq!(by_pid[..5], ["idle", "busy", "idle2", "nginx", "python3"]);
        let by_tx = comms(&text(&view(TopSort::Tx), None));
        assert_eq!(by_tx[0], "nginx", "ties on rate go by total bytes");
    }

    #[test]
    fn the_filter_looks_in_comm_exe_unit_and_container() {
        for (filter, expected) in [
            ("NGINX.SERVICE", "nginx"),
            ("/usr/bin/busy", "busy"),
            ("shop-web", "python3"),
            ("docker:abab", "python3"),
        ] {
            let view = View {
                filter: Some(filter.to_lowercase()),
                ..view(TopSort::Total)
            };
            let text = text(&view, None);
            assert_eq!(comms(&text), [expected, "TOTAL"], "{filter}: {text}");
            assert!(text
                .lines()
                .next()
                .unwrap()
                .ends_with("5 processes, 1 shown"));
        }
        let view = View {
            pid: Some(30),
            ..view(TopSort::Total)
        };
        assert_eq!(comms(&text(&view, None)), ["idle2", "TOTAL"]);
    }

    #[test]
    fn limit_cuts_rows_but_not_unknown_or_the_total() {
        let view = View {
            limit: Some(1),
            ..view(TopSort::Total)
        };
        let text = text(&view, None);
        assert_eq!(comms(&text), ["busy", "<unknown>", "TOTAL"]);
        assert!(text.contains("790 B"), "{text}");
    }

    #[test]
    fn eighty_columns_fit_whole_and_forty_drop_columns() {
        let wide = text(&view(TopSort::Total), Some(80));
        assert_eq!(wide, text(&view(TopSort::Total), None));
        let narrow = text(&view(TopSort::Total), Some(40));
        for line in narrow.lines() {
            assert!(line.chars().count() <= 40, "{line:?} in\n{narrow}");
        }
        let head = narrow.lines().nth(2).unwrap();
        assert_eq!(
            head.split_whitespace().collect::<Vec<_>>(),
            ["PID", "COMM", "RX/s", "TX/s", "EXACT"]
        );
        assert!(narrow.contains(" 20  busy"), "{narrow}");
        let tiny = text(&view(TopSort::Total), Some(12));
        assert!(tiny.lines().all(|l| l.chars().count() <= 12), "{tiny}");
    }

    #[test]
    fn long_names_are_cut_not_wrapped() {
        let mut reply = reply();
        reply.processes[0].comm = "a-very-long-command-name-indeed".into();
        let text = render(
            &reply,
            &view(TopSort::Name),
            &Names::default(),
            frame(Some(40)),
        );
        assert!(text.contains('~'), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
    }

    #[test]
    fn plain_screens_carry_no_escapes_and_terminal_screens_clear() {
        let body = text(&view(TopSort::Total), Some(40));
        let plain = screen(&body, false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(plain.ends_with("\n\n"));
        assert!(screen(&body, true).starts_with(CLEAR_AND_HOME));
    }

    #[test]
    fn exact_share_rounds_down_and_says_when_nothing_was_credited() {
        let share = |exact, wildcard| {
            exact_share(&MatchBytes {
                exact,
                wildcard,
                ..MatchBytes::default()
            })
        };
        assert_eq!(share(0, 0), "-");
        assert_eq!(share(999, 1), "99%");
        assert_eq!(share(5, 0), "100%");
        assert_eq!(share(u64::MAX, u64::MAX), "50%");
    }

    #[test]
    fn a_frame_of_only_the_callers_processes_says_so() {
        let own = ProcessesReply {
            filtered_to_uid: Some(1000),
            ..reply()
        };
        let text = render(&own, &View::default(), &Names::default(), frame(None));
        assert!(text.contains("only your processes, uid 1000"));
    }

    #[test]
    fn untrusted_names_cannot_send_escapes() {
        let mut reply = reply();
        reply.processes[0].comm = "evil\x1b[2J".into();
        let text = render(&reply, &View::default(), &Names::default(), frame(Some(40)));
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
