//! Live capture on this host's loopback traffic. Needs CAP_NET_RAW and CAP_NET_ADMIN: run as
//! root (CI does). Every datagram goes to 127.0.0.1 only, a handful per test; every read loop
//! is bounded by a count of read timeouts.

use std::net::UdpSocket;
use std::process::Command;

use pidcap_capture::{CaptureError, LiveConfig, Next, Source};
use pidcap_wire::LinkType;

/// Give up after this many empty read timeouts (100 ms each with the default config).
const MAX_TIMEOUTS: usize = 50;
/// IPv4 without options (20) + UDP (8).
const IP_UDP_LEN: usize = 28;
/// Frame header length on each link type these tests can see.
const ETHERNET_LEN: usize = 14;
const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;

/// A UDP socket bound to an ephemeral port on 127.0.0.1 that receives the test's datagrams.
fn loopback_sink() -> (UdpSocket, u16) {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on 127.0.0.1");
    let port = sink.local_addr().unwrap().port();
    (sink, port)
}

fn live_config(interface: &str, port: u16) -> LiveConfig {
    LiveConfig {
        interface: interface.to_owned(),
        filter: Some(format!("udp and port {port}")),
        ..LiveConfig::default()
    }
}

/// Payload `i` of `len` bytes, recognisable in the captured frame.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

fn send_all(port: u16, sizes: &[usize]) {
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for (i, &len) in sizes.iter().enumerate() {
        let sent = sender
            .send_to(&payload(i, len), ("127.0.0.1", port))
            .expect("send");
        assert_eq!(sent, len);
    }
}

/// (captured bytes, orig_len) of frames until `want` arrived and one more read timed out (so
/// extra frames would be seen), or `MAX_TIMEOUTS` reads timed out.
fn capture_frames(source: &mut Source, want: usize) -> Vec<(Vec<u8>, u32)> {
    let mut frames = Vec::new();
    let mut timeouts = 0;
    while timeouts < MAX_TIMEOUTS && frames.len() <= want {
        match source.next().expect("live read") {
            Next::Packet(frame) => frames.push((frame.data.to_vec(), frame.orig_len)),
            Next::Timeout if frames.len() == want => break,
            Next::Timeout => timeouts += 1,
            Next::End => panic!("a live capture never ends"),
        }
    }
    frames
}

/// Asserts one frame per datagram, in order, with the right lengths and payload.
fn assert_frames(frames: &[(Vec<u8>, u32)], sizes: &[usize], link_len: usize, snaplen: usize) {
    assert_eq!(
        frames.len(),
        sizes.len(),
        "one frame per datagram, no more, no less"
    );
    for (i, ((data, orig_len), &len)) in frames.iter().zip(sizes).enumerate() {
        let wire_len = link_len + IP_UDP_LEN + len;
        assert_eq!(*orig_len as usize, wire_len, "frame {i}: on-wire length");
        assert_eq!(
            data.len(),
            wire_len.min(snaplen),
            "frame {i}: captured length"
        );
        let captured_payload = &data[link_len + IP_UDP_LEN..];
        assert_eq!(
            captured_payload,
            &payload(i, len)[..captured_payload.len()],
            "frame {i}"
        );
    }
}

#[test]
fn loopback_capture_sees_each_datagram_once_with_its_length() {
    let (_sink, port) = loopback_sink();
    let cfg = live_config("lo", port);
    let mut source = Source::open_live(&cfg).expect("open lo (are you root?)");
    assert!(source.is_live());
    assert_eq!(source.link_type(), LinkType::Ethernet);

    // 300 bytes of payload exceed the 256-byte snaplen: captured short, orig_len intact.
    let sizes = [1, 64, 300, 1000];
    send_all(port, &sizes);
    let frames = capture_frames(&mut source, sizes.len());
    assert_frames(&frames, &sizes, ETHERNET_LEN, cfg.snaplen as usize);

    let stats = source.stats().expect("stats");
    assert!(stats.received >= sizes.len() as u64, "{stats:?}");
    // Totals never go down between samples.
    let again = source.stats().expect("stats");
    assert!(again.received >= stats.received && again.dropped >= stats.dropped);
}

/// Two captures read together: one wait for either, then each drained without blocking;
/// every datagram comes out of the capture whose filter takes it, once.
#[test]
fn several_captures_are_waited_on_together_and_read_without_blocking() {
    let (_sink_a, port_a) = loopback_sink();
    let (_sink_b, port_b) = loopback_sink();
    let immediate = |port| LiveConfig {
        immediate: true,
        ..live_config("lo", port)
    };
    let mut a = Source::open_live(&immediate(port_a)).expect("open lo");
    let mut b = Source::open_live(&immediate(port_b)).expect("open lo");
    assert!(
        matches!(a.next_ready().unwrap(), Next::Timeout),
        "nothing sent yet"
    );
    send_all(port_a, &[10, 20]);
    send_all(port_b, &[30]);
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    let mut waits = 0;
    while from_a.len() + from_b.len() < 3 && waits < MAX_TIMEOUTS {
        waits += 1;
        if !pidcap_capture::wait_any(&[&a, &b], 100).expect("poll") {
            continue;
        }
        for (source, into) in [(&mut a, &mut from_a), (&mut b, &mut from_b)] {
            while let Next::Packet(frame) = source.next_ready().expect("read") {
                into.push((frame.data.to_vec(), frame.orig_len));
            }
        }
    }
    assert_frames(&from_a, &[10, 20], ETHERNET_LEN, 256);
    assert_frames(&from_b, &[30], ETHERNET_LEN, 256);
}

