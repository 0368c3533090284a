//! The Internet checksum (RFC 1071), pseudo-header sums for TCP/UDP/ICMPv6 over
//! IPv4 and IPv6, and RFC 1624 incremental updates for in-place rewrites (NAT,
//! TTL decrement).
//!
//! Sums are carried as `u32` partial one's-complement sums; [`fold`] reduces a
//! sum to 16 bits and [`finish`] gives the value to store in a header. This
//! module owns arithmetic only and knows nothing of header layouts.

/// The one's-complement partial sum of `data` (big-endian 16-bit words; an odd
/// trailing byte is padded with zero), added to `initial`.
#[inline]
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    let mut acc: u64 = initial as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = rest.remainder() {
        acc += (*last as u64) << 8;
    }
    // Fold the 64-bit accumulator to a 32-bit value that still carries the sum.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = acc as u32;
    (acc & 0xffff) + (acc >> 16)
}

/// Folds a partial sum to 16 bits (end-around carry).
#[inline]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for a partial sum: the complement of the folded sum.
#[inline]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data` (the value to store in a checksum field that
/// was zero while summing).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// True if `data`, checksum field included, sums to 0xffff.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(0, data)) == 0xffff
}

/// Partial sum of the IPv4 pseudo-header for an upper-layer length `len`.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u32 {
    let s = u16::from_be_bytes([src[0], src[1]]) as u32
        + u16::from_be_bytes([src[2], src[3]]) as u32
        + u16::from_be_bytes([dst[0], dst[1]]) as u32
        + u16::from_be_bytes([dst[2], dst[3]]) as u32;
    s + protocol as u32 + len as u32
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1) for an upper-layer
/// length `len`.
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u32 {
    let s = sum(sum(0, src), dst);
    s + (len >> 16) + (len & 0xffff) + next_header as u32
}

/// RFC 1624 eqn. 3: the new checksum field after a 16-bit word of the covered
/// data changed from `old` to `new`.
#[inline]
pub const fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let s = (!checksum) as u32 + (!old) as u32 + new as u32;
    !fold(s)
}

/// RFC 1624 update for a 32-bit value (e.g. an IPv4 address) changing.
#[inline]
pub const fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let s = (!checksum) as u32
        + (!(old >> 16) & 0xffff)
        + (!old & 0xffff)
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

/// RFC 1624 update for an arbitrary even-length field changing from `old` to
/// `new` (e.g. a 16-byte IPv6 address or a 6-byte MAC). Returns `None` if the
/// lengths differ or are odd.
#[inline]
pub fn update_bytes(checksum: u16, old: &[u8], new: &[u8]) -> Option<u16> {
    if old.len() != new.len() || !old.len().is_multiple_of(2) {
        return None;
    }
    let mut s = (!checksum) as u32;
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        s += (!u16::from_be_bytes([o[0], o[1]])) as u32;
        s += u16::from_be_bytes([n[0], n[1]]) as u32;
        s = (s & 0xffff) + (s >> 16);
    }
    Some(!fold(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        // Every split of the input into the 8-byte and 2-byte loops agrees
        // with a plain word-at-a-time sum.
        let data: Vec<u8> = (0..61u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        for n in 0..data.len() {
            let mut s: u32 = 0;
            for c in data[..n].chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    (c[0] as u16) << 8
                };
                s += w as u32;
            }
            assert_eq!(fold(sum(0, &data[..n])), fold(s), "len {n}");
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // A classic example header; checksum field 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&hdr));
        hdr[0] ^= 1;
        assert!(!verify(&hdr));
    }

    #[test]
    fn incremental_updates_match_recompute() {
        let mut data: Vec<u8> = (0..40u8)
            .map(|i| i.wrapping_mul(91).wrapping_add(3))
            .collect();
        let c0 = checksum(&data);

        let old16 = u16::from_be_bytes([data[6], data[7]]);
        data[6..8].copy_from_slice(&0xbeefu16.to_be_bytes());
        let c1 = update_u16(c0, old16, 0xbeef);
        assert_eq!(c1, checksum(&data));

        let old32 = u32::from_be_bytes([data[12], data[13], data[14], data[15]]);
        data[12..16].copy_from_slice(&0x0a00_0001u32.to_be_bytes());
        let c2 = update_u32(c1, old32, 0x0a00_0001);
        assert_eq!(c2, checksum(&data));

        let old: [u8; 16] = data[20..36].try_into().unwrap();
        let new = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        data[20..36].copy_from_slice(&new);
        let c3 = update_bytes(c2, &old, &new).unwrap();
        assert_eq!(c3, checksum(&data));
        assert_eq!(update_bytes(c3, &[1, 2], &[3]), None);
    }

    #[test]
    fn pseudo_header_sums() {
        let v4 = pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 20);
        let mut bytes = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 6, 0, 20];
        assert_eq!(fold(v4), fold(sum(0, &bytes)));
        let src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let v6 = pseudo_header_v6(&src, &dst, 17, 0x0001_0008);
        bytes.clear();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&0x0001_0008u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(fold(v6), fold(sum(0, &bytes)));
    }
}
