//! Where a host keeps its state: the `store` setting (`--store`,
//! `KMSD_STORE`), parsed once.

/// Which store a host uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// One SQLite file in the data dir (the default).
    #[default]
    Sqlite,
    /// Nothing on disk: counts live in the process and end with it (CI,
    /// throwaway lab hosts, read-only containers).
    Memory,
    /// A fleet's PostgreSQL database (the URL; it may name a primary and
    /// its standbys).
    Postgres(String),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("sqlite"),
            Self::Memory => f.write_str("memory"),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "sqlite" => Ok(Self::Sqlite),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                super::postgres::url::parse(url).map_err(|e| e.to_string())?;
                Ok(Self::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "{:?}: expected `sqlite`, `memory` or postgres://USER[:PASS]@HOST[:PORT]/DB",
                super::postgres::url::redact(other)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn the_three_stores_parse_and_anything_else_is_named() {
        assert_eq!("".parse(), Ok(Backend::Sqlite));
        assert_eq!("memory".parse(), Ok(Backend::Memory));
        assert_eq!(
            "postgres://kmsd@db/fleet".parse(),
            Ok(Backend::Postgres("postgres://kmsd@db/fleet".into()))
        );
        let e = "mysql://root:secret@db/x".parse::<Backend>().unwrap_err();
        assert!(e.contains("memory") && !e.contains("secret"), "{e}");
    }
}

/// The isolation level a fleet's batch transactions run at (counts and
/// seats are exact under each; the stricter two retry on conflicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    #[default]
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl Isolation {
    pub const ALL: [Isolation; 3] = [
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];

    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read-committed",
            Self::RepeatableRead => "repeatable-read",
            Self::Serializable => "serializable",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                format!("{s:?}: expected read-committed, repeatable-read or serializable")
            })
    }
}
