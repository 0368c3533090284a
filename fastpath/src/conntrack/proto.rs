//! Per-protocol connection state: the TCP state machine, the UDP/ICMP/other
//! pseudo-connections, and the timeout each state gets.
//!
//! Owns [`CtTimeouts`] and the transition function; it knows nothing of the
//! table, locking or NAT.

use fastpath_packet::tcp::flags as tcpf;
use std::time::Duration;

/// Idle timeouts per connection state. An entry expires `timeout` after the
/// last packet that refreshed it.
///
/// Defaults follow OVS's userspace conntrack and Linux where they agree:
/// TCP SYN-sent / SYN-received 30 s, established 24 h (OVS userspace), one side
/// closed (FIN) 30 s, both closed 30 s, TIME-WAIT 30 s, reset 10 s (Linux
/// `close`); UDP seen one way 30 s, both ways 180 s; ICMP echo 30 s; other IP
/// protocols one way 30 s, both ways 60 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP after the first SYN.
    pub tcp_syn_sent: Duration,
    /// TCP after the SYN-ACK.
    pub tcp_syn_recv: Duration,
    /// TCP established.
    pub tcp_established: Duration,
    /// TCP after a FIN from one side.
    pub tcp_fin_wait: Duration,
    /// TCP after FINs from both sides.
    pub tcp_closing: Duration,
    /// TCP after the last ACK of the close.
    pub tcp_time_wait: Duration,
    /// TCP after a RST.
    pub tcp_closed: Duration,
    /// UDP seen in one direction only.
    pub udp_single: Duration,
    /// UDP seen in both directions.
    pub udp_multiple: Duration,
    /// ICMP / ICMPv6 echo.
    pub icmp: Duration,
    /// Other IP protocols, one direction.
    pub other_single: Duration,
    /// Other IP protocols, both directions.
    pub other_multiple: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        CtTimeouts {
            tcp_syn_sent: s(30),
            tcp_syn_recv: s(30),
            tcp_established: s(24 * 3600),
            tcp_fin_wait: s(30),
            tcp_closing: s(30),
            tcp_time_wait: s(30),
            tcp_closed: s(10),
            udp_single: s(30),
            udp_multiple: s(180),
            icmp: s(30),
            other_single: s(30),
            other_multiple: s(60),
        }
    }
}

impl CtTimeouts {
    /// The longest of the timeouts, in nanoseconds (no entry lives longer
    /// than this after its last packet).
    pub fn max_ns(&self) -> u64 {
        [
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_closing,
            self.tcp_time_wait,
            self.tcp_closed,
            self.udp_single,
            self.udp_multiple,
            self.icmp,
            self.other_single,
            self.other_multiple,
        ]
        .iter()
        .map(|d| ns(*d))
        .max()
        .unwrap_or(0)
    }
}

#[inline]
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// TCP connection states (no window tracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen from the originator.
    SynSent,
    /// SYN-ACK seen from the responder.
    SynRecv,
    /// Handshake complete.
    Established,
    /// FIN seen from the originator only.
    FinOriginal,
    /// FIN seen from the responder only.
    FinReply,
    /// FINs seen from both sides.
    Closing,
    /// The last ACK after both FINs.
    TimeWait,
    /// A RST was seen.
    Closed,
}

/// The protocol part of a connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4State {
    /// TCP with its state machine.
    Tcp(TcpState),
    /// UDP pseudo-connection.
    Udp,
    /// ICMP / ICMPv6 echo pseudo-connection.
    Icmp,
    /// Any other IP protocol (SCTP included, without state tracking).
    Other,
}

impl L4State {
    /// Short name of the state, as `fastpathctl conntrack` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            L4State::Tcp(TcpState::SynSent) => "SYN_SENT",
            L4State::Tcp(TcpState::SynRecv) => "SYN_RECV",
            L4State::Tcp(TcpState::Established) => "ESTABLISHED",
            L4State::Tcp(TcpState::FinOriginal) | L4State::Tcp(TcpState::FinReply) => "FIN_WAIT",
            L4State::Tcp(TcpState::Closing) => "CLOSING",
            L4State::Tcp(TcpState::TimeWait) => "TIME_WAIT",
            L4State::Tcp(TcpState::Closed) => "CLOSED",
            L4State::Udp => "UDP",
            L4State::Icmp => "ICMP",
            L4State::Other => "OTHER",
        }
    }
}

/// Direction of a packet relative to its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Same direction as the packet that created the connection.
    #[default]
    Original,
    /// The answering direction.
    Reply,
}

/// What a packet does to an existing connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Part of the connection; the new state.
    Valid(L4State),
    /// Not acceptable in this state (`trk|inv`).
    Invalid,
    /// A SYN on a closed connection: the old entry is finished and the packet
    /// starts a new connection.
    Reopen,
}

/// True for flag combinations no TCP stack sends: SYN+FIN, SYN+RST, FIN
/// without ACK, or none of SYN/ACK/RST.
#[inline]
pub(crate) fn tcp_flags_invalid(f: u16) -> bool {
    let syn = f & tcpf::SYN != 0;
    (syn && f & (tcpf::FIN | tcpf::RST) != 0)
        || (f & tcpf::FIN != 0 && f & tcpf::ACK == 0)
        || f & (tcpf::SYN | tcpf::ACK | tcpf::RST) == 0
}

