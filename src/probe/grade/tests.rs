//! The grading rules on hand-made observations: a conforming host, then
//! each way a host can fail or warn, one at a time.

use super::*;
use crate::protocol::kms::epid::EpidParts;
use rand::SeedableRng;

const TODAY: Date = Date {
    year: 2026,
    month: 11,
    day: 29,
};

fn sku(name: &str) -> &'static products::Sku {
    products::find_sku(name).unwrap()
}

fn epid_for(group: &str, seed: u64) -> String {
    let g = products::epid_group(group).unwrap();
    let b = products::win_build(20348).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    EpidParts::generate(g, b, 1033, TODAY, &mut rng).to_string()
}

fn answer(version: u16, epid: &str, count: u32) -> Seen {
    Seen::Answer(Answered {
        version,
        syntax: "NDR32",
        epid: epid.to_owned(),
        hwid: (version == 6).then(|| "3A1C049600B60076".to_owned()),
        count,
        activation_interval: 120,
        renewal_interval: 10080,
    })
}

fn exchange(version: u16, product: &str, seen: Seen) -> ExchangeSeen {
    ExchangeSeen {
        what: format!("v{version} {product}"),
        kms_id: sku(product).kms_id,
        version,
        seen,
        ms: 2.0,
    }
}

const WIN: &str = "Windows Server 2022 Datacenter";
const OFFICE: &str = "Office LTSC Professional Plus 2021";

fn refusal(what: &str, expected: u32, fault: bool, seen: Seen) -> RefusalSeen {
    RefusalSeen {
        what: what.into(),
        expected,
        fault,
        seen,
        ms: 1.0,
    }
}

/// What kmsd itself shows the probe.
fn good() -> Observations {
    let win = epid_for("Windows", 1);
    let office = epid_for("Office2021", 2);
    let neg = |first, rest, alter_context| Negotiated {
        first,
        rest,
        alter_context,
    };
    Observations {
        target: "127.0.0.1:1688".into(),
        addr: Some("127.0.0.1:1688".parse().unwrap()),
        connect: Ok(0.4),
        binds: vec![
            BindSeen {
                offer: "NDR32 only",
                result: Ok(neg("NDR32", "NDR32", false)),
                ms: 1.0,
            },
            BindSeen {
                offer: "NDR32 + NDR64 + BTFN",
                result: Ok(neg("NDR32", "NDR64", true)),
                ms: 1.0,
            },
        ],
        alter_context: Some(Ok("context 1 added".into())),
        per_connection: Some((3, 3)),
        faults: vec![
            refusal(
                "opnum 1",
                0x1c01_0002,
                true,
                Seen::Fault {
                    status: 0x1c01_0002,
                },
            ),
            refusal(
                "context 9",
                0x1c01_0003,
                true,
                Seen::Fault {
                    status: 0x1c01_0003,
                },
            ),
        ],
        after_faults: Some(answer(6, &win, 1)),
        exchanges: vec![
            exchange(6, WIN, answer(6, &win, 1)),
            exchange(5, WIN, answer(5, &win, 1)),
            exchange(4, WIN, answer(4, &win, 1)),
            exchange(6, OFFICE, answer(6, &office, 1)),
            exchange(6, OFFICE, answer(6, &office, 1)),
        ],
        refusals: vec![
            refusal(
                "version 7.0",
                0x8007_000D,
                false,
                Seen::Hresult {
                    hresult: 0x8007_000D,
                },
            ),
            refusal(
                "unknown product",
                0xC004_F042,
                false,
                Seen::Hresult {
                    hresult: 0xC004_F042,
                },
            ),
            refusal(
                "retail product",
                0xC004_F042,
                false,
                Seen::Hresult {
                    hresult: 0xC004_F042,
                },
            ),
        ],
        counting: None,
        today: TODAY,
    }
}

fn grade_of<'a>(card: &'a Card, name: &str) -> &'a Check {
    card.check(name)
        .unwrap_or_else(|| panic!("no check {name:?} in\n{card}"))
}

fn steps(pool: Pool, seq: &[(bool, u32, u32)]) -> Vec<CountSeen> {
    seq.iter()
        .map(|&(fresh, n_policy, count)| CountSeen {
            pool,
            fresh,
            n_policy,
            seen: answer(6, "x", count),
            ms: 1.0,
        })
        .collect()
}

