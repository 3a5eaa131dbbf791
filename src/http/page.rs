//! The status page: server-rendered HTML with inline CSS, no scripts and no
//! external assets.
//!
//! [`load`] reads the database (results stay typed: [`Hresult`]),
//! [`view`] turns what the page shows into plain values (no markup), and
//! [`markup`] renders them with `maud`. Maud escapes every spliced value, so
//! text from the network (workstation names, addresses, the search box)
//! cannot become markup; the stylesheet is the only text inserted raw.

mod licenses;
mod markup;
#[cfg(test)]
mod tests;
mod view;

use super::data::{self, ActivationRow};
use crate::host::Host;
use crate::protocol::kms::Hresult;
use crate::report::{ClientRow, StatusReport};
use crate::store::{ClientQuery, Store, StoreError};
use axum::http::StatusCode;
use std::net::SocketAddr;

/// Recent activations shown.
const RECENT: usize = 25;
/// Inventory rows shown.
const INVENTORY_ROWS: usize = 200;
/// Most inventory rows scanned for a search (as `/api/clients` does).
const SEARCH_SCAN: usize = 1_000_000;

/// The stylesheet, inlined in a `<style>` element.
const CSS: &str = include_str!("page.css");

/// A row formatted as the admin API shows it, with its result kept typed
/// (the row's own `result` text is for JSON).
pub struct Row<R> {
    pub row: R,
    pub result: Hresult,
}

/// What the page reads from the store.
pub struct PageDb {
    pub status: StatusReport,
    pub activations: Vec<Row<ActivationRow>>,
    /// Inventory rows to show (matching the search).
    pub clients: Vec<Row<ClientRow>>,
    /// How many rows match the search (all of the inventory without one).
    pub matching: u64,
}

/// Reads what the page shows.
pub async fn load(store: &Store, now_ms: i64, q: &str) -> Result<PageDb, StoreError> {
    let status = StatusReport::new(store.status(now_ms).await?);
    let activations = store
        .recent(RECENT)
        .await?
        .iter()
        .map(|a| Row {
            row: ActivationRow::new(a),
            result: a.result,
        })
        .collect();
    let (clients, matching) = inventory(store, now_ms, q, status.inventory).await?;
    Ok(PageDb {
        status,
        activations,
        clients,
        matching,
    })
}

/// The newest [`INVENTORY_ROWS`] machines matching the search `q`, and how
/// many match (`total`, the whole inventory, without a search).
async fn inventory(
    store: &Store,
    now_ms: i64,
    q: &str,
    total: u64,
) -> Result<(Vec<Row<ClientRow>>, u64), StoreError> {
    let needle = data::needle(q);
    let query = ClientQuery {
        now_ms,
        pool: None,
        since_ms: None,
        limit: if needle.is_empty() {
            INVENTORY_ROWS
        } else {
            SEARCH_SCAN
        },
    };
    let mut rows: Vec<Row<ClientRow>> = store
        .clients(query)
        .await?
        .iter()
        .map(|c| Row {
            row: ClientRow::new(c),
            result: c.last_result,
        })
        .filter(|r| data::client_matches(&r.row, &needle))
        .collect();
    let matching = if needle.is_empty() {
        total
    } else {
        rows.len() as u64
    };
    rows.truncate(INVENTORY_ROWS);
    Ok((rows, matching))
}

/// Everything one rendering needs.
pub struct View<'a> {
    pub host: &'a Host,
    pub kms_addrs: &'a [SocketAddr],
    pub shutting_down: bool,
    pub now_ms: i64,
    pub q: &'a str,
    pub db: &'a PageDb,
}

/// The page.
pub fn render(v: &View<'_>) -> String {
    view::StatusView::new(v).render().into_string()
}

/// The page when the database cannot be read.
pub fn render_error(status: StatusCode, msg: &str) -> String {
    markup::error_page(status, msg).into_string()
}
