//! Conntrack verdicts in the megaflow cache: the conntrack calls a verdict
//! made, kept so that they can be issued again for another packet.
//!
//! A verdict that went through conntrack depends on more than the flow key
//! bits the interpreter consulted: on what each `ct_*` action and hairpin
//! check answered. OVS-DPDK splits such a pipeline at each `ct()` and
//! recirculates; here the interpreter is one recursive pass, so the
//! megaflow keeps the whole verdict together with its calls
//! ([`ReplayStep`]s, recorded by [`record`]), and serves another packet
//! that agrees with it on the consulted bits only if the calls, issued
//! again for that packet, answer the same:
//!
//! 1. [`preview`], without side effects: every operation that is the
//!    first of the pass in its zone is looked up
//!    ([`crate::conntrack::Conntrack::peek`]), and every load balancer that
//!    chose a backend chooses again, on the packet as the earlier calls'
//!    translations left it. A megaflow keeps up to a few variants per
//!    masked key (one per backend, new or established...); the first whose
//!    preview holds is used.
//! 2. [`replay`], live, through the same [`ConntrackHook`] the interpreter
//!    uses: the operations create and refresh connections exactly as the
//!    interpreter would have, and every answer (state, mark, label,
//!    backend, translation, hairpin) must be the recorded one. The preview
//!    makes a difference rare: a commit the table refuses for this packet
//!    (its reply tuple is another connection's), or another lcore
//!    committing the same connection in between. When one happens, the
//!    caller runs the interpreter on the packet, which then sees the
//!    connections the replay made, as a retransmission would (and meets
//!    the same refusal).
//!
//! Why this is sound: the interpreter's path through the tables is a
//! function of the consulted key bits (in the megaflow's mask) and of the
//! answers of the hook; the replayed calls are issued with the same
//! parameters, in the same zones, on the packet as those answers left it.
//! Only calls that depend on nothing else are kept: [`record`] refuses
//! verdicts whose operations translate to a target of their own (a source
//! port allocated per connection), act on an existing translation of
//! another operation's making, need the frame (ICMP), commit first thing
//! in a zone, or were made on headers the pipeline rewrote itself.

use fastpath_packet::FlowKey;
use fastpath_tables::ovn::ct_state;

use super::ct::{
    self, ConntrackHook, CtCall, CtOp, CtOpKind, CtZone, LbBackend, LbCall, NatRequest,
};
use super::ct_engine::{translate_vector, BackendChoices, ConntrackEngine};
use super::interpreter::Verdict;
use super::vector::FlowVector;
use crate::conntrack::{CtPacket, PacketClass, Translation, Tuple};

/// One call of a kept verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStep {
    /// A conntrack operation.
    Op {
        /// What was asked, in which zone, and what it answered.
        op: CtOp,
        /// The translation it wrote into the packet.
        translation: Option<Translation>,
        /// The load balancer of a `ct_lb`/`ct_lb_mark`.
        lb: Option<Box<LbCall>>,
        /// The first operation of the pass in its zone (its lookup does not
        /// depend on an earlier one: [`preview`] checks it).
        first: bool,
    },
    /// A hairpin check and its answer.
    Hairpin {
        /// Zone.
        zone: CtZone,
        /// `chk_lb_hairpin_reply()`.
        reply: bool,
        /// The answer.
        hit: bool,
    },
}

