//! A slot's name for the overflow report, which the slot owns through its
//! metadata (`Slot::set_identity`, `Slot::drop_name`).

use std::sync::atomic::Ordering;

use crate::stack::{Slot, StackArena};

/// The id and name the fault handler would report for `slot`.
fn published(slot: &Slot) -> (u64, Option<String>) {
    let meta = &slot.class().metas[slot.index as usize];
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
    let index = slot.index;
    drop(slot);
    // The thread's magazine hands the same slot back, with no identity.
    let again = arena.allocate().unwrap();
    assert_eq!(again.index, index);
    assert_eq!(published(&again), (0, None));
}
