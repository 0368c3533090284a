//! An independent decoder checks our Geneve encapsulation: frames built by
//! `fastpath::tunnel::encapsulate` are written to a pcap file and read back
//! by tshark, whose Geneve dissector must see OVN's VNI, option class 0x0102,
//! type 0x80 and the logical port keys in the option data.

#[path = "common/tshark.rs"]
mod tshark;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use fastpath::tunnel::{decapsulate, encapsulate, Encap, LocalEndpoint};
use fastpath_packet::geneve::OvnMetadata;

/// Writes frames as a classic pcap file (microsecond timestamps, Ethernet).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    out.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    out.extend_from_slice(&65535u32.to_le_bytes()); // snap length
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes()); // seconds
        out.extend_from_slice(&0u32.to_le_bytes()); // microseconds
        out.extend_from_slice(&(f.len() as u32).to_le_bytes()); // captured
        out.extend_from_slice(&(f.len() as u32).to_le_bytes()); // on the wire
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).expect("write pcap");
}

/// A minimal inner Ethernet/IPv4/UDP frame.
fn inner(sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 4];
    f[..6].copy_from_slice(&[0x0a, 0x58, 0x0a, 0x10, 0, 1]);
    f[6..12].copy_from_slice(&[0x0a, 0x58, 0x0a, 0x10, 0, 5]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&32u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 16, 0, 5]);
    f[30..34].copy_from_slice(&[10, 16, 1, 9]);
    let c = fastpath_packet::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[38..40].copy_from_slice(&12u16.to_be_bytes());
    f[42..46].copy_from_slice(b"ping");
    f
}

struct Case {
    encap: Encap,
    inner: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let v4 = Encap {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        vni: 7,
        metadata: OvnMetadata {
            ingress_port: 3,
            egress_port: 5,
        },
        udp_checksum: false,
        flow_hash: None,
    };
    vec![
        Case {
            encap: v4,
            inner: inner(40000),
        },
        Case {
            encap: Encap {
                vni: 0xab_cdef,
                metadata: OvnMetadata {
                    ingress_port: 0x7fff,
                    egress_port: 0x8001,
                },
                udp_checksum: true,
                ..v4
            },
            inner: inner(40001),
        },
        Case {
            encap: Encap {
                src_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                dst_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
                vni: 4096,
                metadata: OvnMetadata {
                    ingress_port: 1,
                    egress_port: 0xffff,
                },
                udp_checksum: true,
                ..v4
            },
            inner: inner(40002),
        },
    ]
}

fn tshark_present() -> bool {
    Command::new("tshark").arg("--version").output().is_ok()
}

#[test]
fn tshark_decodes_ovn_geneve() {
    if !tshark_present() {
        eprintln!("SKIPPED: tshark is not installed (Debian package tshark)");
        return;
    }
    let cases = cases();
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| {
            let mut out = vec![0u8; 256];
            let n = encapsulate(&c.inner, &c.encap, &mut out).expect("encapsulate");
            out.truncate(n);
            out
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let pcap = dir.path().join("geneve.pcap");
    write_pcap(&pcap, &frames);
    let rows = tshark::fields(
        &pcap,
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ],
        &[
            "geneve.vni",
            "geneve.option.class",
            "geneve.option.type",
            "geneve.option.unknown.data",
            "geneve.flags.critical",
            "udp.dstport",
            "udp.srcport",
            "ip.checksum.status",
            "udp.checksum.status",
            "ip.flags.df",
            "ip.ttl",
            "geneve.proto_type",
        ],
    );
    assert_eq!(rows.len(), cases.len(), "tshark rows:\n{rows:?}");
    for ((f, case), frame) in rows.iter().zip(&cases).zip(&frames) {
        let line = f.join("|");
        let num = tshark::number;
        assert_eq!(num(&f[0]), u64::from(case.encap.vni), "VNI in {line}");
        assert_eq!(num(&f[1]), 0x0102, "option class in {line}");
        assert_eq!(num(&f[2]), 0x80, "option type in {line}");
        let (reserved, ingress, egress) = tshark::ovn_option(&f[3]);
        assert_eq!(reserved, 0, "reserved bit");
        assert_eq!(
            ingress,
            u32::from(case.encap.metadata.ingress_port),
            "ingress key in {line}"
        );
        assert_eq!(
            egress,
            u32::from(case.encap.metadata.egress_port),
            "egress key in {line}"
        );
        assert!(matches!(f[4].as_str(), "1" | "True"), "C bit in {line}");
        assert_eq!(num(&f[5]), 6081);
        assert!(
            (32768..=60999).contains(&num(&f[6])),
            "source port in {line}"
        );
        assert_eq!(num(&f[11]), 0x6558, "protocol type in {line}");
        if case.encap.src_ip.is_ipv4() {
            // tshark's checksum status: 0 bad, 1 good, 2 unverified, 3 not present.
            assert_eq!(f[7], "1", "IPv4 header checksum in {line}");
            assert!(matches!(f[9].as_str(), "1" | "True"), "DF in {line}");
            assert_eq!(num(&f[10]), 64, "TTL in {line}");
        }
        let udp_status = if case.encap.udp_checksum { "1" } else { "3" };
        assert_eq!(f[8], udp_status, "UDP checksum in {line}");
        // And our own decoder agrees with itself on the same bytes.
        let local = LocalEndpoint {
            ipv4: Some(Ipv4Addr::new(192, 0, 2, 2)),
            ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        };
        let d = decapsulate(frame, &local).expect("decapsulate");
        assert_eq!(d.metadata, case.encap.metadata);
        assert_eq!(d.inner(frame), Some(&case.inner[..]));
    }
}
