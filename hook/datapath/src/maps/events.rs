//! The flow events (`bpfwall_events_v1`, a ring buffer), their rate
//! limit's settings (`bpfwall_events_config_v1`) and the host-wide metrics
//! (`bpfwall_metrics_v1`, per CPU, summed here). The readers are opened by
//! map id, so the daemon reads them on a task of its own while the
//! reconciler owns the object.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use labels_policy::datapath_abi::{self as abi, EventsConfig, FlowEvent, MetricsCounters};

use crate::error::map_error;
use crate::pod::P;
use crate::{DatapathError, KernelDatapath};

/// How the datapath reports its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    /// Send events at all (counters are kept either way).
    pub enabled: bool,
    /// At most one event per key (endpoint, peer identity, direction,
    /// protocol, port, kind, reason) per this many nanoseconds; 0: all.
    pub interval_ns: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            enabled: true,
            interval_ns: 1_000_000_000,
        }
    }
}

fn open_by_id(id: u32, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    let data = MapData::from_id(id).map_err(map_error(name, "open by id"))?;
    aya::maps::Map::from_map_data(data).map_err(map_error(name, "open by id"))
}

fn map_id(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<u32, DatapathError> {
    let map = ebpf.map(name).ok_or(DatapathError::MissingMap { name })?;
    let data = match map {
        aya::maps::Map::RingBuf(d)
        | aya::maps::Map::Array(d)
        | aya::maps::Map::PerCpuArray(d)
        | aya::maps::Map::LruHashMap(d) => d,
        _ => return Err(DatapathError::MissingMap { name }),
    };
    data.info()
        .map(|i| i.id())
        .map_err(map_error(name, "read the id of"))
}

/// The ring buffer's consumer side.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// Takes every event waiting, in order; returns how many records were
    /// read (records of another size are skipped and counted).
    pub fn drain(&mut self, mut each: impl FnMut(FlowEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            if let Some(event) = FlowEvent::from_bytes(&item) {
                each(event);
            }
        }
        n
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// Reads the host-wide metrics.
pub struct MetricsReader {
    metrics: PerCpuArray<MapData, P<MetricsCounters>>,
}

impl std::fmt::Debug for MetricsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsReader").finish_non_exhaustive()
    }
}

impl MetricsReader {
    /// The counters, summed over CPUs.
    pub fn read(&self) -> Result<MetricsCounters, DatapathError> {
        let per_cpu = self
            .metrics
            .get(&0, 0)
            .map_err(map_error(abi::MAP_METRICS, "read"))?;
        let mut total = MetricsCounters::default();
        for c in per_cpu.iter() {
            total.add(&c.0);
        }
        Ok(total)
    }
}

impl KernelDatapath {
    /// Sets how the datapath reports (takes effect for the next packet).
    pub fn set_event_settings(&mut self, settings: EventSettings) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(abi::MAP_EVENTS_CONFIG)
            .ok_or(DatapathError::MissingMap {
                name: abi::MAP_EVENTS_CONFIG,
            })?;
        let mut config: Array<&mut MapData, P<EventsConfig>> =
            Array::try_from(map).map_err(map_error(abi::MAP_EVENTS_CONFIG, "open"))?;
        config
            .set(
                0,
                P(EventsConfig {
                    enabled: u32::from(settings.enabled),
                    pad: 0,
                    interval_ns: settings.interval_ns,
                }),
                0,
            )
            .map_err(map_error(abi::MAP_EVENTS_CONFIG, "write"))
    }

    /// The consumer of the event ring, for a task of its own. One consumer
    /// at a time: the ring has a single consumer position.
    pub fn open_events(&mut self) -> Result<EventReader, DatapathError> {
        let id = map_id(&mut self.ebpf, abi::MAP_EVENTS)?;
        let ring = RingBuf::try_from(open_by_id(id, abi::MAP_EVENTS)?)
            .map_err(map_error(abi::MAP_EVENTS, "open"))?;
        Ok(EventReader { ring })
    }

    /// A reader of the host-wide metrics, for other threads.
    pub fn open_metrics(&mut self) -> Result<MetricsReader, DatapathError> {
        let id = map_id(&mut self.ebpf, abi::MAP_METRICS)?;
        let metrics = PerCpuArray::try_from(open_by_id(id, abi::MAP_METRICS)?)
            .map_err(map_error(abi::MAP_METRICS, "open"))?;
        Ok(MetricsReader { metrics })
    }
}
