//! Exact wire shapes, round trips, error classification and forward compatibility.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::*;

fn encoded(value: &impl Serialize) -> String {
    String::from_utf8(encode_line(value)).expect("utf-8")
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let line = encode_line(value);
    let back: T = serde_json::from_slice(&line).expect("round trip");
    assert_eq!(&back, value);
}

fn usage() -> Usage {
    Usage {
        rx_bytes: 1,
        tx_bytes: 2,
        rx_packets: 3,
        tx_packets: 4,
        rx_bytes_total: 10,
        tx_bytes_total: 20,
        rx_packets_total: 30,
        tx_packets_total: 40,
        rx_bps: 1.5,
        tx_bps: 0.0,
    }
}

fn row() -> ProcessRow {
    ProcessRow {
        pid: 42,
        start_time: 12345,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        uid: 1000,
        usage: usage(),
        alive: true,
        matched: MatchBytes {
            exact: 1,
            wildcard: 2,
            recent: 3,
            late: 4,
            packet_sender: 5,
        },
        placement: PlacementFields {
            netns: Some(4026532001),
            cgroup: Some(
                "/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/c0ffee".into(),
            ),
            unit: None,
            container: Some(ContainerRef {
                runtime: "kubernetes".into(),
                id: "c0ffee".into(),
                pod: Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".into()),
                name: None,
            }),
            user: Some("alice".into()),
        },
    }
}

const PLACEMENT_JSON: &str = r#""netns":4026532001,"cgroup":"/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/c0ffee","unit":null,"container":{"runtime":"kubernetes","id":"c0ffee","pod":"0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b","name":null},"user":"alice""#;

fn owner() -> Owner {
    Owner {
        pid: 42,
        start_time: 12345,
        comm: "curl".into(),
        inode: 999,
        matched: MATCH_EXACT.into(),
        holders: vec![42, 43],
    }
}

fn stats() -> Stats {
    Stats {
        uptime_s: 12.5,
        rx_packets: 1,
        rx_bytes: 2,
        tx_packets: 3,
        tx_bytes: 4,
        foreign_packets: 5,
        foreign_bytes: 6,
        transit_packets: 52,
        transit_bytes: 53,
        credited_rx_bytes: 7,
        credited_tx_bytes: 8,
        credited_rx_packets: 9,
        credited_tx_packets: 10,
        unknown_rx_bytes: 11,
        unknown_tx_bytes: 12,
        unknown_rx_packets: 13,
        unknown_tx_packets: 14,
        non_ip_packets: 15,
        malformed_packets: 16,
        pcap_received: 17,
        pcap_dropped: 18,
        pcap_if_dropped: 19,
        sockets_known: 20,
        processes_known: 21,
        refreshes: 22,
        refresh_failures: 41,
        last_refresh_ms: 0.25,
        interface: "eth0".into(),
        link_type: "EN10MB".into(),
        capture_down: false,
        capture_reopens: 42,
        credited_matched: MatchBytes {
            exact: 23,
            wildcard: 24,
            recent: 25,
            late: 26,
            packet_sender: 63,
        },
        unknown_reasons: UnknownReasons {
            no_socket: 27,
            no_process: 28,
            pending_expired: 29,
            unsupported: 30,
        },
        pending_packets: 31,
        pending_bytes: 32,
        process_side: ProcessSide {
            watcher: true,
            tracer: true,
            traced_claims: 33,
            traced_unknown_process: 34,
            trace_events_lost: 35,
            route_threads: 2,
            traced_routes: 36,
            learned_dropped: 47,
        },
        query_server: QueryServer {
            clients: 3,
            client_limit: 256,
            client_limit_per_user: 64,
            clients_refused: 37,
            clients_timed_out: 38,
            lines_too_long: 39,
            accept_errors: 40,
        },
        threads: vec![
            ThreadHealth {
                name: "capture".into(),
                running: true,
                last_beat_ms: Some(43),
                stale: false,
            },
            ThreadHealth {
                name: "trace".into(),
                running: false,
                last_beat_ms: None,
                stale: false,
            },
        ],
        process_facts: ProcessFacts {
            entries: 44,
            bytes: 45,
            evictions: 46,
        },
        bounds: Bounds {
            flows_cached: 48,
            flow_cache_clears: 49,
            pending_evicted: 50,
            fragments_forgotten: 51,
            copies_forgotten: 54,
            openings: 61,
            openings_forgotten: 62,
        },
        namespace_capture: crate::NamespaceCapture {
            enabled: true,
            open: 55,
            opened: 56,
            closed: 57,
            open_failures: 58,
            received: 59,
            dropped: 60,
        },
    }
}

