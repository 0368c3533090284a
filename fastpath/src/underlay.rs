//! The underlay side of the Geneve tunnel: this chassis's tunnel address on
//! the uplink, the neighbour table that gives the Ethernet address of the
//! next hop towards each remote chassis, ARP on the uplink (answering
//! requests for the tunnel address, learning from what neighbours send,
//! asking for a next hop not known yet), and the outer-header parameters
//! of one tunnelled copy.
//!
//! As an OVS-DPDK tunnel port does with its `tnl/arp` table, the fastpath
//! owns the uplink: the kernel does not see it, so the fastpath itself
//! answers ARP for the tunnel address and resolves its next hops. A remote
//! chassis inside the uplink's prefix is its own next hop; one outside goes
//! through the configured gateway. Only IPv4 underlays are resolved here.
//!
//! The neighbour table is shared by every worker: reads are lock-free
//! (an `ArcSwap` of a small map, loaded once per tunnelled packet), and a
//! learned address replaces the map (rare: a new neighbour or a changed
//! MAC). A per-lcore [`ArpThrottle`] keeps a worker from asking for the same
//! next hop more than once per interval while it waits for the answer.
//!
//! Owns only byte buffers and the table: it must not touch mbufs, counters
//! or the logical pipeline (the worker does), nor the Geneve wire format
//! (`crate::tunnel`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use fastpath_packet::ethernet::{self, ethertype};
use fastpath_packet::geneve::OvnMetadata;
use fastpath_packet::{arp, MacAddr};

use crate::ovn::cache::TunnelOut;
use crate::ovn::program::RemoteEndpoint;
use crate::tunnel::Encap;

/// The Ethernet broadcast address.
const BROADCAST: MacAddr = [0xff; 6];

/// Length of an ARP frame (Ethernet header + ARP, before padding).
pub const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;

/// Why a tunnelled copy cannot be sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NextHopError {
    /// The remote chassis is outside the uplink's prefix and no gateway is
    /// configured, or its address is not IPv4.
    #[error("no route to chassis {0}")]
    NoRoute(IpAddr),
    /// The next hop's MAC is not known yet: ask for it with ARP.
    #[error("next hop {0} unresolved")]
    Unresolved(Ipv4Addr),
}

/// The uplink's addressing, from the `[tunnel]` configuration and the
/// uplink device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayConfig {
    /// Fastpath port index of the uplink.
    pub uplink: usize,
    /// The uplink's MAC (outer Ethernet source, ARP answers).
    pub mac: MacAddr,
    /// This chassis's tunnel address (`Encap.ip`).
    pub ip: Ipv4Addr,
    /// Prefix length of the uplink's subnet.
    pub prefix: u8,
    /// Next hop for chassis outside the subnet.
    pub gateway: Option<Ipv4Addr>,
    /// The uplink MTU (outer IP packet).
    pub mtu: u16,
}

/// The uplink's addressing and the shared neighbour table.
#[derive(Debug)]
pub struct Underlay {
    /// Addressing.
    pub config: UnderlayConfig,
    neighbors: ArcSwap<HashMap<Ipv4Addr, MacAddr>>,
}

/// What an ARP frame on the uplink led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOutcome {
    /// Not ARP.
    NotArp,
    /// A request for the tunnel address: the answer is in the buffer, this
    /// long.
    Reply(usize),
    /// Handled (learned, or about another host); nothing to send.
    Consumed,
    /// ARP that does not parse.
    Malformed,
}

