#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the crates' own test fixtures.

Run from the repository root: `python3 fuzz/seeds.py`. The seeds are committed; this script
only documents (and can redo) where each one came from.
"""
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def rust_byte_consts(path):
    """`const NAME: &[u8] = &[ .. ];` and `const NAME: [u8; N] = [ .. ];` arrays of a file."""
    text = open(os.path.join(ROOT, path)).read()
    consts = {}
    pattern = r"const ([A-Z0-9_]+): (?:&\[u8\] = &|\[u8; \d+\] = )\[(.*?)\];"
    for m in re.finditer(pattern, text, re.S):
        body = re.sub(r"//[^\n]*", "", m.group(2))
        values = [int(t, 0) for t in re.findall(r"0x[0-9a-fA-F]+|\b\d+\b", body)]
        consts[m.group(1)] = bytes(values)
    return consts


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


# frame: [link index][orig_len - caplen, i16 LE][frame]; link indices as in frame.rs.
def link_of(name):
    for prefix, index in [("LO_ETHERNET", 1), ("ETHERNET", 1), ("NULL", 0), ("LOOP", 5),
                          ("ANY_SLL2", 7), ("SLL2", 7), ("SLL", 6), ("IPV4", 2), ("IPV6", 2)]:
        if name.startswith(prefix):
            return index
    raise ValueError(name)


def frames():
    fixtures = "crates/wire/tests/fixtures/"
    for file in ["link.rs", "real_captures.rs", "ipv4.rs", "ipv6.rs"]:
        for name, frame in rust_byte_consts(fixtures + file).items():
            cut = 1000 if "SNAPLEN_CUT" in name or "CUT_BY_SNAPLEN" in name else 0
            head = bytes([link_of(name)]) + struct.pack("<h", cut)
            write("frame", name.lower(), head + frame)


def requests():
    lines = {
        "processes": b'{"cmd":"processes"}\n',
        "process": b'{"cmd":"process","pid":4242}\n',
        "lookup_v4": b'{"cmd":"lookup","proto":"tcp","local":"127.0.0.1:8080","remote":"127.0.0.1:51234"}\n',
        "lookup_v6": b'{"cmd":"lookup","proto":"UDP","local":"[::1]:53","remote":"[fe80::1%2]:40000"}\r\n',
        "stats": b'{"cmd":"stats","extra":[1,2,{"x":null}]}',
        "watch": b'{"cmd":"watch","interval_ms":250}\n',
        "watch_default": b'{"cmd":"watch"}\n',
        "unknown": b'{"cmd":"frobnicate"}\n',
    }
    for name, line in lines.items():
        write("request", name, line)


def sock_diag():
    consts = rust_byte_consts("crates/sockets/src/diag/reply.rs")
    for name, datagram in consts.items():
        write("sock_diag", name.lower(), bytes([5]) + datagram)  # the fixtures' nlmsg_seq


def proc_connector():
    consts = rust_byte_consts("crates/sockets/tests/proc_events.rs")
    for name, datagram in consts.items():
        write("proc_connector", name.lower(), datagram)
    write("proc_connector", "fork_exec_exit", consts["FORK"] + consts["EXEC"] + consts["EXIT"])


def trace_fields(text):
    fields = {}
    for m in re.finditer(r"field:[^;]*?([A-Za-z_0-9]+)(?:\[\d+\])?;\s*offset:(\d+);\s*size:(\d+);", text):
        fields[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return fields


def trace():
    fixtures = "crates/sockets/tests/fixtures/trace/"
    values = {
        "family": struct.pack("=H", 2), "protocol": struct.pack("=H", 6),
        "sport": struct.pack("=H", 40000), "dport": struct.pack("=H", 80),
        "saddr": bytes([127, 0, 0, 1]), "daddr": bytes([127, 0, 0, 53]),
        "oldstate": struct.pack("=i", 2), "newstate": struct.pack("=i", 1),
        "skaddr": struct.pack("=Q", 0xffff888812345678), "sk": struct.pack("=Q", 0xffff888812345678),
        "fd": struct.pack("=q", 3), "ret": struct.pack("=q", -115), "proto": bytes([17]),
    }
    for file in sorted(os.listdir(os.path.join(ROOT, fixtures))):
        text = open(os.path.join(ROOT, fixtures, file)).read()
        fields = trace_fields(text)
        ident = int(re.search(r"ID: (\d+)", text).group(1))
        record = bytearray(max(o + s for o, s in fields.values()))
        record[0:2] = struct.pack("=H", ident)
        for name, (offset, size) in fields.items():
            value = values.get(name)
            if name in ("src", "dst") and size == 16:
                value = bytes(15) + b"\x01"
            elif name in ("src", "dst"):
                value = bytes([127, 0, 0, 1 if name == "src" else 53])
            if value is not None and len(value) == size:
                record[offset:offset + size] = value
        write("trace", file.replace(".format", ""), text.encode() + b"\0" + bytes(record))


def proc_net():
    # Table picks as in proc_net.rs: 2 * protocol index + v6, 12 sctp eps, 13 sctp assocs.
    picks = {"tcp": 0, "tcp6": 1, "udp": 2, "udp6": 3, "icmp": 6, "raw": 10, "raw6": 11}
    fixtures = "crates/sockets/tests/fixtures/linux-6.18/"
    for name, pick in picks.items():
        text = open(os.path.join(ROOT, fixtures, name), "rb").read()
        write("proc_net", name, bytes([pick]) + text)
    eps = (b" ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n"
           b"000000003a1b2c4d 00000000e5f6a7b8 1   10  5    5000   1000 41296 127.0.0.1 10.0.0.1 \n"
           b"00000000c0ffee01 00000000c0ffee02 5   10  17   36412     0 41300 "
           b"0000:0000:0000:0000:0000:0000:0000:0001 fd00:0000:0000:0000:0000:0000:0000:0002 \n")
    assocs = (b" ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT "
              b"LADDRS <-> RADDRS HBINT INS OUTS MAXRT T1X T2X RTXC wmema wmemq sndbuf rcvbuf\n"
              b"0000000011111111 0000000022222222 1   1   3  0       1        0        0    1000 41297 "
              b"5000  40000  *127.0.0.1 <-> *127.0.0.1 "
              b"\t   30000    10    10   10    0    0        0        1        0  2626560   131072\n"
              b"0000000033333333 0000000044444444 5   10  3  0       2        0        0       0 41298 "
              b"5000   2905  10.0.0.1 *192.168.1.1 <-> 10.0.0.2 *192.168.1.2 "
              b"\t   30000    10    10   10    0    0        0        1        0   212992   212992\n")
    write("proc_net", "sctp_eps", bytes([12]) + eps)
    write("proc_net", "sctp_assocs", bytes([13]) + assocs)


def proc_pid():
    # stat 0xFF status 0xFF cmdline; stat and status as pasted in crates/sockets/src/process.rs.
    stat = (b"7843 (my (weird) comm) R 7841 7841 4659 0 -1 4194304 2890 6497 2 1 7 4 7 2 20 0 1 0 "
            b"57139 17133568 3442 18446744073709551615 93910699917312 93910699917653 "
            b"140732038216256 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 93910699929008 "
            b"93910699929624 93911311872000 140732038219866 140732038220071 140732038220071 "
            b"140732038221775 0\n")
    status = (b"Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7843\nPid:\t7843\n"
              b"PPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    write("proc_pid", "python3", stat + b"\xff" + status + b"\xff" + b"python3\0-c\0\0print(1)\0")
    write("proc_pid", "kernel_thread",
          b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 18446744073709551615 "
          b"0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
          b"\xffName:\tkthreadd\nUid:\t0\t0\t0\t0\n\xff")
    write("proc_pid", "paren_comm",
          b"7 (a) S 1 2 3) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n"
          b"\xffUid:\t65534\t65534\t65534\t65534\n\xffsh\0")


if __name__ == "__main__":
    frames()
    requests()
    sock_diag()
    proc_connector()
    trace()
    proc_net()
    proc_pid()
