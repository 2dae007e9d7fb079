//! porteiro's cache storage: in memory, one partition per tenant with its own byte budget and
//! SIEVE eviction, so a tenant filling its budget only ever evicts its own entries. It
//! implements pingora's `Storage`; pingora is given no eviction manager, since the partition
//! evicts as it admits (memory never goes over a budget while victims wait to be purged).
//!
//! An entry becomes visible only when its whole body has arrived (`finish`): a client that
//! leaves mid-miss, or a backend that sends less than it announced, leaves nothing behind.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::evict::Sieve;
use super::policy;

/// Bookkeeping per entry beyond its body and headers (maps, queue node, key copies).
pub const ENTRY_OVERHEAD: u64 = 448;
/// The most a fill reserves up front from the response's Content-Length (a backend's claim).
const MAX_PREALLOCATION: usize = 1 << 20;
/// Per tag: its copies in the entry and in the tag index.
const TAG_OVERHEAD: u64 = 96;

struct Entry {
    meta: StoredMeta,
    body: Bytes,
    /// Set for a `Vary` variant: the URL's primary key (a plain entry's key is its primary).
    primary: Option<HashBinary>,
    tags: Box<[Box<str>]>,
    weight: u64,
}

#[derive(Default)]
struct Shelf {
    entries: HashMap<HashBinary, Entry>,
    sieve: Sieve<HashBinary>,
    /// The `Vary` variants stored under a URL's primary key (most URLs have none, and are
    /// found by their primary key alone).
    variants: HashMap<HashBinary, Vec<HashBinary>>,
    by_tag: HashMap<Box<str>, HashSet<HashBinary>>,
}

impl Shelf {
    fn remove(&mut self, key: &HashBinary) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.sieve.remove(key);
        if let Some(primary) = e.primary {
            if let Some(list) = self.variants.get_mut(&primary) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.variants.remove(&primary);
                }
            }
        }
        for tag in e.tags.iter() {
            if let Some(set) = self.by_tag.get_mut(tag) {
                set.remove(key);
                if set.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        Some(e)
    }

    fn insert(&mut self, key: HashBinary, entry: Entry) {
        self.remove(&key);
        self.sieve.insert(key, entry.weight);
        if let Some(primary) = entry.primary {
            self.variants.entry(primary).or_default().push(key);
        }
        for tag in entry.tags.iter() {
            self.by_tag.entry(tag.clone()).or_default().insert(key);
        }
        self.entries.insert(key, entry);
    }
}

/// One tenant's entries and budget.
#[derive(Default)]
pub struct Partition {
    shelf: Mutex<Shelf>,
    budget: AtomicU64,
    evictions: AtomicU64,
    /// Bumped by every purge: a fill that started before one is not stored, or it could
    /// bring back what the purge (or an invalidating POST) just removed.
    purges: AtomicU64,
}