impl Underlay {
    /// An underlay with an empty neighbour table.
    pub fn new(config: UnderlayConfig) -> Underlay {
        Underlay {
            config,
            neighbors: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The local tunnel endpoint for decapsulation.
    pub fn local_endpoint(&self) -> crate::tunnel::LocalEndpoint {
        crate::tunnel::LocalEndpoint {
            ipv4: Some(self.config.ip),
            ipv6: None,
        }
    }

    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let bits = u32::from(self.config.prefix.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from(ip) & mask == u32::from(self.config.ip) & mask
    }

    /// The next hop towards a remote chassis address.
    pub fn next_hop(&self, dst: IpAddr) -> Result<Ipv4Addr, NextHopError> {
        let IpAddr::V4(v4) = dst else {
            return Err(NextHopError::NoRoute(dst));
        };
        if self.on_link(v4) {
            Ok(v4)
        } else {
            self.config.gateway.ok_or(NextHopError::NoRoute(dst))
        }
    }

    /// The MAC of a neighbour, if learned.
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.neighbors.load().get(&ip).copied()
    }

    /// Every learned neighbour, sorted by address.
    pub fn neighbors(&self) -> Vec<(Ipv4Addr, MacAddr)> {
        let mut v: Vec<_> = self
            .neighbors
            .load()
            .iter()
            .map(|(ip, mac)| (*ip, *mac))
            .collect();
        v.sort();
        v
    }

    /// Records that `ip` is at `mac` (an on-link neighbour only, never our
    /// own address, a broadcast or a multicast MAC).
    pub fn learn(&self, ip: Ipv4Addr, mac: MacAddr) -> bool {
        if ip == self.config.ip
            || ip.is_unspecified()
            || !self.on_link(ip)
            || mac[0] & 1 != 0
            || mac == [0; 6]
        {
            return false;
        }
        if self.neighbor(ip) == Some(mac) {
            return false;
        }
        self.neighbors.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(ip, mac);
            m
        });
        true
    }

    /// The outer-header parameters of a tunnelled copy to `chassis`.
    pub fn encap(&self, chassis: &RemoteEndpoint, t: &TunnelOut) -> Result<Encap, NextHopError> {
        let hop = self.next_hop(chassis.ip)?;
        let dst_mac = self.neighbor(hop).ok_or(NextHopError::Unresolved(hop))?;
        Ok(Encap {
            src_mac: self.config.mac,
            dst_mac,
            src_ip: IpAddr::V4(self.config.ip),
            dst_ip: chassis.ip,
            vni: t.vni,
            metadata: OvnMetadata {
                ingress_port: t.ingress,
                egress_port: t.egress,
            },
            udp_checksum: chassis.csum,
            flow_hash: Some(t.flow_hash),
        })
    }

    /// Handles a frame received on the uplink if it is ARP: learns the
    /// sender when it is an on-link neighbour, and answers a request for
    /// the tunnel address into `out`.
    pub fn handle_arp(&self, frame: &[u8], out: &mut [u8]) -> ArpOutcome {
        let Ok(eth) = ethernet::Packet::new_checked(frame) else {
            return ArpOutcome::NotArp;
        };
        if eth.ethertype() != ethertype::ARP {
            return ArpOutcome::NotArp;
        }
        let Ok(a) = arp::Packet::new_checked(eth.payload()) else {
            return ArpOutcome::Malformed;
        };
        self.learn(a.spa(), a.sha());
        if a.oper() == arp::OP_REQUEST && a.tpa() == self.config.ip {
            return match self.build_arp(arp::OP_REPLY, a.sha(), a.spa(), out) {
                Some(n) => ArpOutcome::Reply(n),
                None => ArpOutcome::Consumed,
            };
        }
        ArpOutcome::Consumed
    }

    /// Builds a broadcast ARP request for `target` into `out`.
    pub fn arp_request(&self, target: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
        self.build_arp(arp::OP_REQUEST, [0; 6], target, out)
    }

    fn build_arp(&self, op: u16, tha: MacAddr, tpa: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
        let frame = out.get_mut(..ARP_FRAME_LEN)?;
        let (eh, body) = frame.split_at_mut(ethernet::HEADER_LEN);
        let mut e = ethernet::Packet::new_unchecked(eh);
        e.set_dst_addr(if op == arp::OP_REQUEST {
            BROADCAST
        } else {
            tha
        });
        e.set_src_addr(self.config.mac);
        e.set_ethertype(ethertype::ARP);
        let mut a = arp::Packet::new_unchecked(body);
        a.set_ethernet_ipv4_format();
        a.set_oper(op);
        a.set_sha(self.config.mac);
        a.set_spa(self.config.ip);
        a.set_tha(tha);
        a.set_tpa(tpa);
        Some(ARP_FRAME_LEN)
    }
}

/// Per-lcore memory of the ARP requests sent, so that a worker asks for an
/// unresolved next hop at most once per interval.
#[derive(Debug, Default)]
pub struct ArpThrottle {
    last: HashMap<Ipv4Addr, u64>,
}

impl ArpThrottle {
    /// Whether to send a request for `ip` at time `now` (any clock), at
    /// least `interval` after the last one; records it when so.
    pub fn should_request(&mut self, ip: Ipv4Addr, now: u64, interval: u64) -> bool {
        match self.last.get(&ip) {
            Some(&t) if now.wrapping_sub(t) < interval => false,
            _ => {
                if self.last.len() >= 1024 {
                    self.last.clear();
                }
                self.last.insert(ip, now);
                true
            }
        }
    }
}

