//! A lock-free, append-only vector with one writer and any number of
//! readers on other threads.
//!
//! The writer thread appends (a partition index gains one entry per batch)
//! while reader threads look entries up, without a lock and without the
//! writer ever waiting. Two properties make that sound:
//!
//! - Elements never move. Storage is a fixed array of buckets of
//!   geometrically growing size (bucket `k` holds `32 << k` elements), and a
//!   bucket, once allocated, stays where it is until the log is dropped. A
//!   reader may therefore hold `&T` while the writer appends.
//! - Publication is one atomic length. The writer initialises the element,
//!   then stores the new length with `Release`; readers load it with
//!   `Acquire` and only touch elements below it, so every element a reader
//!   can see is fully written.
//!
//! Single-writer is enforced by ownership: only [`AppendWriter`] can push,
//! and it is neither `Clone` nor shareable through `&`. The writer allocates
//! only when it enters a new bucket, so pushes are allocation-free apart from
//! `log2(len)` of them.

use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

/// log2 of the number of elements in bucket 0.
const FIRST_BUCKET_SHIFT: u32 = 5;
/// Elements in bucket 0; bucket `k` holds `FIRST_BUCKET_LEN << k`.
const FIRST_BUCKET_LEN: usize = 1 << FIRST_BUCKET_SHIFT;
/// Number of bucket pointers. 40 buckets hold about 3.5 × 10¹³ elements,
/// far beyond what memory allows, so the bound is never the limit in practice.
const BUCKETS: usize = 40;

/// The most elements one log can hold: the sum of every bucket's size.
pub const APPEND_LOG_CAPACITY: usize = FIRST_BUCKET_LEN * ((1 << BUCKETS) - 1);

// The bucket arithmetic below shifts a usize by up to BUCKETS + FIRST_BUCKET_SHIFT bits.
const _: () = assert!(usize::BITS >= 64, "the append log needs a 64-bit target");
const _: () = assert!(BUCKETS as u32 + FIRST_BUCKET_SHIFT < usize::BITS);

/// Elements in bucket `k`.
const fn bucket_len(k: usize) -> usize {
    FIRST_BUCKET_LEN << k
}

/// Elements stored in the buckets before bucket `k`.
const fn bucket_start(k: usize) -> usize {
    FIRST_BUCKET_LEN * ((1 << k) - 1)
}

/// The bucket holding element `i` and the slot within it. Shifting `i` by
/// one bucket-0 length turns bucket boundaries into powers of two, so the
/// bucket is a leading-zeros count. The caller guarantees
/// `i < APPEND_LOG_CAPACITY`.
fn slot_of(i: usize) -> (usize, usize) {
    let j = i + FIRST_BUCKET_LEN;
    let k = (usize::BITS - 1 - j.leading_zeros() - FIRST_BUCKET_SHIFT) as usize;
    (k, j - (FIRST_BUCKET_LEN << k))
}

/// The shared, read-only side of an append log. Readers on any thread hold
/// it through an `Arc`; see the [module docs](self) for the contract.
pub struct AppendLog<T> {
    /// Published length: every element below it is initialised and visible
    /// to a reader that loaded it with `Acquire`.
    len: AtomicUsize,
    /// Bucket `k` points to `bucket_len(k)` slots, or is null when not yet
    /// allocated. Only the writer stores into it, once per bucket.
    buckets: [AtomicPtr<T>; BUCKETS],
    /// The log owns `T`s: this makes `AppendLog<T>` `Send` only when `T` is
    /// and `Sync` only when `T` is, and tells drop check that dropping the
    /// log drops `T`s. (`Arc<AppendLog<T>>` then crosses threads only for
    /// `T: Send + Sync`, which is right: readers share `&T`, and the last
    /// `Arc`, on whichever thread, drops the elements.)
    _owns: PhantomData<T>,
}

/// The only handle that can append to its [`AppendLog`]. Not `Clone`, and
/// [`push`](AppendWriter::push) takes `&mut self`, which is what makes the log
/// single-writer.
pub struct AppendWriter<T> {
    log: Arc<AppendLog<T>>,
    /// The writer's own copy of the length, equal to the published one; it
    /// saves an atomic load on every push and lookup.
    len: usize,
}

/// Creates an empty log: the writer handle and a reader handle to share.
/// Nothing is allocated until the first push.
pub fn append_log<T: Send + Sync>() -> (AppendWriter<T>, Arc<AppendLog<T>>) {
    let log = Arc::new(AppendLog {
        len: AtomicUsize::new(0),
        buckets: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        _owns: PhantomData,
    });
    let writer = AppendWriter {
        log: Arc::clone(&log),
        len: 0,
    };
    (writer, log)
}

/// Allocates an uninitialised bucket of `n` slots and leaks it as a thin
/// pointer; [`free_bucket`] takes it back.
fn alloc_bucket<T>(n: usize) -> *mut T {
    let bucket: Box<[MaybeUninit<T>]> = Box::new_uninit_slice(n);
    Box::into_raw(bucket).cast::<T>()
}

