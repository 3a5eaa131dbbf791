//! Scale checks for BENCHMARKS.md.
//!
//! `fill` writes a kmsd data dir holding many inventoried clients and
//! activation records straight through SQL (one transaction), for timing
//! `kmsd serve` start-up, its memory and `kmsd status` on a big store.
//!
//! `idle` opens many TCP connections to a host on loopback and holds them
//! idle (optionally after a bind), for measuring the host's memory per
//! connection. Connections come from 127.0.0.2, 127.0.0.3, ... so that no
//! source address runs out of ports.
//!
//! ```text
//! cargo run --release --example bigdata -- fill --data-dir /tmp/big --clients 1000000 --records 10000000
//! cargo run --release --example bigdata -- idle 127.0.0.1:16900 --connections 10000 --hold 20
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use kmsd::client::load;
use kmsd::codec::RpcPduCodec;
use kmsd::protocol::kms::products::{self, Pool};
use kmsd::protocol::rpc::pdu::MAX_PDU_LEN;
use kmsd::store::{self, sqlite};
use rand::{Rng, RngExt, SeedableRng};
use rusqlite::params;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_util::codec::Framed;

#[derive(Debug, Parser)]
#[command(about = "Scale checks: a big data dir, many idle connections")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fill a new data dir with inventoried clients and activation records.
    Fill {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        clients: u64,
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
    },
    /// Time the store's periodic prune over a pool with N entries (the
    /// writer prunes after every 10,000 records; distinct clients each add
    /// a pool entry).
    Prune {
        #[arg(long, default_value = "1000,5000,10000,20000")]
        entries: String,
        /// Activation records in the log (default: none).
        #[arg(long, default_value_t = 0)]
        records: u64,
        /// keep_records passed to the prune.
        #[arg(long, default_value_t = 1_000_000)]
        keep_records: u64,
        /// Also time a per-pool "keep the newest `capacity`" delete (a
        /// candidate replacement for the correlated one) on the same data.
        #[arg(long)]
        ranked: bool,
    },
    /// Hold connections open to a loopback host.
    Idle {
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Source addresses 127.0.0.2 .. 127.0.0.(1 + N).
        #[arg(long, default_value_t = 100)]
        sources: u8,
        /// Seconds to hold them (the run ends by itself).
        #[arg(long, default_value_t = 20)]
        hold: u64,
        /// Bind each connection first (NDR32/NDR64/BTFN, then alter_context),
        /// as a client about to send its request.
        #[arg(long)]
        bind: bool,
    },
}

const DAY_MS: i64 = 86_400_000;

fn fill(dir: &PathBuf, clients: u64, records: u64) -> Result<()> {
    if dir.join(store::DB_FILE).exists() {
        bail!("{} already holds a database", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(store::DB_FILE);
    // The schema exactly as kmsd creates it.
    drop(sqlite::open_rw(&path)?);
    let mut conn = rusqlite::Connection::open(&path)?;
    // One bulk transaction: a rollback journal over an empty file is small,
    // where WAL would hold every new page twice. kmsd switches back to WAL
    // when it opens the file.
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;",
    )?;
    let sku = products::find_sku("Windows 10/11 Enterprise").map_err(anyhow::Error::msg)?;
    let now = store::unix_ms_now();
    let start = now - 90 * DAY_MS;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let t0 = Instant::now();
    let tx = conn.transaction()?;
    let mut cmids: Vec<[u8; 16]> = Vec::with_capacity(clients as usize);
    {
        let mut ins = tx.prepare(
            "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                                  address, requests, last_hresult, last_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 50)",
        )?;
        for i in 0..clients {
            let mut cmid = [0u8; 16];
            rng.fill_bytes(&mut cmid);
            let first = start + (i as i64 * 90 * DAY_MS) / clients as i64;
            let last = first + rng.random_range(0..30 * DAY_MS).min(now - first);
            ins.execute(params![
                &cmid[..],
                &sku.app_id.0[..],
                first,
                last,
                format!("ws-{i:07}.corp.example"),
                &sku.id.0[..],
                format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                1 + (records / clients.max(1)) as i64,
            ])?;
            cmids.push(cmid);
        }
    }
    eprintln!("{clients} clients in {:.1} s", t0.elapsed().as_secs_f64());
    {
        let mut ins = tx.prepare(
            "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
                 n_policy, license_status, binding_expiration, vm, protocol, count, hresult)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 25, 1, 259200, 0, 6, 50, 0)",
        )?;
        for i in 0..records {
            let c = (i % clients.max(1)) as usize;
            let t = start + (i as i64 * 90 * DAY_MS) / records as i64;
            ins.execute(params![
                t,
                format!("10.{}.{}.{}", (c >> 16) & 255, (c >> 8) & 255, c & 255),
                format!("ws-{c:07}.corp.example"),
                &cmids.get(c).copied().unwrap_or([0; 16])[..],
                &sku.app_id.0[..],
                &sku.id.0[..],
                &sku.kms_id.0[..],
            ])?;
            if i > 0 && i % 1_000_000 == 0 {
                eprintln!("{i} records, {:.1} s", t0.elapsed().as_secs_f64());
            }
        }
    }
    // The 50 most recent clients are live in the Windows pool.
    tx.execute(
        "INSERT INTO pools (pool, capacity) VALUES (?1, 50)",
        [Pool::Windows.name()],
    )?;
    tx.execute(
        "INSERT INTO pool_entries (pool, cmid, last_seen_ms)
         SELECT ?1, cmid, last_seen_ms FROM clients ORDER BY last_seen_ms DESC LIMIT 50",
        params![Pool::Windows.name()],
    )?;
    tx.execute(
        "INSERT INTO totals (hresult, license_status, n) VALUES (0, 1, ?1)",
        [records as i64],
    )?;
    // The inventory above already reflects every record: all folded.
    tx.execute(
        "UPDATE folded SET upto = (SELECT COALESCE(MAX(id), 0) FROM activations)",
        [],
    )?;
    tx.commit()?;
    conn.execute_batch("PRAGMA journal_mode=WAL;")?;
    drop(conn);
    let size = std::fs::metadata(&path)?.len();
    eprintln!(
        "done: {clients} clients, {records} records, {:.0} MB in {:.1} s",
        size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn idle(target: SocketAddr, n: usize, sources: u8, hold: Duration, bind: bool) -> Result<()> {
    if !load::is_loopback(&target) || !target.is_ipv4() {
        bail!("idle connections go to an IPv4 loopback target only");
    }
    let (bind_pdu, alter_pdu) = load::bind_pdus();
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    for i in 0..n {
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(sources.max(1))) as u8);
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((src, 0)))?;
        let stream = match tokio::time::timeout(Duration::from_secs(5), sock.connect(target)).await
        {
            Ok(Ok(s)) => s,
            _ => {
                failed += 1;
                continue;
            }
        };
        let mut framed = Framed::new(stream, RpcPduCodec::new(MAX_PDU_LEN));
        if bind {
            let ok = async {
                framed.send(bind_pdu.as_slice()).await.ok()?;
                framed.next().await?.ok()?;
                framed.send(alter_pdu.as_slice()).await.ok()?;
                framed.next().await?.ok()
            };
            if tokio::time::timeout(Duration::from_secs(5), ok)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                failed += 1;
                continue;
            }
        }
        held.push(framed);
    }
    eprintln!(
        "{} connections open ({failed} failed) in {:.1} s; holding {} s",
        held.len(),
        t0.elapsed().as_secs_f64(),
        hold.as_secs()
    );
    tokio::time::sleep(hold).await;
    // The host must not have closed them meanwhile.
    let mut closed = 0;
    for f in &mut held {
        if let Ok(None | Some(Err(_))) =
            tokio::time::timeout(Duration::from_millis(1), f.next()).await
        {
            closed += 1;
        }
    }
    println!(
        "held {} connections for {} s; {closed} were closed by the host",
        held.len(),
        hold.as_secs()
    );
    Ok(())
}

