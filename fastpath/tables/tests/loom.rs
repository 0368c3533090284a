//! Model check of the publish / acknowledge / reuse protocol with loom.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fastpath-tables --release --test loom`.
//!
//! The slots are modelled by `loom::cell::UnsafeCell`s: loom fails the test if
//! a reader reads a slot while the writer writes it, and checks every read
//! sees the generation it pinned. Readers ack what they read and then leave;
//! the writer's wait loop must end in every interleaving (loom fails a model
//! whose threads spin without progress), so the writer never waits forever
//! on readers that keep acking.
#![cfg(loom)]
// The slots are modelled by loom's UnsafeCell, whose accesses are unsafe:
// that is the point (loom tracks them). This file is shared-memory code.
#![allow(unsafe_code)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use fastpath_tables::protocol::{slot_of, Pin, PublishState, ReaderEntry};

struct Model {
    state: PublishState,
    readers: [ReaderEntry; 2],
    slots: [UnsafeCell<u64>; 2],
}

fn writer_publish(model: &Model, next: u64) {
    let slot = model.state.claim_slot(next);
    while model
        .readers
        .iter()
        .any(|entry| entry.blocks(next).is_some())
    {
        thread::yield_now();
    }
    // SAFETY: the protocol gives the writer this slot exclusively; loom fails
    // the model if any reader reads the cell meanwhile.
    model.slots[slot].with_mut(|value| unsafe { *value = next });
    model.state.commit(slot, next, 8, next, 0);
}

/// A reader that registers, reads and acks the current generation `rounds`
/// times, then leaves (releases its entry).
fn reader(model: &Model, index: usize, token: u64, rounds: usize) {
    let entry = &model.readers[index];
    assert!(entry.try_claim(token, 1, 0, 0));
    let mut seen = match model.state.establish(entry) {
        Pin::Pinned(pinned) => pinned.generation,
        Pin::NotPublished => 0,
        other => panic!("registration failed: {other:?}"),
    };
    for _ in 0..rounds {
        match model.state.pin(entry, token) {
            Pin::Pinned(pinned) => {
                assert!(pinned.generation >= seen, "generation went back");
                assert_eq!(pinned.slot, slot_of(pinned.generation));
                // SAFETY: the ack protects this slot from the writer; loom
                // fails the model if the writer writes the cell meanwhile.
                let value = model.slots[pinned.slot].with(|value| unsafe { *value });
                assert_eq!(
                    value, pinned.generation,
                    "read a slot of another generation"
                );
                entry.ack(pinned.generation);
                seen = pinned.generation;
            }
            Pin::NotPublished => assert_eq!(
                seen,
                0,
                "a published generation vanished: generation {} peek {:?} ack {}",
                model.state.generation(),
                model.state.peek(),
                entry.acked()
            ),
            other => panic!("pin failed: {other:?}"),
        }
        thread::yield_now();
    }
    assert!(entry.release(token));
}

fn model(first_published: u64, last: u64, rounds: usize) {
    let model = Arc::new(Model {
        state: PublishState::new(),
        readers: [ReaderEntry::new(), ReaderEntry::new()],
        slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
    });
    // Generation `first_published` is in place before anyone starts.
    if first_published > 0 {
        writer_publish(&model, first_published);
    }
    let readers: Vec<_> = (0..2)
        .map(|index| {
            let model = Arc::clone(&model);
            thread::spawn(move || reader(&model, index, index as u64 + 1, rounds))
        })
        .collect();
    for next in first_published + 1..=last {
        writer_publish(&model, next);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(model.state.generation(), last);
}

#[test]
fn two_readers_never_see_a_slot_being_written() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| model(1, 3, 2));
}

#[test]
fn registration_races_with_slot_reuse() {
    // Readers register from an empty file while the writer fills and reuses
    // both slots.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| model(0, 3, 1));
}
