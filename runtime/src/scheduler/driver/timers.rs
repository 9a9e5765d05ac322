//! A worker's timers: a 4-ary min-heap of deadlines over a slab of wakers,
//! with removal by key.
//!
//! Almost every timer the runtime arms ends unfired: a wait with a timeout
//! (`recv_timeout`, a socket read timeout, a `Condvar` wait) needs one each
//! time it parks, and is usually woken some other way long before the
//! deadline. A heap that only flagged such timers cancelled, and dropped
//! them when they reached the top, grew by an entry, a waker and the task
//! it kept alive per wait, until the deadline (issue 17: +160 bytes per
//! round trip of a ping-pong with `recv_timeout(60 s)`). Here a timer is
//! moved to its coroutine's next deadline in place, and a cancelled one
//! is dropped at the latest when cancelled ones are half the heap (Go's
//! timers compact the same way): a worker holds at most one timer per
//! coroutine, and none for a finished one (`Driver::arm`), and its heap at
//! most about twice its live timers, whose wakers alone keep tasks alive.
//!
//! # Why a heap with removal
//!
//! It is the structure Go's runtime (`runtime/time.go`: a 4-ary heap per P,
//! with deletion) and libuv (`heap-inl.h`: a binary heap whose nodes know
//! their place) keep their timers in:
//!
//! - **Exact deadlines.** A timer fires at its own `Instant`, in deadline
//!   order (then arming order), which `tests/rt_time.rs` relies on. A timer
//!   wheel (tokio's `time/wheel`) rounds deadlines to its 1 ms tick and
//!   needs intrusive lists; its O(1) wins only with many thousands of live
//!   timers per worker, and every operation here is O(log₄ n) with a small
//!   n: at most one timer per coroutine of this worker (`Driver::arm`).
//! - **Cheap at the sizes that matter.** Arming appends and sifts up (a
//!   deadline later than all others, the common case, stops at once);
//!   cancelling takes the waker and leaves the entry, dead, for the top
//!   or the next compaction (O(n) after at least n/2 cancellations); re-arming
//!   (the same coroutine's next timed wait, see `Driver::arm`) to an earlier
//!   deadline changes the entry in place and sifts it up. Re-arming to a
//!   later deadline, what a wait in a loop does every time, only notes the
//!   new deadline in the slot: the entry stays where it is, and when it
//!   reaches the top and its old deadline passes it is put back at the noted
//!   one instead of firing (Go's timers defer such moves the same way). That
//!   took a heap sift and a conversion of the deadline off every such park
//!   (callgrind, `timeout_pingpong workers=1`). No allocation once the
//!   vectors have grown to the worker's high-water mark of live timers.
//! - **4-ary**, as Go's: half the levels of a binary heap, and the four
//!   children of a node share a cache line or two, so sifting down touches
//!   fewer lines.
//!
//! # Keys
//!
//! Arming returns a [`TimerKey`]: the entry's slab index and the slot's
//! generation, bumped each time the slot is freed. A key whose timer has
//! fired (or was cancelled) no longer matches, so cancelling or re-arming
//! with it is a no-op even when the slot now holds another timer. The
//! slot also records its owner (the task), which a key must match too:
//! a slot reused 2³² times while one key was held cannot make that key
//! touch another task's timer.

use std::num::NonZeroU64;
use std::task::Waker;
use std::time::Instant;

/// Children per heap node.
const ARITY: usize = 4;

/// End of the free list.
const NONE: u32 = u32::MAX;

/// Identifies one armed timer, for [`Timers::cancel`] and
/// [`Timers::rearm`]. 8 bytes (it sits in every coroutine's `Running`, as
/// an `Option`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TimerKey(NonZeroU64);

impl TimerKey {
    fn new(slot: u32, generation: u32) -> TimerKey {
        let v = (u64::from(generation) << 32) | u64::from(slot);
        // Generations start at 1 and skip 0 when they wrap.
        TimerKey(NonZeroU64::new(v).expect("a generation is never 0"))
    }

    fn slot(&self) -> usize {
        (self.0.get() & u64::from(u32::MAX)) as usize
    }

