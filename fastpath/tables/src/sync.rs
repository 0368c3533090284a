//! Atomics used by the publish/acknowledge protocol.
//!
//! Owns nothing but the choice of atomic types: `std::sync::atomic` in normal
//! builds, `loom::sync::atomic` when model-checking with `--cfg loom`. Only
//! [`crate::protocol`] goes through this shim; code that maps memory never
//! sees loom types.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

pub(crate) use std::sync::atomic::Ordering;
