//! The ePID checks of the card: the format, a CSVLK group that activates
//! the product asked, host build and platform consistent, the date after
//! the key and the build and not in the future, and one ePID per product.

use super::{Answered, Check, ExchangeSeen};
use crate::protocol::guid::Guid;
use crate::protocol::kms::epid::EpidParts;
use crate::protocol::kms::products::{self, Date, KmsGroup};
use std::collections::{BTreeMap, BTreeSet};

/// The ePID checks of every verified answer.
pub(super) fn checks(answers: &[(&ExchangeSeen, &Answered)], today: Date) -> Vec<Check> {
    let f = Findings::of(answers, today);
    let mut out = vec![format_check(answers, &f.format_bad)];
    if !f.parsed.is_empty() {
        out.push(group_check(answers, &f.group_bad));
        out.push(build_check(&f));
        out.push(date_check(&f));
    }
    out.push(stable(answers));
    out
}

/// What is wrong with the answers' ePIDs, check by check.
#[derive(Default)]
struct Findings {
    format_bad: Vec<String>,
    group_bad: Vec<String>,
    build_bad: Vec<String>,
    build_warn: Vec<String>,
    date_bad: Vec<String>,
    /// The ePIDs that parse.
    parsed: Vec<EpidParts>,
}

impl Findings {
    fn of(answers: &[(&ExchangeSeen, &Answered)], today: Date) -> Self {
        let mut f = Self::default();
        for (x, a) in answers {
            let Some(p) = EpidParts::parse(&a.epid) else {
                f.format_bad.push(format!("{:?}", a.epid));
                continue;
            };
            f.parsed.push(p);
            if let Err(e) = group_of(&p, x) {
                f.group_bad.push(format!("{}: {e}", x.what));
            }
            match products::win_build(p.build) {
                Some(b) if b.platform_id != p.platform_id => f.build_bad.push(format!(
                    "platform {} with build {} ({} has platform {})",
                    p.platform_id, p.build, b.name, b.platform_id
                )),
                Some(_) => {}
                None => f
                    .build_warn
                    .push(format!("build {} is no known Windows build", p.build)),
            }
            if let Some(e) = date_problem(&p, today) {
                f.date_bad.push(e);
            }
        }
        f
    }
}

fn product_name(kms_id: &Guid) -> String {
    products::kms_group(kms_id).map_or_else(|| kms_id.to_string(), |g| g.name.to_owned())
}

/// Whether the ePID `p` may answer the product of `x`.
fn group_of(p: &EpidParts, x: &ExchangeSeen) -> Result<(), String> {
    match products::kms_group(&x.kms_id) {
        Some(g) => epid_fits(p, g),
        None => Err("product not in the catalog".to_owned()),
    }
}

/// Whether an ePID with `p`'s group and key id may answer `group`: a CSVLK
/// of that group id and key range activates it, or it is the ePID group
/// the catalog names for it.
fn epid_fits(p: &EpidParts, group: &KmsGroup) -> Result<(), String> {
    let in_range = |min: Option<u64>, max: Option<u64>| {
        min.zip(max)
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&p.key_id))
    };
    let same_group: Vec<_> = products::csvlks()
        .iter()
        .filter(|c| c.group_id == Some(p.group_id))
        .collect();
    if same_group
        .iter()
        .any(|c| c.activates.contains(&group.id) && in_range(c.min_key_id, c.max_key_id))
    {
        return Ok(());
    }
    if let Some(g) = products::epid_group(group.epid_group)
        && g.group_id == p.group_id
        && (g.min_key_id..=g.max_key_id).contains(&p.key_id)
    {
        return Ok(());
    }
    match same_group.first() {
        Some(c) => Err(format!(
            "group {} ({}) does not activate {}",
            p.group_id, c.name, group.name
        )),
        None => Err(format!("group {} is no known CSVLK", p.group_id)),
    }
}

