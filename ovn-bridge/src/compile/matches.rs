//! Normalised matches into byte tests on the logical flow vector.
//!
//! Owns the mapping of [`Test`]s onto the vector: bit tests through
//! [`base_slot`], port names into port keys, `is_chassis_resident` decided
//! at compile time, negated port tests expanded into one-bit tests (as OVN
//! expands `!=`). It must not parse or normalise: that is `ovn_lflow`'s.

use fastpath_tables::ovn::{base_slot, vector, OvnMatchTest};
use ovn_lflow::{Conjunction, Test};

use super::PortIndex;

/// A conjunction being built: a value and a mask over the whole vector.
#[derive(Clone)]
struct Pattern {
    value: [u8; vector::LEN],
    mask: [u8; vector::LEN],
}

impl Pattern {
    fn new() -> Self {
        Pattern {
            value: [0; vector::LEN],
            mask: [0; vector::LEN],
        }
    }

    /// Adds `(field & mask) == value` for a field of `bytes` bytes at
    /// `offset` whose bit 0 is bit `shift`. False if it contradicts.
    fn add(&mut self, offset: usize, bytes: usize, shift: u32, value: u128, mask: u128) -> bool {
        let (value, mask) = if shift > 0 {
            (value << shift, mask << shift)
        } else {
            (value, mask)
        };
        for i in 0..bytes {
            let at = offset + bytes - 1 - i;
            let m = (mask >> (8 * i)) as u8;
            let v = (value >> (8 * i)) as u8 & m;
            let common = self.mask[at] & m;
            if self.value[at] & common != v & common {
                return false;
            }
            self.mask[at] |= m;
            self.value[at] |= v;
        }
        true
    }

    /// Tests over contiguous runs of masked bytes (at most 16 bytes each).
    fn tests(&self) -> Vec<OvnMatchTest> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < vector::LEN {
            if self.mask[i] == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < vector::LEN && self.mask[i] != 0 && i - start < 16 {
                i += 1;
            }
            let mut t = OvnMatchTest {
                offset: start as u16,
                bytes: (i - start) as u8,
                reserved: 0,
                value: [0; 16],
                mask: [0; 16],
            };
            t.value[..i - start].copy_from_slice(&self.value[start..i]);
            t.mask[..i - start].copy_from_slice(&self.mask[start..i]);
            out.push(t);
        }
        out
    }
}

/// Where a port field (`inport`, `outport`) lives.
fn port_slot(field: &str) -> usize {
    if field == "inport" {
        vector::INPORT.start
    } else {
        vector::OUTPORT.start
    }
}

