//! The memory store (`--store memory`): counts exactly as the others do,
//! through the same counting core, and keeps the inventory, the recent
//! activation log (up to `keep_records`), the totals, the notes and the
//! ePIDs in the process. Nothing touches the disk; everything is gone at
//! exit. For CI pipelines, throwaway lab hosts and read-only containers.
//!
//! There is no I/O to wait for, so a request is counted inline on the
//! worker that handles it: a pool's shard lock, then one short lock on the
//! rest of the state.

use super::pools::Pools;
use super::{
    Client, ClientQuery, CountRequest, Counted, HostNotes, LoadedPool, Note, OpenOptions,
    PoolStatus, Record, StoreStatus, StoredActivation, Total,
};
use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// How the memory store is named in logs, reports and errors.
pub const LOCATION: &str = "memory (nothing on disk; forgotten at exit)";

/// Log records kept at the most, whatever `keep_records` says (a memory
/// store's log is for the status page, not an archive).
const MAX_LOG: usize = 100_000;

/// Everything but the pools.
#[derive(Default)]
struct State {
    epids: BTreeMap<String, String>,
    notes: HashMap<Note, String>,
    clients: HashMap<(Guid, Guid), Client>,
    log: VecDeque<StoredActivation>,
    next_id: i64,
    totals: BTreeMap<(u32, u32), u64>,
}

struct Shared {
    pools: Pools,
    state: Mutex<State>,
    keep: usize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The memory store of a running host.
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    pub fn open(cfg: &crate::config::ServeConfig, _opts: &OpenOptions) -> Self {
        tracing::warn!(
            "store = memory: counts, inventory and ePIDs live in this process only; \
             nothing is written to disk and everything is forgotten at exit"
        );
        let keep = usize::try_from(cfg.keep_records)
            .unwrap_or(usize::MAX)
            .min(MAX_LOG);
        Self {
            shared: Arc::new(Shared {
                pools: Pools::new(cfg.count_mode),
                state: Mutex::new(State::default()),
                keep,
            }),
        }
    }

    pub fn pools(&self) -> &Pools {
        &self.shared.pools
    }

    /// The ePID for `group` (see [`super::Store::epid`]).
    pub fn epid(&self, group: &str, candidate: String, configured: bool, _now_ms: i64) -> String {
        let mut st = self.shared.state();
        if configured {
            st.epids.insert(group.to_owned(), candidate.clone());
            return candidate;
        }
        st.epids
            .entry(group.to_owned())
            .or_insert(candidate)
            .clone()
    }

    /// Counts `act` (inline: nothing to wait for).
    pub fn count(&self, act: CountRequest) -> Counted {
        // A memory store keeps no packs: nothing asks it for a seat.
        let CountRequest {
            pool, mut record, ..
        } = act;
        let t = self
            .shared
            .pools
            .observe(pool, record.cmid, record.time_ms, record.n_policy);
        record.count = t.count;
        record.capacity = t.capacity;
        record.counted_in = (t.capacity > 0).then_some(pool);
        self.record(record);
        Counted {
            count: t.count,
            capacity: t.capacity,
            ..Counted::default()
        }
    }

    /// Keeps a request's record: the inventory row, the log, the totals.
    pub fn record(&self, r: Record) {
        let mut st = self.shared.state();
        st.remember(r, self.shared.keep);
    }

    pub fn note(&self, notes: Vec<(Note, String)>) {
        let mut st = self.shared.state();
        st.notes.extend(notes);
    }

    pub fn reader(&self) -> MemoryReader {
        MemoryReader {
            shared: self.shared.clone(),
        }
    }
}

