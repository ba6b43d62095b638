//! The disk tier: one file per stored response under the cache directory, an index in memory,
//! a byte budget, and a restart that finds what was stored before.
//!
//! The layout is nginx `proxy_cache`'s, which has served this purpose for years: a file per
//! object named by a hash, the key and metadata at its head, the index rebuilt by reading those
//! heads at start (in the background: the PoP serves at once and the disk warms as the scan
//! proceeds). Reads and writes run off the async runtime: writes, evictions and deletions on one
//! writer thread fed by a bounded queue (a full queue skips the write rather than block a
//! request), reads on tokio's blocking pool, and the deletions a purge sweep condemns on the
//! sweeper's blocking thread. foyer's hybrid cache would also do this; it brings its own
//! admission, eviction and recovery machinery that Outpost would then have to tune around its
//! own purge rules, for no gain at this size.
//!
//! Purges reach the files through the sweeper (`sweep`, which deletes what it condemns before
//! it returns) and, across a restart, through the purge journal (`crate::journal`) that the
//! scan applies.
//!
//! File format (`*.obj`): `OPC3`, u32 length + JSON metadata, u32 length + header block
//! (`crate::fields`' encoding), then the body. `OPC2` files (before dates were kept as seconds
//! and the freshness metadata lost `request_time`) are read too: their dates are text, which
//! decodes as before. Files of another format are dropped at the scan, so a build older than
//! `OPC3` drops this one's files.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use crate::freshness::Freshness;
use crate::journal::{self, Condemned, Journal};
use crate::key::CacheKey;
use crate::object::{Object, VaryValues};
use crate::purge::Target;

const MAGIC: &[u8; 4] = b"OPC3";
/// The format before `MAGIC`, still read (see the module's comment).
const MAGIC_V2: &[u8; 4] = b"OPC2";
/// Writes waiting for the writer thread; beyond this a write is skipped (memory still has it).
const QUEUE: usize = 1024;

/// What the index keeps of a stored file: enough to select a variant and apply purges
/// without reading the file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    url: String,
    site: String,
    status: u16,
    freshness: Freshness,
    vary: Vec<(String, Option<String>)>,
    extra: Option<String>,
    tags: Vec<String>,
    stored_seq: u64,
    /// Purge sequence numbers restart at 0 with the process; the epoch tells runs apart.
    epoch: u64,
    body_len: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    size: u64,
    meta: Meta,
    last_used: AtomicU64,
}

enum Job {
    /// `entry` is the index entry the file is written for (see `run`).
    Write {
        hash: u64,
        entry: Arc<Entry>,
        bytes: Vec<u8>,
    },
    Delete {
        id: u64,
    },
}

type Shard = HashMap<u64, Vec<Arc<Entry>>>;

const SHARDS: usize = 64;

pub struct DiskTier {
    dir: PathBuf,
    budget: u64,
    /// URL hash → its variants on disk, in `SHARDS` parts locked one at a time: a purge sweep
    /// or an eviction walks the index a shard at a time, so the lookup of a request that
    /// misses memory waits at most for one shard, never for a walk of a million objects.
    index: Box<[Mutex<Shard>]>,
    bytes: AtomicU64,
    objects: AtomicU64,
    clock: AtomicU64,
    evictions: AtomicU64,
    skipped_writes: AtomicU64,
    /// This process's run, so sequence numbers from earlier runs are not compared with ours.
    epoch: u64,
    jobs: mpsc::SyncSender<Job>,
    /// Purges, kept on disk until the sweeps have applied them (see `journal`).
    journal: Journal,
    /// The start-up scan has indexed every file: until then a sweep has not seen them all.
    scanned: AtomicBool,
}