/// Compiles a disjunction into rules (lists of tests that must all hold).
/// Conjunctions that can never hold (an unknown port, a contradiction, a
/// port resident elsewhere) produce no rule.
pub(crate) fn compile_dnf(dnf: &[Conjunction], ports: &PortIndex) -> Vec<Vec<OvnMatchTest>> {
    let mut out = Vec::new();
    'conj: for c in dnf {
        let mut patterns = vec![Pattern::new()];
        for t in &c.tests {
            match t {
                Test::Bits { field, value, mask } => {
                    let Some(slot) = base_slot(field) else {
                        // A field with no storage in the vector can never be
                        // set, so it only matches when tested against zero.
                        if value & mask != 0 {
                            continue 'conj;
                        }
                        log::debug!("match on {field}, which has no vector storage: taken as 0");
                        continue;
                    };
                    patterns.retain_mut(|p| {
                        p.add(
                            usize::from(slot.offset),
                            usize::from(slot.bytes),
                            u32::from(slot.shift),
                            *value,
                            *mask,
                        )
                    });
                }
                Test::Port {
                    field,
                    name,
                    negated,
                } => {
                    // `"none"` is port key 0 (no port), as ovn-controller
                    // resolves it: `outport == "none"` after `get_fdb` misses.
                    let key = if name == "none" {
                        Some(0)
                    } else {
                        ports.keys.get(name).map(|k| k.1)
                    };
                    let offset = port_slot(field);
                    match (key, negated) {
                        (None, false) => continue 'conj,
                        (None, true) => {}
                        (Some(key), false) => {
                            patterns
                                .retain_mut(|p| p.add(offset, 4, 0, u128::from(key), 0xffff_ffff));
                        }
                        (Some(key), true) => {
                            // field != key: some bit differs.
                            let mut next = Vec::new();
                            for p in &patterns {
                                for bit in 0..32 {
                                    let mut q = p.clone();
                                    let want = u128::from(!key >> bit & 1) << bit;
                                    if q.add(offset, 4, 0, want, 1u128 << bit) {
                                        next.push(q);
                                    }
                                }
                            }
                            patterns = next;
                        }
                    }
                }
                Test::ChassisResident { port, negated } => {
                    let resident = ports.resident.get(port).copied().unwrap_or(false);
                    if resident == *negated {
                        continue 'conj;
                    }
                }
            }
            if patterns.is_empty() {
                continue 'conj;
            }
        }
        out.extend(patterns.iter().map(Pattern::tests));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovn_lflow::{normalize, parse_match, NoSets, SymbolTable};

    fn ports() -> PortIndex {
        PortIndex {
            keys: [("p1".to_string(), (1, 2)), ("lrp".to_string(), (2, 1))]
                .into_iter()
                .collect(),
            resident: [("p1".to_string(), true), ("lrp".to_string(), false)]
                .into_iter()
                .collect(),
        }
    }

    fn compile(text: &str) -> Vec<Vec<OvnMatchTest>> {
        let t = SymbolTable::ovn_23_03();
        let dnf = normalize(&parse_match(text).unwrap(), &t, &NoSets).unwrap();
        compile_dnf(&dnf, &ports())
    }

    #[test]
    fn ip4_dst_and_port_become_byte_runs() {
        let r = compile("inport == \"p1\" && ip4.dst == 10.0.0.0/24");
        assert_eq!(r.len(), 1);
        let t = &r[0];
        // eth.type, ip4.dst (3 bytes of mask), inport.
        let offsets: Vec<(u16, u8)> = t.iter().map(|x| (x.offset, x.bytes)).collect();
        assert_eq!(offsets, vec![(2, 2), (60, 3), (108, 4)]);
        assert_eq!(&t[1].value[..3], &[10, 0, 0]);
        assert_eq!(&t[2].value[..4], &[0, 0, 0, 2]);
    }

    #[test]
    fn unknown_ports_and_foreign_residence_never_match() {
        assert!(compile("inport == \"nope\"").is_empty());
        assert!(compile("is_chassis_resident(\"lrp\")").is_empty());
        assert_eq!(compile("is_chassis_resident(\"p1\")").len(), 1);
        assert_eq!(compile("!is_chassis_resident(\"lrp\")").len(), 1);
    }

    #[test]
    fn port_none_is_key_zero() {
        // `outport == "none"`: what `get_fdb` leaves when it misses.
        let r = compile("outport == \"none\"");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].len(), 1);
        let t = r[0][0];
        assert_eq!(usize::from(t.offset), vector::OUTPORT.start);
        assert_eq!(
            (t.bytes, &t.value[..4], &t.mask[..4]),
            (4, &[0u8; 4][..], &[0xffu8; 4][..])
        );
    }

    #[test]
    fn negated_port_test_expands_to_bit_tests() {
        let r = compile("outport != \"p1\"");
        assert_eq!(r.len(), 32);
        let mut bits = std::collections::HashSet::new();
        for rule in &r {
            assert_eq!(rule.len(), 1);
            let t = rule[0];
            assert!(vector::OUTPORT.contains(&usize::from(t.offset)));
            assert_eq!((t.bytes, t.mask[0].count_ones()), (1, 1));
            // p1 has key 2: the tested bit must differ from it.
            let bit = (vector::OUTPORT.end - 1 - usize::from(t.offset)) * 8
                + t.mask[0].trailing_zeros() as usize;
            assert_eq!(u32::from(t.value[0] != 0), !2u32 >> bit & 1);
            bits.insert(bit);
        }
        assert_eq!(bits.len(), 32);
    }

    #[test]
    fn register_bits_land_in_big_endian_order() {
        // reg9 is xreg4 bits 0..31: the last 4 bytes of xreg4.
        let r = compile("reg9[2] == 1");
        assert_eq!(r[0].len(), 1);
        assert_eq!(r[0][0].offset as usize, vector::XREG4.start + 7);
        assert_eq!(r[0][0].mask[0], 0x04);
        let r = compile("eth.mcast");
        assert_eq!((r[0][0].offset, r[0][0].mask[0]), (8, 0x01));
    }
}
