//! The pod side of a kernel port: moves the tap the fastpath created into
//! the pod's network namespace, names it as the CNI asked, and gives it the
//! port's MAC, addresses, MTU and default route.
//!
//! Talks rtnetlink directly, in process: one request on the host moves the
//! tap (by name) into the namespace; a netlink socket opened inside the
//! namespace (from a short-lived thread that enters it, since the kubelet
//! hands a netns path) then renames, configures and brings up the
//! interface, brings up `lo` and sets the default route, one acknowledged
//! request per step. No process is started, so configuring a pod costs
//! well under a millisecond of CPU instead of the tens of milliseconds of
//! `ip` processes. Every failure names its step and the kernel's answer.
//! Owns no state; it must not talk to the fastpath or any database.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use ipnet::IpNet;

use crate::compile::parse_mac;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// What the interface inside the pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInterface {
    /// Name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// MAC address.
    pub mac: String,
    /// MTU, when configured.
    pub mtu: Option<u32>,
    /// Addresses with prefix length.
    pub ips: Vec<IpNet>,
    /// Default gateway, when the subnet has one.
    pub gateway: Option<IpAddr>,
}

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The MAC address is not six colon-separated hex bytes.
    #[error("MAC address {0:?} is not of the form 0a:00:00:00:00:01")]
    BadMac(String),
    /// The namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// The namespace could not be entered, or no netlink socket opened.
    #[error("cannot open a netlink socket in {netns}: {error}")]
    Enter {
        /// The namespace path.
        netns: String,
        /// The error.
        error: io::Error,
    },
    /// A step of the configuration inside the namespace failed.
    #[error("{step} in {netns} failed: {error}")]
    Step {
        /// What the step does, e.g. `set MAC 0a:00:00:00:00:01 on eth0`.
        step: String,
        /// The namespace path.
        netns: String,
        /// The kernel's answer.
        error: io::Error,
    },
    /// The tap is neither on the host nor in the namespace.
    #[error(
        "interface {tap} is neither on the host nor in the pod's namespace (moving it: {moving})"
    )]
    NoInterface {
        /// The host-side interface name.
        tap: String,
        /// What the kernel said to moving it.
        moving: io::Error,
    },
}

/// What one step asks of the kernel; the interface is addressed by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Give the interface this name.
    Rename(String),
    /// Set the MAC address.
    Mac([u8; 6]),
    /// Set the MTU.
    Mtu(u32),
    /// Add the address, or replace it (`ip addr replace`).
    Address(IpNet),
    /// Bring the interface up.
    Up,
    /// Bring `lo` up.
    LoopbackUp,
    /// Add or replace the default route of the gateway's family.
    DefaultRoute(IpAddr),
}

/// One step of the configuration inside the namespace: what it does (for
/// errors) and the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does.
    pub what: String,
    /// The request.
    pub op: Op,
}

/// The steps that configure `iface` inside the namespace, in order; the
/// interface is `tap` until the rename step (present when `rename`).
/// Interfaces arrive down in a namespace, so the MAC can be set before `up`.
pub fn steps(tap: &str, iface: &KernelInterface, rename: bool) -> Result<Vec<Step>, NetnsError> {
    let name = iface.ifname.as_str();
    let mac = parse_mac(&iface.mac).ok_or_else(|| NetnsError::BadMac(iface.mac.clone()))?;
    let mut s = Vec::new();
    let mut step = |what: String, op: Op| s.push(Step { what, op });
    if rename && tap != name {
        step(format!("rename {tap} to {name}"), Op::Rename(name.into()));
    }
    step(format!("set MAC {} on {name}", iface.mac), Op::Mac(mac));
    if let Some(mtu) = iface.mtu {
        step(format!("set MTU {mtu} on {name}"), Op::Mtu(mtu));
    }
    for ip in &iface.ips {
        step(format!("add address {ip} to {name}"), Op::Address(*ip));
    }
    step(format!("bring {name} up"), Op::Up);
    step("bring lo up".into(), Op::LoopbackUp);
    if let Some(gw) = iface.gateway {
        step(
            format!("set the default route via {gw}"),
            Op::DefaultRoute(gw),
        );
    }
    Ok(s)
}