impl DiskTier {
    /// Opens (creating) the directory and starts the writer thread and the index scan.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        // Fail now, not on the first write, when the directory is not writable.
        let probe = dir.join(".write-test");
        fs::write(&probe, b"ok")?;
        fs::remove_file(&probe)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (journal, inherited) = Journal::open(dir)?;
        let epoch = next_epoch(dir, &inherited)?;
        let tier = Arc::new(Self {
            dir: dir.to_owned(),
            budget,
            index: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            clock: AtomicU64::new(1),
            evictions: AtomicU64::new(0),
            skipped_writes: AtomicU64::new(0),
            epoch,
            jobs: tx,
            journal,
            scanned: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&tier);
        std::thread::Builder::new()
            .name("outpost-cache-disk".into())
            .spawn(move || {
                if let Some(t) = weak.upgrade() {
                    t.scan(&Condemned::new(&inherited));
                    // Every file the earlier runs' purges condemn is gone: their lines are done.
                    t.journal.retain(|l| l.epoch == t.epoch);
                    t.scanned.store(true, Ordering::Release);
                }
                while let Ok(job) = rx.recv() {
                    let Some(t) = weak.upgrade() else { return };
                    t.run(job);
                }
            })?;
        Ok(tier)
    }

    /// The shard that holds `hash`'s variants.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.index[(hash % SHARDS as u64) as usize])
    }

    /// Every variant on disk, copied out a shard at a time (a shard is locked while it is read).
    fn entries_of(&self, shard: &Mutex<Shard>) -> Vec<(u64, Arc<Entry>)> {
        lock(shard)
            .iter()
            .flat_map(|(hash, list)| list.iter().map(|e| (*hash, e.clone())))
            .collect()
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{:02x}", id >> 56))
            .join(format!("{id:016x}.obj"))
    }

    /// Queues `obj` for writing; replaces the same variant if it is on disk already.
    pub fn store(&self, hash: u64, obj: &Object) {
        if obj.body().len() as u64 > self.budget / 8 {
            return;
        }
        let meta = Meta {
            url: obj.url().to_owned(),
            site: obj.site.to_string(),
            status: obj.status.as_u16(),
            freshness: obj.freshness.clone(),
            vary: obj
                .vary()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_deref().map(str::to_owned)))
                .collect(),
            extra: obj.extra().map(str::to_owned),
            tags: obj.tags().iter().map(|t| t.to_string()).collect(),
            stored_seq: obj.stored_seq,
            epoch: self.epoch,
            body_len: obj.body().len() as u64,
        };
        let Ok(bytes) = encode(&meta, obj.header_block(), obj.body()) else {
            return;
        };
        let id = variant_id(
            hash,
            meta.vary.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
            meta.extra.as_deref(),
        );
        let entry = Arc::new(Entry {
            id,
            size: bytes.len() as u64,
            meta,
            last_used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
        });
        // Indexed before the write is queued: the writer deletes a file it wrote for an entry
        // that is no longer indexed (purged meanwhile), and must not mistake this one for it.
        let replaced = self.insert(hash, entry.clone());
        let write = Job::Write {
            hash,
            entry: entry.clone(),
            bytes,
        };
        if self.jobs.try_send(write).is_err() {
            // The writer is behind: skip this write and keep what the index had, whose file is
            // still on disk (no file work here: this runs on the request path).
            self.skipped_writes.fetch_add(1, Ordering::Relaxed);
            self.unindex_exact(hash, &entry);
            if let Some(previous) = replaced {
                self.insert(hash, previous);
            }
        }
    }

    /// Whether the start-up scan has indexed every file (purge rules must outlive it: files
    /// it has not reached yet have not been swept).
    pub fn scanned(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// Records a purge in the journal, so that it still applies to these files after a restart.
    pub fn record_purge(&self, seq: u64, target: &Target) {
        self.journal.append(&journal::Line {
            epoch: self.epoch,
            seq,
            target: target.clone(),
        });
    }

    /// Drops the journal's lines of this run's purges before `seq`: their rules retired, after
    /// sweeps that deleted every file they condemn.
    pub fn forget_purges_before(&self, seq: u64) {
        self.journal.retain(|l| l.epoch == self.epoch && l.seq >= seq);
    }

    /// Is this very entry (not just its variant id) in the index?
    fn holds(&self, hash: u64, entry: &Arc<Entry>) -> bool {
        self.shard(hash)
            .get(&hash)
            .is_some_and(|list| list.iter().any(|e| Arc::ptr_eq(e, entry)))
    }

    fn has_id(&self, hash: u64, id: u64) -> bool {
        self.shard(hash)
            .get(&hash)
            .is_some_and(|list| list.iter().any(|e| e.id == id))
    }

    /// Indexes `entry`, replacing the entry of the same variant if there is one (returned).
    fn insert(&self, hash: u64, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let mut index = self.shard(hash);
        let list = index.entry(hash).or_default();
        let replaced = list
            .iter()
            .position(|e| e.id == entry.id)
            .map(|at| list.remove(at));
        if let Some(old) = &replaced {
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
            self.objects.fetch_sub(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(entry.size, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        list.push(entry);
        replaced
    }

    /// The file id of the variant this request selects, if one is on disk.
    pub fn find(&self, key: &CacheKey, request: &HeaderMap) -> Option<u64> {
        let index = self.shard(key.hash);
        let entry = index.get(&key.hash)?.iter().rev().find(|e| {
            e.meta.url == key.url
                && e.meta.extra.as_deref() == key.extra.as_deref()
                && e.meta.vary.iter().all(|(name, value)| {
                    HeaderName::from_bytes(name.as_bytes())
                        .is_ok_and(|n| crate::object::normalized(request, &n).as_deref() == value.as_deref())
                })
        })?;
        entry
            .last_used
            .store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(entry.id)
    }

    /// Reads a stored object (blocking: call it off the async runtime). `seq_now` is the
    /// current purge sequence: an object from an earlier run counts as stored at it minus
    /// nothing, i.e. before every purge of this run.
    pub fn read(&self, key: &CacheKey, id: u64) -> Option<Object> {
        let path = self.path(id);
        let mut file = fs::File::open(&path).ok()?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).ok()?;
        let Some((meta, headers, body)) = decode(&data) else {
            tracing::warn!(path = %path.display(), "unreadable cache file; removing it");
            self.remove_id(key.hash, id);
            return None;
        };
        let vary: VaryValues = meta
            .vary
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    v.as_deref().map(Into::into),
                ))
            })
            .collect();
        let seq = if meta.epoch == self.epoch {
            meta.stored_seq
        } else {
            0
        };
        Some(Object::new(
            key,
            meta.site.as_str().into(),
            StatusCode::from_u16(meta.status).ok()?,
            headers,
            body,
            meta.freshness,
            vary,
            seq,
        ))
    }

    /// Applies `gone` to every object on disk and deletes those it condemns, files included,
    /// before it returns (the purge journal's lines are dropped on that promise). `gone` runs
    /// with no shard locked: lookups and stores go on while it judges.
    pub fn sweep(&self, mut gone: impl FnMut(&str, &str, &[String], u64) -> bool) {
        for shard in self.index.iter() {
            for (hash, e) in self.entries_of(shard) {
                let seq = if e.meta.epoch == self.epoch {
                    e.meta.stored_seq
                } else {
                    0
                };
                // Only the entry judged: a copy of the same variant stored since is not condemned.
                if gone(&e.meta.url, &e.meta.site, &e.meta.tags, seq) && self.unindex_exact(hash, &e) {
                    let _ = fs::remove_file(self.path(e.id));
                }
            }
        }
    }

    /// Drops every variant of a URL.
    pub fn remove(&self, hash: u64) {
        let removed = self.shard(hash).remove(&hash).unwrap_or_default();
        for e in removed {
            self.bytes.fetch_sub(e.size, Ordering::Relaxed);
            self.objects.fetch_sub(1, Ordering::Relaxed);
            self.forget(&e);
        }
    }

    /// Drops the variant of a URL that `obj` is a copy of.
    pub fn remove_variant(&self, hash: u64, obj: &Object) {
        let vary = obj.vary().iter().map(|(n, v)| (n.as_str(), v.as_deref()));
        self.remove_id(hash, variant_id(hash, vary, obj.extra()));
    }

    fn remove_id(&self, hash: u64, id: u64) {
        if let Some(removed) = self.unindex(hash, id) {
            self.forget(&removed);
        }
    }

    /// Takes a variant out of the index, with its bytes (its file is the caller's).
    fn unindex(&self, hash: u64, id: u64) -> Option<Arc<Entry>> {
        self.unindex_where(hash, |e| e.id == id)
    }

    /// Takes this very entry out of the index, if it is still there; whether it was.
    fn unindex_exact(&self, hash: u64, entry: &Arc<Entry>) -> bool {
        self.unindex_where(hash, |e| Arc::ptr_eq(e, entry)).is_some()
    }

    fn unindex_where(&self, hash: u64, which: impl Fn(&Arc<Entry>) -> bool) -> Option<Arc<Entry>> {
        let mut index = self.shard(hash);
        let list = index.get_mut(&hash)?;
        let pos = list.iter().position(which)?;
        let e = list.remove(pos);
        if list.is_empty() {
            index.remove(&hash);
        }
        drop(index);
        self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
        Some(e)
    }

    fn forget(&self, e: &Entry) {
        // Deletion is best effort: a full queue leaves a file the next scan finds unindexed...
        // and indexes again, so do it here instead when the queue is full.
        if let Err(mpsc::TrySendError::Full(_)) = self.jobs.try_send(Job::Delete { id: e.id }) {
            let _ = fs::remove_file(self.path(e.id));
        }
    }

    fn run(&self, job: Job) {
        match job {
            Job::Write { hash, entry, bytes } => {
                let path = self.path(entry.id);
                if let Err(e) = write_atomically(&path, &bytes) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write to the disk cache");
                }
                // Purged (or evicted) while it waited in the queue: the sweep that took it out of
                // the index found no file to delete. (A newer copy of the variant, if one is
                // indexed, has its own write queued behind this one.)
                if !self.holds(hash, &entry) {
                    let _ = fs::remove_file(&path);
                }
                self.evict_over_budget();
            }
            Job::Delete { id } => {
                let _ = fs::remove_file(self.path(id));
            }
        }
    }

    /// Least recently used first, down to 90 % of the budget, so eviction runs in batches.
    fn evict_over_budget(&self) {
        if self.bytes.load(Ordering::Relaxed) <= self.budget {
            return;
        }
        let target = self.budget / 10 * 9;
        let mut all: Vec<(u64, u64, Arc<Entry>)> = self
            .index
            .iter()
            .flat_map(|shard| self.entries_of(shard))
            .map(|(h, e)| (e.last_used.load(Ordering::Relaxed), h, e))
            .collect();
        all.sort_unstable_by_key(|(last_used, ..)| *last_used);
        // Counted down from the bytes when the walk began: objects stored since are not in it,
        // and waiting for the live count to drop would evict the whole walk while they arrive.
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        for (_, hash, e) in all {
            if bytes <= target {
                break;
            }
            if self.unindex_exact(hash, &e) {
                let _ = fs::remove_file(self.path(e.id));
                self.evictions.fetch_add(1, Ordering::Relaxed);
                bytes = bytes.saturating_sub(e.size);
            }
        }
    }

    /// Rebuilds the index from the files' heads, deleting the files the journal's purges (from
    /// earlier runs) condemn.
    fn scan(&self, condemned: &Condemned) {
        let Ok(dirs) = fs::read_dir(&self.dir) else { return };
        let mut found = 0u64;
        for sub in dirs.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let Some(id) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                else {
                    continue;
                };
                let Some((meta, size)) = read_meta(&path) else {
                    let _ = fs::remove_file(&path);
                    continue;
                };
                if !condemned.is_empty()
                    && condemned.condemns(&meta.url, &meta.site, &meta.tags, meta.epoch, meta.stored_seq)
                {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let hash = crate::key::hash_url(&meta.url);
                if self.has_id(hash, id) {
                    // Stored again by this run while the scan ran: its own write replaces the file.
                    continue;
                }
                self.insert(
                    hash,
                    Arc::new(Entry {
                        id,
                        size,
                        meta,
                        last_used: AtomicU64::new(0),
                    }),
                );
                found += 1;
            }
        }
        if found > 0 {
            tracing::info!(objects = found, dir = %self.dir.display(), "disk cache loaded");
        }
        self.evict_over_budget();
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// This run's epoch: the clock's nanoseconds, but always above every earlier run's (recorded in
/// `dir/epoch`, and in the journal), so that "stored by an earlier run" keeps meaning "before
/// this run's purges" when the clock has stepped back across a restart.
fn next_epoch(dir: &Path, journal: &[journal::Line]) -> std::io::Result<u64> {
    let path = dir.join("epoch");
    let recorded = fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let journaled = journal.iter().map(|l| l.epoch).max().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let epoch = now.max(recorded.max(journaled) + 1);
    write_atomically(&path, epoch.to_string().as_bytes())?;
    Ok(epoch)
}

