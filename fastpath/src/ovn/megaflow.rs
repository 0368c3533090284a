//! The per-lcore megaflow cache: a stateless verdict of the interpreter,
//! kept for every packet that agrees with the one it was computed for on
//! the bits of the flow key the verdict depended on, so that a new
//! microflow of a known kind (another 5-tuple between the same two pods)
//! costs one masked lookup instead of a pipeline run. This is the layer
//! OVS-DPDK has between its exact-match cache and the upcall.
//!
//! Which bits a verdict depended on is what the interpreter consulted
//! ([`super::Interpreter::consulted`]): the whole mask of every
//! classifier subtable it probed and every rule it compared, every field
//! an action read (moves, TTL, port security, bindings, FDB, `select`),
//! plus bits that always count (the in-port and tunnel metadata, the
//! parser's flags, the Ethernet type and IP protocol), every field an
//! emitted copy changed (whether a change can be rewritten at all, and a
//! rewrite's checksum deltas, depend on the old value) and every field a
//! rewrite writes (it writes whole fields, unchanged ones included).
//! Any two packets equal on those bits take the same path through every
//! table and get the same verdict, so two megaflows that both match a
//! packet agree.
//!
//! Verdicts that went through conntrack are kept with the calls they made
//! ([`super::replay`]): such a megaflow serves a packet only when the
//! calls, issued again for it, answer the same. Several such variants
//! (another backend, another state) may share a masked key; the caller
//! tries them in turn. None with generated packets, a length check,
//! learned bindings or logging is kept (the caller decides, see `lcore`).
//! The cache holds
//! one generation of the program: a new generation empties it. It is
//! bounded; when full it is emptied (the next misses refill it). It must
//! not run the pipeline or be shared between lcores.

use fastpath_packet::flowkey::field;
use fastpath_packet::FlowKey;
use fastpath_tables::ovn::vector;
use hashbrown::HashMap;

use super::cache::{tunnel_flow_hash, FlowEntry};
use super::replay::ReplayStep;

/// Words of a flow key.
const WORDS: usize = FlowKey::LEN / 8;

/// Most distinct masks kept (a verdict with another mask is not kept).
const MAX_MASKS: usize = 64;

/// Most variants (verdicts with conntrack calls) kept under one masked
/// key: one per backend of a load balancer, new and established...
const MAX_VARIANTS: usize = 8;

/// No further variant.
const NONE: u32 = u32::MAX;

/// The bits of a flow key a verdict depended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyMask([u64; WORDS]);

impl KeyMask {
    /// The key bits behind the vector bits the interpreter consulted, plus
    /// those that always count.
    pub fn from_consulted(consulted: &[u64; vector::WORDS]) -> KeyMask {
        let mut m = KeyMask([0; WORDS]);
        m.0.copy_from_slice(&consulted[..WORDS]);
        // `vlan.tci` as OVS presents it comes from the key's TCI and flags.
        let bytes: &[u8] = bytemuck::cast_slice(consulted);
        if bytes[vector::VLAN_TCI].iter().any(|b| *b != 0) {
            m.add(field::VLAN_TCI);
            m.add(field::FLAGS..field::FLAGS + 1);
        }
        for f in [
            field::IN_PORT,
            field::ETH_TYPE,
            field::FLAGS..field::FRAG + 1,
            field::IP_PROTO..field::IP_PROTO + 1,
            // The tunnel metadata of a packet from another chassis.
            field::PAD,
        ] {
            m.add(f);
        }
        m
    }

    /// No bits.
    pub fn none() -> KeyMask {
        KeyMask([0; WORDS])
    }

    /// Adds every bit of `other`.
    pub fn union(&mut self, other: &KeyMask) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Adds every bit of the key bytes `bytes`.
    pub fn add(&mut self, bytes: std::ops::Range<usize>) {
        let m: &mut [u8] = bytemuck::cast_slice_mut(&mut self.0);
        for b in &mut m[bytes.start.min(FlowKey::LEN)..bytes.end.min(FlowKey::LEN)] {
            *b = 0xff;
        }
    }

    /// Adds the bytes in which `a` and `b` differ.
    pub fn add_differences(&mut self, a: &FlowKey, b: &FlowKey) {
        let m: &mut [u8] = bytemuck::cast_slice_mut(&mut self.0);
        for ((m, x), y) in m.iter_mut().zip(a.as_bytes()).zip(b.as_bytes()) {
            if x != y {
                *m = 0xff;
            }
        }
    }

