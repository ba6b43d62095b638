//! The header maps cache hits go out with, kept ready per worker thread for popular objects, so
//! that a hit clones a map instead of rebuilding it from the object's stored fields.
//!
//! Objects keep their fields as one compact buffer (`outpost_cache::fields`), and every hit
//! rebuilt a `HeaderMap` from it, then added Age, Cache-Status and Via: a hash, a probe and a
//! value check per field, and a reallocation for the added ones, about a fifth of a small hit's
//! whole cost. The map kept here already holds the three added fields (Age and Cache-Status
//! with placeholder values that [`stamp`] replaces in place), sized so that nothing grows.
//!
//! The table is per thread (a worker answers from its own, with no lock or atomic) and direct
//! mapped: a buffer's address picks its slot. A kept map holds a copy of the fields it was built
//! from (the one its values are slices of) and answers only a buffer with the same bytes (an
//! object's buffer may be freed and its address reused by another), with the same Via value (a
//! reload may change it). A map is kept for a buffer looked up twice in a row among the others
//! that share its slot, and only such a buffer replaces a kept map: objects answered once do not
//! evict popular ones. "Twice in a row" is told by address, so a buffer that took a freed one's
//! address counts as the same: that can only build a map early or, for two objects answered
//! once, replace a popular map, which comes back after two look-ups; a wrong map is never
//! answered. Memory: at most `SLOTS` maps per worker thread (about a kilobyte each) and the
//! copies of the fields they came from.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use outpost_cache::fields;

pub(super) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

const SLOTS: usize = 256;

enum Slot {
    Empty,
    /// Seen once (the buffer's address): the map is built if the next look-up in this slot is
    /// for the same buffer.
    Seen(usize),
    Ready {
        head: Bytes,
        via: HeaderValue,
        map: HeaderMap,
        /// The last other buffer looked up here: it takes the slot if it comes again next.
        challenger: Option<usize>,
    },
}

thread_local! {
    static RECENT: RefCell<Vec<Slot>> = RefCell::new((0..SLOTS).map(|_| Slot::Empty).collect());
    static LAST: RefCell<LastValues> = const { RefCell::new(LastValues { age: None, status: None }) };
}

/// The Age and Cache-Status values of this thread's last hit. Hits within one second mostly
/// carry the same ones, and making a value costs an allocation and a pass over its bytes.
struct LastValues {
    age: Option<(u64, HeaderValue)>,
    /// Made from the status text and the ttl.
    status: Option<((&'static str, i64), HeaderValue)>,
}

/// The Age value for `age`: the last hit's when it had the same.
pub(super) fn age_value(age: u64) -> HeaderValue {
    reuse(|last| &mut last.age, age, || HeaderValue::from(age))
}

/// The Cache-Status value for `status` and `ttl` (`make` writes it): the last hit's when it
/// had the same.
pub(super) fn status_value(
    status: &'static str,
    ttl: i64,
    make: impl FnOnce() -> HeaderValue,
) -> HeaderValue {
    reuse(|last| &mut last.status, (status, ttl), make)
}

/// The value kept in `field` of this thread's last values when made from `key`, else `make`'s
/// (kept for the next hit).
fn reuse<K: PartialEq>(
    field: impl FnOnce(&mut LastValues) -> &mut Option<(K, HeaderValue)>,
    key: K,
    make: impl FnOnce() -> HeaderValue,
) -> HeaderValue {
    LAST.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return make();
        };
        let held = field(&mut last);
        match held {
            Some((held_key, value)) if *held_key == key => value.clone(),
            _ => {
                let value = make();
                *held = Some((key, value.clone()));
                value
            }
        }
    })
}

/// The fields a stored response goes to a client with: its stored fields (less those addressed
/// to this cache), Age and Cache-Status to be [`stamp`]ed, and `via` after the stored Via.
pub(super) fn for_hit(head: &[u8], via: &HeaderValue) -> HeaderMap {
    RECENT.with(|recent| match recent.try_borrow_mut() {
        Ok(mut recent) => look_up(&mut recent[slot_of(head)], head, via),
        Err(_) => build(head, via).1,
    })
}

/// Sets the Age and this cache's Cache-Status entry of a map from [`for_hit`].
pub(super) fn stamp(headers: &mut HeaderMap, age: u64, cache_status: HeaderValue) {
    headers.insert(header::AGE, age_value(age));
    // Ours is the last entry (RFC 9211 §2: caches nearer the client come later).
    if let Entry::Occupied(mut entry) = headers.entry(&CACHE_STATUS) {
        if let Some(last) = entry.iter_mut().last() {
            *last = cache_status;
        }
    }
}

fn look_up(slot: &mut Slot, head: &[u8], via: &HeaderValue) -> HeaderMap {
    let second_in_a_row = match slot {
        Slot::Ready {
            head: held,
            via: held_via,
            map,
            ..
        } if held[..] == *head && held_via == via => return map.clone(),
        Slot::Ready { challenger, .. } => {
            let again = *challenger == Some(address(head));
            if !again {
                *challenger = Some(address(head));
            }
            again
        }
        Slot::Seen(held) => {
            let again = *held == address(head);
            if !again {
                *held = address(head);
            }
            again
        }
        Slot::Empty => {
            *slot = Slot::Seen(address(head));
            false
        }
    };
    let (copy, map) = build(head, via);
    if second_in_a_row {
        *slot = Slot::Ready {
            head: copy,
            via: via.clone(),
            map: map.clone(),
            challenger: None,
        };
    }
    map
}

