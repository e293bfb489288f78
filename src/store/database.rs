//! `--database`, parsed once: which store, and for PostgreSQL its connection settings.

use std::{fmt, str::FromStr};

#[derive(Clone)]
pub enum Database {
    /// Embedded, one instance: the file's path (`:memory:` for none).
    #[cfg(feature = "sqlite")]
    Sqlite(String),
    /// Shared by any number of instances, with a bus between them.
    #[cfg(feature = "postgres")]
    Postgres(Box<tokio_postgres::Config>),
}

impl Database {
    /// Whether several instances share it (then a bus carries their changes to each other).
    pub fn is_shared(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(_) => false,
            #[cfg(feature = "postgres")]
            Database::Postgres(_) => true,
        }
    }
}

impl FromStr for Database {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            #[cfg(feature = "sqlite")]
            return Ok(Database::Sqlite(path.to_owned()));
            #[cfg(not(feature = "sqlite"))]
            return Err(format!("this build has no SQLite store (feature `sqlite`), so {path:?} cannot be opened"));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return tokio_postgres::Config::from_str(url)
                .map(|config| Database::Postgres(Box::new(config)))
                .map_err(|e| format!("invalid PostgreSQL URL: {e}"));
            #[cfg(not(feature = "postgres"))]
            return Err("this build has no PostgreSQL store (feature `postgres`)".into());
        }
        Err(format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"))
    }
}

/// Never the password: the configuration is logged.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "sqlite")]
            Database::Sqlite(path) => write!(f, "sqlite://{path}"),
            #[cfg(feature = "postgres")]
            Database::Postgres(config) => {
                let hosts: Vec<String> = config
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                write!(
                    f,
                    "postgres://{}@{}/{}",
                    config.get_user().unwrap_or(""),
                    hosts.join(","),
                    config.get_dbname().unwrap_or("")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_store() {
        assert!(matches!("sqlite://a/b.db".parse(), Ok(Database::Sqlite(p)) if p == "a/b.db"));
        assert!(matches!("sqlite::memory:".parse(), Ok(Database::Sqlite(p)) if p == ":memory:"));
        let pg: Database = "postgres://u:secret@localhost:5433/d".parse().unwrap();
        assert!(pg.is_shared());
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        let err = "mysql://x".parse::<Database>().err().unwrap();
        assert!(err.contains("sqlite://PATH"), "{err}");
        assert!("postgres://u@h:notaport/d".parse::<Database>().is_err());
    }
}
