//! Keeps answering when the best source breaks at run time: the first error
//! from the primary (a BPF map read failing, say) is logged, and from then on
//! the backup answers and `/healthz` reports the degraded state. There is no
//! switching back: a source that failed once is not trusted to be exact.
use std::sync::{Arc, Mutex};

use tracing::error;

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
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn fail_over(&self, error: &SourceError) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            error!(
                "{} source failed at run time ({error}); falling back to {}",
                self.primary.kind(),
                self.backup.kind()
            );
            *failure = Some(format!("{} source failed: {error}", self.primary.kind()));
        }
    }

    fn with<T>(
        &self,
        op: impl Fn(&dyn ConnectionSource) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if !self.failed() {
            match op(self.primary.as_ref()) {
                Ok(value) => return Ok(value),
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
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    }

    impl ConnectionSource for Fake {
        fn kind(&self) -> SourceKind {
            self.kind
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
        let primary = Arc::new(Fake {
            kind: SourceKind::Ebpf,
            established: 1,
            broken: AtomicBool::new(false),
        });
        let backup = Arc::new(Fake {
            kind: SourceKind::SockDiag,
            established: 2,
            broken: AtomicBool::new(false),
        });
        let f = Failover::new(primary.clone(), backup);
        assert_eq!(
            f.read(Detail::default()).expect("read")[&80].established[0],
            1
        );
        assert_eq!((f.kind(), f.degraded()), (SourceKind::Ebpf, None));
        primary.broken.store(true, Ordering::SeqCst);
        assert_eq!(
            f.read(Detail::default()).expect("backup answers")[&80].established[0],
            2
        );
        assert_eq!(f.kind(), SourceKind::SockDiag);
        assert!(f.degraded().expect("degraded").contains("map read failed"));
        primary.broken.store(false, Ordering::SeqCst);
        assert_eq!(
            f.read(Detail::default()).expect("read")[&80].established[0],
            2,
            "no switching back"
        );
    }
}