/// Frees a bucket made by [`alloc_bucket`] without dropping any element.
///
/// # Safety
/// `p` came from `alloc_bucket::<T>(n)` with this same `n`, was not freed
/// before, and nothing refers to it afterwards.
unsafe fn free_bucket<T>(p: *mut T, n: usize) {
    let slice = ptr::slice_from_raw_parts_mut(p.cast::<MaybeUninit<T>>(), n);
    // SAFETY: by the caller's contract this is exactly the box alloc_bucket
    // leaked; MaybeUninit<T> has no drop glue, so only the memory is freed.
    drop(unsafe { Box::from_raw(slice) });
}

impl<T> AppendLog<T> {
    /// The published length. Loaded with `Acquire`, so every element below
    /// it is readable through [`get`](AppendLog::get). It only grows.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when nothing was published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, or `None` when it is not published yet.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len() {
            return None;
        }
        // SAFETY: the Acquire load of len returned a value above i, so it
        // synchronised with the Release store that published element i.
        Some(unsafe { self.slot(i) })
    }

    /// Iterates the elements published when the call was made.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let len = self.len();
        // SAFETY: every i < len was published by the Acquire load above.
        (0..len).map(move |i| unsafe { self.slot(i) })
    }

    /// A reference to element `i`.
    ///
    /// # Safety
    /// Element `i` is initialised and its initialisation happens-before this
    /// call: either the caller is the writer and `i` is below its length, or
    /// the caller loaded a length above `i` with `Acquire`.
    unsafe fn slot(&self, i: usize) -> &T {
        let (k, off) = slot_of(i);
        // Acquire pairs with the writer's Release store of the bucket; the
        // length's Release/Acquire already orders it, this keeps the bucket
        // pointer's own publication obvious at no cost on x86.
        let bucket = self.buckets[k].load(Ordering::Acquire);
        debug_assert!(!bucket.is_null());
        // SAFETY: by the contract, element i was written into bucket k at
        // slot off < bucket_len(k) before this call, and the bucket stays
        // allocated and unmoved until Drop, which needs `&mut self` and so
        // cannot run while the returned borrow of `self` lives. The writer
        // never writes slot i again, so shared access is sound.
        unsafe { &*bucket.add(off) }
    }

    /// Buckets allocated so far (for tests of the allocation pattern).
    #[cfg(test)]
    fn allocated_buckets(&self) -> usize {
        self.buckets
            .iter()
            .filter(|b| !b.load(Ordering::Acquire).is_null())
            .count()
    }
}

impl<T> AppendWriter<T> {
    /// Appends `v` and publishes it to readers.
    ///
    /// # Panics
    /// When the log already holds [`APPEND_LOG_CAPACITY`] elements (more
    /// than memory can hold; a programmer error).
    pub fn push(&mut self, v: T) {
        let i = self.len;
        assert!(i < APPEND_LOG_CAPACITY, "append log is full");
        let (k, off) = slot_of(i);
        let slot = &self.log.buckets[k];
        // Only this writer stores bucket pointers, so a Relaxed load sees
        // its own earlier store.
        let mut bucket = slot.load(Ordering::Relaxed);
        if bucket.is_null() {
            bucket = alloc_bucket::<T>(bucket_len(k));
            slot.store(bucket, Ordering::Release);
        }
        // SAFETY: bucket k holds bucket_len(k) > off slots. Slot off is
        // uninitialised (element i was never pushed) and no reader touches
        // it: readers only access elements below the published length,
        // which is i until the store below. Writing through a raw pointer
        // creates no reference that could alias readers' `&T`s to other slots.
        unsafe { bucket.add(off).write(v) };
        self.len = i + 1;
        // Release: the element write above becomes visible to any reader
        // whose Acquire load of len sees i + 1.
        self.log.len.store(self.len, Ordering::Release);
    }

    /// Elements pushed so far (all of them are published).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i`, or `None` when `i >= len()`.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        // SAFETY: this writer initialised element i itself, in program order
        // before this call.
        Some(unsafe { self.log.slot(i) })
    }

    /// The last element pushed.
    pub fn last(&self) -> Option<&T> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The shared log, to hand more reader handles out.
    pub fn log(&self) -> &Arc<AppendLog<T>> {
        &self.log
    }
}

impl<T> Drop for AppendLog<T> {
    fn drop(&mut self) {
        // `&mut self`: no reader or writer is left, so plain accesses suffice.
        let len = *self.len.get_mut();
        for (k, bucket) in self.buckets.iter_mut().enumerate() {
            let p = *bucket.get_mut();
            if p.is_null() {
                continue;
            }
            let n = bucket_len(k);
            let init = len.saturating_sub(bucket_start(k)).min(n);
            // SAFETY: the first `init` slots of bucket k are exactly the
            // pushed elements that live there (elements are pushed in index
            // order and every pushed element is below len); each is dropped
            // here once, and the bucket is freed once with the size it was
            // allocated with. Nothing can refer to them after `drop`.
            unsafe {
                ptr::drop_in_place(ptr::slice_from_raw_parts_mut(p, init));
                free_bucket(p, n);
            }
        }
    }
}

