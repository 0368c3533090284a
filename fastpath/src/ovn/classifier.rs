//! The classifier of one logical table: tuple-space search.
//!
//! Rules are grouped by their mask (the "tuple"); each group is one hash
//! table from masked vector words to the best rule with that masked value.
//! Groups are visited in descending order of their highest priority and the
//! search stops as soon as no later group can beat the best match found
//! (OVS's classifier does the same). A lookup costs one masked hash probe
//! per group visited, independent of the number of rules, where a linear
//! scan costs one masked compare per rule: northd emits hundreds of flows in
//! tables like `ls_in_l2_lkup` (one per MAC) or `lr_in_ip_routing` (one per
//! prefix), but only a handful of distinct masks. Two shapes skip the
//! search: a table holding only catch-all rules answers with a constant,
//! and a small table (or one with nearly as many masks as rules, where a
//! probe per mask costs more than a compare per rule) is scanned in
//! priority order. [`LinearTable`] is the reference the tests compare with.
//!
//! Owns rule storage and lookup; it must not know what the rules do.

use fastpath_tables::ovn::{vector, OvnMatchTest};
use hashbrown::{HashMap, HashTable};

/// A rule in mask/value form over the vector's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Priority.
    pub priority: u16,
    /// Caller's id (a flow index).
    pub id: u32,
    /// `(word index, mask, value)` for every word with a non-zero mask.
    pub words: Vec<(u8, u64, u64)>,
}

impl Rule {
    /// A rule from byte tests. `None` if two tests contradict.
    pub fn from_tests(priority: u16, id: u32, tests: &[OvnMatchTest]) -> Option<Rule> {
        let mut mask = [0u8; vector::LEN];
        let mut value = [0u8; vector::LEN];
        for t in tests {
            let start = usize::from(t.offset);
            let n = usize::from(t.bytes).min(16);
            for i in 0..n {
                let at = start.checked_add(i).filter(|a| *a < vector::LEN)?;
                let (m, v) = (t.mask[i], t.value[i] & t.mask[i]);
                let common = mask[at] & m;
                if value[at] & common != v & common {
                    return None;
                }
                mask[at] |= m;
                value[at] |= v;
            }
        }
        let words = (0..vector::WORDS)
            .filter_map(|w| {
                let m = u64::from_le_bytes(mask[w * 8..w * 8 + 8].try_into().ok()?);
                let v = u64::from_le_bytes(value[w * 8..w * 8 + 8].try_into().ok()?);
                (m != 0).then_some((w as u8, m, v))
            })
            .collect();
        Some(Rule {
            priority,
            id,
            words,
        })
    }

    /// Whether the rule matches.
    #[inline]
    pub fn matches(&self, v: &[u64; vector::WORDS]) -> bool {
        self.words
            .iter()
            .all(|&(w, m, x)| v[usize::from(w)] & m == x)
    }
}

/// Subtables with at most this many distinct values are scanned (a
/// masked compare per entry) instead of hashed.
const SCAN_MAX: usize = 4;