#[test]
fn a_host_like_kmsd_conforms() {
    let card = grade(&good());
    assert_eq!(card.verdict, Verdict::Conforms, "{card}");
    assert_eq!(card.exit_code, 0);
    assert!(card.checks.iter().all(|c| c.grade == Grade::Pass), "{card}");
    assert!(card.summary.contains("counting not checked"), "{card}");
    for name in [
        "ePID group",
        "ePID host build",
        "ePID date",
        "ePID stable",
        "HwId (v6)",
        "intervals",
        "count plausible",
        "latency",
    ] {
        assert_eq!(grade_of(&card, name).grade, Grade::Pass, "{card}");
    }
    // The card prints one line per check and the verdict.
    let text = card.to_string();
    assert_eq!(text.lines().count(), card.checks.len() + 2, "{text}");
    assert!(text.contains("verdict: CONFORMS"), "{text}");
}

#[test]
fn an_unreachable_host_gets_exit_code_2_and_only_the_connect_check() {
    let o = Observations::unreachable("10.0.0.9:1688".into(), None, "refused".into(), TODAY);
    let card = grade(&o);
    assert_eq!(card.verdict, Verdict::Unreachable);
    assert_eq!(card.exit_code, 2);
    assert_eq!(card.checks.len(), 1);
    let ok = grade(&good());
    assert_eq!(exit_code(&[ok.clone(), card.clone()]), 2);
    assert_eq!(exit_code(std::slice::from_ref(&ok)), 0);
    let mut bad = good();
    bad.refusals[0].seen = Seen::Hresult { hresult: 0 };
    assert_eq!(exit_code(&[ok, grade(&bad)]), 1);
}

#[test]
fn an_epid_of_another_csvlk_group_fails() {
    let mut o = good();
    // The Office request answered with the Windows ePID.
    let win = o.exchanges[0].seen.answer().unwrap().epid.clone();
    for x in o.exchanges.iter_mut().filter(|x| x.what.contains("Office")) {
        x.seen = answer(6, &win, 1);
    }
    let card = grade(&o);
    let c = grade_of(&card, "ePID group");
    assert_eq!(c.grade, Grade::Fail, "{card}");
    assert!(
        c.evidence.contains("does not activate Office 2021"),
        "{}",
        c.evidence
    );
    assert_eq!(card.verdict, Verdict::DoesNotConform);
}

#[test]
fn malformed_random_or_implausible_epids_fail() {
    // Not an ePID at all: an emulator's placeholder.
    let mut o = good();
    o.exchanges[1].seen = answer(5, "55041-00168-305-190596-03-1033-6.0001-2542018x", 1);
    let card = grade(&o);
    assert_eq!(grade_of(&card, "ePID format").grade, Grade::Fail);
    assert_eq!(card.verdict, Verdict::Emulator, "{card}");

    // A new ePID per request.
    let mut o = good();
    o.exchanges[1].seen = answer(5, &epid_for("Windows", 99), 1);
    let card = grade(&o);
    let c = grade_of(&card, "ePID stable");
    assert_eq!(c.grade, Grade::Fail, "{card}");
    assert!(
        c.emulator && c.evidence.contains("2 ePIDs"),
        "{}",
        c.evidence
    );
    assert_eq!(card.verdict, Verdict::Emulator);

    // Platform 6401 (Windows 8.1) with build 20348; a date in the future;
    // a date before the build existed.
    let w = epid_for("Windows", 1);
    let mut p = EpidParts::parse(&w).unwrap();
    p.platform_id = 6401;
    let mut o = good();
    o.exchanges[0].seen = answer(6, &p.to_string(), 1);
    let card = grade(&o);
    assert_eq!(
        grade_of(&card, "ePID host build").grade,
        Grade::Fail,
        "{card}"
    );
    let mut p = EpidParts::parse(&w).unwrap();
    p.activated = Date {
        year: 2027,
        month: 3,
        day: 1,
    };
    let mut o = good();
    o.exchanges[0].seen = answer(6, &p.to_string(), 1);
    let card = grade(&o);
    let c = grade_of(&card, "ePID date");
    assert!(
        c.grade == Grade::Fail && c.evidence.contains("future"),
        "{card}"
    );
    let mut p = EpidParts::parse(&w).unwrap();
    p.activated = Date {
        year: 2019,
        month: 1,
        day: 1,
    };
    let mut o = good();
    o.exchanges[0].seen = answer(6, &p.to_string(), 1);
    let c = grade_of(&grade(&o), "ePID date").clone();
    assert!(
        c.grade == Grade::Fail && c.evidence.contains("before build 20348"),
        "{c:?}"
    );
    // An unknown build is only a warning.
    let mut p = EpidParts::parse(&w).unwrap();
    p.build = 12345;
    let mut o = good();
    o.exchanges[0].seen = answer(6, &p.to_string(), 1);
    assert_eq!(grade_of(&grade(&o), "ePID host build").grade, Grade::Warn);
}

