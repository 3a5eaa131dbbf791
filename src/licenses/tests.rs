use super::*;
use proptest::prelude::*;

const DC: Guid = Guid::from_u128(0x34e1ae55_27f8_4950_8877_7a03be5fb181);
const STD: Guid = Guid::from_u128(0xde32eafd_aaee_4662_9444_c1befb41bde2);
const ESS: Guid = Guid::from_u128(0x034d3cbb_5d4b_4245_b3f8_f84571314078);
const TODAY: Day = Day(20_000);

fn pack(id: PackId, product: Guid, covers: &[Guid], quantity: u32, enforce: Enforce) -> Pack {
    Pack {
        id,
        product,
        covers: covers.to_vec(),
        quantity,
        enforce,
        agreement: String::new(),
        starts: None,
        expires: None,
        note: String::new(),
    }
}

fn cmid(n: u128) -> Guid {
    Guid::from_u128(n)
}

#[test]
fn below_the_threshold_no_seat_then_seats_until_full_then_refused() {
    let mut b = Book::new(vec![pack(1, DC, &[STD], 3, Enforce::Hard)], [], []);
    assert_eq!(b.decide(&DC, cmid(1), false, TODAY), Seat::None);
    assert_eq!(b.decide(&DC, cmid(5), true, TODAY), Seat::Taken(1));
    assert_eq!(b.decide(&STD, cmid(6), true, TODAY), Seat::Taken(1));
    assert_eq!(b.decide(&DC, cmid(7), true, TODAY), Seat::Taken(1));
    assert_eq!(b.decide(&DC, cmid(8), true, TODAY), Seat::Refused(1));
    assert_eq!(b.in_use(1), 3, "a refusal takes no seat");
    // A holder always renews, even full, even below the threshold.
    assert_eq!(b.decide(&DC, cmid(5), false, TODAY), Seat::Renewed(1));
    // No pack covers Essentials: never refused.
    assert_eq!(b.decide(&ESS, cmid(9), true, TODAY), Seat::None);
}

#[test]
fn the_exact_pack_first_then_the_one_expiring_first() {
    let mut covering = pack(1, DC, &[STD], 5, Enforce::Warn);
    covering.expires = Some(Day(TODAY.0 + 10));
    let mut late = pack(2, STD, &[], 1, Enforce::Warn);
    late.expires = Some(Day(TODAY.0 + 300));
    let mut soon = pack(3, STD, &[], 1, Enforce::Warn);
    soon.expires = Some(Day(TODAY.0 + 30));
    let mut b = Book::new(vec![covering, late, soon], [], []);
    assert_eq!(b.decide(&STD, cmid(1), true, TODAY), Seat::Taken(3));
    assert_eq!(b.decide(&STD, cmid(2), true, TODAY), Seat::Taken(2));
    assert_eq!(
        b.decide(&STD, cmid(3), true, TODAY),
        Seat::Taken(1),
        "then the covering pack"
    );
}

#[test]
fn warn_and_off_take_seats_over_their_quantity() {
    let mut b = Book::new(vec![pack(1, DC, &[], 1, Enforce::Warn)], [], []);
    assert_eq!(b.decide(&DC, cmid(1), true, TODAY), Seat::Taken(1));
    assert_eq!(b.decide(&DC, cmid(2), true, TODAY), Seat::Over(1));
    // A hard pack full, a warn pack covering: the machine goes over there.
    let mut b = Book::new(
        vec![
            pack(1, DC, &[], 0, Enforce::Hard),
            pack(2, STD, &[DC], 0, Enforce::Off),
        ],
        [],
        [],
    );
    assert_eq!(b.decide(&DC, cmid(1), true, TODAY), Seat::Over(2));
}

#[test]
fn packs_not_yet_started_or_expired_bind_nothing() {
    let mut p = pack(1, DC, &[], 5, Enforce::Hard);
    p.expires = Some(Day(TODAY.0 - 1));
    let mut q = pack(2, DC, &[], 5, Enforce::Hard);
    q.starts = Some(Day(TODAY.0 + 1));
    let mut b = Book::new(vec![p.clone(), q], [], []);
    assert_eq!(b.decide(&DC, cmid(1), true, TODAY), Seat::None);
    assert!(!Coverage::of(&[p], TODAY).covers(&DC));
}

fn seat(n: u128, pack: PackId, sku: Guid, last_ms: i64) -> SeatRow {
    SeatRow {
        cmid: cmid(n),
        pack,
        sku,
        workstation: format!("m{n}"),
        address: String::new(),
        host: String::new(),
        first_ms: n as i64,
        last_ms,
    }
}

