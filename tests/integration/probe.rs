//! `kmsd probe` against kmsd itself (conforming, with and without
//! `--count-check`; and in `--count-mode fixed:50`, flagged as not
//! counting), against a small host built from the sans-IO core that
//! misbehaves in one way at a time, through the real binary (exit codes,
//! JSON, the loopback rule), and with `--discover` over the BIND server of
//! the DNS tests. Every probe is to 127.0.0.1 and bounded by its timeout.

use crate::common::start_server;
use crate::dns::Named;
use futures_util::{SinkExt, StreamExt};
use kmsd::codec::RpcPduCodec;
use kmsd::probe::{self, Card, Grade, ProbeOptions, Verdict};
use kmsd::protocol::crypto::{self, cbc};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::epid::EpidParts;
use kmsd::protocol::kms::products::{self, Pool};
use kmsd::protocol::kms::{self, Answer, Epid, ResponseRandom, Version, hresult};
use kmsd::protocol::rpc::bind::BindPolicy;
use kmsd::protocol::rpc::pdu::MAX_PDU_LEN;
use kmsd::protocol::rpc::request as rpc_request;
use kmsd::protocol::rpc::session::Session;
use kmsd::protocol::server::{self, Decoded, Outcome, Pending};
use kmsd::store::CountMode;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

fn opts(count_check: bool) -> ProbeOptions {
    ProbeOptions::new(Duration::from_secs(5), count_check)
}

async fn card(addr: SocketAddr, count_check: bool) -> Card {
    let o = probe::probe(addr.to_string(), addr, &opts(count_check)).await;
    probe::grade(&o)
}

fn check<'a>(card: &'a Card, name: &str) -> &'a probe::Check {
    card.check(name)
        .unwrap_or_else(|| panic!("no check {name:?}:\n{card}"))
}

fn failed(card: &Card) -> Vec<&str> {
    card.checks
        .iter()
        .filter(|c| c.grade == Grade::Fail)
        .map(|c| c.name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsd_conforms_and_counts() {
    let srv = start_server(|_| {}).await;
    let c = card(srv.addr, false).await;
    assert_eq!(c.verdict, Verdict::Conforms, "{c}");
    assert!(
        c.checks.iter().all(|x| x.grade == Grade::Pass),
        "no warning either:\n{c}"
    );
    assert!(c.check("counting").is_none());
    // The battery is one machine per pool, renewed by a second probe.
    let c = card(srv.addr, false).await;
    assert_eq!(c.verdict, Verdict::Conforms, "{c}");
    let st = srv.status().await.to_string();
    assert_eq!(srv.clients(100).await.len(), 2, "{st}");
    // With --count-check: +1 per new machine, a repeat unchanged.
    let c = card(srv.addr, true).await;
    assert_eq!(c.verdict, Verdict::Conforms, "{c}");
    let counting = check(&c, "counting");
    assert_eq!(counting.grade, Grade::Pass, "{c}");
    assert!(
        counting
            .evidence
            .contains("windows (4 new machines): counts 2 → 3 → 4 → 5 → 5"),
        "{}",
        counting.evidence
    );
    assert!(
        counting
            .evidence
            .contains("office2013+ (3 new machines): counts 2 → 3 → 4 → 4"),
        "{}",
        counting.evidence
    );
    // The probe's own machine plus 4 + 3 new ones, as the help says.
    assert_eq!(srv.clients(100).await.len(), 9);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsd_in_fixed_count_mode_is_flagged_as_not_counting() {
    let srv = start_server(|c| c.count_mode = CountMode::Fixed(50)).await;
    let c = card(srv.addr, true).await;
    assert_eq!(c.verdict, Verdict::Emulator, "{c}");
    assert_eq!(c.exit_code, 1);
    let counting = check(&c, "counting");
    assert_eq!(counting.grade, Grade::Fail, "{c}");
    assert!(
        counting
            .evidence
            .contains("does not count clients (fixed count 50)"),
        "{}",
        counting.evidence
    );
    // Even without --count-check, 50 for Office gives it away.
    let c = card(srv.addr, false).await;
    assert_eq!(c.verdict, Verdict::Emulator, "{c}");
    assert_eq!(failed(&c), ["count plausible"], "{c}");
    srv.stop().await;
}

/// The one way a [`rogue`] host misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    /// None: an honest host in a few lines of the core.
    Nothing,
    /// The Windows ePID for every product.
    EpidGroup,
    /// Protocol 6 responses with one HMAC byte flipped.
    BadHmac,
    /// Answers unknown and retail products too.
    AnswersAll,
    /// A new ePID for every answer.
    RandomEpid,
    /// Closes the connection instead of sending a fault.
    NoFaults,
    /// Answers an interval Windows does not accept.
    ShortInterval,
}

#[derive(Default)]
struct RogueState {
    pools: HashMap<Pool, HashSet<Guid>>,
    epids: HashMap<&'static str, Epid>,
}

/// A KMS host made of the sans-IO core (`server::decode`, `answer`,
/// `refuse`) on a tokio listener, misbehaving as `m` says.
async fn rogue(m: Misbehave) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(Mutex::new(RogueState::default()));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(rogue_conn(s, addr.port(), m, state.clone()));
        }
    });
    addr
}