#[test]
fn broken_crypto_and_missing_refusals_fail() {
    let mut o = good();
    o.exchanges[0].seen =
        Seen::error("response failed verification: HMAC of the response is incorrect");
    let card = grade(&o);
    let c = grade_of(&card, "v6 Windows Server 2022 Datacenter");
    assert!(
        c.grade == Grade::Fail && c.evidence.contains("HMAC"),
        "{card}"
    );
    assert_eq!(card.verdict, Verdict::DoesNotConform);

    // The v6 IV echoed: only emulators do that.
    let mut o = good();
    o.exchanges[0].seen = Seen::Error {
        error: "response reuses the request IV".into(),
        emulator: true,
    };
    assert_eq!(grade(&o).verdict, Verdict::Emulator);

    // A retail product answered.
    let mut o = good();
    o.refusals[2].seen = answer(6, &epid_for("Windows", 1), 1);
    let card = grade(&o);
    let c = grade_of(&card, "refuses retail product");
    assert!(c.grade == Grade::Fail && c.emulator, "{card}");
    assert!(
        c.evidence.contains("instead of error 0xC004F042"),
        "{}",
        c.evidence
    );
    assert_eq!(card.verdict, Verdict::Emulator);

    // A wrong HRESULT is a plain failure.
    let mut o = good();
    o.refusals[0].seen = Seen::Hresult {
        hresult: 0xC004_F042,
    };
    let card = grade(&o);
    assert_eq!(grade_of(&card, "refuses version 7.0").grade, Grade::Fail);
    assert_eq!(card.verdict, Verdict::DoesNotConform);

    // No fault for a wrong opnum: the connection closed.
    let mut o = good();
    o.faults[0].seen = Seen::error("the host closed the connection");
    o.after_faults = Some(Seen::error("send failed"));
    let card = grade(&o);
    assert_eq!(grade_of(&card, "fault: opnum 1").grade, Grade::Fail);
    assert_eq!(
        grade_of(&card, "connection survives faults").grade,
        Grade::Warn
    );
}

#[test]
fn rpc_findings_are_graded() {
    let mut o = good();
    o.binds[1].result = Ok(Negotiated {
        first: "NDR32",
        rest: "NDR32",
        alter_context: false,
    });
    let card = grade(&o);
    assert_eq!(
        grade_of(&card, "bind NDR32 + NDR64 + BTFN").grade,
        Grade::Warn
    );
    assert_eq!(
        card.verdict,
        Verdict::Conforms,
        "a warning is not a failure"
    );
    let mut o = good();
    o.per_connection = Some((1, 3));
    o.alter_context = Some(Err("bind_nak".into()));
    let card = grade(&o);
    assert_eq!(
        grade_of(&card, "requests per connection").grade,
        Grade::Fail
    );
    assert_eq!(grade_of(&card, "alter_context").grade, Grade::Fail);
}