/// Deletes all but the newest `capacity` entries of each pool: one ordered
/// index walk per pool instead of a count per entry.
const RANKED_DELETE: &str = "DELETE FROM pool_entries
     WHERE pool = ?1 AND (last_seen_ms, cmid) < (
         SELECT last_seen_ms, cmid FROM pool_entries WHERE pool = ?1
         ORDER BY last_seen_ms DESC, cmid DESC LIMIT 1 OFFSET ?2 - 1)";

fn prune(entries: &str, records: u64, keep_records: u64, ranked: bool) -> Result<()> {
    for n in entries.split(',') {
        let n: u64 = n
            .trim()
            .parse()
            .context("--entries: numbers, comma-separated")?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(store::DB_FILE);
        let mut conn = sqlite::open_rw(&path)?;
        let now = store::unix_ms_now();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO pools (pool, capacity) VALUES (?1, 50)",
            [Pool::Windows.name()],
        )?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)",
            )?;
            for i in 0..n {
                let cmid =
                    (0x3000_0000_0000_4000_8000_0000_0000_0000u128 | u128::from(i)).to_le_bytes();
                ins.execute(params![
                    Pool::Windows.name(),
                    &cmid[..],
                    now - n as i64 + i as i64
                ])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id,
                     kms_id, n_policy, license_status, binding_expiration, vm, protocol, count,
                     hresult)
                 VALUES (?1, '127.0.0.1', 'kmsd-load', x'00', x'00', x'00', x'00', 25, 2, 43200,
                         0, 6, 50, 0)",
            )?;
            for i in 0..records {
                ins.execute([now - records as i64 + i as i64])?;
            }
        }
        // A store in steady state: the log is folded.
        tx.execute(
            "UPDATE folded SET upto = (SELECT COALESCE(MAX(id), 0) FROM activations)",
            [],
        )?;
        tx.commit()?;
        if ranked {
            let copy = dir.path().join("copy.sqlite3");
            conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])?;
            let c2 = rusqlite::Connection::open(&copy)?;
            let t = Instant::now();
            c2.execute(RANKED_DELETE, params![Pool::Windows.name(), 50])?;
            let left: i64 = c2.query_row("SELECT COUNT(*) FROM pool_entries", [], |r| r.get(0))?;
            println!(
                "ranked delete: {n} pool entries: {:.4} s, {left} entries left",
                t.elapsed().as_secs_f64()
            );
        }
        let t = Instant::now();
        sqlite::prune(&conn, now, keep_records)?;
        let took = t.elapsed();
        let left: i64 = conn.query_row("SELECT COUNT(*) FROM pool_entries", [], |r| r.get(0))?;
        println!(
            "prune: {n} pool entries, {records} records (keep {keep_records}): {:.3} s, {left} entries left",
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Fill {
            data_dir,
            clients,
            records,
        } => fill(&data_dir, clients.max(1), records),
        Command::Prune {
            entries,
            records,
            keep_records,
            ranked,
        } => prune(&entries, records, keep_records, ranked),
        Command::Idle {
            target,
            connections,
            sources,
            hold,
            bind,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime")?
            .block_on(idle(
                target,
                connections,
                sources,
                Duration::from_secs(hold.min(600)),
                bind,
            )),
    }
}
