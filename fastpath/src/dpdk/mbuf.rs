//! Owned mbufs and the burst arrays the worker loop moves them through.
//!
//! An [`Mbuf`] owns one packet buffer (a chain when segmented) and frees it on
//! drop. Ownership moves to the device on a successful transmit. Burst arrays
//! hold `MaybeUninit<Mbuf>` so that no slot ever holds an invalid value: only
//! `0..len` is initialised.

use super::Mempool;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// Packets per rx burst and per tx buffer.
pub const BURST_SIZE: usize = 32;

/// One owned packet buffer.
#[repr(transparent)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf value at a time; DPDK allows
// an mbuf to be freed from any lcore or thread.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Allocates an empty mbuf from `pool`.
    #[inline]
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: pool is a live packet mempool.
        let p = unsafe { dpdk_sys::fp_pktmbuf_alloc(pool.as_ptr()) };
        NonNull::new(p).map(Mbuf)
    }

    /// Allocates `out.len()` mbufs at once; all or none.
    #[inline]
    pub fn alloc_bulk(pool: &Mempool, out: &mut [MaybeUninit<Mbuf>]) -> bool {
        // SAFETY: Mbuf is repr(transparent) over a non-null pointer, so the
        // slice is an array of `*mut rte_mbuf` slots that DPDK fills entirely
        // on success (rc == 0) and leaves untouched on failure.
        let rc = unsafe {
            dpdk_sys::fp_pktmbuf_alloc_bulk(
                pool.as_ptr(),
                out.as_mut_ptr() as *mut *mut dpdk_sys::rte_mbuf,
                out.len() as u32,
            )
        };
        rc == 0
    }

    /// A copy of the whole packet (all segments, and the metadata DPDK
    /// copies) in new mbufs from `pool`; `None` when the pool is empty.
    #[inline]
    pub fn copy(&self, pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: self owns a live mbuf chain that is only read; pool is a
        // live packet mempool; DPDK returns a new, separately owned chain or
        // NULL.
        let p = unsafe { dpdk_sys::rte_pktmbuf_copy(self.0.as_ptr(), pool.as_ptr(), 0, u32::MAX) };
        NonNull::new(p).map(Mbuf)
    }

    /// A new single-segment mbuf from `pool` holding `frame`; `None` when
    /// the pool is empty or the frame does not fit in one segment.
    pub fn from_bytes(pool: &Mempool, frame: &[u8]) -> Option<Mbuf> {
        let len = u16::try_from(frame.len()).ok()?;
        let mut m = Mbuf::alloc(pool)?;
        m.append(len)?.copy_from_slice(frame);
        Some(m)
    }

    #[inline(always)]
    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: self owns a live mbuf for its whole life.
        unsafe { self.0.as_ref() }
    }

    /// Bytes in the first segment.
    #[inline(always)]
    pub fn data_len(&self) -> usize {
        self.raw().data_len as usize
    }

    /// Bytes in the whole packet (all segments).
    #[inline(always)]
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// Number of segments.
    #[inline(always)]
    pub fn segments(&self) -> u16 {
        self.raw().nb_segs
    }

    /// Input port id set by the receiving PMD.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// The bytes of the first segment.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off points at data_len initialised bytes
        // inside the mbuf's buffer, owned by self for the borrow's life.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// The bytes of the first segment, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and &mut self guarantees exclusive access.
        unsafe {
            let m = self.0.as_mut();
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// Appends `len` bytes at the end of the last segment and returns them.
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: self owns the mbuf; DPDK returns NULL when there is no room,
        // else a pointer to `len` writable bytes inside the buffer.
        let p = unsafe { dpdk_sys::fp_pktmbuf_append(self.0.as_ptr(), len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p points at len bytes owned by this mbuf.
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len as usize) })
    }

    /// Prepends `len` bytes (into the headroom) and returns the new start.
    pub fn prepend(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: as in `append`; DPDK checks the headroom.
        let p = unsafe { dpdk_sys::fp_pktmbuf_prepend(self.0.as_ptr(), len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p points at len bytes (plus the rest of the packet) owned by self.
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len as usize) })
    }

    /// Removes `len` bytes from the front. False when the packet is shorter.
    pub fn adj(&mut self, len: u16) -> bool {
        // SAFETY: self owns the mbuf; DPDK checks the length.
        !unsafe { dpdk_sys::fp_pktmbuf_adj(self.0.as_ptr(), len) }.is_null()
    }

    /// Removes `len` bytes from the end. False when the packet is shorter.
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: self owns the mbuf; DPDK checks the length.
        unsafe { dpdk_sys::fp_pktmbuf_trim(self.0.as_ptr(), len) == 0 }
    }

    /// Free bytes before the data.
    pub fn headroom(&self) -> u16 {
        // SAFETY: self owns a live mbuf.
        unsafe { dpdk_sys::fp_pktmbuf_headroom(self.0.as_ptr()) }
    }

    /// Free bytes after the data of the last segment.
    pub fn tailroom(&self) -> u16 {
        // SAFETY: self owns a live mbuf.
        unsafe { dpdk_sys::fp_pktmbuf_tailroom(self.0.as_ptr()) }
    }

    /// Gathers a segmented packet into its first segment when it fits.
    pub fn linearize(&mut self) -> bool {
        if self.segments() <= 1 {
            return true;
        }
        // SAFETY: self owns the chain exclusively.
        unsafe { dpdk_sys::fp_pktmbuf_linearize(self.0.as_ptr()) == 0 }
    }

    /// Copies the whole packet (all segments) into a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pkt_len() as usize);
        let mut seg: *const dpdk_sys::rte_mbuf = self.0.as_ptr();
        while !seg.is_null() {
            // SAFETY: seg walks the chain owned by self; each segment is live
            // and its data range is initialised.
            unsafe {
                let m = &*seg;
                out.extend_from_slice(std::slice::from_raw_parts(
                    (m.buf_addr as *const u8).add(m.data_off as usize),
                    m.data_len as usize,
                ));
                seg = m.next;
            }
        }
        out
    }

    /// Prefetches the packet data into cache.
    #[inline(always)]
    pub fn prefetch_data(&self) {
        let m = self.raw();
        // Inline rather than through the C shim: this runs once per packet.
        super::prefetch_addr((m.buf_addr as usize).wrapping_add(usize::from(m.data_off)));
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf (chain) and nobody else references it.
        unsafe { dpdk_sys::fp_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// A received burst: `len` owned mbufs.
pub struct RxBurst {
    bufs: [MaybeUninit<Mbuf>; BURST_SIZE],
    len: usize,
}

impl Default for RxBurst {
    fn default() -> Self {
        Self::new()
    }
}

impl RxBurst {
    /// An empty burst.
    pub fn new() -> Self {
        RxBurst {
            bufs: [const { MaybeUninit::uninit() }; BURST_SIZE],
            len: 0,
        }
    }

    /// Receives up to [`BURST_SIZE`] packets from `port`/`queue`. Any packets
    /// still held are freed first.
    #[inline]
    pub fn receive(&mut self, port: u16, queue: u16) -> usize {
        self.clear();
        // SAFETY: the array has BURST_SIZE slots of pointer size
        // (repr(transparent)); the PMD writes `n` valid mbuf pointers at the
        // front and we mark exactly those initialised.
        let n = unsafe {
            dpdk_sys::fp_eth_rx_burst(
                port,
                queue,
                self.bufs.as_mut_ptr() as *mut *mut dpdk_sys::rte_mbuf,
                BURST_SIZE as u16,
            )
        };
        self.len = n as usize;
        self.len
    }

    /// Fills the burst with `n` (at most [`BURST_SIZE`]) fresh mbufs from
    /// `pool`, all or none. Any packets still held are freed first.
    #[inline]
    pub fn alloc(&mut self, pool: &Mempool, n: usize) -> bool {
        self.clear();
        let n = n.min(BURST_SIZE);
        if n == 0 || !Mbuf::alloc_bulk(pool, &mut self.bufs[..n]) {
            return false;
        }
        self.len = n;
        true
    }

    /// Number of packets held.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no packet is held.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The held packets.
    #[inline(always)]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: slots 0..len are initialised.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr() as *const Mbuf, self.len) }
    }

    /// The held packets, writable.
    #[inline(always)]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: slots 0..len are initialised; &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// Takes the packets out one by one, in order.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_> {
        let len = self.len;
        self.len = 0;
        Drain {
            burst: self,
            next: 0,
            end: len,
        }
    }

    /// Frees every held packet.
    pub fn clear(&mut self) {
        drop(self.drain());
    }
}

