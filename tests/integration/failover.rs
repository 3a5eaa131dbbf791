//! Database failover: two hosts on a fleet URL naming a primary and its
//! synchronous standby (`target_session_attrs=read-write`). The primary
//! crashes under load (`pg_ctl stop -m immediate`), the standby is
//! promoted; both hosts answer again within the store timeout and a few
//! seconds, every acknowledged activation is in the promoted database,
//! nothing answered with an error is counted (save a commit in doubt at the
//! crash instant), and the count goes on from there.
//!
//! The tests start their own clusters (scripts/pg start, standby, sync,
//! crash, promote), held in a guard that stops them even when one fails.
//! A third test stalls the database longer than the store timeout and
//! checks that the requests answered E_FAIL meanwhile are not counted when
//! it moves again (the batcher owns each request's deadline).

use crate::common::*;
use kmsd::client::{ClientError, ClientOptions, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::{Version, hresult, products};
use kmsd::store::Backend;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg");
/// The hosts' `store_timeout_ms`.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// What "a few seconds" past the store timeout may take, at most.
const GRACE: Duration = Duration::from_secs(5);

/// Whether this machine has the PostgreSQL programs failover needs
/// (initdb, pg_ctl, pg_basebackup, psql). Under CI their absence fails the
/// test; elsewhere it is skipped with a message.
fn have_postgres() -> bool {
    let tools = ["initdb", "pg_ctl", "pg_basebackup", "psql"];
    let in_dir = |d: &Path| tools.iter().all(|t| d.join(t).is_file());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|v| in_dir(&v.path().join("bin")));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| in_dir(&d)))
        .unwrap_or(false);
    if debian || on_path {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no PostgreSQL programs (initdb, pg_ctl, pg_basebackup, psql): CI never skips the failover test"
    );
    eprintln!("skipped: no PostgreSQL programs (apt-get install postgresql)");
    false
}

/// A primary and its synchronous streaming standby, from scripts/pg; both
/// stopped when dropped, even when the test fails.
struct Pair {
    dir: tempfile::TempDir,
    primary_port: u16,
    standby_port: u16,
}

impl Pair {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pair = Self {
            dir,
            primary_port: 0,
            standby_port: 0,
        };
        // Dropped on a failure below: stops whatever did start.
        pair.primary_port = port_of(&pg(&["start", &pair.path("primary")]));
        pair.standby_port = port_of(&pg(&[
            "standby",
            &pair.path("primary"),
            &pair.path("standby"),
        ]));
        pg(&["sync", &pair.path("primary")]);
        pair
    }

    fn path(&self, which: &str) -> String {
        self.dir.path().join(which).display().to_string()
    }

    fn admin(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// The fleet URL naming both, for `db`.
    fn fleet_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary_port, self.standby_port
        )
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for which in ["standby", "primary"] {
            let _ = std::process::Command::new(SCRIPT)
                .arg("stop")
                .arg(self.dir.path().join(which))
                .status();
        }
    }
}

/// `scripts/pg ARGS`, which must succeed; its output.
fn pg(args: &[&str]) -> String {
    let out = std::process::Command::new(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/pg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn port_of(url: &str) -> u16 {
    let hostport = url.rsplit('@').next().unwrap();
    hostport.split(['/', ':']).nth(1).unwrap().parse().unwrap()
}

async fn sql(url: &str, statements: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute(statements).await.unwrap();
    drop(c);
    let _ = task.await;
}

fn win10() -> ClientOptions {
    client_options("Windows 10/11 Enterprise", Version::V6)
}

/// How one activation went.
#[derive(Debug, Clone)]
enum Answer {
    Counted(u32),
    /// E_FAIL: the host could not commit it.
    Refused,
    /// Anything else (shown when the test fails).
    #[allow(dead_code)]
    Other(String),
}

#[derive(Debug, Clone)]
struct Try {
    host: usize,
    cmid: Guid,
    sent: Instant,
    done: Instant,
    answer: Answer,
}

async fn activate(host: usize, addr: SocketAddr) -> Try {
    let cmid = new_cmid();
    let sent = Instant::now();
    let r = async {
        let mut c = Connection::open(addr, win10()).await?;
        Ok::<_, ClientError>(c.activate(cmid).await?.response.count)
    }
    .await;
    let answer = match r {
        Ok(n) => Answer::Counted(n),
        Err(ClientError::Hresult(hresult::FAIL)) => Answer::Refused,
        Err(e) => Answer::Other(e.to_string()),
    };
    Try {
        host,
        cmid,
        sent,
        done: Instant::now(),
        answer,
    }
}

/// Distinct machines through `addrs`, `per_host` at a time on each, until
/// `stop`; every try in `log`. A worker waits about `pace` (jittered, so
/// the workers do not move in step) after a counted machine, 50 ms after
/// anything else (a client trying again soon: the gap's end is seen).
fn drive(
    addrs: &[SocketAddr],
    per_host: usize,
    pace: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Try>>>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (host, &addr) in addrs.iter().enumerate() {
        for _ in 0..per_host {
            let (stop, log) = (stop.clone(), log.clone());
            set.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let t = activate(host, addr).await;
                    let wait = match t.answer {
                        Answer::Counted(_) => pace / 2 + pace.mul_f64(rand::random::<f64>()),
                        _ => Duration::from_millis(50),
                    };
                    log.lock().unwrap().push(t);
                    tokio::time::sleep(wait).await;
                }
            });
        }
    }
    set
}