/// What is wrong with the activation date of `p`: in the future (a day's
/// grace for time zones), or before its build or its key group was
/// released.
fn date_problem(p: &EpidParts, today: Date) -> Option<String> {
    let mut earliest = Vec::new();
    if let Some(b) = products::win_build(p.build) {
        earliest.push((b.release, format!("build {} released", p.build)));
    }
    if let Some(c) = products::csvlks()
        .iter()
        .filter(|c| c.group_id == Some(p.group_id))
        .filter_map(|c| c.release)
        .min()
    {
        earliest.push((c, format!("group {} released", p.group_id)));
    }
    if p.activated > Date::from_days_since_unix_epoch(today.days_since_unix_epoch() + 1) {
        return Some(format!("{} is in the future", p.activated));
    }
    earliest
        .iter()
        .find(|(d, _)| p.activated < *d)
        .map(|(d, what)| format!("{} is before {what} {d}", p.activated))
}

fn format_check(answers: &[(&ExchangeSeen, &Answered)], bad: &[String]) -> Check {
    if bad.is_empty() {
        let sample = answers.first().map_or("", |(_, a)| a.epid.as_str());
        return Check::pass("ePID format", sample.to_owned());
    }
    Check::fail(
        "ePID format",
        format!("not a valid ePID: {}", bad.join(", ")),
    )
    .emulator()
}

fn group_check(answers: &[(&ExchangeSeen, &Answered)], bad: &[String]) -> Check {
    if !bad.is_empty() {
        return Check::fail("ePID group", bad.join("; "));
    }
    let groups: BTreeSet<String> = answers
        .iter()
        .filter_map(|(x, a)| {
            EpidParts::parse(&a.epid)
                .map(|p| format!("{} for {}", p.group_id, product_name(&x.kms_id)))
        })
        .collect();
    Check::pass(
        "ePID group",
        format!(
            "the CSVLK group activates each product: {}",
            groups.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn build_check(f: &Findings) -> Check {
    if !f.build_bad.is_empty() {
        return Check::fail("ePID host build", f.build_bad.join("; "));
    }
    if !f.build_warn.is_empty() {
        return Check::warn("ePID host build", f.build_warn.join("; "));
    }
    let builds: BTreeSet<String> = f
        .parsed
        .iter()
        .map(|p| {
            let name = products::win_build(p.build).map_or("", |b| b.name);
            format!("{} ({name}), platform {}", p.build, p.platform_id)
        })
        .collect();
    Check::pass(
        "ePID host build",
        builds.into_iter().collect::<Vec<_>>().join("; "),
    )
}

fn date_check(f: &Findings) -> Check {
    if !f.date_bad.is_empty() {
        return Check::fail("ePID date", f.date_bad.join("; "));
    }
    let dates: BTreeSet<String> = f.parsed.iter().map(|p| p.activated.to_string()).collect();
    Check::pass(
        "ePID date",
        format!(
            "{} (after the key and the build, not in the future)",
            dates.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// A host has one ePID per CSVLK: the same product group asked twice gets
/// the same ePID.
fn stable(answers: &[(&ExchangeSeen, &Answered)]) -> Check {
    let mut by_group: BTreeMap<Guid, Vec<&str>> = BTreeMap::new();
    for (x, a) in answers {
        by_group.entry(x.kms_id).or_default().push(&a.epid);
    }
    let mut repeated = 0;
    for (id, epids) in &by_group {
        let mut distinct = epids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 {
            return Check::fail(
                "ePID stable",
                format!(
                    "{} ePIDs in {} answers for {}: a host has one per key",
                    distinct.len(),
                    epids.len(),
                    product_name(id)
                ),
            )
            .emulator();
        }
        repeated += epids.len();
    }
    if repeated > by_group.len() {
        Check::pass(
            "ePID stable",
            format!("the same ePID in every answer for the same product ({repeated} answers)"),
        )
    } else {
        Check::warn("ePID stable", "no product was asked twice")
    }
}
