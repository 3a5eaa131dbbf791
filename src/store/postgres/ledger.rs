//! The license ledger in a fleet's PostgreSQL (schema v3): packs, seats,
//! peaks and the audit trail. Every writer, the batcher binding seats
//! included, first moves the one row of `license_lock` on: hosts take
//! turns on it, and under repeatable read or serializable a host whose
//! snapshot predates another's seats fails and retries, so no isolation
//! level lets the fleet bind more seats than a pack holds.

use super::pg_err_at;
use crate::licenses::{Book, Day, Pack, PackId, Seat, SeatRow, group_duplicates};
use crate::protocol::guid::Guid;
use crate::store::StoreError;
use crate::store::ledger::{AuditRow, Duplicate, Ledger, PEAK_KEEP_DAYS, PeakRow};
use crate::store::sqlite::ledger::{covers_of, covers_text};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row};

fn guid(r: &Row, i: usize) -> Guid {
    Guid(<[u8; 16]>::try_from(r.get::<_, &[u8]>(i)).unwrap_or_default())
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Takes the ledger's lock for the rest of the transaction and moves its
/// version on: the version returned is one past the last writer's.
pub async fn lock(c: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    c.query_one(
        "UPDATE license_lock SET version = version + 1 WHERE id = 1 RETURNING version",
        &[],
    )
    .await
    .map(|r| r.get(0))
}

const PACK_COLUMNS: &str =
    "id, product, covers, quantity, enforce, agreement, starts_day, expires_day, note";

fn pack_of(r: &Row) -> Pack {
    Pack {
        id: r.get(0),
        product: guid(r, 1),
        covers: covers_of(r.get(2)),
        quantity: u32_of(r.get(3)),
        enforce: r.get::<_, &str>(4).parse().unwrap_or_default(),
        agreement: r.get(5),
        starts: r.get::<_, Option<i64>>(6).map(Day),
        expires: r.get::<_, Option<i64>>(7).map(Day),
        note: r.get(8),
    }
}

pub async fn packs(
    c: &impl GenericClient,
    retired: bool,
) -> Result<Vec<Pack>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {PACK_COLUMNS} FROM license_packs {} ORDER BY id",
        if retired {
            ""
        } else {
            "WHERE retired_ms IS NULL"
        }
    );
    Ok(c.query(&sql, &[]).await?.iter().map(pack_of).collect())
}

pub async fn seats(c: &impl GenericClient) -> Result<Vec<SeatRow>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT cmid, pack, sku, workstation, address, host, first_ms, last_ms
             FROM license_seats ORDER BY pack, first_ms",
        &[],
    )
    .await?
    .iter()
    .map(|r| SeatRow {
        cmid: guid(r, 0),
        pack: r.get(1),
        sku: guid(r, 2),
        workstation: r.get(3),
        address: r.get(4),
        host: r.get(5),
        first_ms: r.get(6),
        last_ms: r.get(7),
    })
    .collect())
}

/// The book a batch decides with (call with the lock held, `version`
/// what [`lock`] returned): the one `cached` when this host was the last
/// writer (only the seats of `cmids` are read), else read again.
pub async fn load_book(
    c: &impl GenericClient,
    cmids: &[Guid],
    version: i64,
    cached: Option<&(i64, Book)>,
) -> Result<Book, tokio_postgres::Error> {
    let mut book = match cached {
        Some((v, b)) if *v == version - 1 => b.clone(),
        _ => {
            let packs = packs(c, false).await?;
            if packs.is_empty() {
                return Ok(Book::default());
            }
            let in_use: Vec<(PackId, u32)> = c
                .query(
                    "SELECT pack, COUNT(*) FROM license_seats GROUP BY pack",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), u32_of(r.get(1))))
                .collect();
            Book::new(packs, in_use, [])
        }
    };
    if book.is_empty() {
        return Ok(book);
    }
    let ids: Vec<Vec<u8>> = cmids.iter().map(|g| g.0.to_vec()).collect();
    let holders: Vec<(Guid, PackId)> = c
        .query(
            "SELECT cmid, pack FROM license_seats WHERE cmid = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (guid(r, 0), r.get(1)))
        .collect();
    book.set_holders(holders);
    Ok(book)
}