#[test]
fn intervals_hwid_and_latency_are_graded() {
    let mut o = good();
    if let Seen::Answer(a) = &mut o.exchanges[1].seen {
        a.activation_interval = 5;
    }
    let c = grade_of(&grade(&o), "intervals").clone();
    assert!(
        c.grade == Grade::Fail && c.evidence.contains("activation 5 min"),
        "{c:?}"
    );
    let mut o = good();
    if let Seen::Answer(a) = &mut o.exchanges[3].seen {
        a.hwid = Some("0000000000000001".into());
    }
    assert_eq!(grade_of(&grade(&o), "HwId (v6)").grade, Grade::Fail);
    let mut o = good();
    for x in &mut o.exchanges {
        if let Seen::Answer(a) = &mut x.seen {
            a.hwid = a.hwid.as_ref().map(|_| "0000000000000000".into());
        }
    }
    assert_eq!(grade_of(&grade(&o), "HwId (v6)").grade, Grade::Warn);
    let mut o = good();
    o.exchanges[2].ms = 2500.0;
    let c = grade_of(&grade(&o), "latency").clone();
    assert!(
        c.grade == Grade::Warn && c.evidence.contains("max 2500.0 ms"),
        "{c:?}"
    );
}

#[test]
fn counts_no_real_host_reports_mark_an_emulator() {
    let mut o = good();
    for x in o.exchanges.iter_mut().filter(|x| x.what.contains("Office")) {
        if let Seen::Answer(a) = &mut x.seen {
            a.count = 50;
        }
    }
    let card = grade(&o);
    let c = grade_of(&card, "count plausible");
    assert!(c.grade == Grade::Fail && c.emulator, "{card}");
    assert_eq!(card.verdict, Verdict::Emulator);
}

#[test]
fn counting_sequences_are_graded() {
    let check = |seq: Vec<CountSeen>| {
        let mut o = good();
        o.counting = Some(seq);
        grade_of(&grade(&o), "counting").clone()
    };
    // +1 per new machine (a client edition raising the capacity), a repeat
    // unchanged.
    let mut real = steps(
        Pool::Windows,
        &[
            (true, 5, 2),
            (true, 5, 3),
            (true, 5, 4),
            (true, 25, 5),
            (false, 5, 5),
        ],
    );
    real.extend(steps(
        Pool::Office2013Plus,
        &[(true, 5, 2), (true, 5, 3), (true, 5, 4), (false, 5, 4)],
    ));
    let c = check(real);
    assert_eq!(c.grade, Grade::Pass, "{c:?}");
    // A full pool stays at its capacity: a warning, not a verdict.
    let c = check(steps(
        Pool::Windows,
        &[(true, 5, 50), (true, 5, 50), (true, 25, 50), (false, 5, 50)],
    ));
    assert_eq!(c.grade, Grade::Warn, "{c:?}");
    // Below capacity, still fixed: kmsd --count-mode fixed:50 in Office.
    let c = check(steps(
        Pool::Office2013Plus,
        &[(true, 5, 50), (true, 5, 50), (true, 5, 50), (false, 5, 50)],
    ));
    assert!(c.grade == Grade::Fail && c.emulator, "{c:?}");
    assert!(
        c.evidence
            .contains("does not count clients (fixed count 50)"),
        "{c:?}"
    );
    let c = check(steps(
        Pool::Windows,
        &[(true, 5, 30), (true, 5, 30), (true, 5, 30), (false, 5, 30)],
    ));
    assert!(c.evidence.contains("fixed count 30") && c.grade == Grade::Fail);
    // vlmcsd: twice the threshold asked.
    let c = check(steps(
        Pool::Windows,
        &[(true, 5, 10), (true, 5, 10), (true, 25, 50), (false, 5, 10)],
    ));
    assert!(c.grade == Grade::Fail && c.emulator, "{c:?}");
    assert!(c.evidence.contains("follows the threshold asked"), "{c:?}");
    // A repeat raising the count, or a count going down.
    let c = check(steps(
        Pool::Windows,
        &[(true, 5, 2), (true, 5, 3), (false, 5, 4)],
    ));
    assert_eq!(c.grade, Grade::Warn, "{c:?}");
    let c = check(steps(
        Pool::Windows,
        &[(true, 5, 4), (true, 5, 3), (false, 5, 3)],
    ));
    assert_eq!(c.grade, Grade::Fail, "{c:?}");
    // A failed request.
    let mut s = steps(Pool::Windows, &[(true, 5, 2)]);
    s[0].seen = Seen::Hresult {
        hresult: 0x8000_4005,
    };
    assert_eq!(check(s).grade, Grade::Fail);
}