/// When each host first counted a machine it was sent after `since`.
fn recovered(log: &[Try], hosts: usize, since: Instant) -> Vec<Option<Instant>> {
    (0..hosts)
        .map(|h| {
            log.iter()
                .filter(|t| {
                    t.host == h && t.sent >= since && matches!(t.answer, Answer::Counted(_))
                })
                .map(|t| t.done)
                .min()
        })
        .collect()
}

/// `scripts/pg ACTION DIR` off the runtime's threads; when it started and
/// when it was done.
async fn pg_action(action: &'static str, dir: String) -> (Instant, Instant) {
    let t = Instant::now();
    tokio::task::spawn_blocking(move || pg(&[action, &dir]))
        .await
        .unwrap();
    (t, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_promoted_at_once_after_a_primary_crash_carries_the_count_on() {
    bounded(Duration::ZERO).await;
}

/// As a failover manager would: the standby promoted seconds after the
/// crash, longer than the store timeout. Meanwhile every request is
/// answered E_FAIL within the store timeout and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_promoted_seconds_later_refuses_meanwhile_and_loses_nothing() {
    bounded(STORE_TIMEOUT + Duration::from_secs(1)).await;
}

/// [`failover`] unless PostgreSQL is missing, with a bound on its time.
async fn bounded(promote_after: Duration) {
    if !have_postgres() {
        return;
    }
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(50), failover(promote_after))
        .await
        .expect("the failover test finishes within 50 s");
    eprintln!(
        "failover, promoted {promote_after:?} after the crash: {:?} wall",
        began.elapsed()
    );
}

/// Two hosts on the fleet URL naming the pair's primary and standby, with
/// the short store timeout; four machines counted through them.
async fn start_fleet(url: &str) -> Vec<TestServer> {
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let url = url.to_owned();
        hosts.push(
            start_server_with_clock(
                tempfile::tempdir().unwrap(),
                kmsd::host::system_clock(),
                move |c| {
                    c.store = Backend::Postgres(url);
                    c.store_timeout = STORE_TIMEOUT;
                },
            )
            .await,
        );
    }
    let shown = hosts[0].host.store().location();
    let both = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    assert!(shown.contains(both), "both databases shown: {shown}");
    for i in 0..4 {
        let t = activate(i % 2, hosts[i % 2].addr).await;
        assert!(
            matches!(t.answer, Answer::Counted(n) if n == i as u32 + 1),
            "{t:?}"
        );
    }
    hosts
}

/// When the primary crashed and when the standby was promoted.
struct Events {
    crash_start: Instant,
    crash_end: Instant,
    promote_start: Instant,
    promote_end: Instant,
}

