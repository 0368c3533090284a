//! QoS policers: the token-bucket meters behind OVN's `set_meter(rate[, burst])`
//! action and the Northbound `Meter` rows whose bands drop above a rate.
//!
//! Owns the [`MeterBank`]: every meter of the node, keyed by a stable
//! [`MeterKey`], shared by all worker lcores. The packet path
//! ([`MeterView::police`]) takes no lock: each meter is one atomic "theoretical
//! arrival time" (the GCRA form of a token bucket: a packet conforms if the
//! bucket's debt after paying for it stays within the burst) plus its
//! parameters and counters in atomics. The control thread updates the bank
//! with [`MeterBank::sync`]: a changed rate or burst is written into the live
//! meter (its bucket state and counters are kept, so the change applies to
//! the next packet and no other meter notices), new meters are added, and
//! meters no longer referenced are removed by publishing a new key map
//! (`arc-swap`), which lcores pick up at their next [`MeterBank::view`].
//!
//! Time is the caller's: a monotonic tick count (TSC cycles, or nanoseconds)
//! and its rate, given when the bank is made, so tests run on a synthetic
//! clock. Ticks are kept with 4 fractional bits, enough for a 3 GHz TSC to
//! run for 12 years. This module must not know about packets, the pipeline
//! or the tables: it sees a key, a length in bytes and a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

/// Fractional bits of the internal time unit.
const FRAC_BITS: u32 = 4;
/// Largest bucket debt in internal units: keeps every sum far from overflow.
const MAX_TAU: u64 = 1 << 60;

/// A meter's stable identity (assigned by the compiler to each NB `Meter`
/// name or `set_meter` parameter set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey(pub u32);

/// What a band's rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterUnit {
    /// Kilobits per second (rate) and kilobits (burst); 1 kbit = 1000 bits.
    Kbps,
    /// Packets per second (rate) and packets (burst).
    Pktps,
}

/// One policer: drop what exceeds `rate`, allowing bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterConfig {
    /// Unit of `rate` and `burst`.
    pub unit: MeterUnit,
    /// Rate (kbit/s or packets/s); must be positive.
    pub rate: u64,
    /// Bucket depth (kbit or packets); 0 takes [`MeterConfig::effective_burst`]'s
    /// default.
    pub burst: u64,
}

impl MeterConfig {
    /// `set_meter(rate_kbps)` / `set_meter(rate_kbps, burst_kbit)`.
    pub fn kbps(rate_kbps: u64, burst_kbit: u64) -> Self {
        MeterConfig {
            unit: MeterUnit::Kbps,
            rate: rate_kbps,
            burst: burst_kbit,
        }
    }

    /// A packets-per-second band.
    pub fn pktps(rate: u64, burst: u64) -> Self {
        MeterConfig {
            unit: MeterUnit::Pktps,
            rate,
            burst,
        }
    }

    /// The bucket depth used: `burst`, or when it is 0 a tenth of a second
    /// at the rate, and never less than one 9000-byte frame (kbps) or one
    /// packet (pktps), so that a meter can always pass something.
    pub fn effective_burst(&self) -> u64 {
        let b = if self.burst == 0 {
            self.rate / 10
        } else {
            self.burst
        };
        match self.unit {
            MeterUnit::Kbps => b.max(72),
            MeterUnit::Pktps => b.max(1),
        }
    }
}

/// Why a meter configuration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// The rate is zero.
    #[error("meter {0:?}: rate is zero")]
    ZeroRate(MeterKey),
    /// Rate and burst give a bucket this clock cannot represent.
    #[error("meter {0:?}: rate and burst out of range for the clock")]
    OutOfRange(MeterKey),
    /// The clock rate given to the bank is zero.
    #[error("clock rate is zero")]
    ZeroClock,
}

/// A packet's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: forward.
    Pass,
    /// Above the rate: drop (counted by the meter).
    Drop,
}

