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
//! prefix), but only a handful of distinct masks. [`LinearTable`] is the
//! reference the tests and the benchmark compare with.
//!
//! Owns rule storage and lookup; it must not know what the rules do.

use fastpath_tables::ovn::{vector, OvnMatchTest};
use hashbrown::HashMap;

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

#[derive(Debug)]
struct Subtable {
    /// `(word index, mask)` of the tuple.
    mask: Box<[(u8, u64)]>,
    max_priority: u16,
    rules: HashMap<Box<[u64]>, (u16, u32)>,
}

/// A tuple-space classifier.
#[derive(Debug, Default)]
pub struct Classifier {
    subtables: Vec<Subtable>,
    rules: usize,
}

impl Classifier {
    /// Builds from rules. Among rules with the same mask and value only the
    /// highest priority can ever win (the first one given on a tie).
    pub fn new(rules: &[Rule]) -> Classifier {
        let mut by_mask: HashMap<Box<[(u8, u64)]>, usize> = HashMap::new();
        let mut subtables: Vec<Subtable> = Vec::new();
        for r in rules {
            let mask: Box<[(u8, u64)]> = r.words.iter().map(|&(w, m, _)| (w, m)).collect();
            let index = *by_mask.entry(mask.clone()).or_insert_with(|| {
                subtables.push(Subtable {
                    mask,
                    max_priority: 0,
                    rules: HashMap::new(),
                });
                subtables.len() - 1
            });
            let st = &mut subtables[index];
            st.max_priority = st.max_priority.max(r.priority);
            let key: Box<[u64]> = r.words.iter().map(|&(_, _, v)| v).collect();
            st.rules
                .entry(key)
                .and_modify(|e| {
                    if r.priority > e.0 {
                        *e = (r.priority, r.id)
                    }
                })
                .or_insert((r.priority, r.id));
        }
        subtables.sort_by_key(|s| std::cmp::Reverse(s.max_priority));
        Classifier {
            subtables,
            rules: rules.len(),
        }
    }

    /// The id of the highest-priority matching rule.
    #[inline]
    pub fn lookup(&self, v: &[u64; vector::WORDS]) -> Option<u32> {
        let mut best: Option<(u16, u32)> = None;
        let mut key = [0u64; vector::WORDS];
        for st in &self.subtables {
            if best.is_some_and(|(p, _)| p >= st.max_priority) {
                break;
            }
            for (k, &(w, m)) in key.iter_mut().zip(st.mask.iter()) {
                *k = v[usize::from(w)] & m;
            }
            if let Some(&(p, id)) = st.rules.get(&key[..st.mask.len()]) {
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
