//! The tracker as every consumer sees it: a source, the activity clock fed
//! by its readings, and the counters `/metrics` reports. HTTP, hooks, drain
//! and the ticker all read through here, so "read, then record the reading
//! in the activity" is written once.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tracing::warn;

use crate::{
    activity::{Activity, Idle},
    clock::boottime_ns,
    coalesce::Coalesced,
    source::{ConnectionSource, Detail, Reading, SourceHealth},
    status::Status,
};

/// What the handlers, the hooks and the ticker share.
pub struct App {
    pub source: Arc<dyn ConnectionSource>,
    pub activity: Activity,
    /// `--min-connection-age`, for the long-lived gauge.
    pub min_connection_age: Duration,
    /// Failed reads of the source, for `/metrics`.
    source_errors: AtomicU64,
    /// Hook runs by (hook, result), for `/metrics`.
    hook_runs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Reads shared by concurrent callers, without and with connection ages.
    reads: [Coalesced<Result<Reading, String>>; 2],
    /// Refreshes shared likewise: every waiting drain asks for one a second.
    refreshes: Coalesced<()>,
}

/// A reading recorded in the activity, and what the activity made of it.
pub struct Observed {
    pub reading: Reading,
    pub idle: Idle,
    /// CLOCK_BOOTTIME the reading was recorded at.
    pub now_ns: u64,
}

impl Observed {
    /// The contract's JSON for this reading.
    pub fn status(&self, source: &'static str) -> Status {
        Status::new(&self.reading, &self.idle, source)
    }
}

impl App {
    pub fn new(
        source: Arc<dyn ConnectionSource>,
        activity: Activity,
        min_connection_age: Duration,
    ) -> Self {
        App {
            source,
            activity,
            min_connection_age,
            source_errors: AtomicU64::new(0),
            hook_runs: Mutex::default(),
            reads: Default::default(),
            refreshes: Coalesced::default(),
        }
    }

    /// The source's name as the JSON and the metrics show it.
    pub fn source_name(&self) -> &'static str {
        self.source.kind().as_str()
    }

    /// Reads the source off the async workers (polling sources take
    /// milliseconds), sharing the read with concurrent callers: each gets a
    /// read that started after it asked. A failure is counted once per
    /// read and returned as text.
    pub async fn read(&self, detail: Detail) -> Result<Reading, String> {
        let flight = &self.reads[usize::from(detail.starts)];
        flight
            .get(|| async move {
                let source = self.source.clone();
                let result = match tokio::task::spawn_blocking(move || source.read(detail)).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reader task failed: {e}")),
                };
                if result.is_err() {
                    self.source_errors.fetch_add(1, Ordering::Relaxed);
                }
                result
            })
            .await
    }

    /// A fresh reading with what `extra` asks for on top of what the
    /// activity needs, recorded in the activity.
    pub async fn observe_with(&self, extra: Detail) -> Result<Observed, String> {
        let detail = Detail {
            starts: extra.starts || self.activity.detail().starts,
        };
        let reading = self.read(detail).await?;
        let now_ns = boottime_ns();
        let idle = self.activity.observe(&reading, now_ns);
        Ok(Observed {
            reading,
            idle,
            now_ns,
        })
    }

    /// A fresh reading recorded in the activity.
    pub async fn observe(&self) -> Result<Observed, String> {
        self.observe_with(Detail::default()).await
    }

    /// A fresh reading's status, recorded in the activity.
    pub async fn status(&self) -> Result<Status, String> {
        Ok(self.observe().await?.status(self.source_name()))
    }

    /// The source's periodic work (snapshots, reconcile), off the async
    /// workers and shared by concurrent callers (each gets one that started
    /// after it asked); a failure is logged under `context`, and the source
    /// keeps answering from what it has.
    pub async fn refresh(&self, context: &str) {
        self.refreshes
            .get(|| async {
                let source = self.source.clone();
                match tokio::task::spawn_blocking(move || source.refresh()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("{context}: refreshing the source: {e}"),
                    Err(e) => warn!("{context}: refresh task failed: {e}"),
                }
            })
            .await
    }

    /// The source's own health figures, off the async workers.
    pub async fn health(&self) -> SourceHealth {
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || source.health())
            .await
            .unwrap_or_default()
    }

    pub fn source_errors(&self) -> u64 {
        self.source_errors.load(Ordering::Relaxed)
    }

    /// Counts one run of `hook` that ended with `result`.
    pub fn count_hook_run(&self, hook: &'static str, result: &'static str) {
        *crate::lock::lock(&self.hook_runs)
            .entry((hook, result))
            .or_default() += 1;
    }

    pub fn hook_runs(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        crate::lock::lock(&self.hook_runs).clone()
    }
}