#[test]
fn immediate_mode_delivers_the_same_frames() {
    let (_sink, port) = loopback_sink();
    let cfg = LiveConfig {
        immediate: true,
        ..live_config("lo", port)
    };
    let mut source = Source::open_live(&cfg).expect("open lo");
    let sizes = [10, 20, 30];
    send_all(port, &sizes);
    let frames = capture_frames(&mut source, sizes.len());
    assert_frames(&frames, &sizes, ETHERNET_LEN, cfg.snaplen as usize);
}

#[test]
fn any_interface_uses_linux_cooked_headers() {
    let (_sink, port) = loopback_sink();
    let mut source = Source::open_live(&live_config("any", port)).expect("open any");
    if libpcap_offers_sll2_on_any() {
        assert_eq!(
            source.link_type(),
            LinkType::LinuxSll2,
            "SLL2 is available: use it"
        );
    }
    let link_len = match source.link_type() {
        LinkType::LinuxSll2 => {
            assert_eq!(source.link_name(), "LINUX_SLL2");
            SLL2_LEN
        }
        LinkType::LinuxSll => {
            assert_eq!(source.link_name(), "LINUX_SLL");
            SLL_LEN
        }
        other => panic!("any should be LINUX_SLL2 or LINUX_SLL, got {other:?}"),
    };

    let sizes = [5, 50];
    send_all(port, &sizes);
    let frames = capture_frames(&mut source, sizes.len());
    assert_frames(
        &frames,
        &sizes,
        link_len,
        LiveConfig::default().snaplen as usize,
    );
}

/// Whether this host's libpcap lists LINUX_SLL2 for `any` (libpcap >= 1.10), per tcpdump.
fn libpcap_offers_sll2_on_any() -> bool {
    let output = Command::new("tcpdump")
        .args(["-i", "any", "-L"])
        .output()
        .expect("run tcpdump -L: install tcpdump (scripts/deps installs it)");
    assert!(
        output.status.success(),
        "tcpdump -i any -L failed: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).contains("LINUX_SLL2")
}

#[test]
fn missing_interface_is_no_such_device() {
    let cfg = LiveConfig {
        interface: "pidcapnosuch0".to_owned(),
        ..LiveConfig::default()
    };
    let err = Source::open_live(&cfg).unwrap_err();
    assert!(
        matches!(&err, CaptureError::NoSuchDevice { interface } if interface == "pidcapnosuch0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("pidcapnosuch0"), "{err}");
}

#[test]
fn listed_interfaces_include_any_and_lo() {
    let names = pidcap_capture::list_interfaces().expect("list interfaces");
    for name in ["any", "lo"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
}

#[test]
fn bad_live_filter_is_bad_filter() {
    let cfg = LiveConfig {
        interface: "lo".to_owned(),
        filter: Some("udp and port".to_owned()),
        ..LiveConfig::default()
    };
    let err = Source::open_live(&cfg).unwrap_err();
    assert!(matches!(err, CaptureError::BadFilter { .. }), "{err:?}");
}

/// Set in the environment of the unprivileged copy of the permission test.
const CHILD_ENV: &str = "PIDCAP_CAPTURE_TEST_UNPRIVILEGED_CHILD";
const PERMISSION_TEST: &str = "without_capabilities_open_is_permission_denied";

#[test]
fn without_capabilities_open_is_permission_denied() {
    if std::env::var_os(CHILD_ENV).is_some() {
        assert_open_is_permission_denied();
        return;
    }
    // Re-run this very test with every capability dropped from the bounding set: as uid 0 that
    // leaves no capabilities after exec, like an unprivileged user.
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(exe)
        .args([
            "--exact",
            PERMISSION_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run setpriv (util-linux) to drop capabilities");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "unprivileged run failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

fn assert_open_is_permission_denied() {
    let cfg = LiveConfig {
        interface: "lo".to_owned(),
        ..LiveConfig::default()
    };
    let err = Source::open_live(&cfg).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, CaptureError::PermissionDenied { .. }),
        "{err:?}"
    );
    for needle in ["CAP_NET_RAW", "CAP_NET_ADMIN", "root"] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
}

#[test]
fn idle_live_capture_returns_timeout_instead_of_blocking() {
    // Regression: libpcap >= 1.9.1 never returns from a blocking read on an idle Linux ring,
    // which hung every reader that waited for a Timeout. The watchdog thread only bounds a
    // hang; nothing here measures how long the timeout took.
    let (_sink, port) = loopback_sink();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut source = Source::open_live(&live_config("lo", port)).expect("open lo");
        let first = matches!(source.next(), Ok(Next::Timeout));
        let second = matches!(source.next(), Ok(Next::Timeout));
        let _ = done.send((first, second));
    });
    let (first, second) = outcome
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("Source::next blocked on an idle capture instead of returning Timeout");
    assert!(
        first && second,
        "an idle capture must report Timeout on every read"
    );
}
