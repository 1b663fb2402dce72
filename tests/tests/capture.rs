//! `pidcap capture`: the real daemon streams captured packets with their owners, the client
//! writes pcapng, and tshark (Wireshark's reader) shows each packet's process.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pidcap_e2e::{bin_path, wait_bounded, wait_until, Daemon, Peer};

const DATAGRAMS: usize = 20;

/// `tshark -r FILE` with the given fields, one line per packet, fields split on `|`.
fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut command = Command::new("tshark");
    command.args(["-r"]).arg(file);
    command.args(["-T", "fields", "-E", "separator=|"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .expect("run tshark (scripts/deps --test installs it)");
    assert!(
        status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8(stdout)
        .expect("tshark prints UTF-8")
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// Runs rounds of senders (each `sender()` is told to go and waited for) until the capture
/// has its packets and exits, at most 10 rounds; asserts it exited 0. The stream starts when
/// the daemon has read the request, which the test cannot see: hence rounds.
fn send_until_captured(mut capture: Child, mut sender: impl FnMut() -> Peer) -> Vec<Peer> {
    let mut senders = Vec::new();
    for _ in 0..10 {
        let mut peer = sender();
        peer.go();
        peer.wait_done();
        senders.push(peer);
        if wait_until(Duration::from_secs(2), || {
            capture.try_wait().ok().flatten().is_some()
        }) {
            break;
        }
    }
    let status = wait_bounded(capture, Duration::from_secs(20), "pidcap capture -c");
    assert!(status.success(), "pidcap capture exited with {status}");
    senders
}

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read own comm")
        .trim_end()
        .to_owned()
}

#[test]
fn each_packet_of_an_annotated_capture_names_its_sender_and_receiver_in_wireshark() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    let port = receiver.local_addr().unwrap().port();
    let file = daemon.dir().join("annotated.pcapng");
    let capture = Command::new(bin_path("pidcap"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["capture", "-w"])
        .arg(&file)
        .args(["--comm", "pidcap-peer", "-c", &DATAGRAMS.to_string()])
        .args(["udp", "dst", "port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pidcap capture");
    let to = format!("127.0.0.1:{port}");
    let senders = send_until_captured(capture, || {
        Peer::spawn(&[
            "udp-send",
            "--bind",
            "127.0.0.1:0",
            "--to",
            &to,
            "--count",
            &DATAGRAMS.to_string(),
            "--size",
            "100",
        ])
    });

    let senders_by_port: Vec<(u16, u32)> = senders
        .iter()
        .map(|s| (s.info.local.port(), s.pid()))
        .collect();
    let exe = bin_path("pidcap-peer");
    let exe = std::fs::canonicalize(exe).unwrap();
    let packets = tshark_fields(
        &file,
        &["frame.comment", "udp.srcport", "udp.dstport", "ip.len"],
    );
    assert_eq!(packets.len(), DATAGRAMS, "-c {DATAGRAMS}: {packets:?}");
    let receiver_text = format!("rx: {}[{}]", own_comm(), std::process::id());
    for fields in &packets {
        let [comment, src, dst, ip_len] = &fields[..] else {
            panic!("unexpected tshark line {fields:?}")
        };
        assert_eq!(dst, &port.to_string(), "the BPF filter held: {fields:?}");
        assert_eq!(ip_len, "128", "20 + 8 + 100 bytes: {fields:?}");
        let src: u16 = src.parse().unwrap();
        let (_, pid) = senders_by_port
            .iter()
            .find(|(p, _)| *p == src)
            .unwrap_or_else(|| panic!("packet from port {src} is from no sender: {fields:?}"));
        let sender_text = format!("tx: pidcap-peer[{pid}] exe={}", exe.display());
        assert!(
            comment.starts_with(&format!("pidcap {sender_text}")),
            "comment {comment:?} should start with {sender_text:?}"
        );
        assert!(
            comment.contains(&receiver_text),
            "comment {comment:?} should name the receiver, {receiver_text:?}"
        );
    }
    for sender in senders {
        sender.finish();
    }
}

#[test]
fn a_bad_capture_filter_is_refused_and_the_daemon_goes_on() {
    let daemon = Daemon::start(&["--interface", "lo"]);
    let file = daemon.dir().join("never.pcapng");
    let errors = daemon.dir().join("capture.stderr");
    let child = Command::new(bin_path("pidcap"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["capture", "-w"])
        .arg(&file)
        .args(["udp", "prot", "53"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("spawn pidcap capture");
    let status = wait_bounded(child, Duration::from_secs(20), "a refused pidcap capture");
    let stderr = std::fs::read_to_string(&errors).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad_argument") && stderr.contains("udp prot 53"),
        "the error names the filter: {stderr}"
    );
    assert!(!file.exists(), "nothing is written for a refused capture");
    // The daemon still answers (`stats` asserts an ok reply).
    assert!(daemon.stats().is_object());
}

/// A user outside the socket group captures only packets of its own processes, and the other
/// end's process, root's, is `hidden`.
#[test]
fn a_user_outside_the_group_captures_only_its_own_packets_and_sees_nothing_of_others() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    const NOBODY: u32 = 65534;
    let daemon = Daemon::start(&["--interface", "lo", "--socket-group", "4242"]);
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    let to = receiver.local_addr().unwrap();
    let roots = UdpSocket::bind("127.0.0.1:0").expect("bind root sender");
    let file = daemon.dir().join("narrowed.pcapng");
    let child = Command::new(bin_path("pidcap"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["capture", "-w", "-", "-c", "5"])
        .args(["udp", "dst", "port", &to.port().to_string()])
        .env_remove("PIDCAP_SOCKET")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::fs::File::create(&file).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pidcap capture as nobody");
    let senders = send_until_captured(child, || {
        for _ in 0..5 {
            roots.send_to(&[0; 100], to).expect("root sends");
        }
        Peer::spawn_as(
            NOBODY,
            NOBODY,
            &[
                "udp-send",
                "--bind",
                "127.0.0.1:0",
                "--to",
                &to.to_string(),
                "--count",
                "5",
                "--size",
                "100",
            ],
        )
    });
    let root_port = roots.local_addr().unwrap().port().to_string();
    let packets = tshark_fields(&file, &["frame.comment", "udp.srcport"]);
    assert_eq!(packets.len(), 5, "{packets:?}");
    let nobody_pids: Vec<String> = senders.iter().map(|s| s.pid().to_string()).collect();
    for fields in &packets {
        let [comment, src] = &fields[..] else {
            panic!("unexpected tshark line {fields:?}")
        };
        assert_ne!(
            src, &root_port,
            "root's packet was shown to nobody: {comment}"
        );
        assert!(
            nobody_pids
                .iter()
                .any(|pid| comment.starts_with(&format!("pidcap tx: pidcap-peer[{pid}]"))),
            "{comment:?} should name one of nobody's senders {nobody_pids:?}"
        );
        assert!(
            comment.ends_with("rx: unknown (hidden)"),
            "root's receiver must stay hidden: {comment:?}"
        );
    }
    for sender in senders {
        sender.finish();
    }
}