impl Drop for RxBurst {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Iterator that moves packets out of an [`RxBurst`]; packets not taken are
/// freed when it is dropped.
pub struct Drain<'a> {
    burst: &'a mut RxBurst,
    next: usize,
    end: usize,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;
    #[inline(always)]
    fn next(&mut self) -> Option<Mbuf> {
        if self.next < self.end {
            // SAFETY: slots next..end were initialised and are read once each;
            // burst.len was set to 0 so nothing else reads them.
            let m = unsafe { self.burst.bufs.get_unchecked(self.next).assume_init_read() };
            self.next += 1;
            Some(m)
        } else {
            None
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.next, Some(self.end - self.next))
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        for m in self.by_ref() {
            drop(m);
        }
    }
}

/// A per-port transmit buffer: packets collect here and leave in one burst.
pub struct TxBuffer {
    bufs: [MaybeUninit<Mbuf>; BURST_SIZE],
    len: usize,
    bytes: u64,
}

impl Default for TxBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxResult {
    /// Packets the device took.
    pub sent: u32,
    /// Bytes the device took.
    pub sent_bytes: u64,
    /// Packets the device refused (freed).
    pub dropped: u32,
}

impl TxBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        TxBuffer {
            bufs: [const { MaybeUninit::uninit() }; BURST_SIZE],
            len: 0,
            bytes: 0,
        }
    }

    /// Number of packets waiting.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the next push would not fit.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.len == BURST_SIZE
    }

    /// Adds a packet; gives it back when the buffer is full (flush first).
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST_SIZE {
            return Err(m);
        }
        self.bytes += u64::from(m.pkt_len());
        // SAFETY: len < BURST_SIZE, so the slot exists and is uninitialised.
        unsafe { self.bufs.get_unchecked_mut(self.len).write(m) };
        self.len += 1;
        Ok(())
    }

    /// Transmits everything waiting on `port`/`queue`. Packets the device does
    /// not take are freed and counted as dropped.
    #[inline]
    pub fn flush(&mut self, port: u16, queue: u16) -> TxResult {
        if self.len == 0 {
            return TxResult::default();
        }
        let len = self.len;
        // SAFETY: slots 0..len hold valid mbuf pointers (repr(transparent));
        // the PMD takes ownership of the first `sent` of them.
        let sent = unsafe {
            dpdk_sys::fp_eth_tx_burst(
                port,
                queue,
                self.bufs.as_mut_ptr() as *mut *mut dpdk_sys::rte_mbuf,
                len as u16,
            )
        } as usize;
        let mut dropped_bytes = 0u64;
        for i in sent..len {
            // SAFETY: slots sent..len are still initialised and owned by us;
            // each is read once and then freed.
            let m = unsafe { self.bufs.get_unchecked(i).assume_init_read() };
            dropped_bytes += u64::from(m.pkt_len());
            drop(m);
        }
        let res = TxResult {
            sent: sent as u32,
            sent_bytes: self.bytes - dropped_bytes,
            dropped: (len - sent) as u32,
        };
        self.len = 0;
        self.bytes = 0;
        res
    }

    /// Frees everything waiting without sending.
    pub fn discard(&mut self) -> u32 {
        let n = self.len;
        for i in 0..n {
            // SAFETY: slots 0..len are initialised; each is read once.
            drop(unsafe { self.bufs.get_unchecked(i).assume_init_read() });
        }
        self.len = 0;
        self.bytes = 0;
        n as u32
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        self.discard();
    }
}
