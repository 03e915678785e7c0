//! One namespace of the node source, seen as a whole per-pod source: what
//! lets node mode answer each pod with the sidecar's own `App`, activity
//! clock, JSON and drain, instead of copies of them.
use std::sync::Arc;

use crate::source::{
    ConnectionSource, Detail, Reading, SourceError, SourceHealth, SourceKind,
    ebpf::node::NodeSource,
};

pub struct NamespaceView {
    pub source: Arc<NodeSource>,
    pub netns: u32,
}

impl ConnectionSource for NamespaceView {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn read(&self, detail: Detail) -> Result<Reading, SourceError> {
        self.source
            .read(self.netns, detail)?
            .ok_or_else(|| SourceError::Unavailable {
                reason: format!("network namespace {} is gone", self.netns),
            })
    }

    /// A drain on this namespace renews its snapshot only.
    fn refresh(&self) -> Result<(), SourceError> {
        self.source.refresh_one(self.netns)
    }

    fn health(&self) -> SourceHealth {
        self.source.health().0
    }
}
