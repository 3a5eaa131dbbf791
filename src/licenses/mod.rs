//! License packs and seats: what the operator owns and which machine
//! holds which seat. Pure, like the counting core: packs, the seats in
//! use and a day go in; which pack a machine takes a seat in (or that it
//! is refused), what to reclaim and what to move come out. Each backend
//! loads the rows into a [`Book`] inside the transaction that counts and
//! persists what it decided.
//!
//! The rules:
//! - a machine takes a seat when the host's answer activates it (its count
//!   reaches the request's threshold); below the threshold it takes none;
//! - a machine holding a seat always renews, and its seat is refreshed;
//! - the pack for the machine's own product is preferred over one that
//!   only covers it; among equals, the one that expires first;
//! - when no covering pack has a free seat, a `warn` or `off` pack takes
//!   it over its quantity; when every covering pack is `hard`, the machine
//!   is refused (0xC004F042) and not counted;
//! - a product no valid pack covers is never refused.

pub mod admin;
pub mod commands;
mod day;
pub mod view;
pub mod watch;

pub use day::{Day, format_day, parse_day};

use crate::protocol::guid::Guid;
use crate::protocol::kms::products;
use std::collections::HashMap;

/// A pack's id (small integers, given by the store).
pub type PackId = i64;

/// Seats are reclaimed after this long without an answered request (the
/// activation validity of a KMS client: 180 days).
pub const DEFAULT_RECLAIM_DAYS: u32 = 180;

/// A seat shows as stale after this many missed renewals.
pub const STALE_RENEWALS: i64 = 3;

/// What a pack does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub enum Enforce {
    /// Accounting only.
    Off,
    /// Answer, and report the overage (the default).
    #[default]
    Warn,
    /// Refuse a new machine that would need a seat when none is free.
    Hard,
}

impl Enforce {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Hard => "hard",
        }
    }
}

impl std::str::FromStr for Enforce {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "warn" => Ok(Self::Warn),
            "hard" => Ok(Self::Hard),
            _ => Err(format!("enforcement {s:?}: expected off, warn or hard")),
        }
    }
}

impl std::fmt::Display for Enforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A license pack as the operator recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub id: PackId,
    /// The SKU the pack is for.
    pub product: Guid,
    /// Other SKUs it covers (down-edition rights).
    pub covers: Vec<Guid>,
    pub quantity: u32,
    pub enforce: Enforce,
    /// Agreement or order number.
    pub agreement: String,
    /// First day the pack is valid (None: since always).
    pub starts: Option<Day>,
    /// Last day the pack is valid (None: no end).
    pub expires: Option<Day>,
    pub note: String,
}

impl Pack {
    /// Whether a machine of `sku` may hold a seat here.
    pub fn covers(&self, sku: &Guid) -> bool {
        self.product == *sku || self.covers.contains(sku)
    }

    /// Whether the pack is in force on `day`.
    pub fn valid_on(&self, day: Day) -> bool {
        self.starts.is_none_or(|s| s <= day) && self.expires.is_none_or(|e| day <= e)
    }

    /// Seats owned on `day` (none once expired).
    pub fn owned_on(&self, day: Day) -> u32 {
        if self.valid_on(day) { self.quantity } else { 0 }
    }

    /// The product's catalog name.
    pub fn product_name(&self) -> String {
        sku_name(&self.product)
    }
}

/// A SKU's catalog name (its ID when the catalog does not know it).
pub fn sku_name(sku: &Guid) -> String {
    products::sku(sku).map_or_else(|| sku.to_string(), |s| s.name.to_owned())
}

/// The packs valid on `day` that cover `sku`, in the order a seat is
/// looked for: the pack for the product itself first, then the one that
/// expires first (no expiry last), then the oldest.
pub fn covering<'a>(packs: &'a [Pack], sku: &Guid, day: Day) -> Vec<&'a Pack> {
    let mut c: Vec<&Pack> = packs
        .iter()
        .filter(|p| p.valid_on(day) && p.covers(sku))
        .collect();
    c.sort_by_key(|p| (p.product != *sku, p.expires.map_or(i64::MAX, |d| d.0), p.id));
    c
}

/// What a request's seat came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seat {
    /// No seat: no valid pack covers the product, or the answer does not
    /// activate the machine.
    #[default]
    None,
    /// The machine already held a seat here; refreshed.
    Renewed(PackId),
    /// A free seat taken.
    Taken(PackId),
    /// A seat taken beyond the pack's quantity (warn or off).
    Over(PackId),
    /// No free seat and every covering pack is hard: refused, not counted.
    Refused(PackId),
}

impl Seat {
    /// The pack the machine holds a seat in after this request.
    pub fn pack(self) -> Option<PackId> {
        match self {
            Self::Renewed(p) | Self::Taken(p) | Self::Over(p) => Some(p),
            Self::None | Self::Refused(_) => None,
        }
    }
}

/// The seats a transaction decides with: the packs, how many seats each
/// holds, and which pack the machines at hand hold a seat in.
#[derive(Debug, Clone, Default)]
pub struct Book {
    packs: Vec<Pack>,
    in_use: HashMap<PackId, u32>,
    holders: HashMap<Guid, PackId>,
}

