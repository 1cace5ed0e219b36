//! Group commit: concurrent writes of one kind share one transaction.
//!
//! A request that costs its own commit (and its own statements) cannot go
//! faster than the database commits and plans them one by one. Callers of a
//! [`GroupCommit`] queue their item and either find it already written by
//! another caller's flush, or take a flush permit and write everything queued
//! (up to `max_batch`) in one transaction. At most `flushers` batches are in
//! flight at once, so while one commits the next fills: under load, batches
//! grow by themselves; a lone caller waits for nothing (its batch is itself,
//! flushed at once, unless a `window` is set).
//!
//! Every caller is answered only after the batch holding its item committed
//! (or with its own error). The flush runs in its own task, so a caller that
//! goes away mid-flush (a client hanging up) cannot strand the others; an item
//! whose caller went away before any flush took it is withdrawn.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

/// How a group commit batches.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// The most items one transaction writes.
    pub max_batch: usize,
    /// How many batches may be writing at once.
    pub flushers: usize,
    /// How long a flush waits for more items before it writes a batch smaller
    /// than `max_batch` (zero: it writes what is queued at once).
    pub window: Duration,
}

struct Queued<I, O> {
    id: u64,
    item: I,
    reply: oneshot::Sender<O>,
}

pub(crate) struct GroupCommit<I, O> {
    queue: Arc<std::sync::Mutex<VecDeque<Queued<I, O>>>>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    settings: GroupSettings,
    /// Batches written and items in them, for the metrics and the bench.
    batches: Arc<AtomicU64>,
    items: Arc<AtomicU64>,
}

impl<I, O> std::fmt::Debug for GroupCommit<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("settings", &self.settings).field("counts", &self.counts()).finish()
    }
}

impl<I, O> GroupCommit<I, O> {
    /// (batches written, items written).
    pub fn counts(&self) -> (u64, u64) {
        (self.batches.load(Ordering::Relaxed), self.items.load(Ordering::Relaxed))
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    pub fn new(settings: GroupSettings) -> Self {
        let settings = GroupSettings {
            max_batch: settings.max_batch.max(1),
            flushers: settings.flushers.max(1),
            window: settings.window,
        };
        Self {
            queue: Default::default(),
            permits: Arc::new(Semaphore::new(settings.flushers)),
            next_id: AtomicU64::new(0),
            settings,
            batches: Default::default(),
            items: Default::default(),
        }
    }

    /// Queues `item` and answers with its result once the batch holding it
    /// is written. `flush` writes a batch and returns one result per item,
    /// in order; `lost` is the answer when a flush ends without one (its task
    /// panicked or was cancelled with the runtime).
    pub async fn submit<F, Fut>(&self, item: I, flush: F, lost: impl Fn() -> O) -> O
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        self.lock().push_back(Queued { id, item, reply });
        // Withdraws the item if this caller goes away before a flush took it.
        let _withdraw = Withdraw { queue: &self.queue, id };
        loop {
            let permit = tokio::select! {
                biased;
                answered = &mut answer => return answered.unwrap_or_else(|_| lost()),
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return answer.await.unwrap_or_else(|_| lost()),
                },
            };
            if !self.settings.window.is_zero() && self.lock().len() < self.settings.max_batch {
                tokio::time::sleep(self.settings.window).await;
            }
            let batch: Vec<Queued<I, O>> = {
                let mut queue = self.lock();
                let n = queue.len().min(self.settings.max_batch);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Another flush took this item: its answer is on the way.
                drop(permit);
                return answer.await.unwrap_or_else(|_| lost());
            }
            let (replies, items): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.reply, q.item)).unzip();
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.items.fetch_add(items.len() as u64, Ordering::Relaxed);
            let written = flush(items);
            let task = tokio::spawn(async move {
                let results = written.await;
                drop(permit);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            });
            // Whether or not this caller's item was in that batch, the loop
            // either finds its answer or flushes what queued meanwhile.
            let _ = task.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued<I, O>>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Withdraw<'a, I, O> {
    queue: &'a std::sync::Mutex<VecDeque<Queued<I, O>>>,
    id: u64,
}

impl<I, O> Drop for Withdraw<'_, I, O> {
    fn drop(&mut self) {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.retain(|q| q.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(max_batch: usize, flushers: usize) -> Arc<GroupCommit<u32, Result<u32, String>>> {
        Arc::new(GroupCommit::new(GroupSettings { max_batch, flushers, window: Duration::ZERO }))
    }

    #[tokio::test]
    async fn a_lone_caller_is_its_own_batch() {
        let g = group(8, 1);
        let r = g
            .submit(7, |items| async move { items.into_iter().map(|i| Ok(i * 2)).collect() }, || Err("lost".into()))
            .await;
        assert_eq!(r, Ok(14));
        assert_eq!(g.counts(), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_batches_and_each_gets_its_own_answer() {
        let g = group(16, 1);
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let g = g.clone();
            handles.push(tokio::spawn(async move {
                g.submit(
                    i,
                    |items| async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        items
                            .into_iter()
                            .map(|i| if i.is_multiple_of(50) { Err(format!("bad {i}")) } else { Ok(i + 1000) })
                            .collect()
                    },
                    || Err("lost".into()),
                )
                .await
            }));
        }
        for (i, h) in handles.into_iter().enumerate() {
            let i = i as u32;
            let expected = if i.is_multiple_of(50) { Err(format!("bad {i}")) } else { Ok(i + 1000) };
            assert_eq!(h.await.unwrap(), expected);
        }
        let (batches, items) = g.counts();
        assert_eq!(items, 200);
        assert!(batches < 200, "200 concurrent callers wrote {batches} batches: none was shared");
        assert!(batches >= 200 / 16, "no batch may exceed 16 items");
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_before_its_flush_withdraws_its_item() {
        let g = group(8, 1);
        // Hold the only permit so the next caller queues and waits.
        let permit = g.permits.clone().acquire_owned().await.unwrap();
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move {
                g.submit(1, |items| async move { items.into_iter().map(Ok).collect() }, || Err("lost".into())).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(g.lock().len(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(g.lock().len(), 0, "the item of a caller that went away is withdrawn");
        drop(permit);
        let r = g.submit(2, |items| async move { items.into_iter().map(Ok).collect() }, || Err("lost".into())).await;
        assert_eq!(r, Ok(2));
        assert_eq!(g.counts(), (1, 1), "only the live caller's item is written");
    }

    #[tokio::test]
    async fn a_flush_that_panics_answers_lost() {
        let g = group(8, 1);
        let r = g
            .submit(
                1,
                |_items| async move {
                    if true {
                        panic!("flush failed");
                    }
                    Vec::new()
                },
                || Err("lost".into()),
            )
            .await;
        assert_eq!(r, Err("lost".to_owned()));
        // The permit came back: the next caller is served.
        let r = g.submit(3, |items| async move { items.into_iter().map(Ok).collect() }, || Err("lost".into())).await;
        assert_eq!(r, Ok(3));
    }
}