/// The hash of a tuple's masked words: a multiply-rotate fold with a final
/// avalanche (both hashbrown's bucket bits and its control byte come from
/// it).
#[inline(always)]
fn masked_hash(words: impl Iterator<Item = u64>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0u64;
    for w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let h = (h ^ (h >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// The rules sharing one mask.
#[derive(Debug)]
struct Subtable {
    /// `(word index, mask)` of the tuple (empty: the catch-all tuple).
    mask: Box<[(u8, u64)]>,
    max_priority: u16,
    /// `(priority, id)` of the best rule per distinct masked value,
    /// highest priority first.
    entries: Vec<(u16, u32)>,
    /// The masked values of `entries`, `mask.len()` words each.
    values: Vec<u64>,
    /// Entry indices by the hash of their values; empty when the subtable
    /// is scanned (at most [`SCAN_MAX`] entries).
    index: HashTable<u32>,
    /// Stages of a lookup over the transport ports (see [`Staged`]).
    staged: Option<Staged>,
}

/// A subtable's lookup in stages, so that a miss reads no more of the
/// packet than it must and a megaflow does not depend on the rest (OVS's
/// staged lookup and port tries): a rule on a backend's address and port
/// says nothing about the port of a packet from elsewhere, and a rule on
/// the DHCPv6 ports nothing about the source port of a packet to port
/// 5001.
#[derive(Debug)]
struct Staged {
    /// How many of the mask's words come before the ports' word (the
    /// prefix).
    prefix: usize,
    /// The sorted hashes of the entries' values on those words (empty when
    /// there are none: every packet passes this stage).
    prefix_hashes: Box<[u64]>,
    /// For each port the mask reads (destination first) while it also
    /// reads the other: the port's bits of the ports' word, and the sorted
    /// hashes of the entries' prefix values with that port. A packet whose
    /// hash is not among them misses on that port alone.
    ports: Vec<(u64, Box<[u64]>)>,
}

impl Subtable {
    /// The best entry matching the vector.
    #[inline(always)]
    fn lookup(&self, v: &[u64; vector::WORDS]) -> Option<(u16, u32)> {
        let n = self.mask.len();
        if n == 0 {
            return self.entries.first().copied();
        }
        if self.index.is_empty() {
            // Entries are sorted by priority: the first match is the best
            // (and the only one: values under one mask are distinct).
            if let [(w, m)] = *self.mask {
                let x = v[usize::from(w)] & m;
                return self
                    .values
                    .iter()
                    .position(|&y| y == x)
                    .and_then(|e| self.entries.get(e).copied());
            }
            return self
                .values
                .chunks_exact(n)
                .position(|values| {
                    values
                        .iter()
                        .zip(self.mask.iter())
                        .all(|(&x, &(w, m))| v[usize::from(w)] & m == x)
                })
                .and_then(|e| self.entries.get(e).copied());
        }
        let hash = masked_hash(self.mask.iter().map(|&(w, m)| v[usize::from(w)] & m));
        self.index
            .find(hash, |&e| {
                let e = e as usize;
                self.values[e * n..e * n + n]
                    .iter()
                    .zip(self.mask.iter())
                    .all(|(&x, &(w, m))| v[usize::from(w)] & m == x)
            })
            .map(|&e| self.entries[e as usize])
    }
}

/// The vector word of the transport ports.
const PORTS_WORD: u8 = (fastpath_packet::flowkey::field::TP_SRC.start / 8) as u8;

/// The bits of the ports' word that hold the bytes `bytes` of the key.
fn port_bits(bytes: std::ops::Range<usize>) -> u64 {
    let mut m = [0u8; 8];
    let at = usize::from(PORTS_WORD) * 8;
    for b in &mut m[bytes.start - at..bytes.end - at] {
        *b = 0xff;
    }
    u64::from_ne_bytes(m)
}

/// Sorted, distinct.
fn sorted(mut hashes: Vec<u64>) -> Box<[u64]> {
    hashes.sort_unstable();
    hashes.dedup();
    hashes.into_boxed_slice()
}

/// [`Subtable::staged`] for a mask and the entries' values: `None` unless
/// the mask reads the ports' word and something else. (A miss on any part
/// of a mask is a miss: the stages need no order of the words.)
fn staged(mask: &[(u8, u64)], values: &[u64]) -> Option<Staged> {
    use fastpath_packet::flowkey::field;
    let k = mask.iter().position(|&(w, _)| w == PORTS_WORD)?;
    let n = mask.len();
    let entries = || values.chunks_exact(n);
    let prefix_hashes = if k == 0 {
        Box::default()
    } else {
        sorted(
            entries()
                .map(|e| masked_hash(e[..k].iter().copied()))
                .collect(),
        )
    };
    let read = mask[k].1;
    let mut ports = Vec::new();
    for f in [field::TP_DST, field::TP_SRC] {
        let bits = read & port_bits(f);
        if bits == 0 || bits == read {
            continue;
        }
        let hashes = entries()
            .map(|e| masked_hash(e[..k].iter().copied().chain([e[k] & bits])))
            .collect();
        ports.push((bits, sorted(hashes)));
    }
    if k == 0 && ports.is_empty() {
        return None;
    }
    Some(Staged {
        prefix: k,
        prefix_hashes,
        ports,
    })
}

/// Tables with at most this many distinct rules are scanned in priority
/// order (first match wins) instead of probed subtable by subtable: for a
/// handful of rules a masked compare per rule, which usually fails on its
/// first word, costs less than a visit per mask.
const LINEAR_MAX: usize = 64;

/// One rule of a scanned table: its first `(word index, mask, value)`
/// inline (most rules fail there), the others in
/// [`Classifier::linear_words`].
#[derive(Debug, Clone, Copy)]
struct LinearRule {
    first: (u8, u64, u64),
    start: u32,
    len: u32,
    id: u32,
}

/// The best rule for one masked value while building: `(priority, id,
/// position among the rules given)`.
type Best = (u16, u32, usize);

/// The best rule per masked value of one tuple, while building.
type BestByValue = HashMap<Box<[u64]>, Best>;

/// A tuple: `(word index, mask)` for every word with a non-zero mask.
type Mask = Box<[(u8, u64)]>;

/// A tuple-space classifier.
#[derive(Debug, Default)]
pub struct Classifier {
    subtables: Vec<Subtable>,
    /// Small tables: the rules, highest priority first (empty: use the
    /// subtables).
    linear: Vec<LinearRule>,
    /// `(word index, mask, value)` of the rules in `linear`.
    linear_words: Vec<(u8, u64, u64)>,
    /// The winner of every lookup, when the only rules are catch-alls
    /// (`1`, as northd's default `next;` flows): no probe at all.
    constant: Option<u32>,
    rules: usize,
}

impl Classifier {
    /// Builds from rules. Among rules with the same mask and value only the
    /// highest priority can ever win (the first one given on a tie).
    pub fn new(rules: &[Rule]) -> Classifier {
        let mut by_mask: HashMap<Box<[(u8, u64)]>, usize> = HashMap::new();
        let mut groups: Vec<(Mask, BestByValue)> = Vec::new();
        for (order, r) in rules.iter().enumerate() {
            let mask: Box<[(u8, u64)]> = r.words.iter().map(|&(w, m, _)| (w, m)).collect();
            let index = *by_mask.entry(mask.clone()).or_insert_with(|| {
                groups.push((mask, HashMap::new()));
                groups.len() - 1
            });
            let key: Box<[u64]> = r.words.iter().map(|&(_, _, v)| v).collect();
            groups[index]
                .1
                .entry(key)
                .and_modify(|e| {
                    if r.priority > e.0 {
                        *e = (r.priority, r.id, order)
                    }
                })
                .or_insert((r.priority, r.id, order));
        }
        let mut subtables: Vec<Subtable> = groups
            .into_iter()
            .map(|(mask, values)| {
                let mut list: Vec<(Box<[u64]>, Best)> = values.into_iter().collect();
                // Highest priority first; the rule given first on a tie.
                list.sort_by_key(|(_, (p, _, order))| (std::cmp::Reverse(*p), *order));
                let mut st = Subtable {
                    max_priority: list.first().map_or(0, |(_, (p, _, _))| *p),
                    entries: list.iter().map(|(_, (p, id, _))| (*p, *id)).collect(),
                    values: list.iter().flat_map(|(k, _)| k.iter().copied()).collect(),
                    index: HashTable::new(),
                    staged: None,
                    mask,
                };
                st.staged = staged(&st.mask, &st.values);
                if st.entries.len() > SCAN_MAX {
                    let n = st.mask.len();
                    let hashes: Vec<u64> = (0..st.entries.len())
                        .map(|e| masked_hash(st.values[e * n..e * n + n].iter().copied()))
                        .collect();
                    st.index = HashTable::with_capacity(st.entries.len());
                    for (e, &h) in hashes.iter().enumerate() {
                        st.index.insert_unique(h, e as u32, |&j| hashes[j as usize]);
                    }
                }
                st
            })
            .collect();
        subtables.sort_by_key(|s| std::cmp::Reverse(s.max_priority));
        // Only catch-alls: the first subtable is the empty mask and decides.
        let constant = match subtables.as_slice() {
            [only] if only.mask.is_empty() => only.entries.first().map(|&(_, id)| id),
            _ => None,
        };
        let mut classifier = Classifier {
            subtables,
            linear: Vec::new(),
            linear_words: Vec::new(),
            constant,
            rules: rules.len(),
        };
        if constant.is_none() {
            classifier.build_linear();
        }
        classifier
    }

    /// Lays the rules of a small table out for a scan in priority order.
    /// The subtables are in descending order of their best priority and
    /// each is in descending priority order, so a stable merge by priority
    /// keeps, among equal priorities, the order the subtable search
    /// visits them in.
    fn build_linear(&mut self) {
        let total: usize = self.subtables.iter().map(|st| st.entries.len()).sum();
        // Up to a few rules, or up to LINEAR_MAX when the masks are nearly
        // as many as the rules (a probe per mask would cost more than a
        // compare per rule).
        if total > LINEAR_MAX || (total > 16 && total > 4 * self.subtables.len()) {
            return;
        }
        let mut all: Vec<(u16, u32, &Subtable, usize)> = Vec::with_capacity(total);
        for st in &self.subtables {
            for (e, &(p, id)) in st.entries.iter().enumerate() {
                all.push((p, id, st, e));
            }
        }
        all.sort_by_key(|&(p, _, _, _)| std::cmp::Reverse(p));
        let mut linear = Vec::with_capacity(total);
        let mut words = Vec::new();
        for (_, id, st, e) in all {
            let n = st.mask.len();
            let mut rule = st
                .mask
                .iter()
                .zip(&st.values[e * n..e * n + n])
                .map(|(&(w, m), &x)| (w, m, x));
            // The destination port is compared apart from the source
            // port: a packet that fails on it did not read its source port
            // (see `Staged`).
            let mut tests: Vec<(u8, u64, u64)> = Vec::with_capacity(n + 1);
            for (w, m, x) in rule.by_ref() {
                let dst = m & port_bits(fastpath_packet::flowkey::field::TP_DST);
                if w == PORTS_WORD && dst != 0 && dst != m {
                    tests.push((w, dst, x & dst));
                    tests.push((w, m & !dst, x & !dst));
                } else {
                    tests.push((w, m, x));
                }
            }
            // A catch-all's first test is `word 0 & 0 == 0`.
            let first = tests.first().copied().unwrap_or((0, 0, 0));
            let start = words.len() as u32;
            words.extend(tests.iter().skip(1));
            linear.push(LinearRule {
                first,
                start,
                len: tests.len().saturating_sub(1) as u32,
                id,
            });
        }
        self.linear = linear;
        self.linear_words = words;
    }

    /// The id of the highest-priority matching rule.
    #[inline]
    pub fn lookup(&self, v: &[u64; vector::WORDS]) -> Option<u32> {
        self.search::<false>(v, |_, _| {})
    }

    /// [`Classifier::lookup`], adding to `seen` every vector bit the
    /// answer depended on: of every scanned rule the words compared, up to
    /// the first that differs (a rule on the DHCP ports that fails on the
    /// address consults no port), and the whole mask of every subtable a
    /// search probed (a packet that agrees with this one on those bits gets
    /// the same answer; of a subtable over the ports probed in stages,
    /// the stages it reached). Nothing for a constant table.
    pub fn lookup_consulting(
        &self,
        v: &[u64; vector::WORDS],
        seen: &mut [u64; vector::WORDS],
    ) -> Option<u32> {
        self.search::<true>(v, |w, m| {
            if let Some(s) = seen.get_mut(usize::from(w)) {
                *s |= m;
            }
        })
    }

    /// The lookup, telling `consult` each `(word, mask)` it reads; with
    /// `STAGED`, subtables over the ports are probed in stages (which only
    /// a lookup that reports what it read needs).
    #[inline(always)]
    fn search<const STAGED: bool>(
        &self,
        v: &[u64; vector::WORDS],
        mut consult: impl FnMut(u8, u64),
    ) -> Option<u32> {
        if self.constant.is_some() {
            return self.constant;
        }
        if !self.linear.is_empty() {
            return self
                .linear
                .iter()
                .find(|r| {
                    let (w, m, x) = r.first;
                    consult(w, m);
                    if v[usize::from(w)] & m != x {
                        return false;
                    }
                    let start = r.start as usize;
                    self.linear_words[start..start + r.len as usize]
                        .iter()
                        .all(|&(w, m, x)| {
                            consult(w, m);
                            v[usize::from(w)] & m == x
                        })
                })
                .map(|r| r.id);
        }
        let mut best: Option<(u16, u32)> = None;
        for st in &self.subtables {
            if best.is_some_and(|(p, _)| p >= st.max_priority) {
                break;
            }
            let mut from = 0;
            if let Some(sg) = st.staged.as_ref().filter(|_| STAGED) {
                let prefix = &st.mask[..sg.prefix];
                for &(w, m) in prefix {
                    consult(w, m);
                }
                let values = prefix.iter().map(|&(w, m)| v[usize::from(w)] & m);
                if sg.prefix > 0
                    && sg
                        .prefix_hashes
                        .binary_search(&masked_hash(values.clone()))
                        .is_err()
                {
                    continue;
                }
                let ports = v[usize::from(PORTS_WORD)];
                let missed = sg.ports.iter().find(|(bits, hashes)| {
                    let h = masked_hash(values.clone().chain([ports & bits]));
                    hashes.binary_search(&h).is_err()
                });
                if let Some(&(bits, _)) = missed {
                    consult(PORTS_WORD, bits);
                    continue;
                }
                from = sg.prefix;
            }
            for &(w, m) in &st.mask[from..] {
                consult(w, m);
            }
            if let Some((p, id)) = st.lookup(v) {
                if best.is_none_or(|(bp, _)| p > bp) {
                    best = Some((p, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Number of rules given.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// Number of distinct masks.
    pub fn subtables(&self) -> usize {
        self.subtables.len()
    }

    /// The rule every lookup returns, when the table holds only
    /// catch-all rules (no probe is made).
    pub fn constant(&self) -> Option<u32> {
        self.constant
    }
}

/// The reference: rules sorted by priority, scanned in order.
#[derive(Debug, Default)]
pub struct LinearTable {
    rules: Vec<Rule>,
}

impl LinearTable {
    /// Builds from rules (stable by priority, so the first on a tie wins).
    pub fn new(rules: &[Rule]) -> LinearTable {
        let mut rules = rules.to_vec();
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        LinearTable { rules }
    }

    /// The id of the highest-priority matching rule.
    pub fn lookup(&self, v: &[u64; vector::WORDS]) -> Option<u32> {
        self.rules.iter().find(|r| r.matches(v)).map(|r| r.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(offset: u16, value: &[u8], mask: &[u8]) -> OvnMatchTest {
        let mut t = OvnMatchTest {
            offset,
            bytes: value.len() as u8,
            reserved: 0,
            value: [0; 16],
            mask: [0; 16],
        };
        t.value[..value.len()].copy_from_slice(value);
        t.mask[..mask.len()].copy_from_slice(mask);
        t
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        // Routes of several prefix lengths on ip4.dst (offset 60) plus a
        // default, and MAC entries on eth.dst (offset 8).
        let mut rules = Vec::new();
        let mut id = 0;
        for plen in [8u32, 16, 24, 32] {
            for net in 0..20u32 {
                let addr = (10u32 << 24) | (net << (32 - plen.min(24)));
                let mask = if plen == 0 {
                    0
                } else {
                    u32::MAX << (32 - plen)
                };
                rules.push(
                    Rule::from_tests(
                        (plen * 2) as u16,
                        id,
                        &[test(60, &(addr & mask).to_be_bytes(), &mask.to_be_bytes())],
                    )
                    .unwrap(),
                );
                id += 1;
            }
        }
        for m in 0..50u8 {
            rules.push(
                Rule::from_tests(50, id, &[test(8, &[0, 0, 0, 0, 0, m], &[0xff; 6])]).unwrap(),
            );
            id += 1;
        }
        rules.push(Rule::from_tests(0, id, &[]).unwrap());
        let c = Classifier::new(&rules);
        let l = LinearTable::new(&rules);
        assert_eq!(c.len(), rules.len());
        assert!(c.subtables() <= 6);
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut v = [0u64; vector::WORDS];
            let mut bytes = [0u8; vector::LEN];
            bytes[60..64]
                .copy_from_slice(&((10u32 << 24) | (state as u32 & 0x3f_ffff)).to_be_bytes());
            bytes[13] = (state >> 40) as u8 % 64;
            for (w, chunk) in v.iter_mut().zip(bytes.chunks(8)) {
                *w = u64::from_le_bytes(chunk.try_into().unwrap());
            }
            assert_eq!(c.lookup(&v), l.lookup(&v));
        }
    }

    #[test]
    fn small_and_many_masked_tables_agree_with_a_linear_scan() {
        let mut state = 0x0bad_cafe_1234_5678u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for size in [1usize, 2, 5, 16, 17, 40, 64, 65, 120] {
            // Tests on two bytes of three words (eth.dst, inport, ip4.dst
            // offsets), each present or not, with distinct priorities.
            let mut rules = Vec::new();
            for id in 0..size {
                let mut tests = Vec::new();
                for offset in [13u16, 36, 63] {
                    match next() % 3 {
                        0 => {}
                        1 => tests.push(test(offset, &[(next() % 4) as u8], &[0xff])),
                        _ => tests.push(test(offset, &[(next() % 4) as u8], &[0x01])),
                    }
                }
                let priority = (size - id) as u16 * 3;
                rules.push(Rule::from_tests(priority, id as u32, &tests).unwrap());
            }
            let c = Classifier::new(&rules);
            let l = LinearTable::new(&rules);
            for _ in 0..2_000 {
                let mut bytes = [0u8; vector::LEN];
                for offset in [13, 36, 63] {
                    bytes[offset] = (next() % 4) as u8;
                }
                let mut v = [0u64; vector::WORDS];
                for (w, chunk) in v.iter_mut().zip(bytes.chunks(8)) {
                    *w = u64::from_le_bytes(chunk.try_into().unwrap());
                }
                assert_eq!(c.lookup(&v), l.lookup(&v), "{size} rules");
            }
        }
    }

    #[test]
    fn consulted_bits_decide_the_answer() {
        // For every table shape (scanned, searched, with catch-alls), a
        // vector changed only outside the bits a lookup consulted gets
        // the same answer, and consulting changes no answer.
        let mut state = 0x005e_ed0f_c0de_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for size in [1usize, 3, 17, 64, 65, 200] {
            let mut rules = Vec::new();
            for id in 0..size {
                let mut tests = Vec::new();
                // (64 and 66: the transport ports, looked up in stages.)
                for offset in [13u16, 36, 63, 64, 66, 100] {
                    match next() % 3 {
                        0 => {}
                        1 => tests.push(test(offset, &[(next() % 4) as u8], &[0xff])),
                        _ => tests.push(test(offset, &[(next() % 4) as u8], &[0x03])),
                    }
                }
                rules.push(Rule::from_tests((next() % 40) as u16, id as u32, &tests).unwrap());
            }
            let c = Classifier::new(&rules);
            for _ in 0..2_000 {
                let mut v = [0u64; vector::WORDS];
                for w in v.iter_mut() {
                    *w = next() & 0x0303_0303_0303_0303;
                }
                let mut seen = [0u64; vector::WORDS];
                let id = c.lookup_consulting(&v, &mut seen);
                assert_eq!(id, c.lookup(&v), "{size} rules");
                let mut other = v;
                for (o, s) in other.iter_mut().zip(seen) {
                    *o = (*o & s) | (next() & !s);
                }
                assert_eq!(
                    c.lookup(&other),
                    id,
                    "{size} rules: unconsulted bits changed it"
                );
            }
        }
    }

    #[test]
    fn a_miss_on_the_destination_port_does_not_read_the_source_port() {
        use fastpath_packet::flowkey::field;
        // `udp.src == 546 && udp.dst == 547` beside rules on other fields,
        // scanned (few rules) and searched (many).
        let proto = field::IP_PROTO as u16;
        let ports = field::TP_SRC.start as u16;
        for others in [2u32, 200] {
            let mut rules = vec![Rule::from_tests(
                110,
                0,
                &[
                    test(proto, &[17], &[0xff]),
                    test(ports, &[0x02, 0x22, 0x02, 0x23], &[0xff; 4]),
                ],
            )
            .unwrap()];
            for id in 1..=others {
                let a = id.to_be_bytes();
                rules.push(Rule::from_tests(100, id, &[test(60, &a, &[0xff; 4])]).unwrap());
            }
            let c = Classifier::new(&rules);
            let set = |v: &mut [u64; vector::WORDS], at: u16, bytes: &[u8]| {
                let b: &mut [u8] = bytemuck::cast_slice_mut(v);
                b[usize::from(at)..usize::from(at) + bytes.len()].copy_from_slice(bytes);
            };
            let mut v = [0u64; vector::WORDS];
            set(&mut v, proto, &[17]);
            // From port 1024 to port 5001.
            set(&mut v, ports, &[0x04, 0x00, 0x13, 0x89]);
            let mut seen = [0u64; vector::WORDS];
            assert_eq!(c.lookup_consulting(&v, &mut seen), None);
            let read: &[u8] = bytemuck::cast_slice(&seen);
            let p = usize::from(ports);
            assert_eq!(read[p..p + 2], [0, 0], "{others}: the source port was read");
            assert_eq!(read[p + 2..p + 4], [0xff, 0xff], "{others}");
            // The DHCPv6 packet itself reads both.
            set(&mut v, ports, &[0x02, 0x22, 0x02, 0x23]);
            let mut seen = [0u64; vector::WORDS];
            assert_eq!(c.lookup_consulting(&v, &mut seen), Some(0));
            let read: &[u8] = bytemuck::cast_slice(&seen);
            assert_eq!(read[p..p + 4], [0xff; 4], "{others}");
        }
    }

    #[test]
    fn a_table_of_catch_alls_needs_no_probe() {
        let c = Classifier::new(&[
            Rule::from_tests(0, 7, &[]).unwrap(),
            Rule::from_tests(0, 8, &[]).unwrap(),
        ]);
        assert_eq!(c.constant(), Some(7));
        assert_eq!(c.lookup(&[0; vector::WORDS]), Some(7));
        let c = Classifier::new(&[
            Rule::from_tests(0, 7, &[]).unwrap(),
            Rule::from_tests(5, 9, &[test(8, &[1], &[0xff])]).unwrap(),
        ]);
        assert_eq!(c.constant(), None);
        let mut v = [0u64; vector::WORDS];
        assert_eq!(c.lookup(&v), Some(7));
        v[1] = 1;
        assert_eq!(c.lookup(&v), Some(9));
    }

    #[test]
    fn contradicting_tests_make_no_rule_and_higher_priority_wins() {
        assert!(
            Rule::from_tests(1, 0, &[test(8, &[1], &[0xff]), test(8, &[2], &[0xff])]).is_none()
        );
        let a = Rule::from_tests(10, 1, &[test(8, &[1], &[0xff])]).unwrap();
        let b = Rule::from_tests(20, 2, &[test(8, &[1], &[0xff])]).unwrap();
        let c = Rule::from_tests(5, 3, &[]).unwrap();
        let cls = Classifier::new(&[a, b, c]);
        let mut v = [0u64; vector::WORDS];
        v[1] = 1;
        assert_eq!(cls.lookup(&v), Some(2));
        v[1] = 7;
        assert_eq!(cls.lookup(&v), Some(3));
    }
}