impl Book {
    /// `in_use`: seats per pack; `holders`: the seat of each machine the
    /// batch asks for (machines without one left out).
    pub fn new(
        packs: Vec<Pack>,
        in_use: impl IntoIterator<Item = (PackId, u32)>,
        holders: impl IntoIterator<Item = (Guid, PackId)>,
    ) -> Self {
        Self {
            packs,
            in_use: in_use.into_iter().collect(),
            holders: holders.into_iter().collect(),
        }
    }

    pub fn packs(&self) -> &[Pack] {
        &self.packs
    }

    /// No pack at all: nothing to decide.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// Replaces the machines whose seats are known with `holders` (a
    /// book kept across batches learns the seats of each batch's machines
    /// from the store; the counts per pack stay the book's own).
    pub fn set_holders(&mut self, holders: impl IntoIterator<Item = (Guid, PackId)>) {
        self.holders.clear();
        self.holders.extend(holders);
    }

    /// Seats held in `pack`.
    pub fn in_use(&self, pack: PackId) -> u32 {
        self.in_use.get(&pack).copied().unwrap_or(0)
    }

    /// The seat of machine `cmid` (product `sku`) on `day`, when its answer
    /// `activates` it or not; a seat taken is held in the book from now on.
    pub fn decide(&mut self, sku: &Guid, cmid: Guid, activates: bool, day: Day) -> Seat {
        if let Some(&p) = self.holders.get(&cmid) {
            return Seat::Renewed(p);
        }
        if !activates {
            return Seat::None;
        }
        let candidates = covering(&self.packs, sku, day);
        let Some(first) = candidates.first() else {
            return Seat::None;
        };
        let seat = match candidates
            .iter()
            .find(|p| self.in_use(p.id) < p.owned_on(day))
        {
            Some(p) => Seat::Taken(p.id),
            None => match candidates.iter().find(|p| p.enforce != Enforce::Hard) {
                Some(p) => Seat::Over(p.id),
                None => return Seat::Refused(first.id),
            },
        };
        if let Some(p) = seat.pack() {
            *self.in_use.entry(p).or_insert(0) += 1;
            self.holders.insert(cmid, p);
        }
        seat
    }
}

/// The packs `seats` took seats in, once each, with what each owns on
/// `day` (whose peaks a batch raises).
pub fn taken_in(book: &Book, day: Day, seats: &[Seat]) -> Vec<(PackId, u32)> {
    let mut out: Vec<(PackId, u32)> = Vec::new();
    for s in seats {
        if let Seat::Taken(p) | Seat::Over(p) = *s
            && !out.iter().any(|(q, _)| *q == p)
        {
            let owned = book
                .packs()
                .iter()
                .find(|x| x.id == p)
                .map_or(0, |x| x.owned_on(day));
            out.push((p, owned));
        }
    }
    out
}

/// One seat as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatRow {
    pub cmid: Guid,
    pub pack: PackId,
    /// The machine's product.
    pub sku: Guid,
    pub workstation: String,
    pub address: String,
    /// The host that last answered it.
    pub host: String,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// When a seat is stale and when it is reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ageing {
    /// Seats last answered before this are stale.
    pub stale_ms: i64,
    /// Seats last answered before this are reclaimed.
    pub reclaim_ms: i64,
}

impl Ageing {
    /// At `now_ms`, with the host's renewal interval and the reclaim age.
    pub fn at(now_ms: i64, renewal_interval_min: u32, reclaim_days: u32) -> Self {
        Self {
            stale_ms: now_ms - STALE_RENEWALS * i64::from(renewal_interval_min) * 60_000,
            reclaim_ms: now_ms - i64::from(reclaim_days) * 86_400_000,
        }
    }

    pub fn is_stale(&self, last_ms: i64) -> bool {
        last_ms < self.stale_ms
    }
}

/// How full a pack is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub pack: Pack,
    /// Seats owned today (0 once expired or before it starts).
    pub owned: u32,
    pub in_use: u32,
    pub free: u32,
    pub stale: u32,
    pub over: u32,
}

/// Seats per pack: `(pack, in use, stale)`, as the store counts them.
pub type SeatCounts = [(PackId, u32, u32)];

/// Each pack's usage on `day`, from the seats each holds.
pub fn usage(packs: &[Pack], counts: &SeatCounts, day: Day) -> Vec<Usage> {
    packs
        .iter()
        .map(|p| {
            let (in_use, stale) = counts
                .iter()
                .find(|(id, _, _)| *id == p.id)
                .map_or((0, 0), |&(_, n, s)| (n, s));
            let owned = p.owned_on(day);
            Usage {
                pack: p.clone(),
                owned,
                in_use,
                free: owned.saturating_sub(in_use),
                stale,
                over: in_use.saturating_sub(owned),
            }
        })
        .collect()
}

