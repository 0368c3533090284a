//! The logical flow vector as the interpreter holds it: 24 aligned words
//! (so a classifier masks whole words) over the byte layout of
//! `fastpath_tables::ovn::vector`. It owns construction from a flow key and
//! the typed accessors the interpreter needs; it must not interpret.

use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::FlowKey;
use fastpath_tables::ovn::{vector, FieldSlice};

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

    /// Reads a slice.
    #[inline]
    pub fn read(&self, s: &FieldSlice) -> u128 {
        s.read(self.bytes())
    }

    /// Writes a slice.
    #[inline]
    pub fn write(&mut self, s: &FieldSlice, value: u128) {
        s.write(self.bytes_mut(), value)
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

    /// Clears every register, flag, ct field and the outport (crossing a
    /// patch port, as OVN does), then enters `datapath` through `inport`.
    pub fn enter(&mut self, datapath: u32, inport: u32) {
        let b = self.bytes_mut();
        b[vector::DATAPATH.start..vector::PKT_MARK.start].fill(0);
        self.set_u32(vector::DATAPATH.start, datapath);
        self.set_u32(vector::INPORT.start, inport);
    }
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
}