    fn generation(&self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

/// A heap entry: what the heap orders by, and where the waker is, in one
/// `u128`: the deadline in nanoseconds since the heap's base (high 64
/// bits), then the arming order's low 32 bits (ties of equal deadlines:
/// two timers 2^32 armings apart with the same nanosecond deadline do not
/// occur), then the slot index (`Timers::slots`). One integer comparison
/// orders two entries: comparing `(Instant, u64)` tuples took most of a
/// cancellation's sift (callgrind of `examples/hyper_server`, whose hyper
/// arms and drops a header-read timer per request).
#[derive(Clone, Copy)]
struct Entry {
    key: u128,
}

impl Entry {
    #[inline]
    fn new(ns: u64, tie_slot: u64) -> Entry {
        Entry {
            key: (u128::from(ns) << 64) | u128::from(tie_slot),
        }
    }

    #[inline]
    fn before(&self, o: &Entry) -> bool {
        self.key < o.key
    }

    /// The deadline, in nanoseconds since the heap's base.
    #[inline]
    fn ns(&self) -> u64 {
        (self.key >> 64) as u64
    }

    fn slot(&self) -> usize {
        (self.key as u64 & u64::from(u32::MAX)) as usize
    }
}

/// A slab slot: an armed timer's waker, or a free slot.
struct Slot {
    /// `Some` while armed.
    waker: Option<Waker>,
    /// The deadline the heap entry stands for (while armed).
    at: Instant,
    /// A later deadline the timer was moved to and its arming order, not
    /// yet in its entry: the entry is put back there when it reaches the
    /// top (see the module docs). `None` while the entry is the deadline.
    later: Option<(Instant, u32)>,
    /// Whose timer it is (an opaque tag from `insert`: a coroutine's task
    /// address, or a future's sleep's odd, never reused tag): a key must
    /// match it as well as the generation (see the module docs).
    owner: usize,
    /// While in the heap (armed, or cancelled and not yet removed), the
    /// entry's index there; while free, the next free slot (or `NONE`).
    pos: u32,
    /// Bumped when the slot is freed; never 0.
    generation: u32,
}

/// One worker's timers (see the module docs).
pub(crate) struct Timers {
    /// A 4-ary min-heap by `(deadline, tie_slot)`; entry `i`'s slot has
    /// `pos == i`.
    heap: Vec<Entry>,
    slots: Vec<Slot>,
    /// Head of the free-slot list threaded through `Slot::pos`.
    free: u32,
    /// The next arming order.
    seq: u32,
    /// Where entries' nanoseconds count from: a day (or as much as the
    /// clock has) before the heap was made, so deadlines a little in the
    /// past keep their order too.
    base: Instant,
    /// Cancelled entries still in the heap (their slots' wakers are gone).
    dead: usize,
}

/// Cancelled entries the heap keeps before it compacts, at the least; it
/// compacts once they are also more than half of it (see
/// [`Timers::cancel`]).
const COMPACT_MIN: usize = 32;

impl Timers {
    /// No timers.
    pub(crate) fn new() -> Timers {
        let now = Instant::now();
        let base = [86_400, 3_600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(std::time::Duration::from_secs(s)))
            .unwrap_or(now);
        Timers {
            heap: Vec::new(),
            slots: Vec::new(),
            free: NONE,
            seq: 0,
            base,
            dead: 0,
        }
    }

    /// Armed timers.
    pub(crate) fn len(&self) -> usize {
        self.heap.len() - self.dead
    }

    /// Arms a timer for `owner` that [`pop_expired`](Self::pop_expired)
    /// hands back `waker` from once `deadline` has passed.
    pub(crate) fn insert(&mut self, deadline: Instant, owner: usize, waker: Waker) -> TimerKey {
        let slot = match self.free {
            NONE => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i != NONE)
                    .expect("fewer than 2^32 - 1 timers per worker");
                self.slots.push(Slot {
                    waker: None,
                    at: deadline,
                    later: None,
                    owner: 0,
                    pos: 0,
                    generation: 1,
                });
                i
            }
            i => {
                self.free = self.slots[i as usize].pos;
                i
            }
        };
        let s = &mut self.slots[slot as usize];
        s.waker = Some(waker);
        s.at = deadline;
        s.later = None;
        s.owner = owner;
        let key = TimerKey::new(slot, s.generation);
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let e = Entry::new(self.ns(deadline), (u64::from(seq) << 32) | u64::from(slot));
        self.heap.push(e);
        self.sift_up(self.heap.len() - 1, e);
        key
    }

