//! Many callers, one read: requests that arrive while a read of the kernel
//! is running share the next one. Each caller gets the result of a read
//! that *started after it arrived*, so an answer still reflects the
//! kernel's state at the moment of its request (the contract), while 1 000
//! clients at once cost a handful of reads instead of 1 000 (and 1 000
//! blocking threads).
//!
//! Hand-written because the single-flight crates join a call already in
//! flight, which may have started before the caller arrived and so answer
//! with a state older than the request.
use std::{future::Future, sync::Mutex};

use tokio::sync::watch;

use crate::lock::lock;

struct State<T> {
    /// Reads started so far; the running one, if any, is number `started`.
    started: u64,
    running: bool,
    /// The result of the latest finished read, and its number.
    last: Option<(u64, T)>,
}

pub struct Coalesced<T> {
    state: Mutex<State<T>>,
    /// The number of the latest finished read, for waiters.
    finished: watch::Sender<u64>,
}

impl<T: Clone> Default for Coalesced<T> {
    fn default() -> Self {
        Coalesced {
            state: Mutex::new(State {
                started: 0,
                running: false,
                last: None,
            }),
            finished: watch::Sender::new(0),
        }
    }
}

impl<T: Clone> Coalesced<T> {
    /// The result of a run of `read` that started after this call: either
    /// one this call runs, or one another caller started meanwhile.
    pub async fn get<F, Fut>(&self, read: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut finished = self.finished.subscribe();
        // Any read numbered `need` or later started after now.
        let need = lock(&self.state).started + 1;
        loop {
            let next = {
                let mut state = lock(&self.state);
                match &state.last {
                    Some((number, value)) if *number >= need => return value.clone(),
                    _ if state.running => Next::WaitFor(state.started),
                    _ => {
                        state.running = true;
                        state.started += 1;
                        Next::Run(state.started)
                    }
                }
            };
            match next {
                Next::Run(number) => {
                    // If this future is dropped mid-read, the guard still
                    // ends the read, so waiters run one of their own.
                    let guard = Running {
                        owner: self,
                        number,
                    };
                    let value = read().await;
                    lock(&self.state).last = Some((number, value.clone()));
                    drop(guard);
                    return value;
                }
                // The running read ends (with a result or dropped): look again.
                Next::WaitFor(number) => {
                    let _ = finished.wait_for(|n| *n >= number).await;
                }
            }
        }
    }
}

enum Next {
    Run(u64),
    WaitFor(u64),
}

/// Marks the read numbered `number` ended, however it ends.
struct Running<'a, T> {
    owner: &'a Coalesced<T>,
    number: u64,
}

impl<T> Drop for Running<'_, T> {
    fn drop(&mut self) {
        lock(&self.owner.state).running = false;
        self.owner
            .finished
            .send_modify(|n| *n = (*n).max(self.number));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_reads_that_started_after_they_arrived() {
        let coalesced = Arc::new(Coalesced::<u64>::default());
        let reads = Arc::new(AtomicU64::new(0));
        // The "kernel": a counter callers bump before asking; a read
        // returns its value, so a result older than the caller's arrival
        // would be smaller than what it bumped to.
        let kernel = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (coalesced, reads, kernel) = (coalesced.clone(), reads.clone(), kernel.clone());
            tasks.push(tokio::spawn(async move {
                let at_arrival = kernel.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = coalesced
                    .get(|| {
                        let (reads, kernel) = (reads.clone(), kernel.clone());
                        async move {
                            reads.fetch_add(1, Ordering::SeqCst);
                            let value = kernel.load(Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            value
                        }
                    })
                    .await;
                assert!(
                    seen >= at_arrival,
                    "{seen} read before arrival {at_arrival}"
                );
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let reads = reads.load(Ordering::SeqCst);
        assert!(reads < 200, "{reads} reads for 200 callers: nothing shared");
    }

    #[tokio::test]
    async fn a_caller_dropped_mid_read_does_not_block_the_next() {
        let coalesced = Coalesced::<u32>::default();
        let stuck = coalesced.get(std::future::pending::<u32>);
        // Poll once so it starts its read, then drop it.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), stuck).await;
        let value = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            coalesced.get(|| async { 7 }),
        )
        .await
        .expect("not blocked");
        assert_eq!(value, 7);
    }

    #[tokio::test]
    async fn one_caller_alone_reads_every_time() {
        let coalesced = Coalesced::<u32>::default();
        let n = AtomicU64::new(0);
        for want in 1..=3 {
            let got = coalesced
                .get(|| async { n.fetch_add(1, Ordering::SeqCst) as u32 + 1 })
                .await;
            assert_eq!(got, want);
        }
    }
}
