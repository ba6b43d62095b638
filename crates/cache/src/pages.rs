//! Large bodies in pages of their own, which a plain TCP connection can send without copying.
//!
//! Sending a 256 KiB cached body with `writev` copies it into the kernel's socket buffers:
//! that copy was ~40 % of a 256 KiB hit's CPU (perf), and the socket buffer pages it fills
//! come and go at gigabytes per second, which on a VM whose host reclaims free guest pages
//! makes some runs ~25 % slower with twice the p99 (measured here). nginx sends from its
//! cache files with `sendfile`, which hands the kernel the file's pages instead. This module
//! gives a stored body the same property: a body of `PAGE_BODY_MIN` or more is copied once,
//! when stored, into an anonymous mapping of its own, made read-only, and registered, so that
//! the connection's writer (`outpost_edge::server::splice`) can recognise its bytes and hand
//! the kernel references to the pages (`vmsplice` + `splice`) instead of copying them.
//!
//! Why a mapping of its own and not the heap: the kernel keeps referring to the pages after
//! the write returns (until the client has read them, or for TCP until they are acknowledged).
//! Heap memory freed with an evicted object would be reused and written to while the kernel
//! still sends from it. A mapping is unmapped when the last reference to the body goes; the
//! kernel's references keep the old pages, unchanged, alive, and the address range is never
//! written again through them.
//!
//! What this module must not know: sockets, pipes, HTTP.

use std::collections::BTreeMap;
use std::sync::RwLock;

use bytes::Bytes;

/// Bodies this large or larger are stored in pages of their own. Below it the page rounding
/// (up to 4 KiB per object) costs more memory than it is worth, and a copy is cheap.
pub const PAGE_BODY_MIN: usize = 64 * 1024;

/// Start → end address of every live page body.
static REGISTRY: RwLock<BTreeMap<usize, usize>> = RwLock::new(BTreeMap::new());

/// Page bodies allowed at once: each is a mapping, and a process has `vm.max_map_count` of
/// them (65,530 by default) for everything, its allocator's included; past half of it, large
/// bodies stay on the heap (and are copied when sent) rather than risk the allocator's maps.
fn max_page_bodies() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map_or(32_768, |n| n / 2)
    })
}

/// A read-only anonymous mapping holding one body; unregistered and unmapped when dropped.
struct PageBody {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for PageBody {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for PageBody {
    fn drop(&mut self) {
        let start = self.map.as_ptr() as usize;
        REGISTRY
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&start);
    }
}

/// The concatenation of `parts` as one immutable buffer: in pages of its own when it is
/// `PAGE_BODY_MIN` or larger (and the mapping can be made), else on the heap.
pub fn body_from<'a>(parts: impl IntoIterator<Item = &'a [u8]> + Clone, len: usize) -> Bytes {
    if len >= PAGE_BODY_MIN && page_bodies() < max_page_bodies() {
        match mapped(parts.clone(), len) {
            Ok(body) => return body,
            Err(e) => tracing::debug!(error = %e, len, "no mapping for a large body; kept on the heap"),
        }
    }
    let mut body = Vec::with_capacity(len);
    parts.into_iter().for_each(|p| body.extend_from_slice(p));
    Bytes::from(body)
}

fn mapped<'a>(parts: impl IntoIterator<Item = &'a [u8]>, len: usize) -> std::io::Result<Bytes> {
    let mut map = memmap2::MmapMut::map_anon(len)?;
    let mut at = 0;
    for p in parts {
        let end = at + p.len();
        if end > len {
            return Err(std::io::Error::other("body parts longer than announced"));
        }
        map[at..end].copy_from_slice(p);
        at = end;
    }
    if at != len {
        return Err(std::io::Error::other("body parts shorter than announced"));
    }
    let map = map.make_read_only()?;
    let start = map.as_ptr() as usize;
    REGISTRY
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(start, start + len);
    Ok(Bytes::from_owner(PageBody { map }))
}

/// Page bodies alive now.
pub fn page_bodies() -> usize {
    REGISTRY
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .len()
}

/// Whether `bytes` lie wholly inside a live page body. True only while something holds that
/// body (the caller's slice borrows from it), so the answer cannot go stale under the caller.
pub fn is_page_body(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let start = bytes.as_ptr() as usize;
    let registry = REGISTRY.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    registry
        .range(..=start)
        .next_back()
        .is_some_and(|(_, &end)| start + bytes.len() <= end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_get_pages_of_their_own_and_small_ones_do_not() {
        let chunk = vec![7u8; 40 * 1024];
        let large = body_from([&chunk[..], &chunk[..]], 80 * 1024);
        assert_eq!(large.len(), 80 * 1024);
        assert!(large.iter().all(|&b| b == 7));
        assert!(is_page_body(&large), "a body of 80 KiB is in its own pages");
        assert!(is_page_body(&large[1000..70_000]), "so is any part of it");
        assert!(!is_page_body(&chunk), "heap memory is not");

        let small = body_from([&chunk[..]], 40 * 1024);
        assert_eq!(&small[..], &chunk[..]);
        assert!(!is_page_body(&small), "a 40 KiB body stays on the heap");
    }

    #[test]
    fn a_dropped_body_is_no_longer_registered() {
        let chunk = vec![1u8; PAGE_BODY_MIN];
        let body = body_from([&chunk[..]], PAGE_BODY_MIN);
        let (start, len) = (body.as_ptr() as usize, body.len());
        assert!(is_page_body(&body));
        let copy = body.clone();
        drop(body);
        assert!(
            is_page_body(&copy),
            "a clone keeps the pages alive and registered"
        );
        drop(copy);
        // Another test may map the same range by now, but not with this exact length.
        let registry = REGISTRY.read().unwrap();
        assert_ne!(
            registry.get(&start),
            Some(&(start + len)),
            "the mapping is unregistered"
        );
    }

    #[test]
    fn parts_that_do_not_add_up_fall_back_to_the_heap() {
        let chunk = vec![2u8; PAGE_BODY_MIN];
        let body = body_from([&chunk[..]], PAGE_BODY_MIN + 1);
        assert!(!is_page_body(&body));
        assert_eq!(body.len(), PAGE_BODY_MIN, "the heap copy holds what was given");
    }
}
