//! The license ledger in SQLite: packs, seats, peaks and the audit trail
//! (schema v5), for the CLI and the reclaim task ([`SqliteLedger`]) and
//! for the writer thread, which binds seats in the transaction that
//! commits the records ([`load_book`], [`persist_seat`]).

use crate::licenses::{Book, Day, Pack, PackId, Seat, SeatRow};
use crate::protocol::guid::Guid;
use crate::store::StoreError;
use crate::store::ledger::{AuditRow, Duplicate, Ledger, PEAK_KEEP_DAYS, PeakRow};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// `covers` as stored: SKU IDs separated by spaces.
pub(crate) fn covers_text(covers: &[Guid]) -> String {
    covers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `covers` from its stored text (an unreadable ID is skipped).
pub(crate) fn covers_of(text: &str) -> Vec<Guid> {
    text.split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect()
}

const PACK_COLUMNS: &str =
    "id, product, covers, quantity, enforce, agreement, starts_day, expires_day, note";

fn pack_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pack> {
    let enforce: String = r.get(4)?;
    Ok(Pack {
        id: r.get(0)?,
        product: r.get(1)?,
        covers: covers_of(&r.get::<_, String>(2)?),
        quantity: r.get(3)?,
        enforce: enforce.parse().unwrap_or_default(),
        agreement: r.get(5)?,
        starts: r.get::<_, Option<i64>>(6)?.map(Day),
        expires: r.get::<_, Option<i64>>(7)?.map(Day),
        note: r.get(8)?,
    })
}

/// The packs in force or not, without the retired ones unless `retired`.
pub(crate) fn packs(conn: &Connection, retired: bool) -> rusqlite::Result<Vec<Pack>> {
    let sql = format!(
        "SELECT {PACK_COLUMNS} FROM license_packs {} ORDER BY id",
        if retired {
            ""
        } else {
            "WHERE retired_ms IS NULL"
        }
    );
    let mut st = conn.prepare_cached(&sql)?;
    st.query_map([], pack_of)?.collect()
}

pub(crate) fn seats(conn: &Connection) -> rusqlite::Result<Vec<SeatRow>> {
    let mut st = conn.prepare_cached(
        "SELECT cmid, pack, sku, workstation, address, host, first_ms, last_ms
         FROM license_seats ORDER BY pack, first_ms",
    )?;
    st.query_map([], |r| {
        Ok(SeatRow {
            cmid: r.get(0)?,
            pack: r.get(1)?,
            sku: r.get(2)?,
            workstation: r.get(3)?,
            address: r.get(4)?,
            host: r.get(5)?,
            first_ms: r.get(6)?,
            last_ms: r.get(7)?,
        })
    })?
    .collect()
}

/// The book a batch decides with: the packs and the seats per pack, with
/// the seats of `cmids` (see [`holders`]). Nothing more is read when no
/// pack exists.
pub(crate) fn load_book(conn: &Connection, cmids: &[Guid]) -> rusqlite::Result<Book> {
    let packs = packs(conn, false)?;
    if packs.is_empty() {
        return Ok(Book::default());
    }
    let mut st = conn.prepare_cached("SELECT pack, COUNT(*) FROM license_seats GROUP BY pack")?;
    let in_use: Vec<(PackId, u32)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Book::new(packs, in_use, holders(conn, cmids)?))
}

/// The seats `cmids` hold (one primary-key lookup each).
pub(crate) fn holders(conn: &Connection, cmids: &[Guid]) -> rusqlite::Result<Vec<(Guid, PackId)>> {
    let mut st = conn.prepare_cached("SELECT pack FROM license_seats WHERE cmid = ?1")?;
    let mut out = Vec::new();
    for c in cmids {
        if let Some(p) = st.query_row([c], |r| r.get::<_, PackId>(0)).optional()? {
            out.push((*c, p));
        }
    }
    Ok(out)
}

/// The writer's book between batches, valid while no other connection
/// has committed (SQLite's `data_version` says so): a host binding seats
/// reads the packs and counts the seats once, not per batch.
#[derive(Default)]
pub(crate) struct BookCache {
    cached: Option<(i64, Book)>,
}

