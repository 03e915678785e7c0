//! Keeps answering when the best source breaks at run time: the first error
//! from the primary (a BPF map read failing, say) is logged, the primary is
//! stopped (its program detached), and from then on the backup answers and
//! `/healthz` reports the degraded state. There is no switching back: a
//! source that failed once is not trusted to be exact. A failed snapshot is
//! not the primary failing (its events still count) and trips nothing.
use std::sync::{Arc, Mutex};

use tracing::error;

use crate::lock::lock;

use super::{ConnectionSource, Detail, Reading, SourceError, SourceHealth, SourceKind};

pub struct Failover {
    primary: Arc<dyn ConnectionSource>,
    backup: Arc<dyn ConnectionSource>,
    /// Why the primary was abandoned, once it was.
    failure: Mutex<Option<String>>,
}

impl Failover {
    pub fn new(primary: Arc<dyn ConnectionSource>, backup: Arc<dyn ConnectionSource>) -> Self {
        Failover {
            primary,
            backup,
            failure: Mutex::new(None),
        }
    }

    fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    fn fail_over(&self, error: &SourceError) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            error!(
                "{} source failed at run time ({error}); falling back to {}",
                self.primary.kind(),
                self.backup.kind()
            );
            *failure = Some(format!("{} source failed: {error}", self.primary.kind()));
            drop(failure);
            self.primary.stop();
        }
    }

    fn with<T>(
        &self,
        op: impl Fn(&dyn ConnectionSource) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if !self.failed() {
            match op(self.primary.as_ref()) {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => self.fail_over(&e),
            }
        }
        op(self.backup.as_ref())
    }
}

impl ConnectionSource for Failover {
    fn kind(&self) -> SourceKind {
        if self.failed() {
            self.backup.kind()
        } else {
            self.primary.kind()
        }
    }

    fn read(&self, detail: Detail) -> Result<Reading, SourceError> {
        self.with(|s| s.read(detail))
    }

    fn refresh(&self) -> Result<(), SourceError> {
        self.with(|s| s.refresh())
    }

    fn degraded(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn health(&self) -> SourceHealth {
        // The primary's counters stay meaningful (and monotonic) after it
        // failed; the backup has none of its own.
        self.primary.health()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::source::PortReading;

    struct Fake {
        kind: SourceKind,
        established: u64,
        broken: AtomicBool,
        snapshot_fails: AtomicBool,
        stopped: AtomicBool,
    }

    impl ConnectionSource for Fake {
        fn kind(&self) -> SourceKind {
            self.kind
        }
        fn refresh(&self) -> Result<(), SourceError> {
            if self.snapshot_fails.load(Ordering::SeqCst) {
                return Err(SourceError::Snapshot {
                    source: Box::new(SourceError::Netlink {
                        reason: "ENOBUFS".into(),
                    }),
                });
            }
            Ok(())
        }
        fn stop(&self) {
            self.stopped.store(true, Ordering::SeqCst);
        }
        fn read(&self, _: Detail) -> Result<Reading, SourceError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable {
                    reason: "map read failed".into(),
                });
            }
            Ok(Reading::from([(
                80,
                PortReading {
                    established: [self.established, 0],
                    ..Default::default()
                },
            )]))
        }
    }

    #[test]
    fn switches_to_the_backup_on_the_first_error_and_stays() {
        let fake = |kind, established| {
            Arc::new(Fake {
                kind,
                established,
                broken: AtomicBool::new(false),
                snapshot_fails: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
            })
        };
        let primary = fake(SourceKind::Ebpf, 1);
        let backup = fake(SourceKind::SockDiag, 2);
        let f = Failover::new(primary.clone(), backup);
        assert_eq!(
            f.read(Detail::default()).expect("read")[&80].established[0],
            1
        );
        assert_eq!((f.kind(), f.degraded()), (SourceKind::Ebpf, None));
        // A failed snapshot is reported, but the primary stays.
        primary.snapshot_fails.store(true, Ordering::SeqCst);
        assert!(f.refresh().is_err());
        assert_eq!((f.kind(), f.degraded()), (SourceKind::Ebpf, None));
        assert!(!primary.stopped.load(Ordering::SeqCst));
        primary.snapshot_fails.store(false, Ordering::SeqCst);
        primary.broken.store(true, Ordering::SeqCst);
        assert_eq!(
            f.read(Detail::default()).expect("backup answers")[&80].established[0],
            2
        );
        assert_eq!(f.kind(), SourceKind::SockDiag);
        assert!(f.degraded().expect("degraded").contains("map read failed"));
        assert!(
            primary.stopped.load(Ordering::SeqCst),
            "the primary is stopped"
        );
        primary.broken.store(false, Ordering::SeqCst);
        assert_eq!(
            f.read(Detail::default()).expect("read")[&80].established[0],
            2,
            "no switching back"
        );
    }
}