    /// Disarms `key`'s timer if it is still armed, and returns its waker
    /// (for the caller to drop once it holds no borrow: the waker may hold
    /// the last reference to its task).
    ///
    /// The entry itself stays in the heap, dead, until it reaches the top
    /// or the heap compacts (when dead entries are more than half of it,
    /// and at least [`COMPACT_MIN`]): a cancellation is O(1), and each
    /// compaction, O(n), follows at least n/2 of them. hyper arms a
    /// header-read timer per request and drops it when the head arrives,
    /// the oldest first: removing it in place sifted from the top every
    /// time, a third of the instructions greenstack added to a request
    /// over tokio (callgrind of `examples/hyper_server`).
    pub(crate) fn cancel(&mut self, key: TimerKey, owner: usize) -> Option<Waker> {
        let pos = self.armed(&key, owner)?;
        if pos + 1 == self.heap.len() {
            // The last entry: removing it moves nothing.
            return self.remove_at(pos);
        }
        let waker = self.slots[key.slot()].waker.take();
        self.dead += 1;
        if self.dead >= COMPACT_MIN && self.dead * 2 > self.heap.len() {
            self.compact();
        }
        waker
    }

    /// Drops every dead entry and rebuilds the heap from the live ones.
    fn compact(&mut self) {
        let mut live = 0;
        for i in 0..self.heap.len() {
            let e = self.heap[i];
            if self.slots[e.slot()].waker.is_some() {
                self.heap[live] = e;
                live += 1;
            } else {
                self.free_slot(e.slot());
            }
        }
        self.heap.truncate(live);
        self.dead = 0;
        // Floyd's heap construction: sift every entry down, last first
        // (each sift also records its entries' places in their slots).
        for pos in (0..live).rev() {
            let e = self.heap[pos];
            self.sift_down(pos, e);
        }
    }

    /// Moves `key`'s timer, if still armed, to `deadline` (waker and slot
    /// stay) and returns its key; `None` if it has fired since. A move to
    /// a deadline no earlier than its entry's is only noted (see the
    /// module docs).
    #[inline]
    pub(crate) fn rearm(
        &mut self,
        key: TimerKey,
        owner: usize,
        deadline: Instant,
    ) -> Option<TimerKey> {
        let pos = self.armed(&key, owner)?;
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let s = &mut self.slots[key.slot()];
        if deadline >= s.at {
            s.later = Some((deadline, seq));
            return Some(key);
        }
        s.at = deadline;
        s.later = None;
        let e = Entry::new(
            self.ns(deadline),
            (u64::from(seq) << 32) | key.slot() as u64,
        );
        // Earlier than its entry, so it moves up, unless the two deadlines
        // saturated to the same nanosecond (`ns`) and the arming order puts
        // it lower.
        if pos > 0 && e.before(&self.heap[(pos - 1) / ARITY]) {
            self.sift_up(pos, e);
        } else {
            self.sift_down(pos, e);
        }
        Some(key)
    }

    /// The heap position of `key`'s timer if it is still armed for `owner`.
    #[inline]
    fn armed(&self, key: &TimerKey, owner: usize) -> Option<usize> {
        let s = self.slots.get(key.slot())?;
        if s.generation != key.generation() || s.owner != owner || s.waker.is_none() {
            return None; // fired, or cancelled, since
        }
        Some(s.pos as usize)
    }

