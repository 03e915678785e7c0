//! The eBPF source: loads the kernel program, checks its offsets against a
//! socket of our own, and answers from the BPF maps. An answer costs one map
//! read per followed port, whatever the number of sockets on the host.
//!
//! TIME_WAIT and sockets that existed before attach come from a polling
//! source once per tick (see `reconcile.rs`).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::BtfTracePoint,
};
use spawner_sidecar_common::{
    AF_INET, IPPROTO_TCP, MAX_PORTS, PortCounts, SELFTEST_SLOT, SelfTestRecord, TrackerConfig,
};
use tracing::{debug, info, warn};

use super::{
    ConnectionSource, Reading, SourceError, SourceKind, SourceOptions,
    reconcile::{Correction, EventCounts, Outcome},
};
use crate::kernel_btf::{self, Btf};

/// The kernel program, built by `build.rs`; empty when the host had no eBPF
/// toolchain at build time.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spawner-sidecar"));

const PROGRAM: &str = "track_tcp_state";
/// `inet_sock_set_state` (Linux 4.16) as a BTF tracepoint: needs no tracefs.
const TRACEPOINT: &str = "inet_sock_set_state";
/// How long start-up waits for one quiet snapshot per port.
const SEED_DEADLINE: Duration = Duration::from_secs(1);

pub struct EbpfSource {
    /// Owns the attached program: dropping it detaches.
    _ebpf: Mutex<Ebpf>,
    counts: PerCpuArray<MapData, PortCounts>,
    slots: BTreeMap<u16, u32>,
    snapshots: Arc<dyn ConnectionSource>,
    corrections: Mutex<BTreeMap<u16, Correction>>,
    /// Test hook (`SPAWNER_SIDECAR_FAULT=ebpf-map-read`): after start-up,
    /// every map read fails, to exercise the run-time fallback for real.
    fail_map_reads: std::sync::atomic::AtomicBool,
}

/// The environment variable the tests use to inject a run-time failure.
const FAULT_ENV: &str = "SPAWNER_SIDECAR_FAULT";

