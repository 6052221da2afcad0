//! The newest log entries in memory, as they were appended.
//!
//! openraft 0.9 reads every entry back right after appending it: each replication stream
//! reads the entries it sends, and the core reads what it hands to the state machine. On a
//! leader with two followers that is three RocksDB range reads and three decryptions of
//! an entry it has just written, two of them before the entry leaves for a follower and
//! one before it is applied, all on the path of every write. The log's tail is kept here,
//! so those reads are copies.
//!
//! Invariant: the cache holds a contiguous run of entries that ends at the log's last
//! entry, exactly as stored; `LogStore` changes it on every append, truncation and purge
//! of the log, after the change is written. A range it does not hold whole is read from
//! RocksDB.

use std::collections::VecDeque;
use std::sync::Mutex;

use openraft::Entry;

use crate::TypeConfig;

/// At most this many bytes of encoded entries are kept (the oldest go first).
const MAX_BYTES: usize = 8 << 20;
/// And at most this many entries.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct LogCache(Mutex<Tail>);

#[derive(Debug, Default)]
struct Tail {
    /// Each entry with its encoded size.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl LogCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `entries` (with their encoded sizes) were appended to the log, in order, after
    /// whatever it held (a follower's append may have replaced a suffix first: see
    /// [`Self::truncated_from`]).
    pub(crate) fn appended(&self, entries: Vec<(Entry<TypeConfig>, usize)>) {
        let mut tail = self.lock();
        for (entry, size) in entries {
            // Not the next index: the log was changed some other way (it cannot be, but a
            // stale cache must never be served), so the cache starts again here.
            if tail.last_index().is_some_and(|last| last.checked_add(1) != Some(entry.log_id.index)) {
                tail.clear();
            }
            tail.bytes += size;
            tail.entries.push_back((entry, size));
        }
        while tail.bytes > MAX_BYTES || tail.entries.len() > MAX_ENTRIES {
            let Some((_, size)) = tail.entries.pop_front() else { break };
            tail.bytes -= size;
        }
    }

    /// The log lost its entries from `index` on.
    pub(crate) fn truncated_from(&self, index: u64) {
        let mut tail = self.lock();
        while tail.last_index().is_some_and(|last| last >= index) {
            if let Some((_, size)) = tail.entries.pop_back() {
                tail.bytes -= size;
            }
        }
    }

    /// The log lost its entries up to and including `index`.
    pub(crate) fn purged_upto(&self, index: u64) {
        let mut tail = self.lock();
        while tail.first_index().is_some_and(|first| first <= index) {
            if let Some((_, size)) = tail.entries.pop_front() {
                tail.bytes -= size;
            }
        }
    }

    /// The log was changed without telling the cache (it is dropped whole).
    pub(crate) fn forget(&self) {
        self.lock().clear();
    }

    /// The entries from `start` up to `end` (exclusive; `None`: to the log's end), if the
    /// cache holds all of those the log holds; `None` if the log must be read instead.
    pub(crate) fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let tail = self.lock();
        let (first, last) = (tail.first_index()?, tail.last_index()?);
        if start < first {
            return None;
        }
        // The cache ends where the log ends: past its last entry there is nothing to read.
        let end = end.map_or(last.saturating_add(1), |e| e.min(last.saturating_add(1)));
        if start >= end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(tail.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(term: u64, index: u64) -> (Entry<TypeConfig>, usize) {
        let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
        (Entry { log_id, payload: EntryPayload::Blank }, 100)
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let c = LogCache::default();
        assert_eq!(indexes(c.get(1, None)), None, "an empty cache knows nothing");
        c.appended((5..=9).map(|i| entry(1, i)).collect());
        assert_eq!(indexes(c.get(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(c.get(7, Some(9))), Some(vec![7, 8]));
        assert_eq!(indexes(c.get(8, None)), Some(vec![8, 9]));
        assert_eq!(indexes(c.get(8, Some(100))), Some(vec![8, 9]), "the log ends at 9");
        assert_eq!(indexes(c.get(10, None)), Some(vec![]));
        assert_eq!(indexes(c.get(4, Some(6))), None, "index 4 is only in RocksDB");
    }

    #[test]
    fn follows_truncation_purge_and_gaps() {
        let c = LogCache::default();
        c.appended((1..=6).map(|i| entry(1, i)).collect());
        c.truncated_from(4);
        assert_eq!(indexes(c.get(1, None)), Some(vec![1, 2, 3]));
        c.appended(vec![entry(2, 4)]);
        let got = c.get(4, None).expect("held");
        assert_eq!(got[0].log_id.leader_id.term, 2, "the replacing entry, not the truncated one");
        c.purged_upto(2);
        assert_eq!(indexes(c.get(2, None)), None);
        assert_eq!(indexes(c.get(3, None)), Some(vec![3, 4]));
        // An append that does not follow the cached tail starts the cache again.
        c.appended(vec![entry(2, 9)]);
        assert_eq!(indexes(c.get(3, None)), None);
        assert_eq!(indexes(c.get(9, None)), Some(vec![9]));
        c.forget();
        assert_eq!(indexes(c.get(9, None)), None);
    }

    #[test]
    fn keeps_within_its_bounds() {
        let c = LogCache::default();
        let n = MAX_ENTRIES as u64 + 10;
        c.appended((1..=n).map(|i| entry(1, i)).collect());
        assert_eq!(indexes(c.get(10, Some(11))), None, "the oldest went first");
        assert_eq!(indexes(c.get(n, None)), Some(vec![n]));
        let big = |i| {
            let (e, _) = entry(1, i);
            (e, MAX_BYTES / 2 + 1)
        };
        c.appended(vec![big(n + 1), big(n + 2)]);
        assert_eq!(indexes(c.get(n + 1, None)), None, "over the byte bound");
        assert_eq!(indexes(c.get(n + 2, None)), Some(vec![n + 2]));
    }
}