/// True if a TCP packet with flags `f` may open a connection: a plain SYN,
/// or a mid-stream packet (picked up as OVS's userspace conntrack and
/// Linux's loose mode do: OVN tracks some zones without ever committing
/// them, so every packet there must classify as `new`, never `inv`); not a
/// SYN-ACK (a half-open connection), a RST, or an invalid combination.
#[inline]
pub(crate) fn tcp_can_open(f: u16) -> bool {
    !tcp_flags_invalid(f)
        && f & (tcpf::SYN | tcpf::ACK) != (tcpf::SYN | tcpf::ACK)
        && f & tcpf::RST == 0
}

/// The state a connection opened by a packet with flags `f` starts in:
/// SYN-sent for a SYN, established for a mid-stream pickup.
#[inline]
pub(crate) fn tcp_open_state(f: u16) -> TcpState {
    if f & tcpf::SYN != 0 {
        TcpState::SynSent
    } else {
        TcpState::Established
    }
}

/// The TCP transition for a packet with flags `f` going `dir`.
pub(crate) fn tcp_next(st: TcpState, dir: Dir, f: u16) -> Verdict {
    use TcpState::*;
    if tcp_flags_invalid(f) {
        return Verdict::Invalid;
    }
    let syn = f & tcpf::SYN != 0;
    let ack = f & tcpf::ACK != 0;
    let fin = f & tcpf::FIN != 0;
    if matches!(st, TimeWait | Closed) && syn && !ack {
        return Verdict::Reopen;
    }
    if f & tcpf::RST != 0 {
        return Verdict::Valid(L4State::Tcp(Closed));
    }
    let next = match (st, dir) {
        (SynSent, Dir::Original) if syn && !ack => SynSent,
        // The originator goes on before any answer came through this zone
        // (the answer may take another path: OVN tracks a load-balanced
        // flow in the zone of the router port it leaves by, while the
        // backend answers the client directly). Without window tracking,
        // as OVS's userspace conntrack, this is no error; the connection
        // stays unanswered (`new`).
        (SynSent, Dir::Original) if syn => return Verdict::Invalid,
        (SynSent, Dir::Original) if fin => FinOriginal,
        (SynSent, Dir::Original) => SynSent,
        (SynSent, Dir::Reply) if syn => SynRecv,
        (SynSent, Dir::Reply) => return Verdict::Invalid,
        (SynRecv, _) if syn => SynRecv,
        (SynRecv, Dir::Original) if fin => FinOriginal,
        (SynRecv, Dir::Original) => Established,
        (SynRecv, Dir::Reply) if fin => FinReply,
        (SynRecv, Dir::Reply) => SynRecv,
        (_, _) if syn => return Verdict::Invalid,
        (Established, Dir::Original) if fin => FinOriginal,
        (Established, Dir::Reply) if fin => FinReply,
        (Established, _) => Established,
        (FinOriginal, Dir::Reply) if fin => Closing,
        (FinReply, Dir::Original) if fin => Closing,
        (FinOriginal, _) => FinOriginal,
        (FinReply, _) => FinReply,
        (Closing, _) if ack && !fin => TimeWait,
        (Closing, _) => Closing,
        (TimeWait, _) => TimeWait,
        (Closed, _) => Closed,
    };
    Verdict::Valid(L4State::Tcp(next))
}

/// Timeouts in nanoseconds, converted once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutsNs {
    t: [u64; 12],
}

impl TimeoutsNs {
    pub(crate) fn new(t: &CtTimeouts) -> TimeoutsNs {
        TimeoutsNs {
            t: [
                ns(t.tcp_syn_sent),
                ns(t.tcp_syn_recv),
                ns(t.tcp_established),
                ns(t.tcp_fin_wait),
                ns(t.tcp_closing),
                ns(t.tcp_time_wait),
                ns(t.tcp_closed),
                ns(t.udp_single),
                ns(t.udp_multiple),
                ns(t.icmp),
                ns(t.other_single),
                ns(t.other_multiple),
            ],
        }
    }

    /// The timeout of a state; `replied` tells single from multiple.
    #[inline]
    pub(crate) fn of(&self, st: L4State, replied: bool) -> u64 {
        self.t[Self::index(st, replied)]
    }

    /// The timeout at `index` ([`TimeoutsNs::index`]); 0 past the end.
    #[inline(always)]
    pub(crate) fn by_index(&self, index: usize) -> u64 {
        self.t.get(index).copied().unwrap_or(0)
    }

    /// Which timeout a state has (below 12).
    #[inline]
    pub(crate) fn index(st: L4State, replied: bool) -> usize {
        match st {
            L4State::Tcp(TcpState::SynSent) => 0,
            L4State::Tcp(TcpState::SynRecv) => 1,
            L4State::Tcp(TcpState::Established) => 2,
            L4State::Tcp(TcpState::FinOriginal) | L4State::Tcp(TcpState::FinReply) => 3,
            L4State::Tcp(TcpState::Closing) => 4,
            L4State::Tcp(TcpState::TimeWait) => 5,
            L4State::Tcp(TcpState::Closed) => 6,
            L4State::Udp => 7 + replied as usize,
            L4State::Icmp => 9,
            L4State::Other => 10 + replied as usize,
        }
    }
}
