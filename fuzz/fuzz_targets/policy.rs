//! Arbitrary requests and policies through the product policy.
//!
//! Invariants: `decide` never panics; N_Policy above 1000 is always refused
//! 0x8007000D; a counted request names a served group; a counted request
//! with a known KMS counted ID is counted in that ID's pool and carries its
//! Application ID (and is a volume ID when the policy is strict); serving
//! more groups never turns a count into a refusal; the decision depends on
//! nothing but its inputs.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use kmsd::protocol::kms::hresult;
use kmsd::protocol::kms::products;
use kmsd::protocol::policy::{Decision, ProductPolicy, decide};
use kmsd_fuzz::request_base;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut base) = request_base(&mut u) else {
        return;
    };
    // Half the time a real counted ID (and maybe its own application), so
    // the checks past "unknown" are reached.
    let groups = products::kms_groups();
    if let Ok(pick) = u.int_in_range(0..=2 * groups.len())
        && let Some(g) = groups.get(pick)
    {
        base.kms_id = g.id;
        if bool::arbitrary(&mut u).unwrap_or(false) {
            base.app_id = g.app_id;
        }
    }
    let all: Vec<&'static str> = products::epid_groups().iter().map(|g| g.name).collect();
    let mask = u16::arbitrary(&mut u).unwrap_or(0);
    let served: Vec<&'static str> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    let policy = ProductPolicy {
        served,
        strict_products: bool::arbitrary(&mut u).unwrap_or(true),
        max_clock_skew_ms: Option::<u64>::arbitrary(&mut u).unwrap_or(None),
    };
    let now = i64::arbitrary(&mut u).unwrap_or(0);
    let d = decide(&policy, &base, now);
    assert_eq!(d, decide(&policy, &base, now), "not deterministic");
    if base.n_policy > 1000 {
        assert!(matches!(d, Decision::Refuse(r) if r.hresult == hresult::INVALID_DATA));
    }
    if let Decision::Count(c) = d {
        assert!(policy.served.contains(&c.epid_group), "{c:?} not served");
        if let Some(g) = products::kms_group(&base.kms_id) {
            assert_eq!(c.kms_group.map(|k| k.id), Some(g.id));
            assert_eq!((c.pool, base.app_id), (g.pool, g.app_id));
            assert!(g.is_volume() || !policy.strict_products);
        }
        let more = ProductPolicy {
            served: all.clone(),
            ..policy.clone()
        };
        assert_eq!(decide(&more, &base, now), d, "serving more changed a count");
    }
});
