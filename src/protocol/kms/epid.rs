//! Extended PIDs (SPEC §5.2): what a host with a CSVLK installed reports as
//! its identity, e.g. `03612-00206-556-123727-03-1033-17763.0000-2972018`.

use super::products::{Date, EpidGroup, WinBuild};
use std::fmt;

/// The parts of an ePID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpidParts {
    /// Host OS platform id (e.g. 3612 for Windows 10/11/Server 2016+).
    pub platform_id: u32,
    /// CSVLK group id (e.g. 206).
    pub group_id: u32,
    /// CSVLK key id within the group's range.
    pub key_id: u64,
    /// Host locale id (e.g. 1033).
    pub lcid: u32,
    /// Host OS build (e.g. 26100).
    pub build: u32,
    /// CSVLK activation date.
    pub activated: Date,
}

impl fmt::Display for EpidParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:05}-{:05}-{:03}-{:06}-03-{}-{}.0000-{:03}{:04}",
            self.platform_id,
            self.group_id,
            self.key_id / 1_000_000,
            self.key_id % 1_000_000,
            self.lcid,
            self.build,
            self.activated.day_of_year(),
            self.activated.year
        )
    }
}

impl EpidParts {
    /// Parses the canonical form; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('-');
        let mut field = |len: Option<usize>| -> Option<&str> {
            let f = it.next()?;
            let ok = !f.is_empty() && len.is_none_or(|n| f.len() == n);
            ok.then_some(f)
        };
        let platform_id = field(Some(5))?.parse().ok()?;
        let group_id = field(Some(5))?.parse().ok()?;
        let key_hi: u64 = field(Some(3))?.parse().ok()?;
        let key_lo: u64 = field(Some(6))?.parse().ok()?;
        if field(Some(2))? != "03" {
            return None;
        }
        let lcid = field(None)?.parse().ok()?;
        let (build, rev) = field(None)?.split_once('.')?;
        let date = field(Some(7))?;
        if it.next().is_some() || rev != "0000" {
            return None;
        }
        let doy: u16 = date.get(..3)?.parse().ok()?;
        let year: u16 = date.get(3..)?.parse().ok()?;
        let activated = from_year_day(year, doy)?;
        Some(Self {
            platform_id,
            group_id,
            key_id: key_hi * 1_000_000 + key_lo,
            lcid,
            build: build.parse().ok()?,
            activated,
        })
    }

    /// A fresh ePID for `group` on a host running `build`: a key id in the
    /// group's range and an activation date between the later of the CSVLK
    /// and build releases and `today`.
    pub fn generate(
        group: &EpidGroup,
        build: &WinBuild,
        lcid: u32,
        today: Date,
        rng: &mut impl rand::Rng,
    ) -> Self {
        let span = group.max_key_id.saturating_sub(group.min_key_id);
        let key_id = group.min_key_id + rng.next_u64() % (span + 1);
        let first = group
            .csvlk_release
            .days_since_unix_epoch()
            .max(build.release.days_since_unix_epoch());
        let last = today.days_since_unix_epoch().max(first);
        let day = first + (rng.next_u64() % ((last - first) as u64 + 1)) as i64;
        Self {
            platform_id: build.platform_id,
            group_id: group.group_id,
            key_id,
            lcid,
            build: build.build,
            activated: Date::from_days_since_unix_epoch(day),
        }
    }
}

/// The `doy`-th day (1-based) of `year`, if the year has that many days.
fn from_year_day(year: u16, doy: u16) -> Option<Date> {
    let jan1 = Date {
        year,
        month: 1,
        day: 1,
    };
    let d = Date::from_days_since_unix_epoch(jan1.days_since_unix_epoch() + i64::from(doy) - 1);
    (doy >= 1 && d.year == year).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kms::products;

    #[test]
    fn formats_and_parses_the_spec_example() {
        let s = "03612-00206-556-123727-03-1033-17763.0000-2972018";
        let p = EpidParts::parse(s).unwrap();
        assert_eq!(p.platform_id, 3612);
        assert_eq!(p.group_id, 206);
        assert_eq!(p.key_id, 556_123_727);
        assert_eq!(p.build, 17763);
        assert_eq!(
            p.activated,
            Date {
                year: 2018,
                month: 10,
                day: 24
            }
        );
        assert_eq!(p.to_string(), s);
        let even = "06401-00206-471-111111-03-1033-9600.0000-2822018";
        assert_eq!(EpidParts::parse(even).unwrap().to_string(), even);
        for bad in [
            "",
            "03612-00206-556-123727-04-1033-17763.0000-2972018",
            "03612-00206-556-123727-03-1033-17763-2972018",
            "03612-00206-556-123727-03-1033-17763.0000-3672018x",
            "3612-00206-556-123727-03-1033-17763.0000-2972018",
        ] {
            assert!(EpidParts::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn generated_epids_fit_their_group_and_build() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let build = products::win_build(26100).unwrap();
        let today = Date {
            year: 2026,
            month: 11,
            day: 22,
        };
        for g in products::epid_groups() {
            for _ in 0..20 {
                let p = EpidParts::generate(g, build, 1033, today, &mut rng);
                assert!(
                    (g.min_key_id..=g.max_key_id).contains(&p.key_id),
                    "{} {p}",
                    g.name
                );
                assert!(p.activated >= g.csvlk_release && p.activated >= build.release);
                assert!(p.activated <= today);
                let text = p.to_string();
                assert_eq!(EpidParts::parse(&text), Some(p), "{text}");
                assert!((48..=50).contains(&text.len()), "{text}");
            }
        }
    }
}
