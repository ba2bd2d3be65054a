//! Throwaway databases on a test server, for the tests and benchmarks of the PostgreSQL backend
//! (not used by queuectl itself).

use postgres::{Client, NoTls};

use crate::store::StoreError;

/// The test server given to the tests and benchmarks (`.ci/run` starts one).
pub const SERVER_ENV: &str = "QUEUECTL_TEST_DATABASE_URL";

/// A database of its own, created on the server at `admin` and dropped with this value.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates an empty database on the server whose (any) database `admin` names.
    pub fn create(admin: &str) -> Result<ScratchDatabase, StoreError> {
        let name = format!(
            "qtest_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let mut client = Client::connect(admin, NoTls)?;
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(ScratchDatabase {
            admin: admin.to_string(),
            url: with_dbname(admin, &name),
            name,
        })
    }
}

impl ScratchDatabase {
    /// Ends every session on this database (`pg_terminate_backend`), as a server restart or a
    /// lost network would; returns how many.
    pub fn terminate_sessions(&self) -> Result<u64, StoreError> {
        let mut client = Client::connect(&self.admin, NoTls)?;
        let row = client.query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&self.name],
        )?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.admin, NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` naming database `name` instead.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let base = if rest.contains('/') {
        base.rsplit_once('/').map_or(base, |(b, _)| b)
    } else {
        base
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
