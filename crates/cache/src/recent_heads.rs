//! The client header maps of the objects a worker thread answered recently, so that a hit on a
//! popular object clones a ready map instead of decoding its stored fields again.
//!
//! Objects keep their fields as one compact buffer (see `fields`), and every hit rebuilt a
//! `HeaderMap` from it: a hash, a probe and a value check per field, about a tenth of a small
//! hit's whole cost. Cloning a built map copies its tables and bumps reference counts instead.
//!
//! The table is per thread (a worker answers from its own, with no lock or atomic) and direct
//! mapped: a buffer's address picks its slot, and the slot holds a clone of the buffer it was
//! built from. Holding that clone keeps the buffer's memory from being freed and reused, so the
//! same address and length can only mean the same, immutable, bytes. A map is built for a
//! buffer the second time it is seen in a row in its slot: objects answered once do not evict
//! popular ones, and cost only the buffer clone. Memory: at most `SLOTS` maps per worker
//! thread (about a kilobyte each) and the buffers they came from.

use std::cell::RefCell;

use bytes::Bytes;
use http::HeaderMap;

use crate::fields;

const SLOTS: usize = 256;

enum Slot {
    Empty,
    /// Seen once: the map is built if the next look-up in this slot is for the same buffer.
    Seen(Bytes),
    Ready(Bytes, HeaderMap),
}

thread_local! {
    static RECENT: RefCell<Vec<Slot>> = RefCell::new((0..SLOTS).map(|_| Slot::Empty).collect());
}

/// `fields::decode_for_client(head)`, from this thread's table when `head` was answered lately.
pub fn client_headers(head: &Bytes) -> HeaderMap {
    RECENT.with(|recent| {
        let Ok(mut recent) = recent.try_borrow_mut() else {
            return fields::decode_for_client(head);
        };
        look_up(&mut recent[slot_of(head)], head)
    })
}

fn look_up(slot: &mut Slot, head: &Bytes) -> HeaderMap {
    match slot {
        Slot::Ready(held, map) if same(held, head) => map.clone(),
        Slot::Seen(held) if same(held, head) => {
            let map = fields::decode_for_client(head);
            *slot = Slot::Ready(head.clone(), map.clone());
            map
        }
        _ => {
            *slot = Slot::Seen(head.clone());
            fields::decode_for_client(head)
        }
    }
}

fn same(held: &Bytes, head: &Bytes) -> bool {
    held.as_ptr() == head.as_ptr() && held.len() == head.len()
}

fn slot_of(head: &Bytes) -> usize {
    // Buffers are at least 8-byte aligned heap blocks: a multiplicative hash spreads the
    // address bits that differ.
    let hash = (head.as_ptr() as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (hash >> 56) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::tests_support::headers as h;

    #[test]
    fn repeated_look_ups_answer_the_same_fields_as_a_decode() {
        let block = fields::encode(&h(&[
            ("etag", "\"a\""),
            ("x-two", "1"),
            ("x-two", "2"),
            ("surrogate-control", "max-age=60"),
        ]));
        let expected = fields::decode_for_client(&block);
        for _ in 0..4 {
            assert_eq!(client_headers(&block), expected);
        }
    }

    #[test]
    fn buffers_sharing_a_slot_each_get_their_own_fields() {
        let a = fields::encode(&h(&[("etag", "\"a\"")]));
        let b = fields::encode(&h(&[("etag", "\"b\"")]));
        assert_eq!(a.len(), b.len());
        let mut slot = Slot::Empty;
        for _ in 0..3 {
            assert_eq!(look_up(&mut slot, &a)["etag"], "\"a\"");
            assert_eq!(look_up(&mut slot, &a)["etag"], "\"a\"");
            assert!(
                matches!(slot, Slot::Ready(..)),
                "built on the second look-up in a row"
            );
            assert_eq!(look_up(&mut slot, &b)["etag"], "\"b\"");
            assert_eq!(look_up(&mut slot, &b)["etag"], "\"b\"");
        }
    }

    #[test]
    fn a_map_handed_out_is_the_callers_to_change() {
        let block = fields::encode(&h(&[("etag", "\"a\"")]));
        for _ in 0..3 {
            let mut map = client_headers(&block);
            assert_eq!(map.len(), 1);
            map.insert("age", http::HeaderValue::from(5));
        }
    }
}