impl BookCache {
    /// The book for a batch asking seats for `cmids`, inside its
    /// transaction `tx`: the cached one when nothing else wrote since,
    /// else read again.
    pub(crate) fn take(
        &mut self,
        tx: &Connection,
        cmids: &[Guid],
    ) -> rusqlite::Result<(i64, Book)> {
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        match self.cached.take() {
            Some((v, mut book)) if v == version => {
                if !book.is_empty() {
                    book.set_holders(holders(tx, cmids)?);
                }
                Ok((version, book))
            }
            _ => Ok((version, load_book(tx, cmids)?)),
        }
    }

    /// Keeps `book` once its batch committed (a failed batch keeps none).
    pub(crate) fn keep(&mut self, version: i64, book: Book) {
        self.cached = Some((version, book));
    }
}

/// Writes what a request's seat came to: a seat taken is inserted, a
/// renewal refreshes it (the peaks are raised once per batch:
/// [`raise_peaks`]).
pub(crate) fn persist_seat(conn: &Connection, seat: Seat, s: &SeatRow) -> rusqlite::Result<()> {
    match seat {
        Seat::Taken(p) | Seat::Over(p) => {
            conn.prepare_cached(
                "INSERT INTO license_seats
                     (cmid, pack, sku, workstation, address, host, first_ms, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT(cmid) DO UPDATE SET pack = excluded.pack, last_ms = excluded.last_ms",
            )?
            .execute(params![
                s.cmid,
                p,
                s.sku,
                s.workstation,
                s.address,
                s.host,
                s.last_ms
            ])?;
        }
        Seat::Renewed(_) => {
            conn.prepare_cached(
                "UPDATE license_seats SET last_ms = ?2, workstation = ?3, address = ?4, host = ?5
                 WHERE cmid = ?1",
            )?
            .execute(params![s.cmid, s.last_ms, s.workstation, s.address, s.host])?;
        }
        Seat::None | Seat::Refused(_) => {}
    }
    Ok(())
}

/// Raises the day's peak of each pack a seat was taken in (`seats`: a
/// batch's), to the seats it holds now.
pub(crate) fn raise_peaks(
    conn: &Connection,
    book: &Book,
    day: Day,
    seats: &[Seat],
) -> rusqlite::Result<()> {
    for (pack, owned) in crate::licenses::taken_in(book, day, seats) {
        raise_peak(conn, day, pack, owned, book.in_use(pack))?;
    }
    Ok(())
}

fn raise_peak(
    conn: &Connection,
    day: Day,
    pack: PackId,
    quantity: u32,
    in_use: u32,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO license_peaks (day, pack, quantity, peak) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(day, pack) DO UPDATE SET
             peak = MAX(peak, excluded.peak), quantity = excluded.quantity",
    )?
    .execute(params![day.0, pack, quantity, in_use])?;
    Ok(())
}

/// A ledger transaction on the SQLite store, holding the write lock
/// (`BEGIN IMMEDIATE`) from the start.
pub struct SqliteLedger {
    conn: Connection,
}

impl SqliteLedger {
    /// Opens the store at `path` (creating and migrating it if needed) and
    /// begins.
    pub fn begin(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::unavailable(
                    dir.display().to_string(),
                    format!("cannot create the data dir: {e}"),
                )
            })?;
        }
        let conn = super::schema::open_rw(path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Self { conn })
    }

    /// Opens the store at `path` read-only and begins (one snapshot).
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let conn = super::schema::open_ro(path)?;
        conn.execute_batch("BEGIN")?;
        Ok(Self { conn })
    }
}

impl Ledger for SqliteLedger {
    async fn packs(&mut self, retired: bool) -> Result<Vec<Pack>, StoreError> {
        Ok(packs(&self.conn, retired)?)
    }

    async fn seats(&mut self) -> Result<Vec<SeatRow>, StoreError> {
        Ok(seats(&self.conn)?)
    }

