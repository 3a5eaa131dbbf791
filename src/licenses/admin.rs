//! What `kmsd licenses` and the reclaim task do to the ledger: each
//! operation is one transaction holding the ledger's lock, checks its
//! input against what is stored, changes nothing when it refuses, and
//! leaves an audit row.

use super::{Ageing, Day, Pack, PackId, Reclaim, SeatRow, Usage, covering, plan_reclaim, usage};
use crate::protocol::guid::Guid;
use crate::store::StoreError;
use crate::store::ledger::{AuditRow, Ledger};

/// Why an operation was refused, or the store's error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refused<T>(why: impl Into<String>) -> Result<T, AdminError> {
    Err(AdminError::Refused(why.into()))
}

/// Who makes a change and when.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub now_ms: i64,
}

impl Actor {
    fn row(&self, action: &str, pack: Option<PackId>, detail: String) -> AuditRow {
        AuditRow {
            time_ms: self.now_ms,
            actor: self.name.clone(),
            action: action.to_owned(),
            pack,
            detail,
        }
    }
}

fn describe(p: &Pack) -> String {
    format!(
        "{} x {}{}, enforce {}{}",
        p.quantity,
        p.product_name(),
        if p.covers.is_empty() {
            String::new()
        } else {
            format!(
                " (covers {})",
                p.covers
                    .iter()
                    .map(super::sku_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        p.enforce,
        p.expires
            .map(|d| format!(", expires {d}"))
            .unwrap_or_default()
    )
}

/// Records new packs (one transaction: all or none) and returns their ids.
pub async fn add(
    l: &mut impl Ledger,
    packs: &[Pack],
    who: &Actor,
) -> Result<Vec<PackId>, AdminError> {
    let mut ids = Vec::new();
    for p in packs {
        check(p)?;
        let id = l.insert_pack(p, who.now_ms).await?;
        l.audit(&who.row("add", Some(id), describe(p))).await?;
        ids.push(id);
    }
    Ok(ids)
}

fn check(p: &Pack) -> Result<(), AdminError> {
    if let (Some(s), Some(e)) = (p.starts, p.expires)
        && e < s
    {
        return refused(format!("the pack expires ({e}) before it starts ({s})"));
    }
    if p.covers.contains(&p.product) {
        return refused("a pack covers its own product already: leave it out of --covers");
    }
    Ok(())
}

async fn pack(l: &mut impl Ledger, id: PackId) -> Result<(Pack, Vec<SeatRow>), AdminError> {
    let Some(p) = l.packs(false).await?.into_iter().find(|p| p.id == id) else {
        return refused(format!(
            "no pack {id} (or it is retired): `kmsd licenses` lists them"
        ));
    };
    let seats = l
        .seats()
        .await?
        .into_iter()
        .filter(|s| s.pack == id)
        .collect();
    Ok((p, seats))
}

/// Replaces pack `id`'s terms by `changed(old)`; a quantity below the
/// seats in use is refused unless `force` (the excess shows as over).
pub async fn set(
    l: &mut impl Ledger,
    id: PackId,
    changed: impl FnOnce(Pack) -> Pack,
    force: bool,
    who: &Actor,
) -> Result<Pack, AdminError> {
    let (old, seats) = pack(l, id).await?;
    let new = changed(old.clone());
    check(&new)?;
    if (new.quantity as usize) < seats.len() && !force {
        return refused(format!(
            "pack {id} has {} seats in use, more than the quantity {}: release seats first, \
             or give --force (the excess then shows as over)",
            seats.len(),
            new.quantity
        ));
    }
    l.update_pack(&new).await?;
    l.audit(&who.row(
        "set",
        Some(id),
        format!("{} -> {}", describe(&old), describe(&new)),
    ))
    .await?;
    Ok(new)
}

/// Retires pack `id`. With seats in use it is refused unless `force`,
/// which moves them to covering packs (over if none has room) or frees
/// them when none covers their product.
pub async fn retire(
    l: &mut impl Ledger,
    id: PackId,
    force: bool,
    who: &Actor,
) -> Result<(usize, usize), AdminError> {
    let (p, mine) = pack(l, id).await?;
    if !mine.is_empty() && !force {
        return refused(format!(
            "pack {id} has {} seats in use: give --force to move them to other packs \
             (or free them where no pack covers their product)",
            mine.len()
        ));
    }
    let packs = l.packs(false).await?;
    let seats = l.seats().await?;
    let day = Day::of_ms(who.now_ms);
    let (moved, released) = super::plan_retire(&packs, id, &seats, day);
    l.move_seats(&moved).await?;
    l.delete_seats(&released).await?;
    l.retire_pack(id, who.now_ms).await?;
    let detail = format!(
        "{}; {} seats moved, {} freed",
        describe(&p),
        moved.len(),
        released.len()
    );
    l.audit(&who.row("retire", Some(id), detail)).await?;
    Ok((moved.len(), released.len()))
}

/// Frees machine `cmid`'s seat.
pub async fn release(
    l: &mut impl Ledger,
    cmid: Guid,
    reason: &str,
    who: &Actor,
) -> Result<PackId, AdminError> {
    let Some(seat) = l.seats().await?.into_iter().find(|s| s.cmid == cmid) else {
        return refused(format!(
            "machine {cmid} holds no seat: `kmsd licenses seats` lists them"
        ));
    };
    l.delete_seats(&[cmid]).await?;
    let detail = format!("{cmid} ({}): {reason}", seat.workstation);
    l.audit(&who.row("release", Some(seat.pack), detail))
        .await?;
    Ok(seat.pack)
}

/// The reclaim pass at `who.now_ms`: frees the seats nobody renewed,
/// moves the seats of expired packs where there is room, and keeps each
/// pack's peak for the day.
pub async fn reclaim(
    l: &mut impl Ledger,
    ageing: Ageing,
    who: &Actor,
) -> Result<Reclaim, AdminError> {
    let packs = l.packs(false).await?;
    let seats = l.seats().await?;
    let day = Day::of_ms(who.now_ms);
    let plan = plan_reclaim(&packs, &seats, day, ageing);
    l.delete_seats(&plan.released).await?;
    l.move_seats(&plan.moved).await?;
    if !plan.released.is_empty() || !plan.moved.is_empty() {
        let detail = format!(
            "{} seats not renewed since {} freed, {} seats of expired packs moved",
            plan.released.len(),
            super::format_day(Day::of_ms(ageing.reclaim_ms)),
            plan.moved.len()
        );
        l.audit(&who.row("reclaim", None, detail)).await?;
    }
    let counts = l.seat_counts(ageing.stale_ms).await?;
    let peaks: Vec<(PackId, u32, u32)> = usage(&packs, &counts, day)
        .iter()
        .map(|u| (u.pack.id, u.owned, u.in_use))
        .collect();
    l.note_peaks(day, &peaks).await?;
    Ok(plan)
}

/// Packs with their usage, and the products in use that no pack covers.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub packs: Vec<Usage>,
    /// `(sku, machines answered within the reclaim age)`.
    pub uncovered: Vec<(Guid, u32)>,
}

/// The report at `now_ms`. The uncovered products are looked for when
/// `uncovered` says so, or some pack exists (a host with no packs does not
/// scan its inventory every refresh).
pub async fn report(
    l: &mut impl Ledger,
    ageing: Ageing,
    now_ms: i64,
    uncovered: bool,
) -> Result<Report, AdminError> {
    let packs = l.packs(false).await?;
    let counts = l.seat_counts(ageing.stale_ms).await?;
    let day = Day::of_ms(now_ms);
    let in_use = match uncovered || !packs.is_empty() {
        true => l.in_use(ageing.reclaim_ms).await?,
        false => Vec::new(),
    };
    let mut uncovered: Vec<(Guid, u32)> = in_use
        .into_iter()
        .filter(|(sku, _)| covering(&packs, sku, day).is_empty())
        .collect();
    uncovered.sort_by_key(|(sku, _)| super::sku_name(sku));
    Ok(Report {
        packs: usage(&packs, &counts, day),
        uncovered,
    })
}
