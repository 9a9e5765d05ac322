//! What identifies a slot: its name for the overflow report, which the slot
//! owns through its metadata (`Slot::set_identity`, `Slot::drop_name`), and
//! its index, which a colour (`Slot::set_colour`) must not change.

use std::sync::atomic::Ordering;

use corosensei::stack::Stack;

use crate::stack::{Slot, StackArena, STACK_COLOURS};

/// The id and name the fault handler would report for `slot`.
fn published(slot: &Slot) -> (u64, Option<String>) {
    let meta = &slot.class().metas[slot.index() as usize];
    let p = meta.name_ptr.load(Ordering::Acquire);
    let n = meta.name_len.load(Ordering::Acquire);
    let name = (p != 0).then(|| {
        // SAFETY: the slot is live, so a published name is its own bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
        String::from_utf8(bytes.to_vec()).unwrap()
    });
    (meta.id.load(Ordering::Relaxed), name)
}

#[test]
fn renaming_publishes_the_new_name_and_release_unpublishes_it() {
    let arena = StackArena::builder().build().unwrap();
    let mut slot = arena.allocate().unwrap();
    assert_eq!(published(&slot), (0, None));
    slot.set_identity(7, Some("first"));
    assert_eq!(published(&slot), (7, Some("first".into())));
    slot.set_identity(8, Some("a longer second name"));
    assert_eq!(published(&slot), (8, Some("a longer second name".into())));
    slot.set_identity(9, Some(""));
    assert_eq!(published(&slot), (9, Some(String::new())));
    slot.set_identity(10, None);
    assert_eq!(published(&slot), (10, None));
    slot.set_identity(11, Some("kept"));
    let index = slot.index();
    drop(slot);
    // The thread's magazine hands the same slot back, with no identity.
    let again = arena.allocate().unwrap();
    assert_eq!(again.index(), index);
    assert_eq!(published(&again), (0, None));
}

#[test]
fn a_colour_lowers_where_frames_start_and_nothing_else() {
    let arena = StackArena::builder().build().unwrap();
    // The default class, and the smallest stride, where a colour is the
    // largest share of a slot.
    let slots: Vec<Slot> = (0..3)
        .map(|_| arena.allocate().unwrap())
        .chain((0..3).map(|_| arena.allocate_with(crate::stack::MIN_STACK_SIZE).unwrap()))
        .collect();
    for mut slot in slots {
        let (index, top, bottom) = (slot.index(), slot.top(), slot.bottom());
        assert_eq!(slot.base().get(), top);
        for colour in 0..2 * STACK_COLOURS {
            slot.set_colour(colour);
            assert_eq!(slot.base().get(), top - (colour % STACK_COLOURS) * 64);
            assert_eq!(
                (slot.index(), slot.top(), slot.bottom()),
                (index, top, bottom)
            );
        }
    }
    // Released under their last colour, the slots come back whole: three
    // allocations find three distinct, uncoloured slots.
    let again: Vec<Slot> = (0..3).map(|_| arena.allocate().unwrap()).collect();
    let mut indices: Vec<u32> = again.iter().map(|s| s.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 3);
    assert!(again.iter().all(|s| s.base().get() == s.top()));
}