/// rtnetlink numbers (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h,
/// linux/if_addr.h).
mod nl {
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const F_REQUEST: u16 = 0x1;
    pub const F_ACK: u16 = 0x4;
    pub const F_REPLACE: u16 = 0x100;
    pub const F_CREATE: u16 = 0x400;
    pub const IFLA_ADDRESS: u16 = 1;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFLA_NET_NS_FD: u16 = 28;
    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const IFF_UP: u32 = 0x1;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RTPROT_BOOT: u8 = 3;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RTN_UNICAST: u8 = 1;
    /// struct nlmsghdr.
    pub const HEADER: usize = 16;
}

/// One rtnetlink request being built: header, family header, attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, family_header: &[u8]) -> Message {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | nl::F_REQUEST | nl::F_ACK).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by `finish`
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        b.extend_from_slice(family_header);
        Message(b)
    }

    /// struct ifinfomsg: the link `index` (0: by `IFLA_IFNAME`), `flags`
    /// changed under `change`.
    fn link(kind: u16, index: u32, flags: u32, change: u32) -> Message {
        let mut h = [0u8; 16];
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&change.to_ne_bytes());
        Message::new(kind, 0, &h)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Message {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// A NUL-terminated name attribute.
    fn name(self, kind: u16, name: &str) -> Message {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn ip_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (nl::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (nl::AF_INET6, a.octets().to_vec()),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// An rtnetlink socket of one network namespace.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
    /// Receive buffer, reused by every request.
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    fn open() -> io::Result<Netlink> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0u8; 32 * 1024],
        })
    }

    /// A socket in the namespace open as `netns`: a socket stays in the
    /// namespace it was made in, so a thread enters it, opens the socket
    /// and ends (taking its namespace with it).
    fn open_in(netns: &std::fs::File) -> io::Result<Netlink> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    Netlink::open()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
    }

    /// Sends `m` and reads up to its acknowledgement; returns the replies
    /// before it (their payloads after the netlink header).
    fn request(&mut self, m: Message) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = m.finish(seq);
        socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty())?;
        let mut replies = Vec::new();
        let buf = &mut self.buf;
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + nl::HEADER <= n {
                let field = |o: usize| {
                    [
                        buf[at + o],
                        buf[at + o + 1],
                        buf[at + o + 2],
                        buf[at + o + 3],
                    ]
                };
                let len = u32::from_ne_bytes(field(0)) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let their_seq = u32::from_ne_bytes(field(8));
                if len < nl::HEADER || at + len > n {
                    return Err(invalid("truncated netlink message"));
                }
                let payload = &buf[at + nl::HEADER..at + len];
                if their_seq == seq {
                    match kind {
                        nl::NLMSG_ERROR => {
                            let code = payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                .ok_or_else(|| invalid("short netlink error"))?;
                            return if code == 0 {
                                Ok(replies)
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        nl::NLMSG_DONE => return Ok(replies),
                        _ => replies.push(payload.to_vec()),
                    }
                }
                at += len.next_multiple_of(4);
            }
        }
    }

    /// The index of interface `name`, or None when there is none.
    fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        match self.request(Message::link(nl::RTM_GETLINK, 0, 0, 0).name(nl::IFLA_IFNAME, name)) {
            Ok(replies) => {
                let reply = replies
                    .first()
                    .filter(|r| r.len() >= 8)
                    .ok_or_else(|| invalid("no link in the answer"))?;
                Ok(Some(u32::from_ne_bytes([
                    reply[4], reply[5], reply[6], reply[7],
                ])))
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves host interface `name` into the namespace open as `netns`.
    fn move_to(&mut self, name: &str, netns: &std::fs::File) -> io::Result<()> {
        let fd = netns.as_raw_fd() as u32;
        self.request(
            Message::link(nl::RTM_NEWLINK, 0, 0, 0)
                .name(nl::IFLA_IFNAME, name)
                .attr(nl::IFLA_NET_NS_FD, &fd.to_ne_bytes()),
        )
        .map(drop)
    }

    fn apply(&mut self, index: u32, op: &Op) -> io::Result<()> {
        let m = match op {
            Op::Rename(name) => {
                Message::link(nl::RTM_NEWLINK, index, 0, 0).name(nl::IFLA_IFNAME, name)
            }
            Op::Mac(mac) => Message::link(nl::RTM_NEWLINK, index, 0, 0).attr(nl::IFLA_ADDRESS, mac),
            Op::Mtu(mtu) => {
                Message::link(nl::RTM_NEWLINK, index, 0, 0).attr(nl::IFLA_MTU, &mtu.to_ne_bytes())
            }
            Op::Up => Message::link(nl::RTM_NEWLINK, index, nl::IFF_UP, nl::IFF_UP),
            Op::LoopbackUp => Message::link(nl::RTM_NEWLINK, 0, nl::IFF_UP, nl::IFF_UP)
                .name(nl::IFLA_IFNAME, "lo"),
            Op::Address(net) => {
                let (family, addr) = ip_bytes(net.addr());
                // struct ifaddrmsg: family, prefix length, flags, scope, index.
                let mut h = [
                    family,
                    net.prefix_len(),
                    0,
                    nl::RT_SCOPE_UNIVERSE,
                    0,
                    0,
                    0,
                    0,
                ];
                h[4..8].copy_from_slice(&index.to_ne_bytes());
                Message::new(nl::RTM_NEWADDR, nl::F_CREATE | nl::F_REPLACE, &h)
                    .attr(nl::IFA_LOCAL, &addr)
                    .attr(nl::IFA_ADDRESS, &addr)
            }
            Op::DefaultRoute(gw) => {
                let (family, addr) = ip_bytes(*gw);
                // struct rtmsg: family, dst/src length, tos, table, protocol,
                // scope, type, flags.
                let h = [
                    family,
                    0,
                    0,
                    0,
                    nl::RT_TABLE_MAIN,
                    nl::RTPROT_BOOT,
                    nl::RT_SCOPE_UNIVERSE,
                    nl::RTN_UNICAST,
                    0,
                    0,
                    0,
                    0,
                ];
                Message::new(nl::RTM_NEWROUTE, nl::F_CREATE | nl::F_REPLACE, &h)
                    .attr(nl::RTA_GATEWAY, &addr)
                    .attr(nl::RTA_OIF, &index.to_ne_bytes())
            }
        };
        self.request(m).map(drop)
    }
}

/// Moves host interface `tap` into `netns` as `iface.ifname` and configures
/// it. Idempotent: an interface already moved (a repeated ADD) is found in
/// the namespace, under the tap's name or the CNI's, and configured again.
pub fn attach(tap: &str, netns: &str, iface: &KernelInterface) -> Result<(), NetnsError> {
    if !std::path::Path::new(netns).exists() {
        return Err(NetnsError::NoNamespace(netns.to_string()));
    }
    let enter = |error: io::Error| NetnsError::Enter {
        netns: netns.to_string(),
        error,
    };
    // A malformed request is refused before anything moves.
    steps(tap, iface, true)?;
    let ns_file = std::fs::File::open(netns).map_err(enter)?;
    let moved = Netlink::open().map_err(enter)?.move_to(tap, &ns_file);
    let mut inside = Netlink::open_in(&ns_file).map_err(enter)?;
    let lookup = |nl: &mut Netlink, name: &str| {
        nl.index_of(name).map_err(|error| NetnsError::Step {
            step: format!("find {name}"),
            netns: netns.to_string(),
            error,
        })
    };
    // Moving an interface to another namespace takes it down.
    let (index, rename) = match lookup(&mut inside, tap)? {
        Some(index) => (index, true),
        None => match lookup(&mut inside, &iface.ifname)? {
            Some(index) => (index, false),
            None => {
                return Err(NetnsError::NoInterface {
                    tap: tap.to_string(),
                    moving: moved
                        .err()
                        .unwrap_or_else(|| invalid("moved, then not found")),
                })
            }
        },
    };
    for step in steps(tap, iface, rename)? {
        inside
            .apply(index, &step.op)
            .map_err(|error| NetnsError::Step {
                step: step.what,
                netns: netns.to_string(),
                error,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn iface() -> KernelInterface {
        KernelInterface {
            ifname: "eth0".into(),
            mac: "0a:00:00:00:00:05".into(),
            mtu: Some(1400),
            ips: vec!["10.9.0.5/24".parse().unwrap()],
            gateway: Some("10.9.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn a_missing_namespace_is_reported() {
        let mut i = iface();
        i.ips.clear();
        i.gateway = None;
        let e = attach("fpnone0", "/nonexistent/netns/x", &i).unwrap_err();
        assert!(matches!(e, NetnsError::NoNamespace(_)), "{e}");
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("0a:00:00:00:00:05"), Some([0x0a, 0, 0, 0, 0, 5]));
        assert_eq!(parse_mac("A:b:C:d:E:f"), Some([10, 11, 12, 13, 14, 15]));
        for bad in [
            "",
            "not-a-mac",
            "0a:00:00:00:00",
            "0a:00:00:00:00:05:06",
            "0a::00:00:00:05",
            "100:00:00:00:00:05",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let mut i = iface();
        i.mac = "not-a-mac".into();
        assert!(matches!(steps("fpabc", &i, true), Err(NetnsError::BadMac(m)) if m == "not-a-mac"));
    }

    #[test]
    fn steps_rename_configure_and_route_in_order() {
        let ops: Vec<Op> = steps("fpabc", &iface(), true)
            .unwrap()
            .into_iter()
            .map(|s| s.op)
            .collect();
        assert_eq!(
            ops,
            [
                Op::Rename("eth0".into()),
                Op::Mac([0x0a, 0, 0, 0, 0, 5]),
                Op::Mtu(1400),
                Op::Address("10.9.0.5/24".parse().unwrap()),
                Op::Up,
                Op::LoopbackUp,
                Op::DefaultRoute("10.9.0.1".parse().unwrap()),
            ]
        );
        // Already renamed: no rename step; no MTU, IPv6 gateway.
        let mut v6 = iface();
        v6.mtu = None;
        v6.ips = vec!["fd00::5/64".parse().unwrap()];
        v6.gateway = Some("fd00::1".parse().unwrap());
        let s = steps("fpabc", &v6, false).unwrap();
        assert_eq!(s[0].what, "set MAC 0a:00:00:00:00:05 on eth0");
        assert!(!s.iter().any(|s| matches!(s.op, Op::Mtu(_))));
        assert_eq!(
            s.last().map(|s| (s.what.as_str(), &s.op)),
            Some((
                "set the default route via fd00::1",
                &Op::DefaultRoute("fd00::1".parse().unwrap())
            ))
        );
        // The tap already has the wanted name: nothing to rename.
        let mut same = iface();
        same.ifname = "fpabc".into();
        assert!(!steps("fpabc", &same, true)
            .unwrap()
            .iter()
            .any(|s| matches!(s.op, Op::Rename(_))));
    }

    #[test]
    fn messages_are_laid_out_as_rtnetlink_expects() {
        let m = Message::link(nl::RTM_NEWLINK, 7, nl::IFF_UP, nl::IFF_UP)
            .name(nl::IFLA_IFNAME, "eth0")
            .attr(nl::IFLA_MTU, &1400u32.to_ne_bytes())
            .finish(42);
        // Header 16 + ifinfomsg 16 + "eth0\0" (4 + 5, padded to 12) + MTU 8.
        assert_eq!(m.len(), 16 + 16 + 12 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()),
            m.len() as u32
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            nl::RTM_NEWLINK
        );
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            nl::F_REQUEST | nl::F_ACK
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 42);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        // The name attribute: length 9 (unpadded), then NUL and padding.
        assert_eq!(u16::from_ne_bytes(m[32..34].try_into().unwrap()), 9);
        assert_eq!(&m[36..44], b"eth0\0\0\0\0");
        assert_eq!(
            u16::from_ne_bytes(m[46..48].try_into().unwrap()),
            nl::IFLA_MTU
        );
        assert_eq!(u32::from_ne_bytes(m[48..52].try_into().unwrap()), 1400);
    }

    /// Runs a setup command, which must succeed.
    fn run(program: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Root and iproute2 are needed to make namespaces and veth pairs.
    fn skip_reason() -> Option<&'static str> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        (String::from_utf8_lossy(&uid.stdout).trim() != "0")
            .then_some("not root (network namespaces and veth pairs need it)")
    }

    /// A namespace and a veth pair whose first end plays the tap, removed
    /// when dropped.
    struct Sandbox {
        netns: String,
        tap: String,
        peer: String,
    }

    impl Sandbox {
        fn new(tag: &str) -> Sandbox {
            let id = std::process::id() % 100_000;
            let s = Sandbox {
                netns: format!("fpnt{tag}{id}"),
                tap: format!("fpnt{tag}{id}a"),
                peer: format!("fpnt{tag}{id}b"),
            };
            run("ip", &["netns", "add", &s.netns]).unwrap();
            run(
                "ip",
                &[
                    "link", "add", &s.tap, "type", "veth", "peer", "name", &s.peer,
                ],
            )
            .unwrap();
            run("ip", &["link", "set", "dev", &s.peer, "up"]).unwrap();
            s
        }

        fn path(&self) -> String {
            format!("/var/run/netns/{}", self.netns)
        }

        fn inside(&self, args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.netns])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = run("ip", &["netns", "del", &self.netns]);
            let _ = run("ip", &["link", "del", &self.peer]);
        }
    }

    #[test]
    fn attach_configures_the_interface_and_is_idempotent() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("c");
        attach(&sb.tap, &sb.path(), &iface()).unwrap();
        let link = sb.inside(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("link/ether 0a:00:00:00:00:05"), "{link}");
        assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
        let lo = sb.inside(&["-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let addr = sb.inside(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains("10.9.0.5/24"), "{addr}");
        let route = sb.inside(&["-4", "route", "show", "default"]);
        assert!(route.contains("via 10.9.0.1 dev eth0"), "{route}");
        // Again (a repeated ADD): the interface is in the namespace already.
        let mut again = iface();
        again.mtu = Some(1300);
        attach(&sb.tap, &sb.path(), &again).unwrap();
        let link = sb.inside(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("mtu 1300"), "{link}");
    }

    #[test]
    fn a_malformed_mac_is_refused_before_the_tap_moves() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("m");
        let mut bad = iface();
        bad.mac = "0a:00:00:00:00".into();
        let e = attach(&sb.tap, &sb.path(), &bad).unwrap_err();
        assert!(matches!(e, NetnsError::BadMac(_)), "{e}");
        assert!(
            run("ip", &["link", "show", "dev", &sb.tap]).is_ok(),
            "the tap stays in the node's namespace"
        );
        assert!(sb
            .inside(&["-o", "link", "show"])
            .lines()
            .all(|l| !l.contains(&sb.tap)));
    }

    #[test]
    fn ipv6_addresses_and_default_route() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("s");
        let mut v6 = iface();
        v6.ips = vec![
            "10.9.0.5/24".parse().unwrap(),
            "fd00:9::5/64".parse().unwrap(),
        ];
        v6.gateway = Some("fd00:9::1".parse().unwrap());
        attach(&sb.tap, &sb.path(), &v6).unwrap();
        let addr = sb.inside(&["-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr.contains("10.9.0.5/24") && addr.contains("fd00:9::5/64"),
            "{addr}"
        );
        let route = sb.inside(&["-6", "route", "show", "default"]);
        assert!(route.contains("via fd00:9::1 dev eth0"), "{route}");
        // Replacing is idempotent.
        attach(&sb.tap, &sb.path(), &v6).unwrap();
        let addr = sb.inside(&["-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"]);
        assert_eq!(addr.lines().count(), 1, "{addr}");
    }

    #[test]
    fn a_failing_step_is_named() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("f");
        // The kernel refuses an MTU above what a veth takes; the rename
        // and the MAC before it went through.
        let mut huge = iface();
        huge.mtu = Some(70_000);
        let e = attach(&sb.tap, &sb.path(), &huge).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, NetnsError::Step { step, .. } if step == "set MTU 70000 on eth0"),
            "{text}"
        );
        assert!(text.contains(&sb.path()), "{text}");
        let link = sb.inside(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("link/ether 0a:00:00:00:00:05"), "{link}");
        // A gateway outside every address of the interface fails at the
        // route step, with the kernel's reason.
        let mut unreachable = iface();
        unreachable.gateway = Some("192.0.2.1".parse().unwrap());
        let e = attach(&sb.tap, &sb.path(), &unreachable).unwrap_err();
        assert!(
            matches!(&e, NetnsError::Step { step, error, .. }
                if step == "set the default route via 192.0.2.1"
                    && error.raw_os_error() == Some(nix::libc::ENETUNREACH)),
            "{e}"
        );
        let mut elsewhere = iface();
        elsewhere.ifname = "eth9".into();
        let e = attach("fpnt-none0", &sb.path(), &elsewhere).unwrap_err();
        assert!(matches!(e, NetnsError::NoInterface { .. }), "{e}");
        assert!(e.to_string().contains("No such device"), "{e}");
    }
}