/// The map for `head`, and the copy of `head` its values are slices of (they keep it alive,
/// not the object).
fn build(head: &[u8], via: &HeaderValue) -> (Bytes, HeaderMap) {
    let copy = Bytes::copy_from_slice(head);
    // The decoded map has room for these three (`fields::ROOM_FOR_ADDED`).
    let mut map = fields::decode_for_client(&copy);
    map.insert(header::AGE, HeaderValue::from_static("0"));
    map.append(CACHE_STATUS.clone(), HeaderValue::from_static("-"));
    map.append(header::VIA, via.clone());
    (copy, map)
}

fn address(head: &[u8]) -> usize {
    head.as_ptr() as usize
}

fn slot_of(head: &[u8]) -> usize {
    // A multiplicative hash spreads the address bits that differ between heap blocks.
    let hash = (address(head) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (hash >> 56) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::tests::map;

    fn block(fields: &[(&str, &str)]) -> Box<[u8]> {
        fields::encode(&map(fields))
    }

    fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn a_stamped_hit_has_the_stored_fields_and_ours_after_earlier_hops() {
        let head = block(&[
            ("etag", "\"a\""),
            ("age", "100"),
            ("via", "1.1 upstream-cdn"),
            ("cache-status", "UpstreamCDN; hit"),
            ("surrogate-control", "max-age=60"),
        ]);
        let via = HeaderValue::from_static("1.1 outpost-pop");
        for _ in 0..3 {
            let mut map = for_hit(&head, &via);
            stamp(&mut map, 7, HeaderValue::from_static("Outpost; hit"));
            assert_eq!(values(&map, "etag"), ["\"a\""]);
            assert_eq!(values(&map, "age"), ["7"], "the stored Age is replaced");
            assert_eq!(values(&map, "via"), ["1.1 upstream-cdn", "1.1 outpost-pop"]);
            assert_eq!(values(&map, "cache-status"), ["UpstreamCDN; hit", "Outpost; hit"]);
            assert!(!map.contains_key("surrogate-control"));
        }
    }

    #[test]
    fn buffers_sharing_a_slot_each_get_their_own_fields() {
        let a = block(&[("etag", "\"a\"")]);
        let b = block(&[("etag", "\"b\"")]);
        assert_eq!(a.len(), b.len());
        let via = HeaderValue::from_static("1.1 pop");
        let mut slot = Slot::Empty;
        for _ in 0..3 {
            assert_eq!(look_up(&mut slot, &a, &via)["etag"], "\"a\"");
            assert_eq!(look_up(&mut slot, &a, &via)["etag"], "\"a\"");
            assert!(
                matches!(slot, Slot::Ready { .. }),
                "built on the second look-up in a row"
            );
            assert_eq!(look_up(&mut slot, &b, &via)["etag"], "\"b\"");
            assert_eq!(look_up(&mut slot, &b, &via)["etag"], "\"b\"");
        }
    }

    #[test]
    fn hit_values_are_reused_only_for_the_same_age_status_and_ttl() {
        assert_eq!(age_value(7), "7");
        assert_eq!(age_value(7), "7");
        assert_eq!(age_value(8), "8");
        let made = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            HeaderValue::from_static(text)
        };
        assert_eq!(status_value("hit", 10, || make("a")), "a");
        assert_eq!(status_value("hit", 10, || make("b")), "a", "same status and ttl");
        assert_eq!(status_value("hit", 9, || make("c")), "c", "another ttl");
        assert_eq!(
            status_value("hit; detail=max-stale", 9, || make("d")),
            "d",
            "another status"
        );
        assert_eq!(made.get(), 3);
    }

    #[test]
    fn a_buffer_at_a_freed_ones_address_gets_its_own_fields() {
        // The same memory, first holding one object's fields, then (freed and reused) another's.
        let mut memory = block(&[("etag", "\"a\"")]).into_vec();
        let via = HeaderValue::from_static("1.1 pop");
        let mut slot = Slot::Empty;
        look_up(&mut slot, &memory, &via);
        assert_eq!(look_up(&mut slot, &memory, &via)["etag"], "\"a\"");
        assert!(matches!(slot, Slot::Ready { .. }));
        memory.copy_from_slice(&block(&[("etag", "\"b\"")]));
        assert_eq!(look_up(&mut slot, &memory, &via)["etag"], "\"b\"");
        assert_eq!(look_up(&mut slot, &memory, &via)["etag"], "\"b\"");
    }

    #[test]
    fn objects_answered_once_do_not_evict_a_kept_map() {
        let popular = block(&[("etag", "\"p\"")]);
        let via = HeaderValue::from_static("1.1 pop");
        let mut slot = Slot::Empty;
        look_up(&mut slot, &popular, &via);
        look_up(&mut slot, &popular, &via);
        // Kept alive, so that no two of them share an address.
        let once: Vec<_> = (0..4)
            .map(|i| block(&[("etag", &format!("\"once-{i}\""))]))
            .collect();
        for once in &once {
            look_up(&mut slot, once, &via);
            assert!(
                matches!(&slot, Slot::Ready { head, .. } if head[..] == *popular),
                "evicted by an object answered once"
            );
        }
        let newcomer = block(&[("etag", "\"n\"")]);
        look_up(&mut slot, &newcomer, &via);
        look_up(&mut slot, &newcomer, &via);
        assert!(matches!(&slot, Slot::Ready { head, .. } if head[..] == *newcomer));
    }

    #[test]
    fn a_new_via_after_a_reload_is_not_answered_from_a_map_built_with_the_old() {
        let head = block(&[("etag", "\"a\"")]);
        let mut slot = Slot::Empty;
        let old = HeaderValue::from_static("1.1 old-pop");
        look_up(&mut slot, &head, &old);
        look_up(&mut slot, &head, &old);
        let new = HeaderValue::from_static("1.1 new-pop");
        assert_eq!(look_up(&mut slot, &head, &new)["via"], "1.1 new-pop");
    }
}