async fn rogue_conn(s: TcpStream, port: u16, m: Misbehave, state: Arc<Mutex<RogueState>>) {
    let mut framed = Framed::new(s, RpcPduCodec::new(MAX_PDU_LEN));
    let mut session = Session::new(BindPolicy::default(), port, 7);
    while let Some(Ok(pdu)) = framed.next().await {
        let bytes = pdu.into_bytes();
        let mut out = Vec::new();
        match server::decode(&mut session, &bytes, &mut out) {
            Err(_) => return,
            Ok(Decoded::Done(Outcome::Fault { .. })) if m == Misbehave::NoFaults => return,
            Ok(Decoded::Done(_)) => {}
            Ok(Decoded::Request(p)) => decide(&p, m, &state, &mut out),
        }
        if framed.send(out.as_slice()).await.is_err() {
            return;
        }
    }
}

fn decide(p: &Pending, m: Misbehave, state: &Mutex<RogueState>, out: &mut Vec<u8>) {
    let b = &p.request.base;
    let group = products::kms_group(&b.kms_id);
    let served = group.is_some_and(|g| g.is_volume());
    if !served && m != Misbehave::AnswersAll {
        server::refuse(p, hresult::KMS_ID_MISMATCH, "not served", out);
        return;
    }
    let epid_group = match (m, group) {
        (Misbehave::EpidGroup, _) | (_, None) => "Windows",
        (_, Some(g)) => g.epid_group,
    };
    let mut st = state.lock().unwrap();
    let fresh_epid = || {
        let g = products::epid_group(epid_group).unwrap();
        let build = products::win_build(20348).unwrap();
        let today = products::Date {
            year: 2025,
            month: 6,
            day: 1,
        };
        let e = EpidParts::generate(g, build, 1033, today, &mut rand::rng());
        Epid::new(&e.to_string()).unwrap()
    };
    let epid = if m == Misbehave::RandomEpid {
        fresh_epid()
    } else {
        st.epids
            .entry(epid_group)
            .or_insert_with(fresh_epid)
            .clone()
    };
    let pool = group.map_or(Pool::Windows, |g| g.pool);
    let cmids = st.pools.entry(pool).or_default();
    cmids.insert(b.cmid);
    let answer = Answer {
        epid: &epid,
        hwid: [0x3a, 0x1c, 0x04, 0x96, 0x00, 0xb6, 0x00, 0x76],
        count: u32::try_from(cmids.len()).unwrap(),
        activation_interval: if m == Misbehave::ShortInterval {
            1
        } else {
            120
        },
        renewal_interval: 10080,
    };
    if m != Misbehave::BadHmac || p.request.version() != Version::V6 {
        server::answer(p, &answer, &mut rand::rng(), out);
        return;
    }
    // Encrypt and sign as the core does, then flip one HMAC byte and
    // encrypt again: the response decrypts and parses, its HMAC is wrong.
    let mut body = Vec::new();
    kms::encode_response(
        &p.request,
        &answer,
        &ResponseRandom::draw(&mut rand::rng()),
        &mut body,
    );
    let iv: [u8; 16] = body[4..20].try_into().unwrap();
    let cipher = crypto::aes6();
    let mut plain = body[20..].to_vec();
    cbc::decrypt(cipher, &iv, &mut plain).unwrap();
    let len = cbc::unpadded_len(&plain).unwrap();
    plain[len - 1] ^= 0x01;
    cbc::encrypt(cipher, &iv, &mut plain);
    body.truncate(20);
    body.extend_from_slice(&plain);
    rpc_request::encode_response(p.call_id, p.context_id, p.syntax, out, |o| {
        o.extend_from_slice(&body)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_built_host_conforms_when_it_behaves() {
    let c = card(rogue(Misbehave::Nothing).await, true).await;
    assert_eq!(c.verdict, Verdict::Conforms, "{c}");
    assert_eq!(check(&c, "counting").grade, Grade::Pass, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_fails_its_check() {
    let v6 = "v6 Windows Server 2022 Datacenter";
    for (m, verdict, want_failed, evidence) in [
        (
            Misbehave::EpidGroup,
            Verdict::DoesNotConform,
            vec!["ePID group"],
            "does not activate Office 2021",
        ),
        (
            Misbehave::BadHmac,
            Verdict::DoesNotConform,
            vec![
                v6,
                "v6 Office LTSC Professional Plus 2021",
                "v6 Office LTSC Professional Plus 2021 (again)",
                "v6 Windows Server 2022 Datacenter (again)",
            ],
            "HMAC of the response is incorrect",
        ),
        (
            Misbehave::AnswersAll,
            Verdict::Emulator,
            vec![
                "refuses unknown product",
                "refuses retail product (Windows 10/11 (Retail))",
            ],
            "instead of error 0xC004F042",
        ),
        (
            Misbehave::RandomEpid,
            Verdict::Emulator,
            vec!["ePID stable"],
            "a host has one per key",
        ),
        (
            Misbehave::NoFaults,
            Verdict::DoesNotConform,
            vec!["fault: opnum 1", "fault: context 9 never negotiated"],
            "the host closed the connection",
        ),
        (
            Misbehave::ShortInterval,
            Verdict::DoesNotConform,
            vec!["intervals"],
            "activation 1 min",
        ),
    ] {
        let c = card(rogue(m).await, false).await;
        assert_eq!(c.verdict, verdict, "{m:?}:\n{c}");
        assert_eq!(c.exit_code, 1, "{m:?}");
        let mut got = failed(&c);
        got.sort_unstable();
        let mut want = want_failed.clone();
        want.sort_unstable();
        assert_eq!(got, want, "{m:?}:\n{c}");
        let first = check(&c, want_failed[0]);
        assert!(
            first.evidence.contains(evidence),
            "{m:?}: {:?}",
            first.evidence
        );
        if m == Misbehave::NoFaults {
            assert_eq!(check(&c, "connection survives faults").grade, Grade::Warn);
        }
    }
}

fn kmsd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_cards_and_exits_0_1_or_2() {
    let srv = start_server(|_| {}).await;
    let host = srv.addr.to_string();
    let (code, out, err) = kmsd(&["probe", &host]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("KMS host {host}")), "{out}");
    assert!(out.contains("  pass  refuses retail product"), "{out}");
    assert!(out.contains("verdict: CONFORMS"), "{out}");
    let (code, out, _) = kmsd(&["probe", &host, "--count-check", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["hosts"][0]["verdict"], "conforms");
    let checks = v["hosts"][0]["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "counting" && c["grade"] == "pass")
    );
    // An emulator: 1.
    let bad = rogue(Misbehave::AnswersAll).await.to_string();
    let (code, out, _) = kmsd(&["probe", &bad, "--timeout", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("LOOKS LIKE AN EMULATOR"), "{out}");
    // Nobody listening: 2, quickly.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let t = Instant::now();
    let (code, out, _) = kmsd(&["probe", &dead, "--timeout", "2"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("UNREACHABLE"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A public address is refused before any packet, like `load`.
    let (code, _, err) = kmsd(&["probe", "192.0.2.1:1688"]);
    assert_eq!(code, 2);
    assert!(err.contains("--allow-remote"), "{err}");
    // --help says what --count-check costs.
    let (_, help, _) = kmsd(&["probe", "--help"]);
    assert!(
        help.contains("ADDS 7 MACHINES TO THE TARGET'S COUNTS"),
        "{help}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_probes_every_published_host_and_finds_the_emulator() {
    let Some(named) = Named::start() else { return };
    let real = start_server(|c| c.dns = named.settings("kms-a", 0, 10)).await;
    let mut kept = named.settings("kms-b", 0, 10);
    kept.withdraw_on_stop = false;
    let fixed = start_server(|c| {
        c.dns = kept;
        c.count_mode = CountMode::Fixed(50);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while named.srv().await.len() < 2 {
        assert!(Instant::now() < deadline, "the two records never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dns = named.addr.to_string();
    let (code, out, err) = kmsd(&[
        "probe",
        "--discover",
        "lab.test",
        "--dns-server",
        &dns,
        "--json",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{out}");
    let verdict = |name: &str, port: u16| {
        hosts
            .iter()
            .find(|h| h["target"] == format!("{name}.lab.test:{port}"))
            .unwrap_or_else(|| panic!("{name} not probed: {out}"))["verdict"]
            .clone()
    };
    assert_eq!(verdict("kms-a", real.addr.port()), "conforms");
    assert_eq!(verdict("kms-b", fixed.addr.port()), "emulator");
    // The text cards name each host.
    let (code, out, _) = kmsd(&["probe", "--discover", "lab.test", "--dns-server", &dns]);
    assert_eq!(code, 1);
    assert!(out.contains("KMS host kms-a.lab.test:"), "{out}");
    assert!(out.contains("LOOKS LIKE AN EMULATOR"), "{out}");
    // Once the emulator is gone its record still names it: unreachable, 2.
    fixed.stop().await;
    let (code, out, _) = kmsd(&[
        "probe",
        "--discover",
        "lab.test",
        "--dns-server",
        &dns,
        "--timeout",
        "2",
        "--json",
    ]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let verdicts: std::collections::BTreeSet<String> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{} {}", h["target"].as_str().unwrap(), h["verdict"]))
        .collect();
    let a = format!("kms-a.lab.test:{} \"conforms\"", real.addr.port());
    assert!(verdicts.contains(&a), "{verdicts:?}");
    assert!(
        verdicts
            .iter()
            .any(|v| v.starts_with("kms-b") && v.ends_with("\"unreachable\"")),
        "{verdicts:?}"
    );
    real.stop().await;
}