/// What a reclaim pass does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaim {
    /// Seats whose machine was not answered for the reclaim age.
    pub released: Vec<Guid>,
    /// Seats of packs no longer valid, moved to a covering pack with room.
    pub moved: Vec<(Guid, PackId)>,
}

/// The reclaim pass at `day`: release the seats older than the reclaim
/// age, then move the seats of packs not valid today (expired, or listed
/// in `leaving`) into valid covering packs while they have room. What
/// cannot move stays where it is, over.
pub fn plan_reclaim(packs: &[Pack], seats: &[SeatRow], day: Day, ageing: Ageing) -> Reclaim {
    let mut out = Reclaim::default();
    let mut in_use: HashMap<PackId, u32> = HashMap::new();
    let mut keep = Vec::new();
    for s in seats {
        if s.last_ms < ageing.reclaim_ms {
            out.released.push(s.cmid);
        } else {
            *in_use.entry(s.pack).or_insert(0) += 1;
            keep.push(s);
        }
    }
    let valid = |id: PackId| packs.iter().any(|p| p.id == id && p.valid_on(day));
    // Oldest seats first, so the machines that came first keep licences.
    keep.sort_by_key(|s| (s.first_ms, s.cmid));
    for s in keep.into_iter().filter(|s| !valid(s.pack)) {
        let room = covering(packs, &s.sku, day)
            .into_iter()
            .find(|p| in_use.get(&p.id).copied().unwrap_or(0) < p.owned_on(day));
        if let Some(p) = room {
            *in_use.entry(p.id).or_insert(0) += 1;
            if let Some(n) = in_use.get_mut(&s.pack) {
                *n = n.saturating_sub(1);
            }
            out.moved.push((s.cmid, p.id));
        }
    }
    out
}

/// Where the seats of a pack being retired go: to a valid covering pack
/// with room, else over in the first valid covering pack, else released
/// (the product is then in use without a recorded licence).
pub fn plan_retire(
    packs: &[Pack],
    retiring: PackId,
    seats: &[SeatRow],
    day: Day,
) -> (Vec<(Guid, PackId)>, Vec<Guid>) {
    let others: Vec<Pack> = packs.iter().filter(|p| p.id != retiring).cloned().collect();
    let mut in_use: HashMap<PackId, u32> = HashMap::new();
    for s in seats.iter().filter(|s| s.pack != retiring) {
        *in_use.entry(s.pack).or_insert(0) += 1;
    }
    let (mut moved, mut released) = (Vec::new(), Vec::new());
    let mut mine: Vec<&SeatRow> = seats.iter().filter(|s| s.pack == retiring).collect();
    mine.sort_by_key(|s| (s.first_ms, s.cmid));
    for s in mine {
        let c = covering(&others, &s.sku, day);
        let to = c
            .iter()
            .find(|p| in_use.get(&p.id).copied().unwrap_or(0) < p.owned_on(day))
            .or(c.first());
        match to {
            Some(p) => {
                *in_use.entry(p.id).or_insert(0) += 1;
                moved.push((s.cmid, p.id));
            }
            None => released.push(s.cmid),
        }
    }
    (moved, released)
}

/// The SKUs some pack valid on `day` covers: the hot path asks for a seat
/// only for these (a host with no packs pays nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    skus: std::collections::HashSet<Guid>,
}

impl Coverage {
    pub fn of(packs: &[Pack], day: Day) -> Self {
        let mut skus = std::collections::HashSet::new();
        for p in packs.iter().filter(|p| p.valid_on(day)) {
            skus.insert(p.product);
            skus.extend(p.covers.iter().copied());
        }
        Self { skus }
    }

    /// Whether some valid pack covers `sku` (without packs: no hashing).
    pub fn covers(&self, sku: &Guid) -> bool {
        !self.skus.is_empty() && self.skus.contains(sku)
    }
}

/// A CMID seen under several workstation names: an image cloned without
/// `sysprep /generalize`. Those machines count as one and hold one seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub cmid: Guid,
    /// `(workstation, address, last seen ms)`, newest first.
    pub machines: Vec<(String, String, i64)>,
}

/// What to do about a [`Duplicate`].
pub const DUPLICATE_FIX: &str = "these machines share one client machine ID (an image cloned \
     without sysprep /generalize): run `slmgr /rearm` on each and reboot, \
     or re-image from a generalized image";

/// Groups `(cmid, workstation, address, last ms)` rows (sorted by CMID)
/// into the CMIDs seen under more than one name.
pub fn group_duplicates(rows: Vec<(Guid, String, String, i64)>) -> Vec<Duplicate> {
    let mut out: Vec<Duplicate> = Vec::new();
    for (cmid, name, address, last) in rows {
        match out.last_mut() {
            Some(d) if d.cmid == cmid => d.machines.push((name, address, last)),
            _ => out.push(Duplicate {
                cmid,
                machines: vec![(name, address, last)],
            }),
        }
    }
    out.retain(|d| d.machines.len() > 1);
    for d in &mut out {
        d.machines.sort_by_key(|m| std::cmp::Reverse(m.2));
    }
    out
}

#[cfg(test)]
mod tests;