/// The calls of `verdict` (made through `engine`, for the packet `key`)
/// as steps to replay, or `None` when the verdict cannot be replayed (see
/// the module doc). An empty list: the verdict made no call.
pub fn record(
    verdict: &Verdict,
    engine: Option<&ConntrackEngine>,
    key: &FlowKey,
) -> Option<Vec<ReplayStep>> {
    if verdict.ct_calls.is_empty() {
        return Some(Vec::new());
    }
    // The engine keeps one record per operation other than `ct_clear`, in
    // the order of the verdict's calls.
    let mut found = engine?.ops().iter();
    let mut v = FlowVector::from_key(key, 0, 0);
    let mut zones: Vec<CtZone> = Vec::new();
    let mut steps = Vec::with_capacity(verdict.ct_calls.len());
    for call in &verdict.ct_calls {
        match call {
            CtCall::Hairpin { zone, reply, hit } => steps.push(ReplayStep::Hairpin {
                zone: *zone,
                reply: *reply,
                hit: *hit,
            }),
            CtCall::Op { index, lb } => {
                let op = *verdict.ct_ops.get(*index)?;
                let engine_op = found.next()?;
                let kept = match op.kind {
                    CtOpKind::Track | CtOpKind::Nat(_, None) => true,
                    CtOpKind::LoadBalance(_) => lb.is_some(),
                    CtOpKind::Commit(c) => c.nat == NatRequest::None,
                    _ => false,
                };
                if !kept || engine_op.needs_frame {
                    return None;
                }
                // The operation saw the received packet as the earlier
                // translations left it, and nothing else.
                if engine_op.packet.tuple != CtPacket::from_key(&v.key()).tuple {
                    return None;
                }
                let first = !zones.contains(&op.zone);
                if first && matches!(op.kind, CtOpKind::Commit(_)) {
                    return None;
                }
                zones.push(op.zone);
                if let Some(t) = &engine_op.translation {
                    translate_vector(&mut v, t);
                }
                steps.push(ReplayStep::Op {
                    op,
                    translation: engine_op.translation,
                    lb: lb.clone().map(Box::new),
                    first,
                });
            }
        }
    }
    // (Every record of the engine belongs to one call.)
    found.next().is_none().then_some(steps)
}

/// What the previews of one packet found, so that the variants of a
/// megaflow (which mostly begin alike) look each connection up and choose
/// each backend once.
#[derive(Default)]
pub struct Previewed {
    /// (zone, tuple, what the look found, the zone's creation count read
    /// before it looked, whether it found no connection for a trackable
    /// packet)
    lookups: Vec<(CtZone, Tuple, crate::conntrack::CtResult, u32, bool)>,
    /// The backends the previews chose, handed to the replay's engine.
    pub choices: BackendChoices,
    /// The packet as received, as the steps before any translation see
    /// it (the same for every variant).
    received: Option<CtPacket>,
}

impl Previewed {
    /// Forgets the last packet's.
    pub fn clear(&mut self) {
        self.lookups.clear();
        self.choices.clear();
        self.received = None;
    }

    /// The lookups that found no connection, for
    /// [`ConntrackEngine::assume_absent`].
    pub fn absent(&self) -> impl Iterator<Item = (CtZone, Tuple, u32)> + '_ {
        self.lookups
            .iter()
            .filter(|l| l.4)
            .map(|&(z, t, _, n, _)| (z, t, n))
    }

    /// The backend `lb` chooses for the packet `v` (whose tuple is
    /// `tuple`).
    fn choice(&mut self, lb: &LbCall, v: &FlowVector, tuple: Tuple) -> Option<LbBackend> {
        if let Some(b) = self.choices.find(lb.hash_fields, &lb.backends, &tuple) {
            return b;
        }
        let b = ct::choose_backend(v, &lb.request());
        self.choices.push(lb.hash_fields, &lb.backends, tuple, b);
        b
    }
}