/// Counters of one meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeterStats {
    /// Packets passed.
    pub passed_packets: u64,
    /// Bytes passed.
    pub passed_bytes: u64,
    /// Packets dropped.
    pub dropped_packets: u64,
    /// Bytes dropped.
    pub dropped_bytes: u64,
}

/// One live meter. Cache-line aligned: lcores write it concurrently.
#[derive(Debug)]
#[repr(align(64))]
pub struct Meter {
    /// Theoretical arrival time: when the bucket is full again (internal units).
    tat: AtomicU64,
    /// Cost of one bit (kbps) or one packet (pktps), internal units.
    cost: AtomicU64,
    /// 1 when the cost is per packet.
    per_packet: AtomicU64,
    /// Bucket depth in internal units.
    tau: AtomicU64,
    passed_packets: AtomicU64,
    passed_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// Internal time of a tick count.
#[inline]
fn fixed(now: u64) -> u64 {
    now.saturating_mul(1 << FRAC_BITS)
}

/// (cost per unit, depth) in internal units, for a clock of `hz` ticks/s.
fn params(key: MeterKey, config: &MeterConfig, hz: u64) -> Result<(u64, u64), MeterError> {
    if config.rate == 0 {
        return Err(MeterError::ZeroRate(key));
    }
    let units_per_sec = match config.unit {
        MeterUnit::Kbps => u128::from(config.rate) * 1000,
        MeterUnit::Pktps => u128::from(config.rate),
    };
    let burst_units = match config.unit {
        MeterUnit::Kbps => u128::from(config.effective_burst()) * 1000,
        MeterUnit::Pktps => u128::from(config.effective_burst()),
    };
    let scaled_hz = u128::from(hz) << FRAC_BITS;
    // Round the cost up: a meter may pass a hair less than its rate, never more.
    let cost = scaled_hz.div_ceil(units_per_sec);
    let tau = burst_units * cost;
    if cost == 0 || tau > u128::from(MAX_TAU) {
        return Err(MeterError::OutOfRange(key));
    }
    Ok((cost as u64, tau as u64))
}

impl Meter {
    fn new(cost: u64, per_packet: bool, tau: u64) -> Self {
        Meter {
            tat: AtomicU64::new(0),
            cost: AtomicU64::new(cost),
            per_packet: AtomicU64::new(u64::from(per_packet)),
            tau: AtomicU64::new(tau),
            passed_packets: AtomicU64::new(0),
            passed_bytes: AtomicU64::new(0),
            dropped_packets: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Polices one packet of `bytes` bytes arriving at tick `now`.
    #[inline]
    pub fn police(&self, bytes: u32, now: u64) -> Verdict {
        let now = fixed(now);
        let cost = self.cost.load(Ordering::Relaxed);
        let units = if self.per_packet.load(Ordering::Relaxed) != 0 {
            1
        } else {
            u64::from(bytes) * 8
        };
        let price = units.saturating_mul(cost);
        let tau = self.tau.load(Ordering::Relaxed);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(price);
            if next - now > tau {
                self.dropped_packets.fetch_add(1, Ordering::Relaxed);
                self.dropped_bytes
                    .fetch_add(u64::from(bytes), Ordering::Relaxed);
                return Verdict::Drop;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.passed_packets.fetch_add(1, Ordering::Relaxed);
                    self.passed_bytes
                        .fetch_add(u64::from(bytes), Ordering::Relaxed);
                    return Verdict::Pass;
                }
                Err(current) => tat = current,
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> MeterStats {
        MeterStats {
            passed_packets: self.passed_packets.load(Ordering::Relaxed),
            passed_bytes: self.passed_bytes.load(Ordering::Relaxed),
            dropped_packets: self.dropped_packets.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }

    /// Applies new parameters at tick `now`, keeping the bucket: its content
    /// (the bits or packets it holds) stays what it was, re-expressed at the
    /// new rate, and is capped at the new depth.
    fn reconfigure(&self, cost: u64, per_packet: bool, tau: u64, now: u64) {
        let now = fixed(now);
        let old_cost = self.cost.load(Ordering::Relaxed);
        let old_per_packet = self.per_packet.load(Ordering::Relaxed) != 0;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let debt = tat.saturating_sub(now);
            let rescaled = if old_per_packet != per_packet || old_cost == 0 {
                // Bits and packets do not convert: start the new unit full.
                0
            } else {
                (u128::from(debt) * u128::from(cost) / u128::from(old_cost)) as u64
            };
            let next = now.saturating_add(rescaled.min(tau));
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => tat = current,
            }
        }
        self.per_packet
            .store(u64::from(per_packet), Ordering::Relaxed);
        self.cost.store(cost, Ordering::Relaxed);
        self.tau.store(tau, Ordering::Relaxed);
    }
}

type MeterMap = HashMap<MeterKey, Arc<Meter>>;

/// Every meter of the node. Lcores read it through [`MeterBank::view`]; the
/// control thread changes it with [`MeterBank::sync`].
#[derive(Debug)]
pub struct MeterBank {
    hz: u64,
    meters: ArcSwap<MeterMap>,
    /// The configurations last synced (control thread only).
    configs: Mutex<HashMap<MeterKey, MeterConfig>>,
}

/// A snapshot of the bank's key map, for one burst of packets.
#[derive(Debug, Clone)]
pub struct MeterView {
    meters: Arc<MeterMap>,
}

impl MeterView {
    /// Polices a packet on meter `key`; `None` if there is no such meter
    /// (the caller counts that as a drop reason of its own).
    #[inline]
    pub fn police(&self, key: MeterKey, bytes: u32, now: u64) -> Option<Verdict> {
        self.meters.get(&key).map(|m| m.police(bytes, now))
    }

    /// A meter of the snapshot.
    pub fn get(&self, key: MeterKey) -> Option<&Arc<Meter>> {
        self.meters.get(&key)
    }
}

impl MeterBank {
    /// An empty bank for a clock of `ticks_per_second`.
    pub fn new(ticks_per_second: u64) -> Result<Self, MeterError> {
        if ticks_per_second == 0 {
            return Err(MeterError::ZeroClock);
        }
        Ok(MeterBank {
            hz: ticks_per_second,
            meters: ArcSwap::from_pointee(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// The current key map (lcores: once per burst).
    pub fn view(&self) -> MeterView {
        MeterView {
            meters: self.meters.load_full(),
        }
    }

    /// Makes the bank hold exactly `wanted` at tick `now`: changed meters are
    /// reconfigured in place, new ones start with a full bucket, and meters
    /// not in `wanted` are removed. Nothing changes if any configuration is
    /// refused.
    pub fn sync(&self, wanted: &[(MeterKey, MeterConfig)], now: u64) -> Result<(), MeterError> {
        let mut prepared = Vec::with_capacity(wanted.len());
        for (key, config) in wanted {
            let (cost, tau) = params(*key, config, self.hz)?;
            prepared.push((*key, *config, cost, tau));
        }
        let mut configs = self.configs.lock();
        let current = self.meters.load_full();
        let mut next: MeterMap = HashMap::with_capacity(prepared.len());
        let mut next_configs = HashMap::with_capacity(prepared.len());
        for (key, config, cost, tau) in prepared {
            let per_packet = config.unit == MeterUnit::Pktps;
            let meter = match current.get(&key) {
                Some(existing) => {
                    if configs.get(&key) != Some(&config) {
                        existing.reconfigure(cost, per_packet, tau, now);
                    }
                    Arc::clone(existing)
                }
                None => Arc::new(Meter::new(cost, per_packet, tau)),
            };
            next.insert(key, meter);
            next_configs.insert(key, config);
        }
        let changed_keys =
            next.len() != current.len() || next.keys().any(|k| !current.contains_key(k));
        if changed_keys {
            self.meters.store(Arc::new(next));
        }
        *configs = next_configs;
        Ok(())
    }

    /// Counters of a meter.
    pub fn stats(&self, key: MeterKey) -> Option<MeterStats> {
        self.meters.load().get(&key).map(|m| m.stats())
    }

    /// Number of meters.
    pub fn len(&self) -> usize {
        self.meters.load().len()
    }

    /// Whether the bank holds no meter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 1_000_000_000;

    /// Offers `bytes`-byte packets at `offered_bps` from `start` for
    /// `duration` ns; returns the bits that passed.
    fn offer(
        view: &MeterView,
        key: MeterKey,
        bytes: u32,
        offered_bps: u64,
        start: u64,
        duration: u64,
    ) -> u64 {
        let gap = u64::from(bytes) * 8 * NS / offered_bps;
        let mut passed = 0;
        let mut t = start;
        while t < start + duration {
            if view.police(key, bytes, t) == Some(Verdict::Pass) {
                passed += u64::from(bytes) * 8;
            }
            t += gap;
        }
        passed
    }

    fn within(value: u64, target: u64, pct: u64) -> bool {
        value * 100 >= target * (100 - pct) && value * 100 <= target * (100 + pct)
    }

    #[test]
    fn twice_the_rate_passes_the_rate() {
        let bank = MeterBank::new(NS).unwrap();
        let key = MeterKey(1);
        bank.sync(&[(key, MeterConfig::kbps(10_000, 100))], 0)
            .unwrap();
        let passed = offer(&bank.view(), key, 1000, 20_000_000, 0, NS);
        assert!(
            within(passed, 10_000_000, 10),
            "passed {passed} bits of 20 Mbit offered against 10 Mbit/s"
        );
        let s = bank.stats(key).unwrap();
        assert_eq!(s.passed_bytes * 8, passed);
        assert!(s.dropped_packets > 0 && s.passed_packets > 0);
        assert_eq!(s.passed_packets + s.dropped_packets, 2500);
    }

    #[test]
    fn packet_rate_band() {
        let bank = MeterBank::new(NS).unwrap();
        let key = MeterKey(9);
        bank.sync(&[(key, MeterConfig::pktps(1000, 10))], 0)
            .unwrap();
        let view = bank.view();
        let passed = (0..4000u64)
            .filter(|i| view.police(key, 1500, i * NS / 4000) == Some(Verdict::Pass))
            .count() as u64;
        assert!(
            within(passed, 1000, 2),
            "passed {passed} of 4000 at 1000 pps"
        );
    }

    #[test]
    fn rate_change_takes_effect_midway_and_keeps_counters() {
        let bank = MeterBank::new(NS).unwrap();
        let key = MeterKey(7);
        let other = MeterKey(8);
        bank.sync(
            &[
                (key, MeterConfig::kbps(10_000, 100)),
                (other, MeterConfig::kbps(5_000, 100)),
            ],
            0,
        )
        .unwrap();
        let view = bank.view();
        let first = offer(&view, key, 1000, 40_000_000, 0, NS / 2);
        let other_meter = Arc::clone(view.get(other).unwrap());
        bank.sync(
            &[
                (key, MeterConfig::kbps(20_000, 100)),
                (other, MeterConfig::kbps(5_000, 100)),
            ],
            NS / 2,
        )
        .unwrap();
        // The same snapshot sees the new rate at once: no key was added or removed.
        let second = offer(&view, key, 1000, 40_000_000, NS / 2, NS / 2);
        assert!(within(first, 5_000_000, 10), "first half {first}");
        assert!(within(second, 10_000_000, 10), "second half {second}");
        let s = bank.stats(key).unwrap();
        assert_eq!(s.passed_bytes * 8, first + second, "counters survive");
        assert!(
            Arc::ptr_eq(bank.view().get(other).unwrap(), &other_meter),
            "the other meter is untouched"
        );
    }

    #[test]
    fn meters_are_independent_and_unreferenced_ones_go() {
        let bank = MeterBank::new(NS).unwrap();
        let (a, b) = (MeterKey(1), MeterKey(2));
        bank.sync(
            &[
                (a, MeterConfig::kbps(1_000, 50)),
                (b, MeterConfig::kbps(8_000, 50)),
            ],
            0,
        )
        .unwrap();
        let view = bank.view();
        // Meter a is hammered far above its rate; b gets exactly its rate.
        let pa = offer(&view, a, 500, 50_000_000, 0, NS);
        let pb = offer(&view, b, 500, 8_000_000, 0, NS);
        assert!(within(pa, 1_000_000, 10), "a passed {pa}");
        assert!(within(pb, 8_000_000, 2), "b passed {pb}");
        assert_eq!(bank.stats(b).unwrap().dropped_packets, 0);
        bank.sync(&[(b, MeterConfig::kbps(8_000, 50))], NS).unwrap();
        assert_eq!(bank.len(), 1);
        assert!(bank.stats(a).is_none());
        assert!(bank.view().police(a, 100, NS).is_none());
        assert_eq!(bank.stats(b).unwrap().passed_bytes * 8, pb);
    }

    #[test]
    fn bad_configs_are_refused_without_change() {
        let bank = MeterBank::new(NS).unwrap();
        bank.sync(&[(MeterKey(1), MeterConfig::kbps(1000, 0))], 0)
            .unwrap();
        assert_eq!(
            bank.sync(
                &[
                    (MeterKey(1), MeterConfig::kbps(1000, 0)),
                    (MeterKey(2), MeterConfig::kbps(0, 10))
                ],
                0
            ),
            Err(MeterError::ZeroRate(MeterKey(2)))
        );
        assert_eq!(bank.len(), 1);
        assert!(matches!(
            bank.sync(&[(MeterKey(3), MeterConfig::kbps(1, u64::MAX / 2))], 0),
            Err(MeterError::OutOfRange(_))
        ));
        assert!(matches!(MeterBank::new(0), Err(MeterError::ZeroClock)));
    }

    #[test]
    fn burst_is_allowed_then_policed() {
        let bank = MeterBank::new(NS).unwrap();
        let key = MeterKey(3);
        // 100 kbit burst: 12 packets of 1000 bytes (96 kbit) pass at once, 13th does not.
        bank.sync(&[(key, MeterConfig::kbps(1_000, 100))], 0)
            .unwrap();
        let view = bank.view();
        let passed = (0..20)
            .filter(|_| view.police(key, 1000, 5 * NS) == Some(Verdict::Pass))
            .count();
        assert_eq!(passed, 12);
    }

    #[test]
    fn two_threads_never_exceed_rate_plus_burst() {
        let bank = Arc::new(MeterBank::new(NS).unwrap());
        let key = MeterKey(5);
        let rate_kbps = 10_000;
        let burst_kbit = 200;
        bank.sync(&[(key, MeterConfig::kbps(rate_kbps, burst_kbit))], 0)
            .unwrap();
        let threads: Vec<_> = (0..2u64)
            .map(|i| {
                let bank = Arc::clone(&bank);
                std::thread::spawn(move || {
                    let view = bank.view();
                    // Each thread offers 15 Mbit/s with its own phase.
                    offer(&view, key, 700 + 100 * i as u32, 15_000_000, 0, NS)
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let limit = rate_kbps * 1000 + burst_kbit * 1000;
        assert!(total <= limit, "passed {total} bits, limit {limit}");
        assert!(total >= rate_kbps * 1000 * 9 / 10, "passed only {total}");
        let s = bank.stats(key).unwrap();
        assert_eq!(s.passed_bytes * 8, total);
    }
}
