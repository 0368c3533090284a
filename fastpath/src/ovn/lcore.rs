//! One worker lcore's OVN state: its flow cache, its interpreter, the
//! program it forwards with, and the decision for one packet — a cache hit,
//! or on a miss (or a stale entry) a run of the interpreter turned into a
//! [`FlowEntry`] (rewrites per local output port, or a drop reason) that is
//! installed unless it depends on more than the flow key.
//!
//! Owns the per-packet decision; it must not touch mbufs or devices (the
//! worker applies the decision to the frame) and must not be shared between
//! lcores. Learned MAC bindings leave through a bounded lock-free queue that
//! the control thread drains.

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use fastpath_packet::FlowKey;

use super::cache::{CachedOutput, EntryDrop, FlowCache, FlowEntry, Lookup};
use super::interpreter::{Generated, Interpreter, Learned};
use super::program::Program;
use super::rewrite::Rewrite;
use super::vector::FlowVector;
use crate::stats::CacheCounters;

/// A packet an action generated, to be built and sent.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedPacket {
    /// Fastpath port index it leaves through.
    pub port: u16,
    /// What generated it.
    pub kind: Generated,
    /// Its final vector.
    pub vector: FlowVector,
}

/// What to do with one packet.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The entry (cached or not).
    pub entry: &'a FlowEntry,
    /// Generated packets (never cached).
    pub generated: &'a [GeneratedPacket],
}

/// Per-lcore OVN state.
pub struct OvnLcore {
    /// The flow cache.
    pub cache: FlowCache,
    interpreter: Interpreter,
    program: Option<Arc<Program>>,
    scratch: FlowEntry,
    generated: Vec<GeneratedPacket>,
    learned: Arc<ArrayQueue<Learned>>,
    /// Bindings lost because the queue was full.
    pub learned_lost: u64,
}

impl OvnLcore {
    /// A cache of `capacity` entries; learned bindings go to `learned`.
    pub fn new(capacity: usize, learned: Arc<ArrayQueue<Learned>>) -> OvnLcore {
        OvnLcore {
            cache: FlowCache::new(capacity),
            interpreter: Interpreter::new(),
            program: None,
            scratch: FlowEntry::default(),
            generated: Vec::new(),
            learned,
            learned_lost: 0,
        }
    }

    /// Takes up a new program (at a burst boundary). Entries of older
    /// generations are revalidated when next used.
    pub fn set_program(&mut self, program: Option<Arc<Program>>) {
        self.program = program;
    }

    /// The program in use.
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.as_ref()
    }

    /// The decision for a packet with `key` (whose in-port is the fastpath
    /// port index) and frame length `pkt_len`; `None` when no program is
    /// loaded. `now` stamps new entries.
    #[inline]
    pub fn decide(
        &mut self,
        key: &FlowKey,
        pkt_len: u32,
        now: u64,
        counters: &CacheCounters,
    ) -> Option<Decision<'_>> {
        let program = self.program.as_ref()?;
        let generation = program.generation;
        let stale = match self.cache.lookup(key, generation) {
            Lookup::Hit(slot) => {
                counters.hits.add(1);
                let e = self.cache.entry_mut(slot);
                e.hits += 1;
                return Some(Decision {
                    entry: self.cache.entry(slot),
                    generated: &[],
                });
            }
            Lookup::Stale(slot) => Some(slot),
            Lookup::Miss => None,
        };
        let (mut entry, cacheable) = run(
            &mut self.interpreter,
            &mut self.generated,
            &self.learned,
            &mut self.learned_lost,
            program,
            key,
            pkt_len,
        );
        entry.built_at = now;
        entry.hits = 1;
        match stale {
            Some(slot) => {
                counters.revalidations.add(1);
                if cacheable {
                    self.cache.replace(slot, entry);
                    return Some(Decision {
                        entry: self.cache.entry(slot),
                        generated: &self.generated,
                    });
                }
                // Keep the stale entry out of use: the next packet re-runs.
                self.scratch = entry;
            }
            None => {
                counters.misses.add(1);
                if cacheable {
                    let (slot, evicted) = self.cache.insert(*key, entry);
                    if evicted {
                        counters.evictions.add(1);
                    }
                    counters.entries.set(self.cache.len() as u64);
                    return Some(Decision {
                        entry: self.cache.entry(slot),
                        generated: &self.generated,
                    });
                }
                self.scratch = entry;
            }
        }
        Some(Decision {
            entry: &self.scratch,
            generated: &self.generated,
        })
    }
}

/// Runs the interpreter; returns the entry and whether it may be cached.
/// (A function of the lcore's parts, so that the program stays borrowed
/// from the lcore rather than cloned per miss.)
fn run(
    interpreter: &mut Interpreter,
    generated: &mut Vec<GeneratedPacket>,
    learned: &ArrayQueue<Learned>,
    learned_lost: &mut u64,
    program: &Program,
    key: &FlowKey,
    pkt_len: u32,
) -> (FlowEntry, bool) {
    generated.clear();
    let mut entry = FlowEntry {
        generation: program.generation,
        ..Default::default()
    };
    let Some(inport) = program.port_by_fastpath(key.in_port()) else {
        entry.drop = Some(EntryDrop::Pipeline(super::DropCause::UnknownInport));
        return (entry, true);
    };
    let verdict = interpreter.run(program, inport, key, pkt_len);
    let mut remote = false;
    let mut unwritable = false;
    for em in &verdict.emissions {
        let Some(port) = program
            .ports
            .get(em.port as usize)
            .and_then(|p| p.fastpath_port)
        else {
            remote = true;
            continue;
        };
        if let Some(kind) = em.generated {
            generated.push(GeneratedPacket {
                port,
                kind,
                vector: em.vector,
            });
            continue;
        }
        match Rewrite::plan(key, &em.vector) {
            Ok(rewrite) => entry.outputs.push(CachedOutput {
                port,
                logical_port: em.port,
                rewrite,
            }),
            Err(_) => unwritable = true,
        }
    }
    for l in &verdict.learned {
        if learned.push(*l).is_err() {
            *learned_lost += 1;
        }
    }
    if entry.outputs.is_empty() && generated.is_empty() {
        entry.drop = Some(if let Some(cause) = verdict.drop_cause() {
            EntryDrop::Pipeline(cause)
        } else if unwritable {
            EntryDrop::Rewrite
        } else if remote {
            EntryDrop::RemoteOutport
        } else {
            EntryDrop::Pipeline(super::DropCause::Implicit)
        });
    }
    let cacheable = !verdict.length_dependent && !verdict.generated;
    (entry, cacheable)
}