fn unavailable(context: &str, error: impl std::error::Error) -> SourceError {
    let mut reason = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors already print their cause; say each thing once.
        let cause_text = cause.to_string();
        if !reason.contains(&cause_text) {
            reason.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    // Verifier logs run to hundreds of lines; keep the error to one line
    // and the whole log at debug level.
    debug!("{reason}");
    let first_line = reason.lines().next().unwrap_or_default().to_string();
    SourceError::Unavailable { reason: first_line }
}

/// The network namespace this process lives in, as the kernel numbers it.
pub fn own_netns_inum() -> Result<u32, SourceError> {
    let meta = std::fs::metadata("/proc/self/ns/net").map_err(|source| SourceError::Io {
        path: "/proc/self/ns/net",
        source,
    })?;
    u32::try_from(meta.ino()).map_err(|_| SourceError::Unavailable {
        reason: format!(
            "network namespace inode {} does not fit 32 bits",
            meta.ino()
        ),
    })
}

impl EbpfSource {
    /// Loads and attaches the program, self-tests it, follows `ports` and
    /// seeds their counts from `snapshots`.
    pub fn open(
        options: &SourceOptions,
        snapshots: Arc<dyn ConnectionSource>,
    ) -> Result<Self, SourceError> {
        let ports = &options.ports;
        if PROGRAM_OBJECT.is_empty() {
            return Err(SourceError::Unavailable {
                reason: "this binary was built without the kernel program (build it with `cargo xtask build`)"
                    .into(),
            });
        }
        if ports.len() > MAX_PORTS as usize {
            return Err(SourceError::Unavailable {
                reason: format!(
                    "{} ports requested, the kernel program follows at most {MAX_PORTS}",
                    ports.len()
                ),
            });
        }
        let offsets =
            Btf::from_file(&options.kernel_btf).and_then(|btf| kernel_btf::tracker_offsets(&btf));
        let config = TrackerConfig {
            netns_inum: own_netns_inum()?,
            ..offsets.map_err(|e| unavailable("kernel BTF", e))?
        };
        debug!(?config, "struct offsets from kernel BTF");

        let aya_btf = aya::Btf::parse_file(&options.kernel_btf, aya::Endianness::default())
            .map_err(|e| unavailable("kernel BTF", e))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("CONFIG", &config, true)
            .load(PROGRAM_OBJECT)
            .map_err(|e| unavailable("loading the kernel program", e))?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| SourceError::Unavailable {
                reason: format!("program {PROGRAM} missing from the object"),
            })?
            .try_into()
            .map_err(|e| unavailable("program type", e))?;
        program
            .load(TRACEPOINT, &aya_btf)
            .map_err(|e| unavailable("verifying the kernel program", e))?;
        program
            .attach()
            .map_err(|e| unavailable("attaching to inet_sock_set_state", e))?;

        let mut slot_map: Array<MapData, u32> = take_map(&mut ebpf, "PORT_SLOTS")?;
        let selftest: Array<MapData, SelfTestRecord> = take_map(&mut ebpf, "SELFTEST")?;
        let counts: PerCpuArray<MapData, PortCounts> = take_map(&mut ebpf, "PORT_COUNTS")?;

        self_test(&mut slot_map, &selftest, config.netns_inum)?;

        let mut slots = BTreeMap::new();
        for (index, &port) in ports.iter().enumerate() {
            let slot = index as u32;
            slot_map
                .set(u32::from(port), slot + 1, 0)
                .map_err(|source| SourceError::Map {
                    map: "PORT_SLOTS",
                    source,
                })?;
            slots.insert(port, slot);
        }
        let source = EbpfSource {
            _ebpf: Mutex::new(ebpf),
            counts,
            corrections: Mutex::new(slots.keys().map(|&p| (p, Correction::default())).collect()),
            slots,
            snapshots,
            fail_map_reads: false.into(),
        };
        source.seed()?;
        if std::env::var(FAULT_ENV).is_ok_and(|v| v == "ebpf-map-read") {
            warn!("{FAULT_ENV}=ebpf-map-read: every eBPF map read will now fail");
            source
                .fail_map_reads
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(source)
    }

    /// Reconciles until every port has had one quiet snapshot, so the first
    /// answer already counts sockets that existed before start.
    fn seed(&self) -> Result<(), SourceError> {
        let deadline = Instant::now() + SEED_DEADLINE;
        loop {
            self.refresh()?;
            let pending: Vec<u16> = self
                .lock_corrections()
                .iter()
                .filter(|(_, c)| !c.exact)
                .map(|(&p, _)| p)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    ?pending,
                    "ports too busy to seed within {SEED_DEADLINE:?}; retrying every tick"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lock_corrections(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Correction>> {
        // A panic while holding this lock cannot leave a half-written
        // correction (each is replaced whole), so poisoning is ignored.
        self.corrections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event_counts(&self) -> Result<BTreeMap<u16, EventCounts>, SourceError> {
        if self
            .fail_map_reads
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(SourceError::Unavailable {
                reason: format!("BPF map PORT_COUNTS: read failed ({FAULT_ENV})"),
            });
        }
        self.slots
            .iter()
            .map(|(&port, slot)| {
                let values = self
                    .counts
                    .get(slot, 0)
                    .map_err(|source| SourceError::Map {
                        map: "PORT_COUNTS",
                        source,
                    })?;
                Ok((port, EventCounts::sum(values.iter())))
            })
            .collect()
    }
}

impl ConnectionSource for EbpfSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn read(&self) -> Result<Reading, SourceError> {
        let events = self.event_counts()?;
        let corrections = self.lock_corrections();
        Ok(events
            .iter()
            .map(|(port, e)| {
                (
                    *port,
                    corrections.get(port).copied().unwrap_or_default().apply(e),
                )
            })
            .collect())
    }

    fn refresh(&self) -> Result<(), SourceError> {
        let before = self.event_counts()?;
        let snapshot = self.snapshots.read()?;
        let after = self.event_counts()?;
        let mut corrections = self.lock_corrections();
        for (port, correction) in corrections.iter_mut() {
            let (Some(b), Some(s), Some(a)) =
                (before.get(port), snapshot.get(port), after.get(port))
            else {
                continue;
            };
            if let Outcome::Reconciled { drift: true } = correction.update(b, s, a) {
                info!(port, "event counts corrected by snapshot");
            }
        }
        Ok(())
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SourceError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| SourceError::Unavailable {
            reason: format!("map {name} missing from the object"),
        })?;
    T::try_from(map).map_err(|source| SourceError::Map { map: name, source })
}

/// Proves the BTF offsets right on this kernel before trusting any count: a
/// TCP connection to a port of our own must be seen with our namespace,
/// family and protocol.
fn self_test(
    slots: &mut Array<MapData, u32>,
    records: &Array<MapData, SelfTestRecord>,
    netns_inum: u32,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: "self-test socket",
        source,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    let map_err = |source| SourceError::Map {
        map: "PORT_SLOTS",
        source,
    };
    slots
        .set(u32::from(port), SELFTEST_SLOT, 0)
        .map_err(map_err)?;
    let result = (|| {
        let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(io)?;
        let _server = listener.accept().map_err(io)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let record = records.get(&0, 0).map_err(|source| SourceError::Map {
                map: "SELFTEST",
                source,
            })?;
            if record.seen > 0 {
                return Ok(record);
            }
            if Instant::now() >= deadline {
                return Err(SourceError::Unavailable {
                    reason: format!(
                        "self-test: no event seen for a connection to local port {port}; the port offset from BTF is wrong"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })();
    slots.set(u32::from(port), 0, 0).map_err(map_err)?;
    let record = result?;
    let expected = SelfTestRecord {
        seen: record.seen,
        netns_inum,
        family: AF_INET,
        protocol: IPPROTO_TCP,
    };
    if record != expected {
        return Err(SourceError::Unavailable {
            reason: format!(
                "self-test: program read netns {} family {} protocol {} for its own TCP socket, expected netns {netns_inum} family {AF_INET} protocol {IPPROTO_TCP}",
                record.netns_inum, record.family, record.protocol
            ),
        });
    }
    info!(
        netns = netns_inum,
        "kernel program attached and self-tested"
    );
    Ok(())
}
