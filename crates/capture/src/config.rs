//! Live capture settings.
//!
//! Plain data: no validation happens here beyond what libpcap itself applies when the handle is
//! activated (see [`crate::Source::open_live`]). The daemon validates its own config first.

/// How to open a live capture. Every field maps to one libpcap `pcap_set_*` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Interface name, as listed by `tcpdump -D`. `"any"` (the default) captures on every
    /// interface, including ones that appear after the capture was opened.
    pub interface: String,
    /// Bytes kept per frame. Headers are all pidcap needs; 256 leaves room for link, IPv6 with
    /// extension headers and TCP options. Values `<= 0` mean libpcap's maximum (262144).
    pub snaplen: i32,
    /// Kernel ring buffer size in bytes. Larger rides out bursts at the cost of memory.
    pub buffer_size: i32,
    /// Deliver every frame as soon as it arrives instead of batching until a block fills or the
    /// timeout expires. Costs CPU under load; useful in tests.
    pub immediate: bool,
    /// Read timeout in milliseconds: the longest a single [`crate::Source::next`] blocks when no
    /// frame arrives, and the longest the kernel holds a partly filled buffer block before
    /// delivering it. It bounds how quickly the capture thread notices a shutdown request, so
    /// it should stay small. `0` (or less) means block until a frame arrives: do not use it in
    /// the daemon.
    pub timeout_ms: i32,
    /// Optional BPF filter (tcpdump syntax) compiled against the capture's link type.
    pub filter: Option<String>,
}

/// 16 MiB: about 60 000 snapped frames, well over a second of a busy gigabit link.
const DEFAULT_BUFFER_SIZE: i32 = 16 * 1024 * 1024;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            interface: "any".to_owned(),
            snaplen: 256,
            buffer_size: DEFAULT_BUFFER_SIZE,
            immediate: false,
            timeout_ms: 100,
            filter: None,
        }
    }
}