impl Partition {
    fn lock(&self) -> MutexGuard<'_, Shelf> {
        // Maps and a queue updated together under the lock; a panic cannot leave them torn
        // in a way that matters more than losing cached copies.
        self.shelf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evicts until the entries fit the budget.
    fn fit(&self, shelf: &mut Shelf) {
        let budget = self.budget.load(Ordering::Relaxed);
        while shelf.sieve.weight() > budget {
            let Some((victim, _)) = shelf.sieve.evict() else {
                break;
            };
            shelf.remove(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.lock().sieve.weight()
    }

    pub fn entries(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut shelf = self.lock();
        self.purges.fetch_add(1, Ordering::Relaxed);
        let n = shelf.entries.len();
        *shelf = Shelf::default();
        n
    }

    /// Drops every variant stored under a URL's primary key.
    pub fn purge_primary(&self, primary: &HashBinary) -> usize {
        let mut shelf = self.lock();
        self.purges.fetch_add(1, Ordering::Relaxed);
        let mut keys = shelf.variants.get(primary).cloned().unwrap_or_default();
        keys.push(*primary);
        keys.iter().filter(|k| shelf.remove(k).is_some()).count()
    }

    pub fn purge_tag(&self, tag: &str) -> usize {
        let mut shelf = self.lock();
        self.purges.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<HashBinary> = shelf
            .by_tag
            .get(tag)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        keys.iter().filter(|k| shelf.remove(k).is_some()).count()
    }
}

/// The storage every tenant's requests use; partitions are set by `configure` on each
/// configuration generation.
#[derive(Default)]
pub struct CacheStore {
    partitions: RwLock<HashMap<Box<str>, Arc<Partition>>>,
}

impl CacheStore {
    /// Makes the partitions match the configuration: `(tenant, budget)` for each cached
    /// tenant. New tenants get an empty partition, kept ones keep their entries (shrunk to a
    /// smaller budget at once), and removed ones are dropped with everything they held.
    pub fn configure(&self, budgets: &[(&str, u64)]) {
        let mut parts = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        parts.retain(|id, _| budgets.iter().any(|(t, _)| *t == id.as_ref()));
        for (tenant, budget) in budgets {
            let part = parts.entry((*tenant).into()).or_default();
            part.budget.store(*budget, Ordering::Relaxed);
            part.fit(&mut part.lock());
        }
    }

    pub fn partition(&self, tenant: &str) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Every partition, for metrics.
    pub fn partitions(&self) -> Vec<(Box<str>, Arc<Partition>)> {
        let parts = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        parts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn partition_of(&self, key: &CompactCacheKey) -> Option<Arc<Partition>> {
        self.partition(&key.user_tag)
    }
}

struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let end = end.unwrap_or(self.body.len());
        if start > end || end > self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "range outside the stored body");
        }
        (self.start, self.end, self.done) = (start, end, false);
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        0
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    partition: Arc<Partition>,
    /// `Partition::purges` when the fill started.
    purges: u64,
    key: HashBinary,
    primary: Option<HashBinary>,
    meta: StoredMeta,
    tags: Box<[Box<str>]>,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let weight =
            self.body.len() as u64 + self.meta.weight() + tags_weight(&self.tags) + ENTRY_OVERHEAD;
        let part = self.partition;
        let mut shelf = part.lock();
        // Under the lock, so no purge can slip in between this check and the insert.
        let purged_meanwhile = part.purges.load(Ordering::Relaxed) != self.purges;
        // An object larger than the whole budget would only evict everything, then itself.
        if weight <= part.budget() && !purged_meanwhile {
            let entry = Entry {
                meta: self.meta,
                body: fit(self.body),
                primary: self.primary,
                tags: self.tags,
                weight,
            };
            shelf.insert(self.key, entry);
            part.fit(&mut shelf);
        }
        Ok(MissFinishType::Created(weight as usize))
    }
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(part) = self.partition(key.user_tag()) else {
            return Ok(None);
        };
        let combined = key.combined_bin();
        let (meta, body) = {
            let mut shelf = part.lock();
            let Some(e) = shelf.entries.get(&combined) else {
                return Ok(None);
            };
            let found = (e.meta.clone(), e.body.clone());
            shelf.sieve.touch(&combined);
            found
        };
        let meta = meta.to_meta()?;
        let end = body.len();
        let hit = Hit {
            body,
            start: 0,
            end,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let Some(partition) = self.partition(key.user_tag()) else {
            return Error::e_explain(ErrorType::InternalError, "tenant has no cache partition");
        };
        let (combined, primary) = (key.combined_bin(), key.primary_bin());
        let tags = policy::tags(meta.headers()).into_boxed_slice();
        // Sized once from Content-Length (pingora has checked it against max_object_size).
        let expected = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(Box::new(Miss {
            purges: partition.purges.load(Ordering::Relaxed),
            partition,
            key: combined,
            primary: (combined != primary).then_some(primary),
            meta: StoredMeta::from(meta),
            tags,
            body: BytesMut::with_capacity(expected.min(MAX_PREALLOCATION)),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let Some(part) = self.partition_of(key) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let removed = part.lock().remove(&key.combined_bin()).is_some();
        Ok(match removed {
            true => PurgeOutcome::Purged(None),
            false => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let Some(part) = self.partition(key.user_tag()) else {
            return Ok(false);
        };
        let stored = StoredMeta::from(meta);
        let tags = policy::tags(meta.headers()).into_boxed_slice();
        let key = key.combined_bin();
        let mut shelf = part.lock();
        // The entry may have been evicted or purged while it was being revalidated. A 304 can
        // bring new tags and headers: the entry is indexed and weighed again.
        let Some(old) = shelf.remove(&key) else {
            return Ok(false);
        };
        let weight = old.body.len() as u64 + stored.weight() + tags_weight(&tags) + ENTRY_OVERHEAD;
        let entry = Entry {
            meta: stored,
            tags,
            weight,
            ..old
        };
        shelf.insert(key, entry);
        part.fit(&mut shelf);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

fn tags_weight(tags: &[Box<str>]) -> u64 {
    tags.iter().map(|t| t.len() as u64 + TAG_OVERHEAD).sum()
}

/// A body as stored: without the spare capacity a buffer grown chunk by chunk can hold.
fn fit(body: BytesMut) -> Bytes {
    if body.capacity() - body.len() > body.len() / 16 {
        Bytes::copy_from_slice(&body)
    } else {
        body.freeze()
    }
}

/// What a hit needs to rebuild its `CacheMeta`, kept as values and the headers as plain
/// text: a hit then reads a few lines instead of decompressing a header block (pingora's own
/// format compresses with zstd), and an entry does not hold a whole header map either. A
/// rebuilt meta's `provenance` is its `created`: after a background refresh of a `Vary`
/// entry, variants stored before it count as misses, never as the wrong variant.
#[derive(Clone)]
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    status: u16,
    /// `name:value\n` per header line, names lowercase.
    headers: Bytes,
}

impl StoredMeta {
    fn from(meta: &CacheMeta) -> Self {
        let header = meta.response_header();
        let mut text = Vec::with_capacity(256);
        for (name, value) in header.headers.iter() {
            text.extend_from_slice(name.as_str().as_bytes());
            text.push(b':');
            text.extend_from_slice(value.as_bytes());
            text.push(b'\n');
        }
        Self {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            status: header.status.as_u16(),
            headers: Bytes::from(text),
        }
    }

    fn weight(&self) -> u64 {
        (std::mem::size_of::<Self>() + self.headers.len()) as u64
    }

    fn to_meta(&self) -> Result<CacheMeta> {
        let lines = self
            .headers
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty());
        let mut header = ResponseHeader::build_no_case(self.status, Some(lines.clone().count()))?;
        for line in lines {
            // Written above from valid names (no ':') and values (no newline).
            let colon = memchr::memchr(b':', line).unwrap_or(line.len());
            let value_at = self.headers.slice_ref(&line[(colon + 1).min(line.len())..]);
            let value = http::HeaderValue::from_maybe_shared(value_at)
                .map_err(|e| Error::because(ErrorType::InternalError, "stored header", e))?;
            let name = http::HeaderName::from_bytes(&line[..colon])
                .map_err(|e| Error::because(ErrorType::InternalError, "stored header", e))?;
            header.append_header(name, value)?;
        }
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            header,
        );
        meta.set_epoch_override(self.epoch);
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        Ok(meta)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
