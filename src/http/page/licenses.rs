//! The page's licenses section: each pack as a bar (seats in use against
//! seats owned, stale and over marked), the products in use that no pack
//! covers, and a warning about machines sharing one client machine ID.

use crate::licenses::watch::Snapshot;
use crate::licenses::{DUPLICATE_FIX, sku_name};
use maud::{Markup, html};

/// The section, or nothing when there is nothing to say.
pub(super) fn render(s: &Snapshot) -> Markup {
    let r = &s.report;
    if r.packs.is_empty() && r.uncovered.is_empty() && s.duplicates.is_empty() {
        return html! {};
    }
    html! {
        section #licenses {
            h2 { "Licenses" }
            p.sub {
                "Seats a machine holds from the answer that activates it; freed when it is not \
                 renewed for the reclaim age. Changes: kmsd licenses."
            }
            @if !s.duplicates.is_empty() {
                p.warn #duplicates {
                    strong {
                        @if s.duplicates.len() == 1 {
                            "1 client machine ID is shared by several machines. "
                        } @else {
                            (s.duplicates.len()) " client machine IDs are shared by several machines. "
                        }
                    }
                    (DUPLICATE_FIX) " (kmsd clients --duplicates lists them)."
                }
            }
            .pools {
                @for u in &r.packs {
                    @let owned = u.owned.max(1);
                    @let pct = (u64::from(u.in_use.min(owned)) * 100 / u64::from(owned)).min(100);
                    .pool.card.threshold.reached[u.over == 0] data-pack=(u.pack.id) {
                        h3 { (u.pack.product_name()) }
                        p.sub { "pack " (u.pack.id) " · " (u.pack.enforce)
                            @if !u.pack.agreement.is_empty() { " · " (u.pack.agreement) } }
                        p.big { (u.in_use) " / " (u.owned) " seats in use" }
                        .bar role="progressbar" aria-label=(u.pack.product_name())
                            aria-valuemin="0" aria-valuemax=(u.owned) aria-valuenow=(u.in_use) {
                            .fill style={ "width:" (pct) "%" } {}
                        }
                        p.sub {
                            (u.free) " free"
                            @if u.stale > 0 { ", " span.badge.wait { (u.stale) " stale" } }
                            @if u.over > 0 { ", " span.badge.bad { (u.over) " over" } }
                            @if let Some(e) = u.pack.expires { ", expires " (e) }
                            @if !u.pack.covers.is_empty() {
                                br; "covers " (u.pack.covers.iter().map(sku_name).collect::<Vec<_>>().join(", "))
                            }
                        }
                    }
                }
            }
            @if !r.uncovered.is_empty() {
                h3 { "In use without a recorded license" }
                ul #uncovered {
                    @for (sku, n) in &r.uncovered {
                        li { (sku_name(sku)) ": " (n) @if *n == 1 { " machine" } @else { " machines" } }
                    }
                }
            }
        }
    }
}
