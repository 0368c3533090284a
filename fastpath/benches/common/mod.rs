//! What the benchmarks (and a test over the same tables) share: loading a
//! program from a saved table slot, and the `acl-lb` topology's client
//! frame. Not every user uses every helper.
#![allow(dead_code)]

use fastpath::ovn::Program;

/// The program of a table slot saved with `fp-tables slot` (the bytes
/// from the slot header to its used length), as generation 1.
pub fn program(slot: &[u8]) -> Program {
    // The validator wants 8-byte alignment.
    let mut words = vec![0u64; slot.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..slot.len()].copy_from_slice(slot);
    let bytes = &bytes[..slot.len()];
    let validated = fastpath_tables::validate::validate_slot(bytes).expect("the slot validates");
    Program::load(&validated.sections(bytes), 1).expect("the program loads")
}

/// A UDP frame of the `acl-lb` topology's client `p1` (10.0.0.11, behind
/// the gateway's MAC) to the load balancer's VIP 10.96.0.10, from
/// `sport` to `dport`.
pub fn client_to_vip(sport: u16, dport: u16) -> Vec<u8> {
    const GW0: [u8; 6] = [0x00, 0x00, 0x00, 0x00, 0xff, 0x01];
    const P1: [u8; 6] = [0x50, 0x54, 0x00, 0x00, 0x00, 0x01];
    udp_frame(GW0, P1, [10, 0, 0, 11], [10, 96, 0, 10], sport, dport)
}

/// The reply of the `acl-lb` topology's backend `addr` (on `p3`) to the
/// client's port `client_port`, from the VIP's port `port`.
pub fn backend_reply(addr: [u8; 4], port: u16, client_port: u16) -> Vec<u8> {
    const GW1: [u8; 6] = [0x00, 0x00, 0x00, 0x00, 0xff, 0x02];
    const P3: [u8; 6] = [0x50, 0x54, 0x00, 0x00, 0x00, 0x03];
    udp_frame(GW1, P3, addr, [10, 0, 0, 11], port, client_port)
}

/// A 64-byte Ethernet/IPv4/UDP frame with valid IPv4 and UDP checksums.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    use fastpath_packet::checksum;
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = 18u16;
    let total: u16 = 20 + 8 + payload;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let cs = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&cs.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(8 + usize::from(payload));
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(8 + payload).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.resize(8 + usize::from(payload), 0);
    let pseudo = checksum::pseudo_header_v4(src, dst, 17, 8 + payload);
    let cs = checksum::finish(checksum::sum(pseudo, &udp));
    udp[6..8].copy_from_slice(&(if cs == 0 { 0xffff } else { cs }).to_be_bytes());
    f.extend_from_slice(&udp);
    f.resize(64, 0);
    f
}
