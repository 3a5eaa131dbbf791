//! `kmsd licenses`: record packs, list their usage and seats, free
//! seats, import and export for auditors, and the daily peaks. Every
//! change is one ledger transaction with an audit row; a running host
//! picks it up within [`crate::store::Schedule::licenses`].

use super::admin::{self, Actor, AdminError, Report};
use super::view::{LicensesView, PackView, SeatView};
use super::watch::Watch;
use super::{Day, Enforce, Pack, PackId, format_day, parse_day, sku_name};
use crate::protocol::guid::Guid;
use crate::protocol::kms::products;
use crate::store::ledger::{AnyLedger, Ledger, LedgerAt};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct LicensesArgs {
    #[command(flatten)]
    pub at: crate::cli::StoreAt,
    /// Print JSON (lists).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<LicensesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum LicensesCommand {
    /// Record a pack; prints its id alone on the last line.
    Add(PackTerms),
    /// Change a pack's terms.
    Set(SetArgs),
    /// Retire a pack (refused while seats are in use, unless --force).
    Retire(RetireArgs),
    /// List the seats: which machine holds which pack's seat.
    Seats(SeatsArgs),
    /// Free a machine's seat (e.g. a retired machine).
    Release(ReleaseArgs),
    /// Record packs in bulk from a CSV file (header: product,quantity,
    /// covers,agreement,starts,expires,enforce,note; covers separated by
    /// `;`). All rows or none.
    Import(ImportArgs),
    /// The auditor's file: one row per seat.
    Export(ExportArgs),
    /// The daily high-water mark per pack (the true-up figure), kept for
    /// three years.
    Peak(PeakArgs),
    /// The audit trail of changes, newest first.
    Audit(AuditArgs),
}

#[derive(Debug, Args, Default)]
pub struct PackTerms {
    /// The product, as `kmsd products` names it (or its SKU ID).
    #[arg(long, value_name = "NAME")]
    pub product: String,
    /// Seats owned.
    #[arg(long, value_name = "N")]
    pub quantity: u32,
    /// Other products it covers (down-edition rights), comma-separated.
    #[arg(long, value_name = "NAME[,NAME…]", value_delimiter = ',')]
    pub covers: Vec<String>,
    /// Agreement or order number.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub agreement: String,
    /// First day in force (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub starts: Option<String>,
    /// Last day in force (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub expires: Option<String>,
    /// off (accounting only), warn (answer and report the overage) or hard
    /// (refuse a new machine when no seat is free).
    #[arg(long, value_name = "MODE", default_value = "warn")]
    pub enforce: String,
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    pub id: PackId,
    #[arg(long, value_name = "N")]
    pub quantity: Option<u32>,
    #[arg(long, value_name = "NAME[,NAME…]", value_delimiter = ',')]
    pub covers: Option<Vec<String>>,
    #[arg(long, value_name = "TEXT")]
    pub agreement: Option<String>,
    #[arg(long, value_name = "DATE")]
    pub starts: Option<String>,
    /// Last day in force (YYYY-MM-DD; `none` for no end).
    #[arg(long, value_name = "DATE")]
    pub expires: Option<String>,
    #[arg(long, value_name = "MODE")]
    pub enforce: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Allow a quantity below the seats in use (the excess shows as over).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RetireArgs {
    pub id: PackId,
    /// Move its seats to other covering packs (over when none has room;
    /// freed when no pack covers their product).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SeatsArgs {
    /// Only this pack's seats.
    #[arg(long, value_name = "ID")]
    pub pack: Option<PackId>,
    /// Only stale seats (three renewals missed).
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The machine's client machine ID.
    pub cmid: Guid,
    #[arg(long, value_name = "TEXT", default_value = "released by the operator")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// CSV (the only format).
    #[arg(long, required = true)]
    pub csv: bool,
}

#[derive(Debug, Args)]
pub struct PeakArgs {
    /// From this day on (YYYY-MM-DD; default: 90 days back).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long, default_value = "100")]
    pub limit: u32,
}

/// A product name as the catalog knows it: the SKU, or an error naming
/// the closest catalog names.
pub fn product(name: &str) -> Result<Guid, String> {
    match products::find_sku(name) {
        Ok(s) => Ok(s.id),
        Err(e) if e.starts_with("no SKU name contains") => {
            let words: Vec<String> = name
                .to_lowercase()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let mut ranked: Vec<(usize, &str)> = products::skus()
                .iter()
                .map(|s| {
                    let n = s.name.to_lowercase();
                    (
                        words.iter().filter(|w| n.contains(w.as_str())).count(),
                        s.name,
                    )
                })
                .filter(|(k, _)| *k > 0)
                .collect();
            ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            let near: Vec<&str> = ranked.iter().take(5).map(|(_, n)| *n).collect();
            Err(match near.is_empty() {
                true => format!("unknown product {name:?} (`kmsd products` lists them)"),
                false => format!("unknown product {name:?}; closest: {}", near.join("; ")),
            })
        }
        Err(e) => Err(e),
    }
}

fn day_opt(v: Option<&str>, what: &str) -> Result<Option<Day>, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(d) => parse_day(d, what).map(Some),
    }
}

