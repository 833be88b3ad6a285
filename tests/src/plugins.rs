//! Teams' plugins in tests: a Postgres database of a test's own (so the plugins it
//! installs are seen by its ingest only), plugin folders, and installing them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{ingest_command, unique};

/// A Postgres database for one test, dropped with it.
pub struct Database {
    pub url: String,
    name: String,
}

impl Database {
    pub fn create(test: &str) -> Database {
        let name = unique(&format!("sluice_{test}")).replace('-', "_");
        let admin = crate::database_url();
        crate::postgres(|pool| {
            let sql = format!("CREATE DATABASE {name}");
            Box::pin(async move {
                sqlx::query(&sql).execute(pool).await.expect("create database");
            })
        });
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DATABASE_URL without a database: {admin}"),
        };
        Database { url, name }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![("DATABASE_URL", self.url.as_str())]
    }

    pub fn run(&self, args: &[&str]) -> String {
        ingest_command(args, &self.env())
    }

    /// Creates a team; returns (id, token).
    pub fn team(&self, name: &str) -> (i64, String) {
        let out = self.run(&["teams", "create", "--name", name]);
        let id = out.split_whitespace().nth(2).and_then(|w| w.parse().ok()).expect("team id");
        (id, out.lines().last().unwrap().trim().to_string())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        crate::postgres(|pool| {
            Box::pin(async move {
                let _ = sqlx::query(&sql).execute(pool).await;
            })
        });
    }
}

pub fn plugin_dir(name: &str, manifest: Value, main: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("plugin-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.join("main.lua"), main).unwrap();
    dir
}

pub fn install(db: &Database, dir: &Path, team: i64, extra: &[&str]) -> i64 {
    let team = team.to_string();
    let mut args = vec!["plugins", "install", dir.to_str().unwrap(), "--team", &team];
    args.extend_from_slice(extra);
    let out = db.run(&args);
    out.split("plugin config ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no plugin config id in: {out}"))
}