/// Writes what a request's seat came to (see the SQLite twin).
pub async fn persist_seat(
    c: &impl GenericClient,
    seat: Seat,
    s: &SeatRow,
) -> Result<(), tokio_postgres::Error> {
    match seat {
        Seat::Taken(p) | Seat::Over(p) => {
            c.execute(
                "INSERT INTO license_seats
                     (cmid, pack, sku, workstation, address, host, first_ms, last_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (cmid) DO UPDATE SET pack = EXCLUDED.pack, last_ms = EXCLUDED.last_ms",
                &[
                    &s.cmid.0.as_slice(),
                    &p,
                    &s.sku.0.as_slice(),
                    &s.workstation,
                    &s.address,
                    &s.host,
                    &s.last_ms,
                ],
            )
            .await?;
        }
        Seat::Renewed(_) => {
            c.execute(
                "UPDATE license_seats SET last_ms = $2, workstation = $3, address = $4, host = $5
                 WHERE cmid = $1",
                &[
                    &s.cmid.0.as_slice(),
                    &s.last_ms,
                    &s.workstation,
                    &s.address,
                    &s.host,
                ],
            )
            .await?;
        }
        Seat::None | Seat::Refused(_) => {}
    }
    Ok(())
}

/// Raises the day's peak of each pack a batch's `seats` were taken in.
pub async fn raise_peaks(
    c: &impl GenericClient,
    book: &Book,
    day: Day,
    seats: &[Seat],
) -> Result<(), tokio_postgres::Error> {
    for (pack, owned) in crate::licenses::taken_in(book, day, seats) {
        raise_peak(c, day, pack, owned, book.in_use(pack)).await?;
    }
    Ok(())
}

async fn raise_peak(
    c: &impl GenericClient,
    day: Day,
    pack: PackId,
    quantity: u32,
    in_use: u32,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO license_peaks (day, pack, quantity, peak) VALUES ($1, $2, $3, $4)
         ON CONFLICT (day, pack) DO UPDATE SET
             peak = GREATEST(license_peaks.peak, EXCLUDED.peak), quantity = EXCLUDED.quantity",
        &[&day.0, &pack, &i64::from(quantity), &i64::from(in_use)],
    )
    .await
    .map(|_| ())
}

/// A ledger transaction on a fleet's database, holding the ledger's lock.
pub struct PgLedger {
    client: Client,
    shown: String,
}

impl PgLedger {
    /// Connects to `url` (migrating the schema if needed) and begins.
    pub async fn begin(url: &str) -> Result<Self, StoreError> {
        let u = super::url::parse(url)?;
        let mut client = super::connect_one(&u).await?;
        super::schema::migrate(&mut client, &u.shown).await?;
        let shown = u.shown.clone();
        let e = |err| pg_err_at(&u.shown, err);
        client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(e)?;
        lock(&client).await.map_err(e)?;
        Ok(Self { client, shown })
    }

    /// Connects to `url` and begins a read-only snapshot (no lock).
    pub async fn read(url: &str) -> Result<Self, StoreError> {
        let u = super::url::parse(url)?;
        let client = super::connect_one(&u).await?;
        super::reads::has_schema(&client, &u.shown).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|err| pg_err_at(&u.shown, err))?;
        Ok(Self {
            client,
            shown: u.shown.clone(),
        })
    }

    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        pg_err_at(&self.shown, e)
    }

    async fn q(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.client.query(sql, p).await.map_err(|e| self.err(e))
    }

    async fn q1(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        self.client.query_one(sql, p).await.map_err(|e| self.err(e))
    }

    async fn x(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.client.execute(sql, p).await.map_err(|e| self.err(e))
    }
}

impl Ledger for PgLedger {
    async fn packs(&mut self, retired: bool) -> Result<Vec<Pack>, StoreError> {
        packs(&self.client, retired).await.map_err(|e| self.err(e))
    }

    async fn seats(&mut self) -> Result<Vec<SeatRow>, StoreError> {
        seats(&self.client).await.map_err(|e| self.err(e))
    }