    #[inline]
    fn apply(&self, key: &FlowKey) -> [u64; WORDS] {
        let mut w = key.words();
        for (w, m) in w.iter_mut().zip(self.0) {
            *w &= m;
        }
        w
    }
}

/// One mask and the megaflows under it, by masked key.
struct Subtable {
    mask: KeyMask,
    flows: HashMap<[u64; WORDS], u32>,
}

/// A kept verdict: the entry, and for each of its outputs the bytes its
/// final key changed (the rest of a final key is the packet's own); the
/// conntrack calls it depends on, and the next variant of its masked key.
struct Megaflow {
    entry: FlowEntry,
    changed: Vec<KeyMask>,
    ct: Vec<ReplayStep>,
    next: u32,
}

/// The megaflows of one lcore (see the module doc).
pub struct Megaflows {
    generation: u64,
    subtables: Vec<Subtable>,
    flows: Vec<Megaflow>,
    capacity: usize,
}

impl Megaflows {
    /// A cache of at most `capacity` megaflows (0: none are kept).
    pub fn new(capacity: usize) -> Megaflows {
        Megaflows {
            generation: u64::MAX,
            subtables: Vec::new(),
            flows: Vec::new(),
            capacity,
        }
    }

    /// Whether megaflows are kept at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Number of megaflows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Forgets every megaflow.
    pub fn clear(&mut self) {
        self.subtables.clear();
        self.flows.clear();
    }

    /// The entry for `key` from a megaflow of program generation
    /// `generation` that matches it, made for `key` (its outputs' final
    /// keys and tunnel flow hashes).
    pub fn lookup(&self, key: &FlowKey, generation: u64) -> Option<FlowEntry> {
        let i = self.find_with(key, generation, |_| false)?;
        let mut e = FlowEntry::default();
        self.fill_for(i, key, &mut e);
        Some(e)
    }

    /// The index of the megaflow that serves `key`, over every variant: a
    /// megaflow without conntrack calls is served as is, one with calls
    /// only when `accept` takes them. Its entry is made by
    /// [`Megaflows::fill_for`], its calls are [`Megaflows::steps`].
    #[inline]
    pub fn find_with(
        &self,
        key: &FlowKey,
        generation: u64,
        mut accept: impl FnMut(&[ReplayStep]) -> bool,
    ) -> Option<u32> {
        if generation != self.generation {
            return None;
        }
        self.subtables.iter().find_map(|st| {
            let mut i = st.flows.get(&st.mask.apply(key)).copied()?;
            while let Some(m) = self.flows.get(i as usize) {
                if m.ct.is_empty() || accept(&m.ct) {
                    return Some(i);
                }
                i = m.next;
            }
            None
        })
    }

    /// The conntrack calls of megaflow `index`.
    pub fn steps(&self, index: u32) -> &[ReplayStep] {
        self.flows.get(index as usize).map_or(&[], |m| &m.ct)
    }

    /// Writes the entry of megaflow `index` made for `key` (its outputs'
    /// final keys and tunnel flow hashes) into `e`, in place (a slot of
    /// the flow cache, or a scratch entry): no copy of the entry is built
    /// and moved. Nothing is written for an index that is not a megaflow.
    #[inline]
    pub fn fill_for(&self, index: u32, key: &FlowKey, e: &mut FlowEntry) {
        let Some(m) = self.flows.get(index as usize) else {
            return;
        };
        e.assign(&m.entry);
        let own = key.words();
        for (o, changed) in e.outputs.as_mut_slice().iter_mut().zip(&m.changed) {
            // The bytes the output changed are in the mask: the rest of
            // its final key is this packet's.
            let mut fin = o.rewrite.key.words();
            for ((f, k), c) in fin.iter_mut().zip(own).zip(changed.0) {
                *f = (*f & c) | (k & !c);
            }
            o.rewrite.key.set_words(&fin);
            if let Some(t) = o.tunnel.as_mut() {
                t.flow_hash = tunnel_flow_hash(key);
            }
        }
    }