    async fn seat_counts(&mut self, stale_ms: i64) -> Result<Vec<(PackId, u32, u32)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT pack, COUNT(*), COALESCE(SUM(last_ms < ?1), 0) FROM license_seats GROUP BY pack",
        )?;
        let rows = st
            .query_map([stale_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    async fn insert_pack(&mut self, p: &Pack, now_ms: i64) -> Result<PackId, StoreError> {
        self.conn.execute(
            "INSERT INTO license_packs (product, covers, quantity, enforce, agreement,
                 starts_day, expires_day, note, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                p.product,
                covers_text(&p.covers),
                p.quantity,
                p.enforce.name(),
                p.agreement,
                p.starts.map(|d| d.0),
                p.expires.map(|d| d.0),
                p.note,
                now_ms
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    async fn update_pack(&mut self, p: &Pack) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE license_packs SET product = ?2, covers = ?3, quantity = ?4, enforce = ?5,
                 agreement = ?6, starts_day = ?7, expires_day = ?8, note = ?9
             WHERE id = ?1",
            params![
                p.id,
                p.product,
                covers_text(&p.covers),
                p.quantity,
                p.enforce.name(),
                p.agreement,
                p.starts.map(|d| d.0),
                p.expires.map(|d| d.0),
                p.note
            ],
        )?;
        Ok(())
    }

    async fn retire_pack(&mut self, id: PackId, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE license_packs SET retired_ms = ?2 WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(())
    }

    async fn delete_seats(&mut self, cmids: &[Guid]) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM license_seats WHERE cmid = ?1")?;
        for c in cmids {
            n += st.execute([c])? as u64;
        }
        Ok(n)
    }

    async fn move_seats(&mut self, moves: &[(Guid, PackId)]) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached("UPDATE license_seats SET pack = ?2 WHERE cmid = ?1")?;
        for (c, p) in moves {
            st.execute(params![c, p])?;
        }
        Ok(())
    }

    async fn audit(&mut self, a: &AuditRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO license_audit (time_ms, actor, action, pack, detail)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![a.time_ms, a.actor, a.action, a.pack, a.detail],
        )?;
        Ok(())
    }

    async fn audit_rows(&mut self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT time_ms, actor, action, pack, detail FROM license_audit
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st
            .query_map([limit], |r| {
                Ok(AuditRow {
                    time_ms: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    pack: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    async fn note_peaks(
        &mut self,
        day: Day,
        usage: &[(PackId, u32, u32)],
    ) -> Result<(), StoreError> {
        for &(pack, quantity, in_use) in usage {
            raise_peak(&self.conn, day, pack, quantity, in_use)?;
        }
        self.conn.execute(
            "DELETE FROM license_peaks WHERE day < ?1",
            [day.0 - PEAK_KEEP_DAYS],
        )?;
        Ok(())
    }

    async fn peaks(&mut self, since: Day) -> Result<Vec<PeakRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT k.day, k.pack, p.product, k.quantity, k.peak
             FROM license_peaks k JOIN license_packs p ON p.id = k.pack
             WHERE k.day >= ?1 ORDER BY k.day, k.pack",
        )?;
        let rows = st
            .query_map([since.0], |r| {
                Ok(PeakRow {
                    day: Day(r.get(0)?),
                    pack: r.get(1)?,
                    product: r.get(2)?,
                    quantity: r.get(3)?,
                    peak: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    async fn duplicates(&mut self) -> Result<Vec<Duplicate>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT cmid, workstation, address, MAX(time_ms) FROM activations
             WHERE cmid IN (SELECT cmid FROM activations GROUP BY cmid
                            HAVING COUNT(DISTINCT workstation) > 1)
             GROUP BY cmid, workstation ORDER BY cmid, MAX(time_ms) DESC",
        )?;
        let rows: Vec<(Guid, String, String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(crate::licenses::group_duplicates(rows))
    }

    async fn in_use(&mut self, since_ms: i64) -> Result<Vec<(Guid, u32)>, StoreError> {
        // The inventory, and the log's tail not folded into it yet.
        let mut st = self.conn.prepare(
            "SELECT sku_id, COUNT(DISTINCT cmid) FROM (
                 SELECT cmid, sku_id FROM clients WHERE last_seen_ms >= ?1 AND last_hresult = 0
                 UNION
                 SELECT cmid, sku_id FROM activations
                 WHERE id > (SELECT upto FROM folded WHERE id = 1)
                   AND time_ms >= ?1 AND hresult = 0)
             GROUP BY sku_id",
        )?;
        let rows = st
            .query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }
}
