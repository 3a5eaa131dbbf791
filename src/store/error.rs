//! What can go wrong with a store, named by what happened and what the
//! caller should do about it, never by backend: the backend's own error is
//! kept as the source, and `store` names the store in the operator's
//! words (a file path, a database URL without its password, "memory").

use std::sync::Arc;
use std::time::Duration;

/// A backend's own error, kept as the source of a [`StoreError`].
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A cause from words alone.
pub fn cause(detail: impl Into<String>) -> Cause {
    Arc::new(Detail(detail.into()))
}

#[derive(Debug)]
struct Detail(String);

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Detail {}

/// Store failures. On any of them during a request nothing was counted,
/// and the client is answered E_FAIL (it retries by itself).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or opened right now (a database down or
    /// refusing us, a file that cannot be opened or is locked). Retry later;
    /// nothing was changed.
    #[error("{store} is unavailable: {source}")]
    Unavailable {
        store: String,
        #[source]
        source: Cause,
    },
    /// An operation on a reachable store failed. Nothing of it was kept.
    #[error("{store}: {source}")]
    Failed {
        store: String,
        #[source]
        source: Cause,
    },
    /// The store holds something this kmsd cannot read: not a kmsd store,
    /// or damaged. Nothing was changed; restore it from a backup or point
    /// kmsd elsewhere.
    #[error("{store} is not a usable kmsd store: {source}")]
    Corrupt {
        store: String,
        #[source]
        source: Cause,
    },
    /// A newer kmsd wrote the store. It is left untouched: run that kmsd
    /// (or a newer one) on it.
    #[error(
        "{store} has schema version {found}, newer than this kmsd reads ({supported}); refusing to touch it"
    )]
    SchemaTooNew {
        store: String,
        found: i64,
        supported: i64,
    },
    /// The store's configuration or location is wrong (a malformed URL, a
    /// setting the backend does not take, a store that has no data yet).
    /// Fix the configuration.
    #[error("{store}: {problem}")]
    Misconfigured { store: String, problem: String },
    /// Another party holds a different value for something there can only
    /// be one of (the ePID of a fleet). Make them agree.
    #[error("{store}: {what}")]
    Conflict { store: String, what: String },
    /// No commit within the configured time (nothing was counted).
    #[error("no commit within {0:?}")]
    Timeout(Duration),
    /// Too many requests are waiting for the store; this one was refused
    /// at once (nothing was counted).
    #[error("too many requests are waiting for the store")]
    Full,
    /// The store has been closed (the host is stopping).
    #[error("the store has shut down")]
    Closed,
}

impl StoreError {
    /// [`StoreError::Failed`] with a cause in words.
    pub fn failed(store: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Failed {
            store: store.into(),
            source: cause(detail),
        }
    }

    /// [`StoreError::Unavailable`] with a cause in words.
    pub fn unavailable(store: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Unavailable {
            store: store.into(),
            source: cause(detail),
        }
    }

    /// [`StoreError::Misconfigured`].
    pub fn misconfigured(store: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Misconfigured {
            store: store.into(),
            problem: problem.into(),
        }
    }

    /// Whether waiting and trying again may help (the store was out of
    /// reach, slow or busy), as opposed to a fault that needs the operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout(_) | Self::Full | Self::Failed { .. }
        )
    }
}

/// Runs blocking store work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::failed("the store", format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_its_backend_detail_as_the_source_and_says_it_on_one_line() {
        let e = StoreError::unavailable("postgres://kmsd@db/fleet", "connection refused");
        let line = e.to_string();
        assert_eq!(
            line,
            "postgres://kmsd@db/fleet is unavailable: connection refused"
        );
        assert!(!line.contains('\n'));
        let src = std::error::Error::source(&e).expect("a source");
        assert_eq!(src.to_string(), "connection refused");
        assert!(e.is_transient());
        let too_new = StoreError::SchemaTooNew {
            store: "x".into(),
            found: 9,
            supported: 5,
        };
        assert!(!too_new.is_transient());
        assert!(too_new.to_string().contains("version 9"));
    }
}