impl<T> fmt::Debug for AppendLog<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendLog")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for AppendWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendWriter")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn slots_are_consecutive_across_bucket_boundaries() {
        let mut expected = (0, 0);
        for i in 0..100_000 {
            assert_eq!(slot_of(i), expected, "element {i}");
            expected.1 += 1;
            if expected.1 == bucket_len(expected.0) {
                expected = (expected.0 + 1, 0);
            }
        }
        assert_eq!(bucket_start(3), 32 + 64 + 128);
        assert_eq!(
            slot_of(APPEND_LOG_CAPACITY - 1),
            (BUCKETS - 1, bucket_len(BUCKETS - 1) - 1)
        );
    }

    #[test]
    fn pushed_elements_read_back_from_both_handles() {
        let (mut w, r) = append_log::<u64>();
        assert!(w.is_empty() && r.is_empty());
        assert_eq!((w.get(0), r.get(0), w.last()), (None, None, None));
        for i in 0..5_000u64 {
            w.push(i * 3);
            assert_eq!(w.last(), Some(&(i * 3)));
        }
        assert_eq!((w.len(), r.len()), (5_000, 5_000));
        for i in 0..5_000 {
            assert_eq!(w.get(i), Some(&(i as u64 * 3)));
            assert_eq!(r.get(i), Some(&(i as u64 * 3)));
        }
        assert_eq!((w.get(5_000), r.get(5_000)), (None, None));
        assert!(r.iter().copied().eq((0..5_000).map(|i| i * 3)));
        assert!(Arc::ptr_eq(w.log(), &r));
    }

    #[test]
    fn buckets_are_allocated_only_when_entered() {
        let (mut w, r) = append_log::<u32>();
        assert_eq!(r.allocated_buckets(), 0);
        w.push(0);
        assert_eq!(r.allocated_buckets(), 1);
        while w.len() < 32 {
            w.push(0);
        }
        assert_eq!(r.allocated_buckets(), 1, "bucket 0 holds 32");
        w.push(0);
        assert_eq!(r.allocated_buckets(), 2);
        while w.len() < bucket_start(5) {
            w.push(0);
        }
        assert_eq!(r.allocated_buckets(), 5);
    }

    #[test]
    fn elements_never_move_while_the_log_grows() {
        let (mut w, r) = append_log::<String>();
        w.push("first".to_owned());
        let first: &String = r.get(0).unwrap();
        let addr = first as *const String;
        for i in 0..50_000 {
            w.push(i.to_string());
        }
        // The reader's borrow is still valid and still at the same address.
        assert_eq!(first, "first");
        assert_eq!(r.get(0).unwrap() as *const String, addr);
    }

    #[test]
    fn reader_on_another_thread_sees_every_published_element() {
        const N: u64 = 1_000_000;
        let (mut w, r) = append_log::<u64>();
        // Both threads start together so the reader really races the writer.
        let start = Arc::new(std::sync::Barrier::new(2));
        let reader_start = Arc::clone(&start);
        let reader = std::thread::spawn(move || {
            reader_start.wait();
            let mut seen = 0usize;
            let mut last_len = 0usize;
            while seen < N as usize {
                let len = r.len();
                assert!(len >= last_len, "published length went backwards");
                last_len = len;
                for i in seen..len {
                    assert_eq!(r.get(i), Some(&(i as u64)), "element {i}");
                }
                // Re-check an old element: it must not have moved or changed.
                if len > 0 {
                    assert_eq!(r.get(len / 2), Some(&((len / 2) as u64)));
                }
                assert_eq!(r.get(N as usize), None);
                seen = len;
            }
            seen
        });
        start.wait();
        for i in 0..N {
            w.push(i);
            // Give a reader on the same core a chance to run mid-stream.
            if i % 65_536 == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(reader.join().unwrap(), N as usize);
    }

    /// Counts drops of its values into a shared counter.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_element_is_dropped_exactly_once_when_the_last_handle_goes() {
        for n in [0, 1, 31, 32, 33, 1_000] {
            let drops = Arc::new(AtomicUsize::new(0));
            let (mut w, r) = append_log::<Counted>();
            for _ in 0..n {
                w.push(Counted(Arc::clone(&drops)));
            }
            drop(w);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                0,
                "a reader still holds the log"
            );
            assert_eq!(r.iter().count(), n);
            drop(r);
            assert_eq!(drops.load(Ordering::SeqCst), n);
        }
    }

    #[test]
    fn writer_as_last_handle_drops_the_elements() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut w, r) = append_log::<Counted>();
        drop(r);
        for _ in 0..100 {
            w.push(Counted(Arc::clone(&drops)));
        }
        drop(w);
        assert_eq!(drops.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn zero_sized_elements_are_counted() {
        let (mut w, r) = append_log::<()>();
        for _ in 0..1_000 {
            w.push(());
        }
        assert_eq!(r.len(), 1_000);
        assert_eq!(r.get(999), Some(&()));
    }

    #[test]
    fn handles_cross_threads_only_for_send_sync_elements() {
        fn send_sync<X: Send + Sync>() {}
        fn send<X: Send>() {}
        send_sync::<Arc<AppendLog<u64>>>();
        send::<AppendWriter<u64>>();
    }
}