    /// `t` in nanoseconds since `base` (0 before it, `u64::MAX` past 584
    /// years).
    #[inline]
    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The earliest deadline (`base` for one before it). It may be a
    /// cancelled timer's, or one a timer has since been moved on from: the
    /// worker then wakes once for nothing, and `pop_expired` drops the
    /// entry or puts it back at the later deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|e| {
            self.base
                .checked_add(std::time::Duration::from_nanos(e.ns()))
                .unwrap_or(self.base + std::time::Duration::from_secs(86_400 * 365 * 100))
        })
    }

    /// Disarms the earliest timer if its deadline is at or before `now`,
    /// and returns its waker.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Waker> {
        let now = self.ns(now);
        loop {
            match self.heap.first() {
                Some(&e) if e.ns() <= now => {
                    let s = &mut self.slots[e.slot()];
                    if let Some((at, seq)) = s.later.take() {
                        if s.waker.is_some() {
                            // Moved on since: back in at its deadline, in
                            // the arming order of the move.
                            s.at = at;
                            let moved =
                                Entry::new(self.ns(at), (u64::from(seq) << 32) | e.slot() as u64);
                            self.sift_down(0, moved);
                            continue;
                        }
                    }
                    if let Some(w) = self.remove_at(0) {
                        return Some(w);
                    }
                    // A cancelled one: gone now.
                }
                _ => return None,
            }
        }
    }

    /// Removes heap entry `pos`, frees its slot, and returns its waker
    /// (`None` for a cancelled entry).
    fn remove_at(&mut self, pos: usize) -> Option<Waker> {
        let e = self.heap[pos];
        let last = self.heap.pop().expect("`pos` is in the heap");
        if pos < self.heap.len() {
            // The last entry fills the hole: it may belong above or below.
            if pos > 0 && last.before(&self.heap[(pos - 1) / ARITY]) {
                self.sift_up(pos, last);
            } else {
                self.sift_down(pos, last);
            }
        }
        let waker = self.slots[e.slot()].waker.take();
        if waker.is_none() {
            self.dead -= 1;
        }
        self.free_slot(e.slot());
        waker
    }

    /// Frees `slot` (out of the heap, its waker gone): keys to it no
    /// longer match.
    fn free_slot(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.generation = s.generation.checked_add(1).unwrap_or(1);
        s.pos = self.free;
        self.free = slot as u32;
    }

    /// Places `e`, meant for the hole at `pos`, at or above it. The sifts
    /// take the moving entry by value and write it once, at its place:
    /// reading back an entry just written stalled (when entries held an
    /// `Instant`, 12 bytes in 16, a copy loaded padding the store had not
    /// written, and the load waited for the store to retire: `perf
    /// annotate` put 59% of `sift_up` there).
    #[inline]
    fn sift_up(&mut self, mut pos: usize, e: Entry) {
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if !e.before(&self.heap[parent]) {
                break;
            }
            self.place(pos, self.heap[parent]);
            pos = parent;
        }
        self.place(pos, e);
    }

    /// Places `e`, meant for the hole at `pos`, at or below it.
    #[inline]
    fn sift_down(&mut self, mut pos: usize, e: Entry) {
        let len = self.heap.len();
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let mut min = first;
            for c in first + 1..(first + ARITY).min(len) {
                if self.heap[c].before(&self.heap[min]) {
                    min = c;
                }
            }
            if !self.heap[min].before(&e) {
                break;
            }
            self.place(pos, self.heap[min]);
            pos = min;
        }
        self.place(pos, e);
    }

    /// Writes `e` at heap index `pos` and records the index in its slot.
    #[inline]
    fn place(&mut self, pos: usize, e: Entry) {
        self.heap[pos] = e;
        self.slots[e.slot()].pos = pos as u32;
    }
}