    /// Keeps `entry`, computed for `key` with program generation
    /// `generation` and the conntrack calls `ct`, for every key equal to it
    /// under `mask` (with calls: as another variant of that masked key).
    pub fn insert(
        &mut self,
        key: &FlowKey,
        mask: KeyMask,
        entry: &FlowEntry,
        ct: Vec<ReplayStep>,
        generation: u64,
    ) {
        if !self.enabled() {
            return;
        }
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        if self.flows.len() >= self.capacity {
            self.clear();
        }
        let st = match self.subtables.iter().position(|st| st.mask == mask) {
            Some(i) => i,
            None if self.subtables.len() < MAX_MASKS => {
                self.subtables.push(Subtable {
                    mask,
                    flows: HashMap::new(),
                });
                self.subtables.len() - 1
            }
            None => return,
        };
        let index = self.flows.len() as u32;
        let changed = entry
            .outputs
            .iter()
            .map(|o| {
                let mut c = KeyMask::none();
                c.add_differences(key, &o.rewrite.key);
                c
            })
            .collect();
        let masked = mask.apply(key);
        let next = match self.subtables[st].flows.get(&masked) {
            Some(&first) => {
                let mut n = 0;
                let mut i = first;
                while let Some(m) = self.flows.get(i as usize) {
                    n += 1;
                    i = m.next;
                }
                if n >= MAX_VARIANTS {
                    return;
                }
                first
            }
            None => NONE,
        };
        // (The connections of the entry are its packet's own.)
        let mut entry = entry.clone();
        entry.ct.clear();
        entry.fast_ct = Default::default();
        self.flows.push(Megaflow {
            entry,
            changed,
            ct,
            next,
        });
        self.subtables[st].flows.insert(masked, index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::cache::{CachedOutput, Outputs, TunnelOut};
    use crate::ovn::rewrite::Rewrite;

    fn key(sport: u16, ttl: u8) -> FlowKey {
        let mut k = FlowKey::zeroed();
        k.set_in_port(3);
        k.set_ttl(ttl);
        k.set_tp_src(sport);
        k.set_tp_dst(80);
        k
    }

    /// An entry whose one output rewrites the TTL to `ttl - 1` and goes
    /// through the tunnel.
    fn entry(origin: &FlowKey) -> FlowEntry {
        let mut fin = *origin;
        fin.set_ttl(origin.ttl() - 1);
        let mut rewrite = Rewrite::identity(fin);
        rewrite.key = fin;
        FlowEntry {
            outputs: Outputs::One(CachedOutput {
                port: 1,
                tunnel: Some(TunnelOut {
                    chassis: 0,
                    flow_hash: tunnel_flow_hash(origin),
                    vni: 7,
                    ingress: 1,
                    egress: 2,
                }),
                rewrite,
                logical_port: 4,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_megaflow_serves_keys_equal_under_its_mask_for_its_generation() {
        let mut m = Megaflows::new(2);
        let origin = key(1000, 64);
        let mut mask = KeyMask::from_consulted(&[0; vector::WORDS]);
        mask.add(field::TTL..field::TTL + 1);
        m.insert(&origin, mask, &entry(&origin), Vec::new(), 5);
        // Another source port: served, with its own final key and hash.
        let other = key(2000, 64);
        let e = m.lookup(&other, 5).expect("served");
        let o = &e.outputs[0];
        assert_eq!(o.rewrite.key.tp_src(), 2000);
        assert_eq!(o.rewrite.key.ttl(), 63);
        assert_eq!(o.tunnel.unwrap().flow_hash, tunnel_flow_hash(&other));
        // Another TTL is another verdict; another generation knows nothing.
        assert!(m.lookup(&key(2000, 9), 5).is_none());
        assert!(m.lookup(&other, 6).is_none());
        // A new generation starts afresh; the bound empties the cache.
        m.insert(&key(1, 10), mask, &entry(&key(1, 10)), Vec::new(), 6);
        assert_eq!(m.len(), 1);
        assert!(m.lookup(&other, 6).is_none());
        m.insert(&key(1, 11), mask, &entry(&key(1, 11)), Vec::new(), 6);
        m.insert(&key(1, 12), mask, &entry(&key(1, 12)), Vec::new(), 6);
        assert_eq!(m.len(), 1, "full: emptied, then the new one");
        assert!(m.lookup(&key(9, 12), 6).is_some());
        // Disabled: nothing is kept.
        let mut off = Megaflows::new(0);
        off.insert(&origin, mask, &entry(&origin), Vec::new(), 5);
        assert!(off.lookup(&origin, 5).is_none());
    }
}