impl State {
    fn remember(&mut self, r: Record, keep: usize) {
        *self
            .totals
            .entry((r.hresult.0, r.license_status))
            .or_default() += 1;
        let client = self
            .clients
            .entry((r.cmid, r.app_id))
            .or_insert_with(|| Client {
                cmid: r.cmid,
                app_id: r.app_id,
                workstation: String::new(),
                sku_id: r.sku_id,
                address: String::new(),
                first_seen_ms: r.time_ms,
                last_seen_ms: r.time_ms,
                requests: 0,
                last_result: r.hresult,
                last_count: r.count,
                live: false,
            });
        client.last_seen_ms = client.last_seen_ms.max(r.time_ms);
        client.requests += 1;
        client.sku_id = r.sku_id;
        client.last_result = r.hresult;
        client.last_count = r.count;
        client.workstation.clone_from(&r.workstation);
        client.address.clone_from(&r.address);
        if keep == 0 {
            return;
        }
        self.next_id += 1;
        if self.log.len() >= keep {
            self.log.pop_front();
        }
        self.log.push_back(StoredActivation {
            id: self.next_id,
            time_ms: r.time_ms,
            address: r.address,
            workstation: r.workstation,
            cmid: r.cmid,
            app_id: r.app_id,
            sku_id: r.sku_id,
            kms_id: r.kms_id,
            n_policy: r.n_policy,
            license_status: r.license_status,
            vm: r.vm,
            protocol: r.protocol,
            count: r.count,
            result: r.hresult,
        });
    }
}

/// The reads of a running memory store (its status page and admin API).
#[derive(Clone)]
pub struct MemoryReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryReader")
    }
}

impl MemoryReader {
    pub fn pools(&self, now_ms: i64) -> Vec<LoadedPool> {
        let status = self.shared.pools.status(now_ms);
        Pool::ALL
            .iter()
            .map(|&pool| LoadedPool {
                pool,
                capacity: status
                    .iter()
                    .find(|s| s.pool == pool)
                    .map_or(0, |s| s.capacity),
                entries: self.shared.pools.entries(pool),
            })
            .collect()
    }

    pub fn status(&self, now_ms: i64) -> StoreStatus {
        let pools: Vec<PoolStatus> = self.shared.pools.status(now_ms);
        let st = self.shared.state();
        StoreStatus {
            location: LOCATION.to_owned(),
            schema_version: 0,
            now_ms,
            notes: HostNotes::parse(st.notes.iter().map(|(n, v)| (*n, v.clone()))),
            hosts: Vec::new(),
            imports: Vec::new(),
            pools,
            epids: st
                .epids
                .iter()
                .map(|(g, e)| (g.clone(), e.clone()))
                .collect(),
            totals: st
                .totals
                .iter()
                .map(|(&(hr, ls), &n)| Total {
                    hresult: Hresult(hr),
                    license_status: ls,
                    requests: n,
                })
                .collect(),
            inventory: st.clients.len() as u64,
            records_kept: st.log.len() as u64,
        }
    }

    pub fn clients(&self, q: &ClientQuery) -> Vec<Client> {
        let live = self.pools(q.now_ms);
        let st = self.shared.state();
        let app = q.pool.map(Pool::app_id);
        let since = q.since_ms.unwrap_or(i64::MIN);
        let mut rows: Vec<Client> = st
            .clients
            .values()
            .filter(|c| c.last_seen_ms >= since && app.is_none_or(|a| a == c.app_id))
            .cloned()
            .collect();
        drop(st);
        rows.sort_by_key(|c| std::cmp::Reverse(c.last_seen_ms));
        rows.truncate(q.limit);
        for c in &mut rows {
            let pool = Pool::from_app_id(&c.app_id);
            c.live = live
                .iter()
                .any(|lp| Some(lp.pool) == pool && lp.entries.iter().any(|(g, _)| *g == c.cmid));
        }
        rows
    }

    pub fn notes(&self) -> Vec<(Note, String)> {
        let st = self.shared.state();
        st.notes.iter().map(|(n, v)| (*n, v.clone())).collect()
    }

    pub fn recent(&self, limit: usize) -> Vec<StoredActivation> {
        let st = self.shared.state();
        st.log.iter().rev().take(limit).cloned().collect()
    }
}