#[test]
fn reclaim_frees_old_seats_and_moves_expired_packs_seats_while_there_is_room() {
    let now = TODAY.start_ms();
    let ageing = Ageing::at(now, 10_080, 180);
    let mut old = pack(1, DC, &[], 3, Enforce::Warn);
    old.expires = Some(Day(TODAY.0 - 1));
    let new = pack(2, DC, &[], 1, Enforce::Warn);
    let seats = vec![
        seat(1, 1, DC, now - 181 * 86_400_000),
        seat(2, 1, DC, now),
        seat(3, 1, DC, now),
    ];
    let r = plan_reclaim(&[old.clone(), new.clone()], &seats, TODAY, ageing);
    assert_eq!(r.released, vec![cmid(1)]);
    assert_eq!(
        r.moved,
        vec![(cmid(2), 2)],
        "one room; the older seat moves"
    );
    // What stays in the expired pack is over.
    let u = usage(&[old, new], &[(1, 1, 0), (2, 1, 0)], TODAY);
    assert_eq!((u[0].owned, u[0].over), (0, 1));
    assert_eq!((u[1].in_use, u[1].free), (1, 0));
}

#[test]
fn stale_after_three_missed_renewals() {
    let now = TODAY.start_ms();
    let a = Ageing::at(now, 10_080, 180);
    assert!(!a.is_stale(now - 20 * 86_400_000));
    assert!(a.is_stale(now - 22 * 86_400_000));
}

#[test]
fn retire_moves_where_covered_and_frees_the_rest() {
    let seats = vec![seat(1, 1, DC, 0), seat(2, 1, ESS, 0)];
    let (moved, freed) = plan_retire(
        &[
            pack(1, DC, &[ESS], 2, Enforce::Warn),
            pack(2, DC, &[], 0, Enforce::Hard),
        ],
        1,
        &seats,
        TODAY,
    );
    assert_eq!(
        moved,
        vec![(cmid(1), 2)],
        "over in pack 2: no room, but it covers"
    );
    assert_eq!(freed, vec![cmid(2)]);
}

#[test]
fn duplicates_are_cmids_under_several_names() {
    let d = group_duplicates(vec![
        (cmid(1), "a".into(), "10.0.0.1".into(), 5),
        (cmid(1), "b".into(), "10.0.0.2".into(), 9),
        (cmid(2), "c".into(), "10.0.0.3".into(), 1),
    ]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].machines[0].0, "b", "newest first");
}

#[test]
fn dates_parse_and_refuse() {
    assert_eq!(
        format_day(parse_day("2027-02-28", "x").unwrap()),
        "2027-02-28"
    );
    assert!(
        parse_day("2027-02-30", "x")
            .unwrap_err()
            .contains("no such date")
    );
    assert!(
        parse_day("27-2-1", "--expires")
            .unwrap_err()
            .contains("--expires")
    );
}

proptest! {
    /// However requests arrive, no pack binds more than its quantity
    /// unless it lets machines over (warn, off), a hard refusal happens
    /// only when every covering pack is full, and a machine holds one seat.
    #[test]
    fn seats_never_exceed_hard_quantities(
        quantities in proptest::collection::vec((0u32..4, 0u8..3), 1..4),
        asks in proptest::collection::vec((0u128..12, 0usize..3, any::<bool>()), 0..60),
    ) {
        let skus = [DC, STD, ESS];
        let packs: Vec<Pack> = quantities.iter().enumerate().map(|(i, &(q, e))| {
            let enforce = [Enforce::Off, Enforce::Warn, Enforce::Hard][e as usize];
            pack(i as PackId + 1, skus[i % 2], &[STD], q, enforce)
        }).collect();
        let mut b = Book::new(packs.clone(), [], []);
        let mut holder: std::collections::HashMap<Guid, PackId> = Default::default();
        for (m, s, activates) in asks {
            let sku = skus[s];
            let out = b.decide(&sku, cmid(m), activates, TODAY);
            if let Some(&p) = holder.get(&cmid(m)) {
                prop_assert_eq!(out, Seat::Renewed(p));
                continue;
            }
            let cover = covering(&packs, &sku, TODAY);
            match out {
                Seat::Refused(_) => {
                    prop_assert!(activates);
                    prop_assert!(cover.iter().all(|p| p.enforce == Enforce::Hard && b.in_use(p.id) >= p.quantity));
                }
                Seat::None => prop_assert!(!activates || cover.is_empty()),
                Seat::Taken(p) | Seat::Over(p) => {
                    prop_assert!(activates);
                    holder.insert(cmid(m), p);
                }
                Seat::Renewed(_) => prop_assert!(false, "renewed without a seat"),
            }
        }
        for p in &packs {
            if p.enforce == Enforce::Hard {
                prop_assert!(b.in_use(p.id) <= p.quantity);
            }
        }
    }
}

#[test]
fn a_second_cmid_under_one_name_is_a_likely_duplicate_never_merged() {
    let now = TODAY.start_ms();
    let mut old = seat(1, 1, DC, now);
    old.workstation = "SRV-01".into();
    let mut new = seat(2, 1, DC, now);
    new.workstation = "srv-01".into();
    let other = seat(3, 1, DC, now);
    let all = [old, new, other];
    let v = view::SeatView::list(&all, Ageing::at(now, 10_080, 180), |_| true);
    assert_eq!(v.len(), 3, "both seats stay");
    assert_eq!(v[0].likely_duplicate_of, vec![cmid(2).to_string()]);
    assert_eq!(v[1].likely_duplicate_of, vec![cmid(1).to_string()]);
    assert!(v[2].likely_duplicate_of.is_empty());
}