fn rate(pid: Option<u32>, comm: &str) -> RateRow {
    RateRow {
        pid,
        comm: comm.into(),
        rx_bps: 100.0,
        tx_bps: 50.5,
        rx_bytes_total: 1000,
        tx_bytes_total: 500,
    }
}

const USAGE_JSON: &str = r#""rx_bytes":1,"tx_bytes":2,"rx_packets":3,"tx_packets":4,"rx_bytes_total":10,"tx_bytes_total":20,"rx_packets_total":30,"tx_packets_total":40,"rx_bps":1.5,"tx_bps":0.0"#;

// ---- requests ----

#[test]
fn request_shapes_are_exact() {
    let cases = [
        (Request::Processes, r#"{"cmd":"processes"}"#),
        (Request::Process { pid: 7 }, r#"{"cmd":"process","pid":7}"#),
        (
            Request::Lookup(LookupRequest {
                proto: "tcp".into(),
                local: "127.0.0.1:5000".into(),
                remote: "[::1]:80".into(),
                netns: None,
            }),
            r#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:5000","remote":"[::1]:80"}"#,
        ),
        (
            Request::Lookup(LookupRequest {
                proto: "udp".into(),
                local: "127.0.0.1:53".into(),
                remote: "127.0.0.1:40000".into(),
                netns: Some(4026532001),
            }),
            r#"{"cmd":"lookup","proto":"udp","local":"127.0.0.1:53","remote":"127.0.0.1:40000","netns":4026532001}"#,
        ),
        (Request::Stats, r#"{"cmd":"stats"}"#),
        (
            Request::Watch(WatchRequest {
                interval_ms: Some(250),
            }),
            r#"{"cmd":"watch","interval_ms":250}"#,
        ),
        (
            Request::Watch(WatchRequest::default()),
            r#"{"cmd":"watch"}"#,
        ),
    ];
    for (request, text) in cases {
        assert_eq!(encoded(&request), format!("{text}\n"));
        assert_eq!(parse_request(text.as_bytes()).expect(text), request);
        assert!(Request::COMMANDS.contains(&request.command()));
        assert_eq!(
            serde_json::to_value(&request).unwrap()["cmd"],
            request.command()
        );
    }
}

#[test]
fn every_command_name_parses() {
    let lines = [
        r#"{"cmd":"processes"}"#,
        r#"{"cmd":"process","pid":1}"#,
        r#"{"cmd":"lookup","proto":"udp","local":"1.2.3.4:5","remote":"6.7.8.9:10"}"#,
        r#"{"cmd":"stats"}"#,
        r#"{"cmd":"watch"}"#,
        r#"{"cmd":"groups","by":"netns"}"#,
        r#"{"cmd":"capture"}"#,
    ];
    let parsed: Vec<&str> = lines
        .iter()
        .map(|l| parse_request(l.as_bytes()).unwrap().command())
        .collect();
    assert_eq!(parsed, Request::COMMANDS);
}

#[test]
fn lookup_request_new_formats_ipv6_with_brackets() {
    let request = LookupRequest::new(
        TransportProto::Udp,
        "[::1]:53".parse().unwrap(),
        "10.0.0.1:4000".parse().unwrap(),
    );
    assert_eq!(request.local, "[::1]:53");
    assert_eq!(request.remote, "10.0.0.1:4000");
    let query = request.query().unwrap();
    assert_eq!(query.proto, TransportProto::Udp);
    assert_eq!(query.local, "[::1]:53".parse().unwrap());
}

#[test]
fn transport_proto_names_and_numbers() {
    let names: Vec<&str> = TransportProto::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(names, ["tcp", "udp", "udplite", "sctp", "icmp", "icmpv6"]);
    let numbers: Vec<u8> = TransportProto::ALL.iter().map(|p| p.ip_number()).collect();
    assert_eq!(numbers, [6, 17, 136, 132, 1, 58]);
    for proto in TransportProto::ALL {
        assert_eq!(proto.as_str().parse::<TransportProto>().unwrap(), proto);
        assert_eq!(proto.to_string(), proto.as_str());
    }
    assert_eq!(
        "TCP".parse::<TransportProto>().unwrap(),
        TransportProto::Tcp
    );
    assert!(matches!(
        "quic".parse::<TransportProto>(),
        Err(ProtoError::BadArgument(_))
    ));
}

#[test]
fn request_trailing_newline_and_crlf_are_accepted() {
    assert_eq!(
        parse_request(b"{\"cmd\":\"stats\"}\n").unwrap(),
        Request::Stats
    );
    assert_eq!(
        parse_request(b"{\"cmd\":\"stats\"}\r\n").unwrap(),
        Request::Stats
    );
}

#[test]
fn request_unknown_fields_are_ignored() {
    assert_eq!(
        parse_request(br#"{"cmd":"stats","v":1,"future":[1,2]}"#).unwrap(),
        Request::Stats
    );
    assert_eq!(
        parse_request(br#"{"cmd":"process","pid":3,"verbose":true}"#).unwrap(),
        Request::Process { pid: 3 }
    );
    assert_eq!(
        parse_request(br#"{"cmd":"watch","interval_ms":null,"x":1}"#).unwrap(),
        Request::Watch(WatchRequest { interval_ms: None })
    );
}

fn code_of(line: &[u8]) -> ErrorCode {
    parse_request(line).expect_err("must fail").code()
}

#[test]
fn not_json_is_bad_json() {
    for line in [
        &b""[..],
        b"   ",
        b"stats",
        b"{\"cmd\":",
        b"{\"cmd\":\"stats\"} trailing",
        b"{\"cmd\":\"stats\"}\n{\"cmd\":\"stats\"}",
        b"\xff\xfe{}",
        b"{'cmd':'stats'}",
    ] {
        assert_eq!(code_of(line), ErrorCode::BadJson, "{line:?}");
    }
}

#[test]
fn json_that_is_no_request_is_bad_request() {
    for line in [
        r#"[]"#,
        r#""stats""#,
        r#"42"#,
        r#"null"#,
        r#"{}"#,
        r#"{"pid":3}"#,
        r#"{"cmd":5}"#,
        r#"{"cmd":null}"#,
        r#"{"cmd":"process"}"#,
        r#"{"cmd":"process","pid":"3"}"#,
        r#"{"cmd":"process","pid":-1}"#,
        r#"{"cmd":"process","pid":4294967296}"#,
        r#"{"cmd":"process","pid":1.5}"#,
        r#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:1"}"#,
        r#"{"cmd":"lookup","proto":6,"local":"127.0.0.1:1","remote":"127.0.0.1:2"}"#,
        r#"{"cmd":"watch","interval_ms":"fast"}"#,
        r#"{"cmd":"watch","interval_ms":-5}"#,
    ] {
        assert_eq!(code_of(line.as_bytes()), ErrorCode::BadRequest, "{line}");
    }
}

#[test]
fn unknown_cmd_is_unknown_command() {
    for (line, cmd) in [
        (r#"{"cmd":"reboot"}"#, "reboot"),
        (r#"{"cmd":"Stats"}"#, "Stats"),
        (r#"{"cmd":""}"#, ""),
        (r#"{"cmd":"lookup_all","proto":"tcp"}"#, "lookup_all"),
    ] {
        match parse_request(line.as_bytes()) {
            Err(ProtoError::UnknownCommand(got)) => assert_eq!(got, cmd),
            other => panic!("{line}: {other:?}"),
        }
    }
}

#[test]
fn bad_values_are_bad_argument() {
    for line in [
        r#"{"cmd":"lookup","proto":"quic","local":"127.0.0.1:1","remote":"127.0.0.1:2"}"#,
        r#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1","remote":"127.0.0.1:2"}"#,
        r#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:1","remote":"::1:80"}"#,
        r#"{"cmd":"lookup","proto":"tcp","local":"localhost:1","remote":"127.0.0.1:2"}"#,
        r#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:70000","remote":"127.0.0.1:2"}"#,
        r#"{"cmd":"watch","interval_ms":99}"#,
        r#"{"cmd":"watch","interval_ms":60001}"#,
        r#"{"cmd":"watch","interval_ms":0}"#,
        r#"{"cmd":"watch","interval_ms":18446744073709551615}"#,
    ] {
        assert_eq!(code_of(line.as_bytes()), ErrorCode::BadArgument, "{line}");
    }
}

#[test]
fn bad_argument_message_names_the_field() {
    let err = parse_request(
        br#"{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:1","remote":"nowhere"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("remote: \"nowhere\""), "{err}");
}

#[test]
fn watch_interval_bounds_are_inclusive() {
    for (ms, expect) in [(100, Some(100)), (60_000, Some(60_000)), (1000, Some(1000))] {
        let watch = WatchRequest {
            interval_ms: Some(ms),
        };
        assert_eq!(watch.interval_ms().ok(), expect);
    }
    assert_eq!(
        WatchRequest::default().interval_ms().unwrap(),
        DEFAULT_INTERVAL_MS
    );
    assert_eq!(
        WatchRequest::default().interval().unwrap(),
        std::time::Duration::from_secs(1)
    );
}

#[test]
fn line_too_long_is_checked_before_parsing() {
    let mut line = br#"{"cmd":"stats","pad":""#.to_vec();
    line.resize(MAX_LINE - 2, b'x');
    line.extend_from_slice(b"\"}");
    assert_eq!(line.len(), MAX_LINE);
    assert_eq!(parse_request(&line).unwrap(), Request::Stats);
    line.insert(30, b'x');
    match parse_request(&line) {
        Err(ProtoError::LineTooLong { len }) => assert_eq!(len, MAX_LINE + 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deeply_nested_json_does_not_panic() {
    let line = "[".repeat(10_000);
    assert_eq!(code_of(line.as_bytes()), ErrorCode::BadJson);
}

#[test]
fn proto_error_reply_carries_code_and_message() {
    let err = parse_request(br#"{"cmd":"reboot"}"#).unwrap_err();
    let reply = serde_json::to_value(err.to_reply()).unwrap();
    assert_eq!(
        reply,
        json!({"v":1,"ok":false,"error":{"code":"unknown_command","message":err.to_string()}})
    );
}

// ---- replies ----

fn value_of(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap()
}

#[test]
fn processes_reply_shape_is_exact() {
    let reply = ok(ProcessesReply {
        processes: vec![row()],
        unknown: usage(),
        filtered_to_uid: None,
    });
    let expected = format!(
        r#"{{"v":1,"ok":true,"processes":[{{"pid":42,"start_time":12345,"comm":"curl","exe":"/usr/bin/curl","uid":1000,{USAGE_JSON},"alive":true,"matched":{{"exact":1,"wildcard":2,"recent":3,"late":4,"packet_sender":5}},{PLACEMENT_JSON}}}],"unknown":{{{USAGE_JSON}}}}}"#
    );
    assert_eq!(encoded(&reply), expected + "\n");
    round_trip(&reply);
}

#[test]
fn a_list_filtered_to_the_callers_uid_says_so() {
    let reply = ok(ProcessesReply {
        processes: vec![],
        unknown: usage(),
        filtered_to_uid: Some(1000),
    });
    assert!(encoded(&reply).ends_with(",\"filtered_to_uid\":1000}\n"));
    round_trip(&reply);
    let lookup = ok(LookupReply {
        filtered_to_uid: Some(1000),
        ..LookupReply::not_found()
    });
    assert_eq!(
        encoded(&lookup),
        "{\"v\":1,\"ok\":true,\"found\":false,\"filtered_to_uid\":1000}\n"
    );
    round_trip(&lookup);
}

#[test]
fn missing_exe_is_null() {
    let mut row = row();
    row.exe = None;
    let value = serde_json::to_value(&row).unwrap();
    assert_eq!(value["exe"], Value::Null);
    round_trip(&row);
}

#[test]
fn process_reply_flattens_the_row() {
    let reply = ok(ProcessReply {
        process: ProcessDetail {
            row: row(),
            cmdline: vec!["curl".into(), "http://[::1]/".into()],
            connections: vec![Connection {
                proto: "tcp".into(),
                local: "[::1]:40000".into(),
                remote: "[::1]:80".into(),
                state: "ESTABLISHED".into(),
                inode: 999,
                netns: None,
                holders: vec![42, 43],
            }],
        },
    });
    let expected = format!(
        r#"{{"v":1,"ok":true,"process":{{"pid":42,"start_time":12345,"comm":"curl","exe":"/usr/bin/curl","uid":1000,{USAGE_JSON},"alive":true,"matched":{{"exact":1,"wildcard":2,"recent":3,"late":4,"packet_sender":5}},{PLACEMENT_JSON},"cmdline":["curl","http://[::1]/"],"connections":[{{"proto":"tcp","local":"[::1]:40000","remote":"[::1]:80","state":"ESTABLISHED","inode":999,"netns":null,"holders":[42,43]}}]}}}}"#
    );
    assert_eq!(encoded(&reply), expected + "\n");
    round_trip(&reply);
}

#[test]
fn lookup_reply_shapes_are_exact() {
    let found = ok(LookupReply::found(owner()));
    assert_eq!(
        encoded(&found),
        r#"{"v":1,"ok":true,"found":true,"owner":{"pid":42,"start_time":12345,"comm":"curl","inode":999,"matched":"exact","holders":[42,43]}}"#
            .to_owned()
            + "\n"
    );
    round_trip(&found);
    let missing = ok(LookupReply::not_found());
    assert_eq!(encoded(&missing), "{\"v\":1,\"ok\":true,\"found\":false}\n");
    round_trip(&missing);
}

#[test]
fn stats_reply_shape_is_exact() {
    let reply = ok(StatsReply { stats: stats() });
    let expected = r#"{"v":1,"ok":true,"stats":{"uptime_s":12.5,"rx_packets":1,"rx_bytes":2,"tx_packets":3,"tx_bytes":4,"foreign_packets":5,"foreign_bytes":6,"transit_packets":52,"transit_bytes":53,"credited_rx_bytes":7,"credited_tx_bytes":8,"credited_rx_packets":9,"credited_tx_packets":10,"unknown_rx_bytes":11,"unknown_tx_bytes":12,"unknown_rx_packets":13,"unknown_tx_packets":14,"non_ip_packets":15,"malformed_packets":16,"pcap_received":17,"pcap_dropped":18,"pcap_if_dropped":19,"sockets_known":20,"processes_known":21,"refreshes":22,"refresh_failures":41,"last_refresh_ms":0.25,"interface":"eth0","link_type":"EN10MB","capture_down":false,"capture_reopens":42,"credited_matched":{"exact":23,"wildcard":24,"recent":25,"late":26,"packet_sender":63},"unknown_reasons":{"no_socket":27,"no_process":28,"pending_expired":29,"unsupported":30},"pending_packets":31,"pending_bytes":32,"process_side":{"watcher":true,"tracer":true,"traced_claims":33,"traced_unknown_process":34,"trace_events_lost":35,"route_threads":2,"traced_routes":36,"learned_dropped":47},"query_server":{"clients":3,"client_limit":256,"client_limit_per_user":64,"clients_refused":37,"clients_timed_out":38,"lines_too_long":39,"accept_errors":40},"threads":[{"name":"capture","running":true,"last_beat_ms":43,"stale":false},{"name":"trace","running":false,"last_beat_ms":null,"stale":false}],"process_facts":{"entries":44,"bytes":45,"evictions":46},"bounds":{"flows_cached":48,"flow_cache_clears":49,"pending_evicted":50,"fragments_forgotten":51,"copies_forgotten":54,"openings":61,"openings_forgotten":62},"namespace_capture":{"enabled":true,"open":55,"opened":56,"closed":57,"open_failures":58,"received":59,"dropped":60}}}"#;
    assert_eq!(encoded(&reply), expected.to_owned() + "\n");
    round_trip(&reply);
}

#[test]
fn watch_frame_shape_is_exact() {
    let frame = ok(WatchFrame {
        ts: "2024-05-01T12:00:00.250Z".into(),
        interval_ms: 1000,
        processes: vec![rate(Some(42), "curl")],
        unknown: rate(None, UNKNOWN_COMM),
        filtered_to_uid: None,
    });
    let expected = r#"{"v":1,"ok":true,"ts":"2024-05-01T12:00:00.250Z","interval_ms":1000,"processes":[{"pid":42,"comm":"curl","rx_bps":100.0,"tx_bps":50.5,"rx_bytes_total":1000,"tx_bytes_total":500}],"unknown":{"pid":null,"comm":"<unknown>","rx_bps":100.0,"tx_bps":50.5,"rx_bytes_total":1000,"tx_bytes_total":500}}"#;
    assert_eq!(encoded(&frame), expected.to_owned() + "\n");
    round_trip(&frame);
}

#[test]
fn error_reply_shape_is_exact() {
    let cases = [
        (ErrorCode::BadJson, "bad_json"),
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::UnknownCommand, "unknown_command"),
        (ErrorCode::BadArgument, "bad_argument"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::LineTooLong, "line_too_long"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::TooManyClients, "too_many_clients"),
        (ErrorCode::Timeout, "timeout"),
    ];
    for (code, text) in cases {
        let reply = error_reply(code.clone(), "no such pid 7");
        assert_eq!(
            encoded(&reply),
            format!(
                "{{\"v\":1,\"ok\":false,\"error\":{{\"code\":\"{text}\",\"message\":\"no such pid 7\"}}}}\n"
            )
        );
        assert_eq!(code.to_string(), text);
        round_trip(&reply);
    }
}

#[test]
fn unknown_error_code_keeps_its_text() {
    let line = br#"{"v":1,"ok":false,"error":{"code":"rate_limited","message":"slow down"}}"#;
    match decode_reply::<StatsReply>(line) {
        Err(ReplyError::Daemon { code, message }) => {
            assert_eq!(code, ErrorCode::Other("rate_limited".into()));
            assert_eq!(code.to_string(), "rate_limited");
            assert_eq!(message, "slow down");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        serde_json::to_value(ErrorCode::Other("rate_limited".into())).unwrap(),
        json!("rate_limited")
    );
}

#[test]
fn encode_line_ends_with_one_newline_and_has_no_other() {
    let mut row = row();
    row.comm = "a\nb".into();
    let line = encode_line(&row);
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
}

#[test]
fn non_finite_rates_encode_as_null_not_panic() {
    let mut usage = usage();
    usage.rx_bps = f64::NAN;
    let value = value_of(&encode_line(&usage));
    assert_eq!(value["rx_bps"], Value::Null);
}

// ---- client side decoding ----

#[test]
fn decode_reply_returns_the_body() {
    let line = encode_line(&ok(StatsReply { stats: stats() }));
    let reply: StatsReply = decode_reply(&line).unwrap();
    assert_eq!(reply.stats, stats());
}

#[test]
fn decode_reply_turns_error_replies_into_daemon_errors() {
    let line = encode_line(&error_reply(ErrorCode::NotFound, "no process 7"));
    let err = decode_reply::<ProcessReply>(&line).unwrap_err();
    assert_eq!(err.to_string(), "not_found: no process 7");
    assert!(matches!(
        err,
        ReplyError::Daemon {
            code: ErrorCode::NotFound,
            ..
        }
    ));
}

#[test]
fn decode_reply_rejects_other_versions() {
    let line = br#"{"v":2,"ok":true,"stats":{}}"#;
    assert!(matches!(
        decode_reply::<StatsReply>(line),
        Err(ReplyError::Version { got: 2 })
    ));
}

#[test]
fn decode_reply_rejects_malformed_lines() {
    for line in [
        &b"not json"[..],
        b"{}",
        br#"{"v":1}"#,
        br#"{"v":"1","ok":true}"#,
        br#"{"v":1,"ok":true}"#,
        br#"{"v":1,"ok":false}"#,
        br#"{"v":1,"ok":true,"stats":{"uptime_s":1}}"#,
    ] {
        assert!(
            matches!(
                decode_reply::<StatsReply>(line),
                Err(ReplyError::Malformed(_))
            ),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn decode_tolerates_unknown_fields_everywhere() {
    let mut reply = serde_json::to_value(ok(ProcessReply {
        process: ProcessDetail {
            row: row(),
            cmdline: vec![],
            connections: vec![Connection {
                proto: "udp".into(),
                local: "0.0.0.0:53".into(),
                remote: "0.0.0.0:0".into(),
                state: "UNCONN".into(),
                inode: 5,
                netns: None,
                holders: Vec::new(),
            }],
        },
    }))
    .unwrap();
    reply["server"] = json!("pidcapd 9");
    reply["process"]["oom_score"] = json!(100);
    reply["process"]["connections"][0]["netns"] = json!(4026531840u64);
    let line = serde_json::to_vec(&reply).unwrap();
    let decoded: ProcessReply = decode_reply(&line).unwrap();
    assert_eq!(decoded.process.row, row());
    assert_eq!(decoded.process.connections[0].inode, 5);

    let mut frame = serde_json::to_value(ok(WatchFrame {
        ts: "t".into(),
        interval_ms: 100,
        processes: vec![],
        unknown: rate(None, UNKNOWN_COMM),
        filtered_to_uid: None,
    }))
    .unwrap();
    frame["unknown"]["extra"] = json!(1);
    frame["extra"] = json!({"nested": true});
    let decoded: WatchFrame = decode_reply(&serde_json::to_vec(&frame).unwrap()).unwrap();
    assert_eq!(decoded.unknown.pid, None);

    let mut stats = serde_json::to_value(ok(StatsReply { stats: stats() })).unwrap();
    stats["stats"]["new_counter"] = json!(1);
    let decoded: StatsReply = decode_reply(&serde_json::to_vec(&stats).unwrap()).unwrap();
    assert_eq!(decoded.stats, super::tests::stats());

    let owner = br#"{"v":1,"ok":true,"found":true,"owner":{"pid":1,"start_time":2,"comm":"c","inode":3,"matched":"wildcard","holders":[1],"cgroup":"x"},"ttl":5}"#;
    let decoded: LookupReply = decode_reply(owner).unwrap();
    assert_eq!(decoded.owner.unwrap().matched, MATCH_WILDCARD);
}

#[test]
fn integer_rates_decode_as_floats() {
    let line = br#"{"v":1,"ok":true,"ts":"t","interval_ms":1000,"processes":[],"unknown":{"pid":null,"comm":"<unknown>","rx_bps":0,"tx_bps":7,"rx_bytes_total":0,"tx_bytes_total":0}}"#;
    let frame: WatchFrame = decode_reply(line).unwrap();
    assert_eq!(frame.unknown.tx_bps, 7.0);
}

#[test]
fn lookup_not_found_decodes_without_owner() {
    let reply: LookupReply = decode_reply(b"{\"v\":1,\"ok\":true,\"found\":false}").unwrap();
    assert_eq!(reply, LookupReply::not_found());
}

#[test]
fn groups_request_and_reply_shapes_are_exact() {
    let request = Request::Groups {
        by: GroupBy::Container,
    };
    assert_eq!(
        serde_json::to_string(&request).unwrap(),
        r#"{"cmd":"groups","by":"container"}"#
    );
    assert_eq!(
        parse_request(br#"{"cmd":"groups","by":"unit"}"#).unwrap(),
        Request::Groups { by: GroupBy::Unit }
    );
    assert!(parse_request(br#"{"cmd":"groups","by":"colour"}"#).is_err());
    assert!(parse_request(br#"{"cmd":"groups"}"#).is_err());
    let reply = ok(GroupsReply {
        by: GroupBy::User,
        groups: vec![
            GroupRow {
                key: Some("alice".into()),
                processes: 2,
                usage: usage(),
            },
            GroupRow {
                key: None,
                processes: 1,
                usage: usage(),
            },
        ],
        unknown: usage(),
        filtered_to_uid: None,
    });
    let expected = format!(
        r#"{{"v":1,"ok":true,"by":"user","groups":[{{"key":"alice","processes":2,{USAGE_JSON}}},{{"key":null,"processes":1,{USAGE_JSON}}}],"unknown":{{{USAGE_JSON}}}}}"#
    );
    assert_eq!(encoded(&reply), expected + "\n");
    round_trip(&reply);
}

#[test]
fn a_row_from_a_daemon_without_placement_fields_reads_as_unknown_placement() {
    let line = format!(
        r#"{{"v":1,"ok":true,"processes":[{{"pid":42,"start_time":12345,"comm":"curl","exe":null,"uid":1000,{USAGE_JSON},"alive":true}}],"unknown":{{{USAGE_JSON}}}}}"#
    );
    let reply: Envelope<ProcessesReply> = decode_reply(line.as_bytes()).unwrap();
    assert_eq!(
        reply.body.processes[0].placement,
        PlacementFields::default()
    );
}

#[test]
fn a_capture_request_carries_its_filters_and_refuses_bad_ones() {
    let line = r#"{"cmd":"capture","pid":7,"comm":"curl","filter":"tcp port 80"}"#;
    let Request::Capture(c) = parse_request(line.as_bytes()).unwrap() else {
        panic!("not a capture")
    };
    assert_eq!(c.pid, Some(7));
    assert_eq!(c.comm.as_deref(), Some("curl"));
    assert_eq!(c.filter.as_deref(), Some("tcp port 80"));
    let long = format!(
        r#"{{"cmd":"capture","filter":"{}"}}"#,
        "x".repeat(crate::MAX_CAPTURE_FILTER + 1)
    );
    for bad in [
        r#"{"cmd":"capture","comm":""}"#,
        r#"{"cmd":"capture","container":"ab"}"#,
        long.as_str(),
    ] {
        let error = parse_request(bad.as_bytes()).unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::BadArgument, "{bad}");
    }
    let wrong_type = parse_request(br#"{"cmd":"capture","pid":"7"}"#).unwrap_err();
    assert_eq!(wrong_type.code(), crate::ErrorCode::BadRequest);
}

#[test]
fn capture_lines_round_trip_with_one_field_each() {
    let packet = crate::CapturedPacket {
        ts_us: 1,
        orig_len: 3,
        data: crate::CapturedPacket::encode_data(&[0, 255, 7]),
        tx: Some(crate::PacketOwner {
            pid: Some(9),
            start_time: Some(2),
            matched: Some("late".into()),
            unknown: None,
        }),
        rx: None,
        note: None,
    };
    let line = crate::encode_line(&crate::ok(crate::CaptureLine::packet(packet.clone())));
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(text.starts_with(r#"{"v":1,"ok":true,"packet":{"#), "{text}");
    let back: crate::CaptureLine = crate::decode_reply(&line[..line.len() - 1]).unwrap();
    assert_eq!(back, crate::CaptureLine::packet(packet.clone()));
    assert_eq!(back.packet.unwrap().bytes().unwrap(), vec![0, 255, 7]);
    let lost = crate::encode_line(&crate::ok(crate::CaptureLine::lost(5)));
    assert_eq!(lost, b"{\"v\":1,\"ok\":true,\"lost\":{\"packets\":5}}\n");
    let garbled = crate::CapturedPacket {
        data: "not base64!".into(),
        ..packet
    };
    assert!(garbled.bytes().is_err());
}

#[test]
fn match_bytes_of_a_daemon_before_packet_senders_read_as_zero_packet_sender() {
    let old: MatchBytes =
        serde_json::from_str(r#"{"exact":1,"wildcard":2,"recent":3,"late":4}"#).unwrap();
    assert_eq!(old.packet_sender, 0);
    assert_eq!(old.late, 4);
}