#[cfg(all(test, not(greenstack_loom)))]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Weak};
    use std::task::Wake;
    use std::time::Duration;

    /// A waker's target, counted in `live` while alive.
    struct Id(Arc<AtomicUsize>);

    impl Wake for Id {
        fn wake(self: Arc<Self>) {}
    }

    impl Drop for Id {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn waker(live: &Arc<AtomicUsize>) -> (Waker, Weak<Id>) {
        live.fetch_add(1, Ordering::SeqCst);
        let a = Arc::new(Id(Arc::clone(live)));
        (Waker::from(Arc::clone(&a)), Arc::downgrade(&a))
    }

    /// Random arms, cancels (live and stale keys) and expiries against a
    /// `BTreeMap` model: the same timers fire, in `(deadline, arming)`
    /// order, and a cancelled or fired timer's waker is dropped at once.
    #[test]
    fn heap_matches_a_model() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut t = Timers::new();
        let base = Instant::now();
        // Model: (deadline ms, seq) -> id; ids' keys (None once gone).
        let mut model: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        let mut keys: Vec<Option<TimerKey>> = Vec::new();
        let mut stale: Vec<(usize, TimerKey)> = Vec::new();
        let mut by_id: Vec<(u64, u64)> = Vec::new();
        let mut ids: Vec<Weak<Id>> = Vec::new();
        let mut now = 0u64;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..20_000u64 {
            match next() % 10 {
                0..=3 => {
                    let d = now + next() % 50;
                    let id = keys.len();
                    let (w, a) = waker(&live);
                    ids.push(a);
                    keys.push(Some(t.insert(base + Duration::from_millis(d), id, w)));
                    model.insert((d, step), id);
                    by_id.push((d, step));
                }
                4 | 5 => {
                    let i = (next() % (keys.len() as u64 + 1)) as usize;
                    if let Some(Some(k)) = keys.get_mut(i).map(Option::take) {
                        assert!(t.cancel(k, i).is_some(), "live timer {i} cancels");
                        model.remove(&by_id[i]).expect("in the model");
                    } else if let Some((id, k)) = stale.pop() {
                        assert!(t.cancel(k, id).is_none(), "a stale key cancels nothing");
                    }
                }
                6 | 7 => {
                    let i = (next() % (keys.len() as u64 + 1)) as usize;
                    let d = now + next() % 50;
                    let at = base + Duration::from_millis(d);
                    if let Some(Some(k)) = keys.get_mut(i).map(Option::take) {
                        let k = t.rearm(k, i, at).expect("live timer re-arms");
                        keys[i] = Some(k);
                        model.remove(&by_id[i]).expect("in the model");
                        model.insert((d, step), i);
                        by_id[i] = (d, step);
                    } else if let Some((id, k)) = stale.pop() {
                        assert!(t.rearm(k, id, at).is_none(), "a stale key re-arms nothing");
                    }
                }
                _ => {
                    now += next() % 20;
                    let at = base + Duration::from_millis(now);
                    while let Some(w) = t.pop_expired(at) {
                        let (&(d, s), &id) = model.iter().next().expect("model has it");
                        assert!(d <= now);
                        // It was `id`'s waker: dropping it frees `id`.
                        drop(w);
                        assert!(ids[id].upgrade().is_none(), "timer {id} fired");
                        model.remove(&(d, s));
                        stale.push((id, keys[id].take().expect("fired once")));
                    }
                    assert!(model.keys().next().map_or(true, |&(d, _)| d > now));
                }
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(live.load(Ordering::SeqCst), model.len(), "wakers alive");
            // The top may be a cancelled timer's deadline (earlier, never
            // later, than the first live one's).
            if let Some(&(d, _)) = model.keys().next() {
                let next = t.next_deadline().expect("a live timer");
                assert!(next <= base + Duration::from_millis(d));
            }
            assert!(t.dead <= t.heap.len());
        }
    }

    /// hyper's pattern: a hundred connections each arm a far timer per
    /// request and cancel it when the request arrives, the oldest first.
    /// The heap keeps at most about twice the live timers, and the slab as
    /// many slots.
    #[test]
    fn cancelling_the_oldest_in_a_loop_stays_bounded() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut t = Timers::new();
        let base = Instant::now();
        let mut armed = std::collections::VecDeque::new();
        for i in 0..100u64 {
            let k = t.insert(base + Duration::from_secs(30 + i), 1, waker(&live).0);
            armed.push_back(k);
        }
        for i in 100..20_000u64 {
            let k = armed.pop_front().expect("armed");
            assert!(t.cancel(k, 1).is_some());
            let k = t.insert(base + Duration::from_secs(30 + i), 1, waker(&live).0);
            armed.push_back(k);
            assert_eq!(t.len(), 100);
            assert!(t.heap.len() <= 2 * 100 + 1, "heap {}", t.heap.len());
        }
        assert!(t.slots.len() <= 2 * 100 + 1, "slots {}", t.slots.len());
        assert_eq!(live.load(Ordering::SeqCst), 100);
        // They still fire in deadline order, the cancelled ones not at all.
        let mut fired = 0;
        while t
            .pop_expired(base + Duration::from_secs(1_000_000))
            .is_some()
        {
            fired += 1;
        }
        assert_eq!(fired, 100);
        assert_eq!(t.len(), 0);
        assert_eq!(t.heap.len(), 0);
    }

    /// Arming and cancelling in a loop keeps one slot and one heap entry.
    #[test]
    fn cancel_frees_the_slot() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut t = Timers::new();
        let far = Instant::now() + Duration::from_secs(60);
        for _ in 0..1_000 {
            let k = t.insert(far, 7, waker(&live).0);
            assert_eq!(t.len(), 1);
            assert!(t.cancel(TimerKey(k.0), 8).is_none(), "another owner's");
            drop(t.cancel(k, 7));
            assert_eq!(t.len(), 0);
            assert_eq!(live.load(Ordering::SeqCst), 0);
        }
        assert_eq!(t.slots.len(), 1);
    }
}
