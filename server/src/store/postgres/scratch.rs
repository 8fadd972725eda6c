//! Throwaway databases for tests and benchmarks: each made with a unique name
//! on the server an admin URL names, and dropped (its connections closed
//! first) when its handle is dropped. Nothing in `serve` uses this.

use tokio_postgres::NoTls;

/// The variable that names the PostgreSQL server tests may use, as a URL
/// whose database is one to connect to while creating others
/// (`postgres://postgres@127.0.0.1:5432/postgres`). Unset: PostgreSQL tests
/// are skipped.
pub const TEST_SERVER_VARIABLE: &str = "HANDOVER_TEST_POSTGRES";

/// A database of its own, dropped with this handle.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// A new empty database on the server of `HANDOVER_TEST_POSTGRES`, or
    /// `None` when the variable is unset.
    pub fn from_env() -> Option<ScratchDatabase> {
        let admin_url = std::env::var(TEST_SERVER_VARIABLE).ok().filter(|url| !url.is_empty())?;
        Some(
            ScratchDatabase::create(&admin_url, None).unwrap_or_else(|err| {
                panic!("{TEST_SERVER_VARIABLE} is set but no database could be made there: {err}")
            }),
        )
    }

    /// A new database on the server of `admin_url`: empty, or a copy of `template`.
    pub fn create(admin_url: &str, template: Option<&str>) -> Result<ScratchDatabase, String> {
        let name = format!("handover_scratch_{}", uuid::Uuid::new_v4().simple());
        match template {
            // A template must have no other connection: those of the store
            // copied are closed, as a crash would close them, and their
            // backends may take a moment to exit.
            Some(template) => {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let copied = run_admin(
                        admin_url,
                        format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                              WHERE datname = '{template}' AND pid <> pg_backend_pid()"
                        ),
                    )
                    .and_then(|()| run_admin(admin_url, format!("CREATE DATABASE {name} TEMPLATE {template}")));
                    match copied {
                        Err(err) if err.contains("being accessed by other users") && attempts < 100 => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        other => break other?,
                    }
                }
            }
            None => run_admin(admin_url, format!("CREATE DATABASE {name}"))?,
        }
        let url = database_url(admin_url, &name)?;
        Ok(ScratchDatabase { admin_url: admin_url.to_owned(), name, url })
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A copy of this database as it is committed now (its open connections
    /// are closed to take it).
    pub fn copy(&self) -> Result<ScratchDatabase, String> {
        ScratchDatabase::create(&self.admin_url, Some(&self.name))
    }
}

impl ScratchDatabase {
    /// An outage, as the servers see it: the database refuses new
    /// connections and every open one is cut.
    pub fn cut_off(&self) -> Result<(), String> {
        run_admin(&self.admin_url, format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name))?;
        run_admin(
            &self.admin_url,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        )
    }

    /// The end of the outage: connections are accepted again.
    pub fn bring_back(&self) -> Result<(), String> {
        run_admin(&self.admin_url, format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name))
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Err(err) = run_admin(&self.admin_url, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop the scratch database {}: {err}", self.name);
        }
    }
}

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> Result<String, String> {
    let (before_query, query) = admin_url.split_once('?').map_or((admin_url, None), |(a, q)| (a, Some(q)));
    let scheme_end = before_query.find("://").ok_or_else(|| format!("{admin_url} is not a postgres:// URL"))? + 3;
    let base = match before_query[scheme_end..].find('/') {
        Some(slash) => &before_query[..scheme_end + slash],
        None => before_query,
    };
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// Runs SQL on the admin database, on a thread and runtime of its own, so
/// that it can be called from synchronous code and from inside a runtime alike.
fn run_admin(admin_url: &str, sql: String) -> Result<(), String> {
    let admin_url = admin_url.to_owned();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|err| err.to_string())?;
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&admin_url, NoTls).await.map_err(|err| err.to_string())?;
            let connection = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await.map_err(|err| match err.as_db_error() {
                Some(db) => db.to_string(),
                None => err.to_string(),
            });
            drop(client);
            let _ = connection.await;
            result
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_options_kept() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x").as_deref(),
            Ok("postgres://postgres@127.0.0.1:5432/x")
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "y").as_deref(),
            Ok("postgres://u:p@h/y?sslmode=disable")
        );
        assert_eq!(database_url("postgresql://h:5432", "z").as_deref(), Ok("postgresql://h:5432/z"));
    }
}
