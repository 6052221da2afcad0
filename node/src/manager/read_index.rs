//! Read-index batching: concurrent linearizable reads share one read index, so under load
//! one round trip to the leader's quorum serves every read that was waiting for it.

use crate::manager::error::OpError;

/// A read index (`None` on an empty log), or why there is none.
pub(crate) type ReadIndex = Result<Option<u64>, OpError>;

/// Shares read indexes between concurrent linearizable reads.
///
/// Invariant: a caller gets the result of a fetch that *started after it arrived* (so the
/// index reflects every write acknowledged before the read began), never of one that was
/// already under way. Fetches run one at a time; everyone who queued behind a fetch is
/// served by the next one.
#[derive(Debug, Default)]
pub(crate) struct ReadIndexBatch {
    started: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<Option<(u64, ReadIndex)>>,
}

impl ReadIndexBatch {
    pub(crate) async fn read_index<F, Fut>(&self, fetch: F) -> ReadIndex
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ReadIndex>,
    {
        use std::sync::atomic::Ordering::SeqCst;
        let arrival = self.started.load(SeqCst);
        let mut last = self.last.lock().await;
        if let Some((generation, result)) = last.as_ref() {
            if *generation > arrival {
                return result.clone();
            }
        }
        let generation = self.started.fetch_add(1, SeqCst) + 1;
        let result = fetch().await;
        *last = Some((generation, result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_read_never_reuses_an_index_fetched_before_it_arrived() {
        let batch = Arc::new(ReadIndexBatch::default());
        let fetches = Arc::new(AtomicU64::new(0));
        // A first fetch is under way (holding the lock) when 20 reads arrive.
        let gate = Arc::new(tokio::sync::Notify::new());
        let (b, f, g) = (batch.clone(), fetches.clone(), gate.clone());
        let first = tokio::spawn(async move {
            b.read_index(|| async move {
                g.notified().await;
                Ok(Some(f.fetch_add(1, Ordering::SeqCst) + 1))
            })
            .await
        });
        tokio::task::yield_now().await;
        while batch.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let mut later = Vec::new();
        for _ in 0..20 {
            let (b, f) = (batch.clone(), fetches.clone());
            later.push(tokio::spawn(async move {
                b.read_index(|| async move { Ok(Some(f.fetch_add(1, Ordering::SeqCst) + 1)) }).await
            }));
        }
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(first.await.expect("join"), Ok(Some(1)));
        for r in later {
            // Served by a fetch that began after they arrived: index 2, not the first one.
            assert_eq!(r.await.expect("join"), Ok(Some(2)));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "twenty waiting reads cost one more fetch");
    }
}