/// A shared underlay.
pub type SharedUnderlay = Arc<Underlay>;

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = [2, 0, 0, 0, 0, 1];
    const PEER: MacAddr = [2, 0, 0, 0, 0, 2];

    fn underlay(gateway: Option<Ipv4Addr>) -> Underlay {
        Underlay::new(UnderlayConfig {
            uplink: 0,
            mac: MAC,
            ip: Ipv4Addr::new(192, 168, 50, 1),
            prefix: 24,
            gateway,
            mtu: 1500,
        })
    }

    fn endpoint(ip: &str) -> RemoteEndpoint {
        RemoteEndpoint {
            name: "hv2".into(),
            ip: ip.parse().unwrap(),
            dst_port: 6081,
            csum: true,
        }
    }

    const T: TunnelOut = TunnelOut {
        chassis: 0,
        flow_hash: 0x1234_5678,
        vni: 7,
        ingress: 1,
        egress: 2,
    };

    #[test]
    fn next_hop_on_link_through_gateway_or_none() {
        let u = underlay(None);
        assert_eq!(
            u.next_hop("192.168.50.9".parse().unwrap()),
            Ok(Ipv4Addr::new(192, 168, 50, 9))
        );
        assert_eq!(
            u.next_hop("10.1.1.1".parse().unwrap()),
            Err(NextHopError::NoRoute("10.1.1.1".parse().unwrap()))
        );
        assert!(u.next_hop("2001:db8::1".parse().unwrap()).is_err());
        let g = underlay(Some(Ipv4Addr::new(192, 168, 50, 254)));
        assert_eq!(
            g.next_hop("10.1.1.1".parse().unwrap()),
            Ok(Ipv4Addr::new(192, 168, 50, 254))
        );
    }

    #[test]
    fn arp_request_answered_and_sender_learned() {
        let u = underlay(None);
        let peer = Underlay::new(UnderlayConfig {
            mac: PEER,
            ip: Ipv4Addr::new(192, 168, 50, 2),
            ..u.config
        });
        let mut req = [0u8; 64];
        let n = peer.arp_request(u.config.ip, &mut req).unwrap();
        let mut out = [0u8; 64];
        let ArpOutcome::Reply(len) = u.handle_arp(&req[..n], &mut out) else {
            panic!("no reply");
        };
        assert_eq!(u.neighbor(peer.config.ip), Some(PEER));
        // The peer learns us from the reply, which it does not answer.
        assert_eq!(peer.handle_arp(&out[..len], &mut req), ArpOutcome::Consumed);
        assert_eq!(peer.neighbor(u.config.ip), Some(MAC));
        let e = ethernet::Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(e.dst_addr(), PEER);
        let a = arp::Packet::new_checked(e.payload()).unwrap();
        assert_eq!(a.oper(), arp::OP_REPLY);
        assert_eq!(a.spa(), u.config.ip);
        // A request for another address is only learned from.
        let other = Ipv4Addr::new(192, 168, 50, 3);
        let n = peer.arp_request(other, &mut req).unwrap();
        assert_eq!(u.handle_arp(&req[..n], &mut out), ArpOutcome::Consumed);
        // Not ARP, and ARP cut short.
        let mut ip = req;
        ip[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(u.handle_arp(&ip[..n], &mut out), ArpOutcome::NotArp);
        assert_eq!(u.handle_arp(&req[..20], &mut out), ArpOutcome::Malformed);
    }

    #[test]
    fn learning_refuses_off_link_own_and_multicast() {
        let u = underlay(None);
        assert!(!u.learn(Ipv4Addr::new(10, 0, 0, 1), PEER));
        assert!(!u.learn(u.config.ip, PEER));
        assert!(!u.learn(Ipv4Addr::new(192, 168, 50, 2), [1, 0, 0x5e, 0, 0, 1]));
        assert!(u.learn(Ipv4Addr::new(192, 168, 50, 2), PEER));
        assert!(!u.learn(Ipv4Addr::new(192, 168, 50, 2), PEER), "unchanged");
        assert!(u.learn(Ipv4Addr::new(192, 168, 50, 2), [2, 0, 0, 0, 0, 9]));
        assert_eq!(u.neighbors().len(), 1);
    }

    #[test]
    fn encap_needs_a_resolved_next_hop() {
        let u = underlay(None);
        let hv2 = endpoint("192.168.50.2");
        assert_eq!(
            u.encap(&hv2, &T),
            Err(NextHopError::Unresolved(Ipv4Addr::new(192, 168, 50, 2)))
        );
        u.learn(Ipv4Addr::new(192, 168, 50, 2), PEER);
        let e = u.encap(&hv2, &T).unwrap();
        assert_eq!((e.src_mac, e.dst_mac), (MAC, PEER));
        assert_eq!(e.vni, 7);
        assert_eq!((e.metadata.ingress_port, e.metadata.egress_port), (1, 2));
        assert!(e.udp_checksum);
        assert!(matches!(
            u.encap(&endpoint("10.9.9.9"), &T),
            Err(NextHopError::NoRoute(_))
        ));
    }

    #[test]
    fn throttle_asks_once_per_interval() {
        let mut t = ArpThrottle::default();
        let ip = Ipv4Addr::new(192, 168, 50, 2);
        assert!(t.should_request(ip, 100, 50));
        assert!(!t.should_request(ip, 120, 50));
        assert!(t.should_request(Ipv4Addr::new(192, 168, 50, 3), 120, 50));
        assert!(t.should_request(ip, 150, 50));
    }
}