    async fn seat_counts(&mut self, stale_ms: i64) -> Result<Vec<(PackId, u32, u32)>, StoreError> {
        let rows = self
            .q(
                "SELECT pack, COUNT(*), COUNT(*) FILTER (WHERE last_ms < $1)
                 FROM license_seats GROUP BY pack",
                &[&stale_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u32_of(r.get(1)), u32_of(r.get(2))))
            .collect())
    }

    async fn insert_pack(&mut self, p: &Pack, now_ms: i64) -> Result<PackId, StoreError> {
        let row = self
            .q1(
                "INSERT INTO license_packs (product, covers, quantity, enforce, agreement,
                     starts_day, expires_day, note, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                &[
                    &p.product.0.as_slice(),
                    &covers_text(&p.covers),
                    &i64::from(p.quantity),
                    &p.enforce.name(),
                    &p.agreement,
                    &p.starts.map(|d| d.0),
                    &p.expires.map(|d| d.0),
                    &p.note,
                    &now_ms,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn update_pack(&mut self, p: &Pack) -> Result<(), StoreError> {
        self.x(
            "UPDATE license_packs SET product = $2, covers = $3, quantity = $4, enforce = $5,
                     agreement = $6, starts_day = $7, expires_day = $8, note = $9
                 WHERE id = $1",
            &[
                &p.id,
                &p.product.0.as_slice(),
                &covers_text(&p.covers),
                &i64::from(p.quantity),
                &p.enforce.name(),
                &p.agreement,
                &p.starts.map(|d| d.0),
                &p.expires.map(|d| d.0),
                &p.note,
            ],
        )
        .await?;
        Ok(())
    }

    async fn retire_pack(&mut self, id: PackId, now_ms: i64) -> Result<(), StoreError> {
        self.x(
            "UPDATE license_packs SET retired_ms = $2 WHERE id = $1",
            &[&id, &now_ms],
        )
        .await?;
        Ok(())
    }

    async fn delete_seats(&mut self, cmids: &[Guid]) -> Result<u64, StoreError> {
        let ids: Vec<Vec<u8>> = cmids.iter().map(|g| g.0.to_vec()).collect();
        self.x("DELETE FROM license_seats WHERE cmid = ANY($1)", &[&ids])
            .await
    }

    async fn move_seats(&mut self, moves: &[(Guid, PackId)]) -> Result<(), StoreError> {
        for (c, p) in moves {
            self.x(
                "UPDATE license_seats SET pack = $2 WHERE cmid = $1",
                &[&c.0.as_slice(), p],
            )
            .await?;
        }
        Ok(())
    }

    async fn audit(&mut self, a: &AuditRow) -> Result<(), StoreError> {
        self.x(
            "INSERT INTO license_audit (time_ms, actor, action, pack, detail)
                 VALUES ($1, $2, $3, $4, $5)",
            &[&a.time_ms, &a.actor, &a.action, &a.pack, &a.detail],
        )
        .await?;
        Ok(())
    }

    async fn audit_rows(&mut self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self
            .q(
                "SELECT time_ms, actor, action, pack, detail FROM license_audit
                 ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                time_ms: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                pack: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }

    async fn note_peaks(
        &mut self,
        day: Day,
        usage: &[(PackId, u32, u32)],
    ) -> Result<(), StoreError> {
        for &(pack, quantity, in_use) in usage {
            raise_peak(&self.client, day, pack, quantity, in_use)
                .await
                .map_err(|e| self.err(e))?;
        }
        self.x(
            "DELETE FROM license_peaks WHERE day < $1",
            &[&(day.0 - PEAK_KEEP_DAYS)],
        )
        .await?;
        Ok(())
    }

    async fn peaks(&mut self, since: Day) -> Result<Vec<PeakRow>, StoreError> {
        let rows = self
            .q(
                "SELECT k.day, k.pack, p.product, k.quantity, k.peak
                 FROM license_peaks k JOIN license_packs p ON p.id = k.pack
                 WHERE k.day >= $1 ORDER BY k.day, k.pack",
                &[&since.0],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PeakRow {
                day: Day(r.get(0)),
                pack: r.get(1),
                product: guid(r, 2),
                quantity: u32_of(r.get(3)),
                peak: u32_of(r.get(4)),
            })
            .collect())
    }

    async fn duplicates(&mut self) -> Result<Vec<Duplicate>, StoreError> {
        let rows = self
            .q(
                "SELECT cmid, workstation, MAX(address), MAX(time_ms) FROM activations
                 WHERE cmid IN (SELECT cmid FROM activations GROUP BY cmid
                                HAVING COUNT(DISTINCT workstation) > 1)
                 GROUP BY cmid, workstation ORDER BY cmid, MAX(time_ms) DESC",
                &[],
            )
            .await?;
        Ok(group_duplicates(
            rows.iter()
                .map(|r| (guid(r, 0), r.get(1), r.get(2), r.get(3)))
                .collect(),
        ))
    }

    async fn in_use(&mut self, since_ms: i64) -> Result<Vec<(Guid, u32)>, StoreError> {
        let rows = self
            .q(
                "SELECT sku_id, COUNT(DISTINCT cmid) FROM clients
                 WHERE last_seen_ms >= $1 AND last_hresult = 0 GROUP BY sku_id",
                &[&since_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (guid(r, 0), u32_of(r.get(1))))
            .collect())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_err_at(&self.shown, e))
    }
}
