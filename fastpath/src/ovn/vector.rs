//! The logical flow vector as the interpreter holds it: 24 aligned words
//! (so a classifier masks whole words) over the byte layout of
//! `fastpath_tables::ovn::vector`. It owns construction from a flow key and
//! the typed accessors the interpreter needs; it must not interpret.

use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::FlowKey;
use fastpath_tables::ovn::{vector, width_mask, FieldSlice};

/// The vector: flow key bytes plus OVN metadata and registers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowVector {
    words: [u64; vector::WORDS],
}

impl std::fmt::Debug for FlowVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self.bytes().iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "FlowVector({hex})")
    }
}

impl Default for FlowVector {
    fn default() -> Self {
        FlowVector {
            words: [0; vector::WORDS],
        }
    }
}

/// Bit 12 of `vlan.tci` as OVS presents it: a tag is present.
const VLAN_CFI: u16 = 0x1000;

impl FlowVector {
    /// The vector of a packet entering datapath `datapath` through logical
    /// port `inport`; registers, flags and outport zero.
    pub fn from_key(key: &FlowKey, datapath: u32, inport: u32) -> FlowVector {
        let mut v = FlowVector::default();
        v.bytes_mut()[vector::KEY].copy_from_slice(key.as_bytes());
        v.set_u32(vector::DATAPATH.start, datapath);
        v.set_u32(vector::INPORT.start, inport);
        if key.flags() & flags::VLAN != 0 {
            let tci = key.vlan_tci() | VLAN_CFI;
            v.bytes_mut()[vector::VLAN_TCI].copy_from_slice(&tci.to_be_bytes());
        }
        v
    }

    /// The words (for classifier masks).
    #[inline]
    pub fn words(&self) -> &[u64; vector::WORDS] {
        &self.words
    }

    /// The bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }

    /// The bytes, writable.
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.words)
    }

    /// The flow-key part.
    pub fn key(&self) -> FlowKey {
        let mut b = [0u8; FlowKey::LEN];
        b.copy_from_slice(&self.bytes()[vector::KEY]);
        FlowKey::from_bytes(b)
    }

    /// Reads a slice. The bits of a slice that fit in one 8-byte window
    /// (every slice up to 57 bits wide: registers, flags, ports, MACs,
    /// IPv4 addresses in their 16-byte containers) are read as one
    /// big-endian word; others byte by byte.
    #[inline]
    pub fn read(&self, s: &FieldSlice) -> u128 {
        match window(s) {
            Some((start, shift, false)) => {
                u128::from(self.be_word(start) >> shift) & width_mask(s.width)
            }
            Some((start, shift, true)) => (self.be_wide(start) >> shift) & width_mask(s.width),
            None => s.read(self.bytes()),
        }
    }

    /// Writes a slice (the value truncated to its width), as
    /// [`FlowVector::read`] reads it.
    #[inline]
    pub fn write(&mut self, s: &FieldSlice, value: u128) {
        match window(s) {
            Some((start, shift, false)) => {
                let mask = (width_mask(s.width) as u64) << shift;
                let word = self.be_word(start);
                let next = (word & !mask) | (((value as u64) << shift) & mask);
                self.bytes_mut()[start..start + 8].copy_from_slice(&next.to_be_bytes());
            }
            Some((start, shift, true)) => {
                let mask = width_mask(s.width) << shift;
                let word = self.be_wide(start);
                let next = (word & !mask) | ((value << shift) & mask);
                self.bytes_mut()[start..start + 16].copy_from_slice(&next.to_be_bytes());
            }
            None => s.write(self.bytes_mut(), value),
        }
    }

    /// The big-endian integer of the 16 bytes at `start` (`start + 16 <= LEN`).
    #[inline(always)]
    fn be_wide(&self, start: usize) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.bytes()[start..start + 16]);
        u128::from_be_bytes(b)
    }

    /// The big-endian word of the 8 bytes at `start` (`start + 8 <= LEN`).
    #[inline(always)]
    fn be_word(&self, start: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes()[start..start + 8]);
        u64::from_be_bytes(b)
    }

    /// A big-endian u32 at `offset`.
    #[inline]
    pub fn u32_at(&self, offset: usize) -> u32 {
        let b = self.bytes();
        u32::from_be_bytes([b[offset], b[offset + 1], b[offset + 2], b[offset + 3]])
    }

    /// Sets a big-endian u32 at `offset`.
    #[inline]
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes_mut()[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
    }

    /// `inport` key.
    pub fn inport(&self) -> u32 {
        self.u32_at(vector::INPORT.start)
    }
    /// `outport` key.
    pub fn outport(&self) -> u32 {
        self.u32_at(vector::OUTPORT.start)
    }
    /// `flags.loopback`.
    pub fn loopback(&self) -> bool {
        self.u32_at(vector::FLAGS.start) & 1 != 0
    }
    /// Bytes of a flow-key field.
    pub fn field(&self, f: std::ops::Range<usize>) -> &[u8] {
        &self.bytes()[f]
    }
    /// A mutable flow-key field.
    pub fn field_mut(&mut self, f: std::ops::Range<usize>) -> &mut [u8] {
        &mut self.bytes_mut()[f]
    }
    /// `eth.src`.
    pub fn eth_src(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(self.field(field::ETH_SRC));
        m
    }
    /// `eth.dst`.
    pub fn eth_dst(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(self.field(field::ETH_DST));
        m
    }
    /// Flow-key flags byte.
    pub fn key_flags(&self) -> u8 {
        self.bytes()[field::FLAGS]
    }

    /// Clears the logical registers `reg0`..`reg9` (keeping flags, ct
    /// fields, inport and outport), as OVN does when a packet passes from
    /// the ingress to the egress pipeline, so that egress behaves the same
    /// for a packet delivered locally and one that arrives by tunnel.
    pub fn clear_registers(&mut self) {
        self.bytes_mut()[vector::XXREG0.start..vector::XREG4.end].fill(0);
    }

    /// Clears every register, flag, ct field and the outport (crossing a
    /// patch port, as OVN does), then enters `datapath` through `inport`.
    pub fn enter(&mut self, datapath: u32, inport: u32) {
        let b = self.bytes_mut();
        b[vector::DATAPATH.start..vector::PKT_MARK.start].fill(0);
        self.set_u32(vector::DATAPATH.start, datapath);
        self.set_u32(vector::INPORT.start, inport);
    }
}

