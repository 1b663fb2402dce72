//! `pidcap process PID`: one process, its command line and its sockets.

use std::io::Write;
use std::process::ExitCode;

use pidcap_proto::{PlacementFields, ProcessDetail, ProcessReply, Request};

use crate::cli::ProcessArgs;
use crate::client::Client;
use crate::format::{self, Align, Table};
use crate::names::{self, Names};

const CONNECTION_COLUMNS: [(&str, Align); 6] = [
    ("PROTO", Align::Left),
    ("LOCAL", Align::Left),
    ("REMOTE", Align::Left),
    ("STATE", Align::Left),
    ("INODE", Align::Right),
    ("SHARED WITH", Align::Left),
];

pub fn run(
    client: &mut Client,
    args: &ProcessArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let reply = client.call::<ProcessReply>(&Request::Process { pid: args.pid })?;
    if args.json {
        super::write_raw(out, &reply.raw)?;
    } else {
        let users = names::load(names::PASSWD_FILE);
        out.write_all(render(&reply.body.process, &users).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `N packets, SIZE total; SIZE since the last log line; RATE/s`.
fn direction(packets: u64, total: u64, since_log: u64, bps: f64) -> String {
    format!(
        "{packets} packets, {} total; {} since the last log line; {}/s",
        format::bytes(total),
        format::bytes(since_log),
        format::rate(bps)
    )
}

/// `runtime id` and the pod, or `-`.
fn container(placed: &PlacementFields) -> String {
    let Some(c) = &placed.container else {
        return "-".into();
    };
    let mut text = format!("{} {}", c.runtime, c.id);
    if let Some(name) = &c.name {
        text += &format!(" \"{name}\"");
    }
    if let Some(pod) = &c.pod {
        text += &format!(" (pod {pod})");
    }
    text
}

/// The other pids holding a socket, or `-`.
fn shared_with(pid: u32, holders: &[u32]) -> String {
    let others: Vec<String> = holders
        .iter()
        .filter(|&&p| p != pid)
        .map(u32::to_string)
        .collect();
    match others.is_empty() {
        true => "-".into(),
        false => others.join(","),
    }
}

pub fn render(process: &ProcessDetail, users: &Names) -> String {
    let row = &process.row;
    let usage = &row.usage;
    let placed = &row.placement;
    let mut text = format::key_values(&[
        ("pid", row.pid.to_string()),
        ("comm", row.comm.clone()),
        ("exe", row.exe.clone().unwrap_or_else(|| "-".into())),
        ("user", format!("{} (uid {})", users.name(row.uid), row.uid)),
        ("start_time", row.start_time.to_string()),
        ("alive", format::yes_no(row.alive).into()),
        (
            "netns",
            placed.netns.map_or_else(|| "-".into(), |n| n.to_string()),
        ),
        (
            "cgroup",
            placed.cgroup.clone().unwrap_or_else(|| "-".into()),
        ),
        ("unit", placed.unit.clone().unwrap_or_else(|| "-".into())),
        ("container", container(placed)),
        ("cmdline", format::command_line(&process.cmdline)),
        (
            "rx",
            direction(
                usage.rx_packets_total,
                usage.rx_bytes_total,
                usage.rx_bytes,
                usage.rx_bps,
            ),
        ),
        (
            "tx",
            direction(
                usage.tx_packets_total,
                usage.tx_bytes_total,
                usage.tx_bytes,
                usage.tx_bps,
            ),
        ),
    ]);
    text.push('\n');
    if process.connections.is_empty() {
        text.push_str("no sockets\n");
        return text;
    }
    let mut table = Table::new(&CONNECTION_COLUMNS);
    for c in &process.connections {
        let cells = [&c.proto, &c.local, &c.remote, &c.state];
        let mut cells: Vec<String> = cells.into_iter().cloned().collect();
        cells.push(c.inode.to_string());
        cells.push(shared_with(row.pid, &c.holders));
        table.push(cells);
    }
    text + &table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_proto::{Connection, ProcessRow, Usage};

    fn detail(connections: Vec<Connection>) -> ProcessDetail {
        ProcessDetail {
            row: ProcessRow {
                pid: 42,
                start_time: 99,
                comm: "curl".into(),
                exe: None,
                uid: 0,
                usage: Usage {
                    rx_bytes: 100,
                    rx_bytes_total: 4096,
                    rx_packets_total: 3,
                    tx_bps: 512.0,
                    ..Usage::default()
                },
                alive: false,
                matched: Default::default(),
                placement: PlacementFields {
                    netns: Some(4026532001),
                    cgroup: Some("/system.slice/docker-c0ffee.scope".into()),
                    unit: Some("docker-c0ffee.scope".into()),
                    container: Some(pidcap_proto::ContainerRef {
                        runtime: "docker".into(),
                        id: "c0ffee".into(),
                        pod: None,
                        name: Some("web".into()),
                    }),
                    user: Some("root".into()),
                },
            },
            cmdline: vec!["curl".into(), "-d".into(), "a b".into()],
            connections,
        }
    }

    #[test]
    fn details_and_connections() {
        let text = render(
            &detail(vec![Connection {
                proto: "tcp".into(),
                local: "[::1]:40000".into(),
                remote: "[::1]:80".into(),
                state: "ESTABLISHED".into(),
                inode: 1234,
                netns: None,
                holders: vec![42, 7],
            }]),
            &Names::parse("root:x:0:0::/:\n"),
        );
        assert_eq!(
            text,
            "pid         42\n\
             comm        curl\n\
             exe         -\n\
             user        root (uid 0)\n\
             start_time  99\n\
             alive       no\n\
             netns       4026532001\n\
             cgroup      /system.slice/docker-c0ffee.scope\n\
             unit        docker-c0ffee.scope\n\
             container   docker c0ffee \"web\"\n\
             cmdline     curl -d 'a b'\n\
             rx          3 packets, 4.0 KiB total; 100 B since the last log line; 0 B/s\n\
             tx          0 packets, 0 B total; 0 B since the last log line; 512 B/s\n\
             \n\
             PROTO  LOCAL        REMOTE    STATE        INODE  SHARED WITH\n\
             tcp    [::1]:40000  [::1]:80  ESTABLISHED   1234  7\n"
        );
    }

    #[test]
    fn no_connections_says_so() {
        let text = render(&detail(vec![]), &Names::default());
        assert!(text.ends_with("\nno sockets\n"), "{text}");
        assert!(text.contains("user        0 (uid 0)"), "{text}");
    }
}