/// The object files in a disk tier's directory (for tests).
#[cfg(test)]
pub(crate) fn object_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "obj"))
        .count()
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

fn variant_id<'a>(
    hash: u64,
    vary: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    extra: Option<&str>,
) -> u64 {
    let mut text = format!("{hash:016x}");
    for (n, v) in vary {
        text.push_str(&format!("\n{n}={}", v.unwrap_or("\u{0}")));
    }
    if let Some(extra) = extra {
        text.push('\n');
        text.push_str(extra);
    }
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn encode(meta: &Meta, block: &[u8], body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let meta = serde_json::to_vec(meta)?;
    let mut out = Vec::with_capacity(12 + meta.len() + block.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    out.extend_from_slice(block);
    out.extend_from_slice(body);
    Ok(out)
}

fn decode(data: &[u8]) -> Option<(Meta, HeaderMap, Bytes)> {
    let (meta, rest) = split_meta(data)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let block = rest.get(4..4 + len)?;
    let body = rest.get(4 + len..)?;
    if body.len() as u64 != meta.body_len {
        return None;
    }
    let headers = crate::fields::try_decode(block)?;
    // Copied out of the file's buffer; a large body into pages of its own (see `pages`).
    Some((meta, headers, crate::pages::body_from([body], body.len())))
}

fn known_format(magic: &[u8]) -> bool {
    magic == MAGIC || magic == MAGIC_V2
}

fn split_meta(data: &[u8]) -> Option<(Meta, &[u8])> {
    if !known_format(data.get(..4)?) {
        return None;
    }
    let len = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(data.get(8..8 + len)?).ok()?;
    Some((meta, data.get(8 + len..)?))
}

/// The metadata at a file's head and the file's size, without reading the body.
fn read_meta(path: &Path) -> Option<(Meta, u64)> {
    let mut f = fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = [0u8; 8];
    f.read_exact(&mut head).ok()?;
    if !known_format(&head[..4]) {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    if len > 1 << 20 {
        return None;
    }
    let mut meta = vec![0u8; len];
    f.read_exact(&mut meta).ok()?;
    Some((serde_json::from_slice(&meta).ok()?, size))
}

/// Temporary file, then rename: a crash never leaves half an object under a real name.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's id once the background scan of a reopened tier has indexed it (at most 1 s).
    fn indexed(tier: &DiskTier, key: &CacheKey) -> Option<u64> {
        for _ in 0..100 {
            if let Some(id) = tier.find(key, &HeaderMap::new()) {
                return Some(id);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    fn object(url: &str) -> (CacheKey, Object) {
        object_with(url, HeaderMap::new(), b"x")
    }

    fn object_with(url: &str, headers: HeaderMap, body: &'static [u8]) -> (CacheKey, Object) {
        let key = CacheKey::for_url(url).unwrap();
        let obj = Object::new(
            &key,
            "s".into(),
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            crate::object::tests_support::freshness(),
            Box::new([]),
            0,
        );
        (key, obj)
    }

    #[test]
    fn an_index_entry_fits_the_allocation_docs_architecture_states() {
        // docs/architecture.md ("Disk tier memory") counts 256 bytes for the entry in its Arc
        // (mimalloc's size class for up to 256): growing `Meta` past it changes that figure.
        assert!(std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>() <= 256);
    }

    #[test]
    fn the_disk_tier_evicts_the_least_recently_used_down_to_its_budget() {
        let dir = crate::scratch::ScratchDir::new("disk-evict");
        let budget = 8 * 1024;
        let tier = DiskTier::open(&dir, budget).unwrap();
        let objects: Vec<_> = (0..100).map(|i| object(&format!("http://a.test/{i}"))).collect();
        for (i, (key, obj)) in objects.iter().enumerate() {
            tier.store(key.hash, obj);
            if i >= 1 {
                // The first object is looked up after every store: it stays recently used.
                tier.find(&objects[0].0, &HeaderMap::new());
            }
        }
        // The writer evicts after each write; once the last is written and its eviction done,
        // the tier is within its budget and holds a file per indexed object.
        let files = || object_files(&dir) as u64;
        let last = &objects[99].0;
        let settled = || {
            let written = tier
                .find(last, &HeaderMap::new())
                .is_some_and(|id| tier.path(id).exists());
            written && tier.bytes() <= budget && files() == tier.objects()
        };
        for _ in 0..1000 {
            if settled() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            tier.bytes() <= budget,
            "{} bytes over a {budget} budget",
            tier.bytes()
        );
        assert_eq!(files(), tier.objects(), "an evicted object's file is deleted");
        assert!(tier.evictions() > 0);
        let kept: Vec<bool> = objects
            .iter()
            .map(|(k, _)| tier.find(k, &HeaderMap::new()).is_some())
            .collect();
        assert!(kept[0], "the object in use was evicted");
        assert!(kept[99], "the newest object was evicted");
        assert!(!kept[1], "the least recently used object was kept");
    }

    #[test]
    fn a_copy_stored_while_the_sweep_judges_the_old_one_survives_it() {
        let dir = crate::scratch::ScratchDir::new("disk-recopy");
        let tier = DiskTier::open(&dir, 1 << 30).unwrap();
        let (key, old) = object("http://a.test/again");
        tier.store(key.hash, &old);
        let size = tier.bytes();
        let (_, fresh) = object("http://a.test/again");
        // The purge condemns the old copy; a client fetched the URL again meanwhile.
        tier.sweep(|_, _, _, _| {
            tier.store(key.hash, &fresh);
            true
        });
        let id = tier
            .find(&key, &HeaderMap::new())
            .expect("the fresh copy was removed");
        assert_eq!((tier.objects(), tier.bytes()), (1, size));
        for _ in 0..500 {
            if tier.path(id).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            tier.path(id).exists(),
            "the fresh copy's file was written and kept"
        );
    }

    #[test]
    fn lookups_go_on_while_a_sweep_judges_the_objects() {
        let dir = crate::scratch::ScratchDir::new("disk-sweep");
        let tier = DiskTier::open(&dir, 1 << 30).unwrap();
        let objects: Vec<_> = (0..200).map(|i| object(&format!("http://a.test/{i}"))).collect();
        for (key, obj) in &objects {
            tier.store(key.hash, obj);
        }
        // Written (so that no write is left to land in the directory after it is removed).
        let written = || {
            objects.iter().all(|(k, _)| {
                tier.find(k, &HeaderMap::new())
                    .is_some_and(|id| tier.path(id).exists())
            })
        };
        for _ in 0..1000 {
            if written() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(written());
        let (done, finished) = mpsc::channel();
        let sweeper = tier.clone();
        let keys: Vec<CacheKey> = objects.iter().map(|(k, _)| k.clone()).collect();
        std::thread::spawn(move || {
            let mut looked_up = 0;
            // A request's lookup of the very object being judged (same shard) while the sweep
            // runs: with a lock held across the verdict it would wait for the whole walk (here,
            // deadlock on this thread).
            sweeper.sweep(|url, _, _, _| {
                let key = keys.iter().find(|k| k.url == url).unwrap();
                looked_up += usize::from(sweeper.find(key, &HeaderMap::new()).is_some());
                url.ends_with('7')
            });
            let _ = done.send(looked_up);
        });
        let looked_up = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the sweep finished while lookups ran");
        assert_eq!(looked_up, 200);
        for (key, _) in &objects {
            let condemned = key.url.ends_with('7');
            assert_eq!(
                tier.find(key, &HeaderMap::new()).is_none(),
                condemned,
                "{}",
                key.url
            );
        }
        assert_eq!(tier.objects(), 180);
    }

    #[test]
    fn objects_survive_a_reopen_and_corrupt_files_are_dropped() {
        let dir = crate::scratch::ScratchDir::new("disk");
        let mut headers = HeaderMap::new();
        headers.insert("etag", "\"1\"".parse().unwrap());
        let (key, obj) = object_with("http://a.test/x", headers, b"hello");
        {
            let tier = DiskTier::open(&dir, 1 << 20).unwrap();
            tier.store(key.hash, &obj);
            let id = tier.find(&key, &HeaderMap::new()).unwrap();
            // The writer thread writes asynchronously.
            for _ in 0..100 {
                if tier.path(id).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let tier = DiskTier::open(&dir, 1 << 20).unwrap();
        let id = indexed(&tier, &key);
        let back = tier
            .read(&key, id.expect("indexed again after reopening"))
            .unwrap();
        assert_eq!(back.body(), b"hello");
        assert_eq!(back.headers()["etag"], "\"1\"");
        fs::write(tier.path(id.unwrap()), b"OPC1garbage").unwrap();
        assert!(tier.read(&key, id.unwrap()).is_none());
        assert!(
            tier.find(&key, &HeaderMap::new()).is_none(),
            "a corrupt file leaves the index"
        );
    }

    #[test]
    fn files_in_the_previous_format_are_still_read() {
        let dir = crate::scratch::ScratchDir::new("disk-v2");
        let (key, obj) = object_with("http://a.test/old", HeaderMap::new(), b"hello");
        let path = {
            let tier = DiskTier::open(&dir, 1 << 20).unwrap();
            tier.store(key.hash, &obj);
            let path = tier.path(tier.find(&key, &HeaderMap::new()).unwrap());
            for _ in 0..100 {
                if path.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            path
        };
        // Rewritten as the previous build wrote it: `OPC2`, `request_time` in the freshness
        // metadata, the Date as text (code 1) beside an ETag (code 6).
        let data = fs::read(&path).unwrap();
        let (meta, _) = split_meta(&data).unwrap();
        let mut meta = serde_json::to_value(&meta).unwrap();
        meta["freshness"]["request_time"] = 0.0.into();
        let meta = serde_json::to_vec(&meta).unwrap();
        let date = b"Sun, 06 Dec 2026 01:15:22 GMT";
        let mut block = vec![2, 0, 1, date.len() as u8, 0];
        block.extend_from_slice(date);
        block.extend_from_slice(&[6, 3, 0]);
        block.extend_from_slice(b"\"1\"");
        let mut old = b"OPC2".to_vec();
        old.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        old.extend_from_slice(&meta);
        old.extend_from_slice(&(block.len() as u32).to_le_bytes());
        old.extend_from_slice(&block);
        old.extend_from_slice(b"hello");
        fs::write(&path, old).unwrap();

        let tier = DiskTier::open(&dir, 1 << 20).unwrap();
        let id = indexed(&tier, &key);
        let back = tier.read(&key, id.expect("an OPC2 file is indexed")).unwrap();
        assert_eq!(back.body(), b"hello");
        assert_eq!(back.headers()["date"], "Sun, 06 Dec 2026 01:15:22 GMT");
        assert_eq!(back.headers()["etag"], "\"1\"");
    }
}