/// Whether `steps` would answer the packet `key` as recorded, as far as
/// can be told without side effects: each zone's first lookup and each
/// load balancer's choice of backend. `len` is the packet's IP length,
/// `now` the conntrack clock; `seen` keeps what this packet's previews
/// found (clear it between packets).
pub fn preview(
    steps: &[ReplayStep],
    engine: &ConntrackEngine,
    key: &FlowKey,
    len: u32,
    now: u64,
    seen: &mut Previewed,
) -> bool {
    let mut v = FlowVector::from_key(key, 0, 0);
    // The packet as the steps see it since the last translation, once
    // built.
    let mut current = seen.received;
    let mut translated = false;
    for step in steps {
        let ReplayStep::Op {
            op,
            translation,
            lb,
            first,
        } = step
        else {
            continue;
        };
        let chooses = matches!(op.kind, CtOpKind::LoadBalance(Some(_)));
        // The packet as this step sees it, when the step is checked.
        let packet = (*first || chooses).then(|| {
            *current.get_or_insert_with(|| {
                let mut p = CtPacket::from_key(&v.key());
                if p.len == 0 {
                    p.len = len;
                }
                if !translated {
                    seen.received = Some(p);
                }
                p
            })
        });
        let found = packet.filter(|_| *first).map(|p| {
            let known = seen
                .lookups
                .iter()
                .find(|l| l.0 == op.zone && l.1 == p.tuple);
            match known {
                Some(&(_, _, r, _, _)) => r,
                None => {
                    let table = engine.conntrack();
                    let commits = table.zone_commits(op.zone);
                    let r = table.peek(op.zone, &p, now);
                    let absent = p.class == PacketClass::Trackable && r.conn.is_none();
                    seen.lookups.push((op.zone, p.tuple, r, commits, absent));
                    r
                }
            }
        });
        match (op.kind, found) {
            (CtOpKind::LoadBalance(Some(backend)), found) => {
                // A new connection was balanced: this one must be new too
                // (when the lookup is this step's own) and go to the same
                // backend.
                if found.is_some_and(|r| r.conn.is_some() || r.state & ct_state::NEW == 0) {
                    return false;
                }
                let (Some(lb), Some(p)) = (lb, packet) else {
                    return false;
                };
                if seen.choice(lb, &v, p.tuple) != Some(backend) {
                    return false;
                }
            }
            (_, Some(r)) => {
                let same = r.state == op.result.state
                    && r.mark == op.result.mark
                    && r.label == op.result.label;
                // An operation that applies the connection's translation
                // must find the same one.
                let nat_same = match op.kind {
                    CtOpKind::Nat(..) | CtOpKind::LoadBalance(_) => r.nat == *translation,
                    _ => true,
                };
                if !same || !nat_same {
                    return false;
                }
            }
            (_, None) => {}
        }
        if let Some(t) = translation {
            translate_vector(&mut v, t);
            translated = true;
            current = None;
        }
    }
    true
}

/// Issues `steps` for the packet `key` through `engine` (begun for this
/// packet); true when every call answered as recorded. On false, some
/// connections may have been created or refreshed already.
pub fn replay(steps: &[ReplayStep], engine: &mut ConntrackEngine, key: &FlowKey) -> bool {
    let mut v = FlowVector::from_key(key, 0, 0);
    for step in steps {
        match step {
            ReplayStep::Hairpin { zone, reply, hit } => {
                if engine.lb_hairpin(*zone, &v, *reply) != Ok(*hit) {
                    return false;
                }
            }
            ReplayStep::Op {
                op,
                translation,
                lb,
                ..
            } => {
                let zone = op.zone;
                let answer = match op.kind {
                    CtOpKind::Track => engine.track(zone, &mut v),
                    CtOpKind::Nat(direction, None) => engine.nat(zone, &mut v, direction, None),
                    CtOpKind::LoadBalance(backend) => {
                        let Some(lb) = lb else { return false };
                        match engine.load_balance(zone, &mut v, &lb.request()) {
                            Ok((r, b)) if b == backend => Ok(r),
                            _ => return false,
                        }
                    }
                    CtOpKind::Commit(c) => engine.commit(zone, &mut v, &c),
                    _ => return false,
                };
                let Ok(result) = answer else { return false };
                let applied = engine.ops().last().map(|o| o.translation);
                if result != op.result || applied != Some(*translation) {
                    return false;
                }
                result.store(&mut v);
            }
        }
    }
    true
}
