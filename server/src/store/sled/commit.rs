//! Group commit: the one place that makes sled writes durable.
//!
//! A writer commits its transaction, then waits here. A dedicated thread takes
//! every waiter that has arrived, runs one `flush`, and answers them all, so that
//! durability costs one flush per group of requests instead of one per request.
//! Each waiter arrived after its own write, and the thread drains the queue before
//! it starts a flush, so the flush that answers a waiter always covers its write.
//!
//! This also keeps request handlers away from sled's `flush_async`, which
//! deadlocks when many tasks await it at once (sled issues #1241 and #1357).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
};

use tokio::sync::oneshot;

use crate::store::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Counters, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub flushes: AtomicU64,
    pub waiters: AtomicU64,
}

#[derive(Debug)]
pub struct GroupCommit {
    /// `None` only while dropping.
    requests: Option<mpsc::Sender<Waiter>>,
    flusher: Option<thread::JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// Starts the flusher thread. It ends when the handle is dropped, and the
    /// drop waits for it: the thread holds the database, and a store reopened
    /// right after must find its files unlocked.
    pub fn start(db: sled::Db) -> Result<Self, StoreError> {
        let (requests, queue) = mpsc::channel::<Waiter>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let flusher = thread::Builder::new()
            .name("handover-flusher".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    group.extend(queue.try_iter());
                    let outcome = db.flush().map(drop).map_err(|err| err.to_string());
                    if let Err(err) = &outcome {
                        tracing::error!(error = %err, waiters = group.len(), "flush failed");
                    }
                    thread_stats.flushes.fetch_add(1, Ordering::Relaxed);
                    thread_stats.waiters.fetch_add(group.len() as u64, Ordering::Relaxed);
                    for waiter in group {
                        // A waiter that gave up (its request was cancelled) needs no answer.
                        let _ = waiter.send(outcome.clone());
                    }
                }
            })
            .map_err(|err| StoreError::Backend(format!("cannot start the flusher thread: {err}")))?;
        Ok(Self { requests: Some(requests), flusher: Some(flusher), stats })
    }

    /// Returns once everything written before this call is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (waiter, answer) = oneshot::channel();
        let stopped = || StoreError::Backend("the flusher thread has stopped".into());
        self.requests.as_ref().ok_or_else(stopped)?.send(waiter).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the flusher thread has stopped".into()))?
            .map_err(|err| StoreError::Backend(format!("flush failed: {err}")))
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the flush it may be running.
        drop(self.requests.take());
        if let Some(flusher) = self.flusher.take() {
            if flusher.join().is_err() {
                tracing::error!("the flusher thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_waiters_share_flushes_and_all_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let commit = Arc::new(GroupCommit::start(db.clone()).expect("start"));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let commit = Arc::clone(&commit);
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &[1]).expect("insert");
                commit.durable().await
            }));
        }
        for task in tasks {
            task.await.expect("joined").expect("durable");
        }
        let stats = commit.stats();
        assert_eq!(stats.waiters.load(Ordering::Relaxed), 64);
        assert!(stats.flushes.load(Ordering::Relaxed) <= 64);
    }
}