impl PackTerms {
    /// The pack these terms describe (its id given by the store).
    pub fn pack(&self) -> Result<Pack, String> {
        let covers = self
            .covers
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(product)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pack {
            id: 0,
            product: product(&self.product)?,
            covers,
            quantity: self.quantity,
            enforce: self.enforce.parse()?,
            agreement: self.agreement.clone(),
            starts: day_opt(self.starts.as_deref(), "--starts")?,
            expires: day_opt(self.expires.as_deref(), "--expires")?,
            note: self.note.clone(),
        })
    }
}

fn actor() -> Actor {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    Actor {
        name: format!(
            "{user}@{} (kmsd licenses)",
            crate::store::sqlite::hostname()
        ),
        now_ms: crate::clock::unix_ms_now(),
    }
}

fn ledger_at(a: &LicensesArgs) -> Result<LedgerAt> {
    Ok(LedgerAt::of(&a.at.store, &a.at.dir())?)
}

fn fail(e: AdminError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Runs `kmsd licenses …`.
pub async fn run(a: &LicensesArgs) -> Result<()> {
    let at = ledger_at(a)?;
    let who = actor();
    let mut l = AnyLedger::begin(&at).await?;
    let ageing = super::Ageing::at(
        who.now_ms,
        crate::config::ServeConfig::default().renewal_interval,
        super::DEFAULT_RECLAIM_DAYS,
    );
    match &a.command {
        None => {
            let r = admin::report(&mut l, ageing, who.now_ms, true)
                .await
                .map_err(fail)?;
            l.commit().await?;
            print_report(&r, a.json)?;
        }
        Some(LicensesCommand::Add(t)) => {
            let p = t.pack().map_err(anyhow::Error::msg)?;
            let ids = admin::add(&mut l, &[p], &who).await.map_err(fail)?;
            l.commit().await?;
            println!("{}", ids[0]);
        }
        Some(LicensesCommand::Set(s)) => set(l, s, &who).await?,
        Some(LicensesCommand::Retire(r)) => {
            let (moved, freed) = admin::retire(&mut l, r.id, r.force, &who)
                .await
                .map_err(fail)?;
            l.commit().await?;
            println!("pack {} retired; {moved} seats moved, {freed} freed", r.id);
        }
        Some(LicensesCommand::Seats(s)) => {
            let seats = l.seats().await?;
            l.commit().await?;
            let rows: Vec<SeatView> = SeatView::list(&seats, ageing, |x| {
                s.pack.is_none_or(|p| p == x.pack) && (!s.stale || ageing.is_stale(x.last_ms))
            });
            print_seats(&rows, a.json)?;
        }
        Some(LicensesCommand::Release(r)) => {
            let pack = admin::release(&mut l, r.cmid, &r.reason, &who)
                .await
                .map_err(fail)?;
            l.commit().await?;
            println!("seat of {} in pack {pack} freed", r.cmid);
        }
        Some(LicensesCommand::Import(i)) => {
            let packs = read_csv(&i.file)?;
            let bar = crate::term::bar(packs.len() as u64, "packs");
            let mut ids = Vec::with_capacity(packs.len());
            for p in &packs {
                ids.extend(
                    admin::add(&mut l, std::slice::from_ref(p), &who)
                        .await
                        .map_err(fail)?,
                );
                bar.inc(1);
            }
            l.commit().await?;
            bar.finish_and_clear();
            println!("{} packs recorded: {}", ids.len(), join_ids(&ids));
        }
        Some(LicensesCommand::Export(_)) => {
            let seats = l.seats().await?;
            l.commit().await?;
            export_csv(&seats)?;
        }
        Some(LicensesCommand::Peak(p)) => {
            let since = match &p.since {
                Some(d) => parse_day(d, "--since").map_err(anyhow::Error::msg)?,
                None => Day(Day::of_ms(who.now_ms).0 - 90),
            };
            let rows = l.peaks(since).await?;
            l.commit().await?;
            print_peaks(&rows, p.csv, a.json)?;
        }
        Some(LicensesCommand::Audit(x)) => {
            let rows = l.audit_rows(x.limit).await?;
            l.commit().await?;
            for r in rows {
                let pack = r.pack.map(|p| format!("pack {p}")).unwrap_or_default();
                println!(
                    "{}  {:<8} {:<8} {}  [{}]",
                    crate::report::iso_utc(r.time_ms),
                    r.action,
                    pack,
                    r.detail,
                    r.actor
                );
            }
        }
    }
    Ok(())
}

fn join_ids(ids: &[PackId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn set(mut l: AnyLedger, s: &SetArgs, who: &Actor) -> Result<()> {
    let covers = match &s.covers {
        Some(c) => Some(
            c.iter()
                .map(|n| n.trim())
                .filter(|n| !n.is_empty())
                .map(product)
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let enforce: Option<Enforce> = s
        .enforce
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let starts = day_opt(s.starts.as_deref(), "--starts").map_err(anyhow::Error::msg)?;
    let expires = match s.expires.as_deref() {
        Some("none") => Some(None),
        other => day_opt(other, "--expires")
            .map_err(anyhow::Error::msg)?
            .map(Some),
    };
    let p = admin::set(
        &mut l,
        s.id,
        |mut p| {
            if let Some(q) = s.quantity {
                p.quantity = q;
            }
            if let Some(c) = covers {
                p.covers = c;
            }
            if let Some(a) = &s.agreement {
                p.agreement.clone_from(a);
            }
            if let Some(d) = starts {
                p.starts = Some(d);
            }
            if let Some(e) = expires {
                p.expires = e;
            }
            if let Some(e) = enforce {
                p.enforce = e;
            }
            if let Some(n) = &s.note {
                p.note.clone_from(n);
            }
            p
        },
        s.force,
        who,
    )
    .await
    .map_err(fail)?;
    l.commit().await?;
    println!(
        "pack {}: {} x {}, enforce {}",
        p.id,
        p.quantity,
        p.product_name(),
        p.enforce
    );
    Ok(())
}

/// The packs of a CSV file; the first row that does not parse refuses the
/// whole file, naming its line.
pub fn read_csv(path: &std::path::Path) -> Result<Vec<Pack>> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut packs = Vec::new();
    for (k, row) in r.deserialize::<CsvPack>().enumerate() {
        let line = k + 2;
        let row = row.map_err(|e| anyhow::anyhow!("{}: line {line}: {e}", path.display()))?;
        let terms = PackTerms {
            product: row.product,
            quantity: row.quantity,
            covers: row.covers.split(';').map(str::to_owned).collect(),
            agreement: row.agreement,
            starts: Some(row.starts),
            expires: Some(row.expires),
            enforce: if row.enforce.is_empty() {
                "warn".to_owned()
            } else {
                row.enforce
            },
            note: row.note,
        };
        let p = terms
            .pack()
            .map_err(|e| anyhow::anyhow!("{}: line {line}: {e}", path.display()))?;
        packs.push(p);
    }
    if packs.is_empty() {
        bail!(
            "{}: no packs (a header row, then one row per pack)",
            path.display()
        );
    }
    Ok(packs)
}

#[derive(Debug, serde::Deserialize)]
struct CsvPack {
    product: String,
    quantity: u32,
    #[serde(default)]
    covers: String,
    #[serde(default)]
    agreement: String,
    #[serde(default)]
    starts: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    enforce: String,
    #[serde(default)]
    note: String,
}

fn export_csv(seats: &[super::SeatRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record([
        "pack",
        "product",
        "cmid",
        "workstation",
        "address",
        "first_seen",
        "last_seen",
        "host",
    ])?;
    for s in seats {
        w.write_record([
            s.pack.to_string(),
            sku_name(&s.sku),
            s.cmid.to_string(),
            s.workstation.clone(),
            s.address.clone(),
            crate::report::iso_utc(s.first_ms),
            crate::report::iso_utc(s.last_ms),
            s.host.clone(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn print_peaks(rows: &[crate::store::ledger::PeakRow], csv_out: bool, json: bool) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row {
        date: String,
        pack: PackId,
        product: String,
        quantity: u32,
        peak: u32,
    }
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            date: format_day(r.day),
            pack: r.pack,
            product: sku_name(&r.product),
            quantity: r.quantity,
            peak: r.peak,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if csv_out {
        let mut w = csv::Writer::from_writer(std::io::stdout().lock());
        for r in &rows {
            w.serialize(r)?;
        }
        if rows.is_empty() {
            w.write_record(["date", "pack", "product", "quantity", "peak"])?;
        }
        w.flush()?;
    } else {
        let mut t =
            crate::term::table(&["date", "pack", "product", "quantity", "peak"], &[1, 3, 4]);
        for r in &rows {
            t.add_row(vec![
                r.date.clone(),
                r.pack.to_string(),
                r.product.clone(),
                r.quantity.to_string(),
                r.peak.to_string(),
            ]);
        }
        println!("{}", t.trim_fmt());
    }
    Ok(())
}

fn print_report(r: &Report, json: bool) -> Result<()> {
    let v = LicensesView::from(r);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if v.packs.is_empty() {
        println!("no license packs recorded (`kmsd licenses add --product NAME --quantity N`)");
    } else {
        let mut t = crate::term::table(
            &[
                "id",
                "product",
                "covers",
                "owned",
                "in use",
                "free",
                "stale",
                "over",
                "enforce",
                "expires",
                "agreement",
            ],
            &[0, 3, 4, 5, 6, 7],
        );
        for p in &v.packs {
            t.add_row(pack_row(p));
        }
        println!("{}", t.trim_fmt());
    }
    if !v.uncovered.is_empty() {
        println!("\nIn use without a recorded license:");
        let mut t = crate::term::table(&["product", "machines"], &[1]);
        for u in &v.uncovered {
            t.add_row(vec![u.product.clone(), u.machines.to_string()]);
        }
        println!("{}", t.trim_fmt());
    }
    Ok(())
}

fn pack_row(p: &PackView) -> Vec<String> {
    vec![
        p.id.to_string(),
        p.product.clone(),
        if p.covers.is_empty() {
            "-".to_owned()
        } else {
            p.covers.join(", ")
        },
        p.owned.to_string(),
        p.in_use.to_string(),
        p.free.to_string(),
        p.stale.to_string(),
        p.over.to_string(),
        p.enforce.to_owned(),
        p.expires.clone().unwrap_or_else(|| "-".to_owned()),
        p.agreement.clone(),
    ]
}

fn print_seats(rows: &[SeatView], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let mut t = crate::term::table(
        &[
            "pack",
            "cmid",
            "workstation",
            "product",
            "first seen",
            "last seen",
            "stale",
            "host",
        ],
        &[0],
    );
    for s in rows {
        t.add_row(vec![
            s.pack.to_string(),
            s.cmid.clone(),
            s.workstation.clone(),
            s.product.clone(),
            s.first_seen.clone(),
            s.last_seen.clone(),
            if s.stale { "stale" } else { "" }.to_owned(),
            s.host.clone(),
        ]);
    }
    let dups = rows
        .iter()
        .filter(|s| !s.likely_duplicate_of.is_empty())
        .count();
    println!("{}\n{} seats", t.trim_fmt(), rows.len());
    if dups > 0 {
        println!(
            "{dups} seats share a workstation name with another seat: most likely machines \
             re-imaged with a new CMID, each holding two seats (`kmsd licenses release` the old)"
        );
    }
    Ok(())
}

/// The packs and their usage, read now (for `/api/licenses`).
pub async fn read_report(w: &Watch, now_ms: i64) -> Result<Report, AdminError> {
    let Some(at) = w.ledger_at() else {
        return Ok(Report::default());
    };
    let mut l = AnyLedger::read(at).await?;
    let r = admin::report(&mut l, w.ageing(now_ms), now_ms, true).await?;
    l.commit().await?;
    Ok(r)
}

/// The seats, read now (for `/api/seats`).
pub async fn read_seats(
    w: &Watch,
    now_ms: i64,
    pack: Option<PackId>,
    stale: bool,
) -> Result<Vec<SeatView>, AdminError> {
    let Some(at) = w.ledger_at() else {
        return Ok(Vec::new());
    };
    let mut l = AnyLedger::read(at).await?;
    let seats = l.seats().await?;
    l.commit().await?;
    let ageing = w.ageing(now_ms);
    Ok(SeatView::list(&seats, ageing, |s| {
        pack.is_none_or(|p| p == s.pack) && (!stale || ageing.is_stale(s.last_ms))
    }))
}

/// The ledger of the store a reader names, read-only (None: a memory
/// store, or no ledger yet).
async fn read_ledger(store: &crate::store::Backend, dir: &std::path::Path) -> Option<AnyLedger> {
    let at = LedgerAt::of(store, dir).ok()?;
    AnyLedger::read(&at).await.ok()
}

/// Which pack each machine (CMID as text) holds a seat in, for `kmsd
/// clients` (empty when the store keeps no packs).
pub async fn seat_map(
    store: &crate::store::Backend,
    dir: &std::path::Path,
) -> std::collections::HashMap<String, PackId> {
    let Some(mut l) = read_ledger(store, dir).await else {
        return Default::default();
    };
    let seats = l.seats().await.unwrap_or_default();
    let _ = l.commit().await;
    seats.iter().map(|s| (s.cmid.to_string(), s.pack)).collect()
}

/// The packs' usage for `kmsd status` (None when the store keeps none).
pub async fn summary(store: &crate::store::Backend, dir: &std::path::Path) -> Option<LicensesView> {
    let mut l = read_ledger(store, dir).await?;
    let now = crate::clock::unix_ms_now();
    let ageing = super::Ageing::at(
        now,
        crate::config::ServeConfig::default().renewal_interval,
        super::DEFAULT_RECLAIM_DAYS,
    );
    let r = admin::report(&mut l, ageing, now, false).await.ok()?;
    let _ = l.commit().await;
    Some(LicensesView::from(&r))
}

/// `kmsd clients --duplicates`: the client machine IDs seen under more
/// than one workstation name, with the machines and the fix.
pub async fn duplicates(
    store: &crate::store::Backend,
    dir: &std::path::Path,
    json: bool,
) -> Result<()> {
    let at = LedgerAt::of(store, dir)?;
    let mut l = AnyLedger::read(&at).await?;
    let dups = l.duplicates().await?;
    let seats = l.seats().await?;
    l.commit().await?;
    #[derive(serde::Serialize)]
    struct Machine {
        workstation: String,
        address: String,
        last_seen: String,
    }
    #[derive(serde::Serialize)]
    struct Row {
        cmid: String,
        machines: Vec<Machine>,
        /// The one seat these machines share.
        seat: Option<PackId>,
        fix: &'static str,
    }
    let rows: Vec<Row> = dups
        .iter()
        .map(|d| Row {
            cmid: d.cmid.to_string(),
            machines: d
                .machines
                .iter()
                .map(|(w, a, t)| Machine {
                    workstation: w.clone(),
                    address: a.clone(),
                    last_seen: crate::report::iso_utc(*t),
                })
                .collect(),
            seat: seats.iter().find(|s| s.cmid == d.cmid).map(|s| s.pack),
            fix: super::DUPLICATE_FIX,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no client machine ID was seen under more than one workstation name");
        return Ok(());
    }
    for r in &rows {
        let seat = match r.seat {
            Some(p) => format!("; they hold one seat, in pack {p}"),
            None => String::new(),
        };
        println!("{} stands for {} machines{seat}:", r.cmid, r.machines.len());
        for m in &r.machines {
            println!(
                "  {:<24} {:<40} last seen {}",
                m.workstation, m.address, m.last_seen
            );
        }
    }
    println!("\nFix: {}.", super::DUPLICATE_FIX);
    Ok(())
}