/// The window holding every bit of a slice: its start, the shift of the
/// slice's lowest bit in the window read as a big-endian integer, and
/// whether the window is 16 bytes (the bits span more than 8) rather than
/// 8. `None` when the slice is not valid (the byte-wise path handles it).
#[inline(always)]
fn window(s: &FieldSlice) -> Option<(usize, u32, bool)> {
    let (start, bytes) = (usize::from(s.offset), usize::from(s.bytes));
    let (lo, width) = (usize::from(s.lo), usize::from(s.width));
    if width == 0 || lo + width > bytes * 8 || start + bytes > vector::LEN {
        return None;
    }
    // The byte after the one holding the slice's lowest bit, and the
    // number of bytes from the lowest to the highest bit (at most 16, as
    // the slice lies in an integer of at most 16 bytes).
    let end = start + bytes - lo / 8;
    let span = (lo % 8 + width).div_ceil(8);
    let size = if span > 8 { 16 } else { 8 };
    let first = end.saturating_sub(size);
    Some((
        first,
        ((first + size - end) * 8 + lo % 8) as u32,
        size == 16,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_key_sets_metadata_and_vlan_presence() {
        let mut k = FlowKey::zeroed();
        k.set_eth_type(0x0800);
        k.set_flags(flags::VLAN | flags::IPV4);
        k.set_vlan_tci(5);
        let v = FlowVector::from_key(&k, 7, 3);
        assert_eq!(v.u32_at(vector::DATAPATH.start), 7);
        assert_eq!(v.inport(), 3);
        assert_eq!(&v.bytes()[vector::VLAN_TCI], &[0x10, 0x05]);
        assert_eq!(v.key(), k);
        let mut w = v;
        w.set_u32(vector::OUTPORT.start, 9);
        w.set_u32(vector::FLAGS.start, 1);
        w.enter(2, 1);
        assert_eq!((w.outport(), w.loopback(), w.inport()), (0, false, 1));
        assert_eq!(w.key(), k);
    }

    #[test]
    fn word_reads_and_writes_agree_with_the_byte_loop() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let bytes = (next() % 16 + 1) as u8;
            let width = (next() % u64::from(bytes * 8) + 1) as u8;
            let lo = (next() % u64::from(bytes * 8 - width + 1)) as u8;
            let offset = (next() % (vector::LEN - usize::from(bytes) + 1) as u64) as u16;
            let s = FieldSlice {
                offset,
                bytes,
                lo,
                width,
                reserved: [0; 3],
            };
            assert!(s.is_valid());
            let mut v = FlowVector::default();
            for b in v.bytes_mut() {
                *b = next() as u8;
            }
            let mut reference = v.bytes().to_vec();
            assert_eq!(v.read(&s), s.read(&reference), "{s:?}");
            let value = (u128::from(next()) << 64) | u128::from(next());
            v.write(&s, value);
            s.write(&mut reference, value);
            assert_eq!(v.bytes(), &reference[..], "{s:?}");
        }
    }
}
