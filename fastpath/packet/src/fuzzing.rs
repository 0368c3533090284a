//! The fuzz body for arbitrary frames: parse, then re-check the invariants the
//! fastpath relies on. Shared by the cargo-fuzz target `parse_frame` and by a
//! unit test that runs it over the seed corpus and deterministic mutations.
//!
//! This module owns invariant checks only; it panics (which is what a fuzzer
//! wants) exactly when the packet layer breaks a promise.

use crate::flowkey::flags;
use crate::{
    extract, extract_hashed, geneve, icmpv6, ip_proto, ipv4, ipv6, tcp, udp, FlowKey, FragState,
    Layout, ParseError,
};

/// Logical port used by the fuzz body.
const FUZZ_IN_PORT: u16 = 0x1234;

/// Parses `data` as a frame and checks invariants; panics on a violation.
pub fn fuzz_parse(data: &[u8]) {
    check_frame(data, 0);
    // The views must also hold up on their own against arbitrary bytes.
    exercise_views(data);
}

fn check_frame(data: &[u8], depth: u8) {
    // What the worker parses with: the same answer as `extract`, and the
    // key's own hash.
    let mut hashed = (FlowKey::zeroed(), Layout::default());
    let hash = extract_hashed(data, FUZZ_IN_PORT, &mut hashed.0, &mut hashed.1);
    let (key, layout) = match extract(data, FUZZ_IN_PORT) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.index() < ParseError::COUNT);
            assert_eq!(ParseError::ALL[e.index()], e);
            assert!(!e.name().is_empty());
            assert_eq!(hash, Err(e));
            return;
        }
    };
    assert_eq!(hash, Ok(key.hash()));
    assert_eq!(hashed, (key, layout));
    // Deterministic.
    assert_eq!(extract(data, FUZZ_IN_PORT), Ok((key, layout)));

    assert!(
        layout.is_consistent(data.len()),
        "{layout:?} for {} bytes",
        data.len()
    );
    assert!(layout.l2_header(data).is_some());
    assert!(layout.l3_header(data).is_some());
    assert!(layout.l4_header(data).is_some());
    assert!(layout.l3_packet(data).is_some());
    assert!(layout.l4_packet(data).is_some());
    assert!(layout.payload(data).is_some());
    assert!(layout.padding(data).is_some());

    assert_eq!(key.in_port(), FUZZ_IN_PORT);
    assert_eq!(&key.as_bytes()[crate::flowkey::field::PAD], &[0u8; 4]);
    assert_eq!(key.as_bytes()[crate::flowkey::field::RESERVED], 0);
    assert!(FragState::from_bits(key.frag().bits()).is_some());
    assert_eq!(key.eth_dst()[..], data[0..6]);
    assert_eq!(key.eth_src()[..], data[6..12]);
    let fl = key.flags();
    assert!(
        (fl & flags::IPV4 != 0) as u8
            + (fl & flags::IPV6 != 0) as u8
            + (fl & flags::ARP != 0) as u8
            <= 1
    );
    assert_eq!(fl & flags::VLAN != 0, layout.vlan_tags >= 1);
    assert_eq!(fl & flags::INNER_VLAN != 0, layout.vlan_tags >= 2);
    if key.frag() == FragState::Later {
        assert!(!key.has_l4());
        assert_eq!((key.tp_src(), key.tp_dst(), key.tcp_flags()), (0, 0, 0));
    }
    if !key.has_l4() {
        assert_eq!(layout.l4, layout.payload);
    }
    if key.is_ipv4() {
        assert_eq!(key.eth_type(), crate::ethernet::ethertype::IPV4);
        assert_eq!(key.src()[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        let l3 = layout.l3_packet(data).unwrap_or_default();
        let ip = ipv4::Packet::new_checked(l3).expect("IPv4 view rechecks");
        assert_eq!(ip.payload().len(), (layout.end - layout.l4) as usize);
    }
    if key.is_ipv6() {
        assert_eq!(key.eth_type(), crate::ethernet::ethertype::IPV6);
        let l3 = layout.l3_packet(data).unwrap_or_default();
        let ip = ipv6::Packet::new_checked(l3).expect("IPv6 view rechecks");
        let up = ip.upper_layer().expect("IPv6 chain rechecks");
        assert_eq!(up.protocol, key.ip_proto());
    }
    if key.has_l4() {
        let l4 = layout.l4_packet(data).unwrap_or_default();
        match key.ip_proto() {
            ip_proto::TCP => {
                let t = tcp::Packet::new_checked(l4).expect("TCP view rechecks");
                assert_eq!((t.src_port(), t.dst_port()), (key.tp_src(), key.tp_dst()));
                assert_eq!(t.header_len(), (layout.payload - layout.l4) as usize);
                check_port_rewrite(data, &layout, key.ip_proto());
            }
            ip_proto::UDP => {
                let u = udp::Packet::new_checked(l4).expect("UDP view rechecks");
                assert_eq!((u.src_port(), u.dst_port()), (key.tp_src(), key.tp_dst()));
                check_port_rewrite(data, &layout, key.ip_proto());
                if u.dst_port() == udp::GENEVE_PORT && depth == 0 {
                    check_geneve(u.payload(), depth);
                }
            }
            ip_proto::ICMPV6 => {
                let i = icmpv6::Packet::new_checked(l4).expect("ICMPv6 view rechecks");
                assert_eq!(i.msg_type(), key.icmp_type());
                if !i.is_nd() {
                    assert_eq!(key.nd_target_octets(), [0; 16]);
                }
            }
            _ => {}
        }
    }
}

/// Rewriting L4 ports in place through the layout changes exactly the ports.
fn check_port_rewrite(data: &[u8], layout: &crate::Layout, proto: u8) {
    let mut copy = data.to_vec();
    let Some(l4) = layout.l4_packet_mut(&mut copy) else {
        panic!("layout L4 out of range");
    };
    match proto {
        ip_proto::TCP => {
            let mut t = tcp::Packet::new_unchecked(l4);
            t.set_src_port(0xfeed);
            t.set_dst_port(0xbeef);
        }
        _ => {
            let mut u = udp::Packet::new_unchecked(l4);
            u.set_src_port(0xfeed);
            u.set_dst_port(0xbeef);
        }
    }
    let (before, _) = extract(data, FUZZ_IN_PORT).expect("parsed before");
    let (mut after, after_layout) =
        extract(&copy, FUZZ_IN_PORT).expect("still parses after a port rewrite");
    assert_eq!(after_layout, *layout);
    assert_eq!((after.tp_src(), after.tp_dst()), (0xfeed, 0xbeef));
    after.set_tp_src(before.tp_src());
    after.set_tp_dst(before.tp_dst());
    assert_eq!(after, before);
}

fn check_geneve(data: &[u8], depth: u8) {
    let Ok(g) = geneve::Packet::new_checked(data) else {
        return;
    };
    assert!(g.header_len() <= data.len());
    let mut n = 0;
    for opt in g.options() {
        match opt {
            Ok(o) => {
                assert!(o.offset + geneve::OPTION_HEADER_LEN + o.data.len() <= g.header_len());
                n += 1;
            }
            Err(e) => assert_eq!(e, ParseError::TruncatedGeneveOption),
        }
        assert!(n <= 64, "more options than fit in 252 bytes");
    }
    if let Ok(Some(meta)) = g.ovn_metadata() {
        assert!(meta.ingress_port <= 0x7fff);
        assert_eq!(geneve::OvnMetadata::from_bytes(meta.to_bytes()), meta);
    }
    check_frame(g.payload(), depth + 1);
}

/// Runs every view's checked constructor and accessors over raw bytes.
fn exercise_views(data: &[u8]) {
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = (
            p.options(),
            p.payload(),
            p.compute_checksum(),
            p.frag_state(),
        );
    }
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        if let Ok(up) = p.upper_layer() {
            assert!(up.offset <= ipv6::HEADER_LEN + p.payload_len() as usize);
        }
    }
    if let Ok(p) = tcp::Packet::new_checked(data) {
        let _ = (
            p.options(),
            p.payload(),
            p.compute_checksum_v4([0; 4], [0; 4]),
        );
    }
    if let Ok(p) = udp::Packet::new_checked(data) {
        let _ = (p.payload(), p.compute_checksum_v6(&[0; 16], &[0; 16]));
    }
    if let Ok(p) = icmpv6::NdMessage::new_checked(data) {
        let _ = (p.target_addr(), p.link_layer());
    }
    if let Ok(p) = geneve::Packet::new_checked(data) {
        let _ = (p.check_options(), p.ovn_metadata(), p.payload());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: [(&str, &[u8]); 6] = [
        (
            "seed-arp-request",
            include_bytes!("../fuzz/corpus/parse_frame/seed-arp-request"),
        ),
        (
            "seed-tcp-syn-v4",
            include_bytes!("../fuzz/corpus/parse_frame/seed-tcp-syn-v4"),
        ),
        (
            "seed-udp-v6-hbh-frag",
            include_bytes!("../fuzz/corpus/parse_frame/seed-udp-v6-hbh-frag"),
        ),
        (
            "seed-vlan-icmp-echo",
            include_bytes!("../fuzz/corpus/parse_frame/seed-vlan-icmp-echo"),
        ),
        (
            "seed-geneve-ovn",
            include_bytes!("../fuzz/corpus/parse_frame/seed-geneve-ovn"),
        ),
        (
            "seed-nd-ns",
            include_bytes!("../fuzz/corpus/parse_frame/seed-nd-ns"),
        ),
    ];

    #[test]
    fn seed_corpus_is_the_fixtures() {
        use crate::fixtures::*;
        let fixtures: [&[u8]; 6] = [
            &ARP_REQUEST,
            &TCP_SYN_V4,
            &UDP_V6_HBH_FRAG,
            &VLAN_ICMP_ECHO,
            &GENEVE_OVN,
            &ND_NS,
        ];
        for ((name, seed), fixture) in SEEDS.iter().zip(fixtures) {
            assert_eq!(*seed, fixture, "{name}");
            assert!(extract(seed, 0).is_ok(), "{name} parses");
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const INTERESTING: [u8; 12] = [
        0x00, 0x01, 0x02, 0x05, 0x06, 0x11, 0x2c, 0x3a, 0x45, 0x60, 0x7f, 0xff,
    ];

    fn mutate(rng: &mut XorShift, frame: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(4) {
            match rng.below(7) {
                0 if !frame.is_empty() => {
                    let i = rng.below(frame.len());
                    frame[i] ^= 1 << rng.below(8);
                }
                1 if !frame.is_empty() => {
                    let i = rng.below(frame.len());
                    frame[i] = rng.next() as u8;
                }
                2 if !frame.is_empty() => {
                    let i = rng.below(frame.len());
                    frame[i] = INTERESTING[rng.below(INTERESTING.len())];
                }
                3 => {
                    let n = rng.below(frame.len() + 1);
                    frame.truncate(n);
                }
                4 => {
                    let i = rng.below(frame.len() + 1);
                    frame.insert(i, rng.next() as u8);
                }
                5 if !frame.is_empty() => {
                    let i = rng.below(frame.len());
                    frame.remove(i);
                }
                _ => {
                    // Length-like fields: overwrite a 16-bit word with a small value.
                    if frame.len() >= 2 {
                        let i = rng.below(frame.len() - 1);
                        let v = rng.below(128) as u16;
                        frame[i..i + 2].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
    }

    #[test]
    fn seeds_and_mutations_keep_invariants() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut errors = [0u32; ParseError::COUNT];
        let mut ok = 0u32;
        for (_, seed) in SEEDS {
            fuzz_parse(seed);
        }
        for i in 0..200_000u32 {
            let (_, seed) = SEEDS[i as usize % SEEDS.len()];
            let mut frame = seed.to_vec();
            mutate(&mut rng, &mut frame);
            fuzz_parse(&frame);
            match extract(&frame, 0) {
                Ok(_) => ok += 1,
                Err(e) => errors[e.index()] += 1,
            }
        }
        // The mutations reach both outcomes and a good spread of reasons.
        assert!(ok > 10_000, "only {ok} mutated frames parsed");
        let reached = errors.iter().filter(|&&n| n > 0).count();
        eprintln!(
            "mutations: {ok} parsed; drop reasons reached: {reached} of {}",
            ParseError::COUNT
        );
        for e in ParseError::ALL {
            eprintln!("  {:32} {}", e.name(), errors[e.index()]);
        }
        assert!(
            reached >= 20,
            "only {reached} drop reasons reached: {errors:?}"
        );
    }
}