async fn failover(promote_after: Duration) {
    let pair = tokio::task::spawn_blocking(Pair::start).await.unwrap();
    sql(
        &pair.admin(pair.primary_port),
        "CREATE DATABASE kmsd_failover",
    )
    .await;
    let url = pair.fleet_url("kmsd_failover");
    let hosts = start_fleet(&url).await;
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.addr).collect();

    // Load from both hosts; the primary crashes under it.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    // Eight at a time, a few dozen machines in all (the pool holds 50):
    // some are in flight when the primary dies.
    let mut load = drive(
        &addrs,
        4,
        Duration::from_millis(300),
        stop.clone(),
        log.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (crash_start, crash_end) = pg_action("crash", pair.path("primary")).await;
    tokio::time::sleep(promote_after).await;
    let (promote_start, promote_end) = pg_action("promote", pair.path("standby")).await;
    let ev = Events {
        crash_start,
        crash_end,
        promote_start,
        promote_end,
    };

    // (a) Both hosts count again within the store timeout and a few seconds
    // of the promotion.
    let deadline = ev.promote_start + STORE_TIMEOUT + GRACE;
    let back = loop {
        let back = recovered(&log.lock().unwrap(), hosts.len(), ev.crash_end);
        if let Some(back) = back.iter().copied().collect::<Option<Vec<Instant>>>() {
            break back;
        }
        assert!(
            Instant::now() < deadline,
            "hosts not counting {:?} after the promotion: {back:?}, last tries {:?}",
            STORE_TIMEOUT + GRACE,
            log.lock().unwrap().iter().rev().take(4).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A little more load on the promoted database, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    let log = log.lock().unwrap().clone();
    let since_promotion: Vec<Duration> = back
        .iter()
        .map(|t| t.saturating_duration_since(ev.promote_start))
        .collect();
    eprintln!(
        "crash took {:?}, promotion began {:?} after it and took {:?}; hosts counting again {:?} after the crash, {since_promotion:?} after the promotion began",
        ev.crash_end - ev.crash_start,
        ev.promote_start - ev.crash_end,
        ev.promote_end - ev.promote_start,
        back.iter().map(|t| *t - ev.crash_end).collect::<Vec<_>>(),
    );
    assert!(
        since_promotion.iter().all(|t| *t <= STORE_TIMEOUT + GRACE),
        "{since_promotion:?}"
    );
    check_gap(&log, &ev);
    check_promoted(&url, &log, &ev).await;

    // (c) The count goes on from there, through either host.
    let n = read_pools(&url).await.len() as u32;
    for (i, &addr) in addrs.iter().enumerate() {
        let t = activate(i, addr).await;
        assert!(
            matches!(t.answer, Answer::Counted(c) if c == n + 1 + i as u32),
            "after {n} machines: {t:?}"
        );
    }
    for h in hosts {
        h.stop().await;
    }
    drop(pair);
}

/// Between the crash and the promotion there is no writable database: a
/// request sent then is answered E_FAIL, within the store timeout.
fn check_gap(log: &[Try], ev: &Events) {
    let gap: Vec<&Try> = log
        .iter()
        .filter(|t| t.sent >= ev.crash_end && t.done <= ev.promote_start)
        .collect();
    for t in &gap {
        assert!(matches!(t.answer, Answer::Refused), "in the gap: {t:?}");
        assert!(
            t.done - t.sent <= STORE_TIMEOUT + Duration::from_secs(1),
            "{t:?}"
        );
    }
    if ev.promote_start - ev.crash_end > STORE_TIMEOUT {
        assert!(gap.len() >= 4, "requests in a gap of seconds: {gap:?}");
    }
}

/// The Windows pool's machines in the (promoted) fleet database.
async fn read_pools(url: &str) -> HashSet<Guid> {
    let reader =
        kmsd::store::StoreReader::open(&Backend::Postgres(url.to_owned()), "/".as_ref()).unwrap();
    let pools = reader.pools(0).await.unwrap();
    let w = pools
        .iter()
        .find(|p| p.pool == products::Pool::Windows)
        .unwrap();
    w.entries.iter().map(|(g, _)| *g).collect()
}

/// (b) Every machine answered is counted in the promoted database and in its
/// activation log; no machine answered E_FAIL is counted, unless its
/// request was in flight when the primary crashed (a commit the standby
/// had but whose acknowledgement died with the primary: in doubt, and a
/// retry finds it counted, not counted twice); no count handed out twice.
async fn check_promoted(url: &str, log: &[Try], ev: &Events) {
    let counted: HashSet<Guid> = log
        .iter()
        .filter(|t| matches!(t.answer, Answer::Counted(_)))
        .map(|t| t.cmid)
        .collect();
    let refused: Vec<&Try> = log
        .iter()
        .filter(|t| matches!(t.answer, Answer::Refused))
        .collect();
    let other: Vec<&Try> = log
        .iter()
        .filter(|t| matches!(t.answer, Answer::Other(_)))
        .collect();
    let in_doubt = |t: &Try| t.sent < ev.crash_end && t.done > ev.crash_start;
    eprintln!(
        "{} tries: {} counted, {} refused ({} in flight at the crash), {} other",
        log.len(),
        counted.len(),
        refused.len(),
        refused.iter().filter(|t| in_doubt(t)).count(),
        other.len()
    );
    assert!(other.is_empty(), "every try answered: {other:?}");
    assert!(
        counted.len() + 4 < 50,
        "the pool holds every machine (no eviction): {} counted",
        counted.len()
    );
    let pool = read_pools(url).await;
    let reader =
        kmsd::store::StoreReader::open(&Backend::Postgres(url.to_owned()), "/".as_ref()).unwrap();
    let logged: HashSet<Guid> = reader
        .recent(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.result.is_answered())
        .map(|a| a.cmid)
        .collect();
    for id in &counted {
        assert!(pool.contains(id), "acknowledged {id} lost in the failover");
        assert!(
            logged.contains(id),
            "acknowledged {id} not in the activation log"
        );
    }
    let mut doubtful = 0;
    for t in &refused {
        if pool.contains(&t.cmid) || logged.contains(&t.cmid) {
            assert!(
                in_doubt(t),
                "refused {t:?} counted (sent {:?} after the crash)",
                t.sent.checked_duration_since(ev.crash_end)
            );
            doubtful += 1;
        }
    }
    eprintln!("refused but counted, in doubt at the crash: {doubtful}");
    // The pool: the four machines before the load, every one answered, and
    // the commits in doubt that made it.
    assert_eq!(
        pool.len(),
        4 + counted.len() + doubtful,
        "machines in the pool"
    );
    let mut counts: Vec<u32> = log
        .iter()
        .filter_map(|t| match t.answer {
            Answer::Counted(n) => Some(n),
            _ => None,
        })
        .collect();
    counts.sort_unstable();
    let before = counts.len();
    counts.dedup();
    assert_eq!(counts.len(), before, "a count handed out twice: {counts:?}");
    assert!(counts.iter().all(|&c| c as usize <= pool.len()));
}

/// A database that stalls longer than the store timeout (a hung primary, a
/// lock held): the requests waiting meanwhile are answered E_FAIL, and must
/// not be counted when it moves again. Reproduced here with the Windows
/// pool's row locked from another session for 3.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_e_fail_while_the_database_stalls_is_not_counted_later() {
    let Some(url) = pg_database().await else {
        return;
    };
    let u = url.clone();
    let h = start_server_with_clock(
        tempfile::tempdir().unwrap(),
        kmsd::host::system_clock(),
        move |c| {
            c.store = Backend::Postgres(u);
            c.store_timeout = STORE_TIMEOUT;
        },
    )
    .await;
    let first = activate(0, h.addr).await;
    assert!(matches!(first.answer, Answer::Counted(1)), "{first:?}");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute("BEGIN; SELECT * FROM pools WHERE pool = 'windows' FOR UPDATE")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut load = drive(
        &[h.addr],
        4,
        Duration::from_millis(10),
        stop.clone(),
        log.clone(),
    );
    tokio::time::sleep(STORE_TIMEOUT + Duration::from_millis(1500)).await;
    c.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    drop(c);
    let _ = task.await;
    let log = log.lock().unwrap().clone();
    let refused: Vec<&Try> = log
        .iter()
        .filter(|t| matches!(t.answer, Answer::Refused))
        .collect();
    assert!(!refused.is_empty(), "the stall was seen: {log:?}");
    let reader =
        kmsd::store::StoreReader::open(&Backend::Postgres(url.clone()), "/".as_ref()).unwrap();
    let logged: HashSet<Guid> = reader
        .recent(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.result.is_answered())
        .map(|a| a.cmid)
        .collect();
    let counted_anyway: Vec<&&Try> = refused
        .iter()
        .filter(|t| logged.contains(&t.cmid))
        .collect();
    assert!(
        counted_anyway.is_empty(),
        "{} of {} machines answered E_FAIL were counted afterwards: {counted_anyway:?}",
        counted_anyway.len(),
        refused.len()
    );
    h.stop().await;
}
