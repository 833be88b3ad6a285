//! Where `ctx.cache` and `ctx.storage` keep values. The host namespaces every key by the
//! plugin configuration, so one plugin cannot read another's (or another team's) keys.
//!
//! In memory (for `sluice-plugin test` and unit tests) or Redis (cache) / Postgres
//! (storage) in ingest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Longest time-to-live a value gets; longer ones (`2^63` seconds, say) are cut to it.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("{0} is not a list")]
    NotAList(String),
    #[error("{0} does not hold an integer")]
    NotAnInteger(String),
    #[error("{0} would overflow a 64-bit integer")]
    Overflow(String),
    #[error("the in-memory store is full ({0} keys)")]
    Full(usize),
    #[error("cache: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("storage: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("storage holds plain values: {0} is not supported")]
    Unsupported(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct KeyValue {
    namespace: String,
    /// The plugin config whose rows these are (Postgres storage).
    config_id: i64,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Memory>),
    Redis(redis::aio::ConnectionManager),
    Postgres(sqlx::PgPool),
    /// Configured but not reachable when the worker started: every call says so.
    Unavailable(Arc<str>),
}

impl KeyValue {
    /// An in-memory store of at most `max_keys` keys, shared by every namespace made
    /// from it with [`KeyValue::namespaced`].
    pub fn memory(max_keys: usize) -> KeyValue {
        KeyValue { namespace: String::new(), config_id: 0, backend: Backend::Memory(Arc::new(Memory::new(max_keys))) }
    }

    /// Redis, under `prefix` (which [`KeyValue::namespaced`] extends).
    pub fn redis(connection: redis::aio::ConnectionManager, prefix: &str) -> KeyValue {
        KeyValue { namespace: prefix.to_string(), config_id: 0, backend: Backend::Redis(connection) }
    }

    /// Postgres `plugin_storage`, one row per (plugin config, key).
    pub fn postgres(pool: sqlx::PgPool) -> KeyValue {
        KeyValue { namespace: String::new(), config_id: 0, backend: Backend::Postgres(pool) }
    }

    /// A store whose every call fails with `reason`.
    pub fn unavailable(reason: &str) -> KeyValue {
        KeyValue { namespace: String::new(), config_id: 0, backend: Backend::Unavailable(reason.into()) }
    }

    /// The same store, with keys prefixed by `namespace` (e.g. `plugin-config/42/`).
    pub fn namespaced(&self, namespace: &str) -> KeyValue {
        KeyValue { namespace: format!("{}{namespace}", self.namespace), ..self.clone() }
    }

    /// The store of one plugin config: its own key prefix, or its own rows.
    pub fn for_plugin_config(&self, id: i64) -> KeyValue {
        KeyValue { config_id: id, ..self.namespaced(&format!("plugin-config/{id}/")) }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match &self.backend {
            Backend::Memory(m) => m.get(&self.key(key)),
            Backend::Redis(c) => Ok(redis::cmd("GET").arg(self.key(key)).query_async(&mut c.clone()).await?),
            Backend::Postgres(pool) => {
                Ok(sqlx::query_scalar("SELECT value FROM plugin_storage WHERE plugin_config_id = $1 AND key = $2")
                    .bind(self.config_id)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?)
            }
            Backend::Unavailable(reason) => Err(KvError::Unavailable(reason.to_string())),
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        let ttl = ttl.map(|t| t.min(MAX_TTL));
        match &self.backend {
            Backend::Memory(m) => m.set(self.key(key), Entry::Text(value.to_string()), ttl),
            Backend::Redis(c) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.key(key)).arg(value);
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(ttl.as_millis() as u64);
                }
                Ok(cmd.query_async::<()>(&mut c.clone()).await?)
            }
            Backend::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO plugin_storage (plugin_config_id, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = $3",
                )
                .bind(self.config_id)
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
                Ok(())
            }
            Backend::Unavailable(reason) => Err(KvError::Unavailable(reason.to_string())),
        }
    }

    pub async fn del(&self, key: &str) -> Result<(), KvError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.lock().remove(&self.key(key));
                Ok(())
            }
            Backend::Redis(c) => Ok(redis::cmd("DEL").arg(self.key(key)).query_async::<()>(&mut c.clone()).await?),
            Backend::Postgres(pool) => {
                sqlx::query("DELETE FROM plugin_storage WHERE plugin_config_id = $1 AND key = $2")
                    .bind(self.config_id)
                    .bind(key)
                    .execute(pool)
                    .await?;
                Ok(())
            }
            Backend::Unavailable(reason) => Err(KvError::Unavailable(reason.to_string())),
        }
    }

    pub async fn incr(&self, key: &str, by: i64) -> Result<i64, KvError> {
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => {
                return Ok(redis::cmd("INCRBY").arg(self.key(key)).arg(by).query_async(&mut c.clone()).await?)
            }
            Backend::Postgres(_) => return Err(KvError::Unsupported("incr")),
            Backend::Unavailable(reason) => return Err(KvError::Unavailable(reason.to_string())),
        };
        let key = self.key(key);
        let current = match m.get(&key)? {
            None => 0,
            Some(t) => t.parse::<i64>().map_err(|_| KvError::NotAnInteger(key.clone()))?,
        };
        let next = current.checked_add(by).ok_or_else(|| KvError::Overflow(key.clone()))?;
        let ttl = m.ttl_of(&key);
        m.set(key, Entry::Text(next.to_string()), ttl)?;
        Ok(next)
    }

    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, KvError> {
        let ttl = ttl.min(MAX_TTL);
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => {
                let set: i64 = redis::cmd("PEXPIRE")
                    .arg(self.key(key))
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c.clone())
                    .await?;
                return Ok(set == 1);
            }
            Backend::Postgres(_) => return Err(KvError::Unsupported("expire")),
            Backend::Unavailable(reason) => return Err(KvError::Unavailable(reason.to_string())),
        };
        let mut entries = m.lock();
        match entries.get_mut(&self.key(key)) {
            Some((_, expires)) => {
                *expires = Instant::now().checked_add(ttl);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn lpush(&self, key: &str, value: &str) -> Result<i64, KvError> {
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => {
                return Ok(redis::cmd("LPUSH").arg(self.key(key)).arg(value).query_async(&mut c.clone()).await?)
            }
            Backend::Postgres(_) => return Err(KvError::Unsupported("lpush")),
            Backend::Unavailable(reason) => return Err(KvError::Unavailable(reason.to_string())),
        };
        let key = self.key(key);
        m.make_room(&key)?;
        let mut entries = m.lock();
        let (entry, _) = entries.entry(key.clone()).or_insert_with(|| (Entry::List(VecDeque::new()), None));
        match entry {
            Entry::List(items) => {
                items.push_front(value.to_string());
                Ok(items.len() as i64)
            }
            Entry::Text(_) => Err(KvError::NotAList(key)),
        }
    }

    /// Redis semantics: inclusive, negative indexes count from the end.
    pub async fn lrange(&self, key: &str, start: i64, stop: i64) -> Result<Vec<String>, KvError> {
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => {
                return Ok(redis::cmd("LRANGE")
                    .arg(self.key(key))
                    .arg(start)
                    .arg(stop)
                    .query_async(&mut c.clone())
                    .await?)
            }
            Backend::Postgres(_) => return Err(KvError::Unsupported("lrange")),
            Backend::Unavailable(reason) => return Err(KvError::Unavailable(reason.to_string())),
        };
        let key = self.key(key);
        let entries = m.lock();
        match entries.get(&key).filter(|(_, e)| e.is_none_or(|e| e > Instant::now())) {
            None => Ok(Vec::new()),
            Some((Entry::Text(_), _)) => Err(KvError::NotAList(key)),
            Some((Entry::List(items), _)) => {
                let len = items.len() as i64;
                let norm = |i: i64| if i < 0 { len.saturating_add(i).max(0) } else { i.min(len) };
                let (from, to) = (norm(start), norm(stop).min(len - 1));
                Ok((from..=to).filter_map(|i| items.get(i as usize).cloned()).collect())
            }
        }
    }

    pub async fn llen(&self, key: &str) -> Result<i64, KvError> {
        if let Backend::Redis(c) = &self.backend {
            return Ok(redis::cmd("LLEN").arg(self.key(key)).query_async(&mut c.clone()).await?);
        }
        Ok(self.lrange(key, 0, -1).await?.len() as i64)
    }
}

enum Entry {
    Text(String),
    List(VecDeque<String>),
}

struct Memory {
    max_keys: usize,
    entries: Mutex<HashMap<String, (Entry, Option<Instant>)>>,
}

impl Memory {
    fn new(max_keys: usize) -> Memory {
        Memory { max_keys, entries: Mutex::default() }
    }

    /// The map, even after a panic elsewhere while it was held: every change to it is a
    /// single insert or remove, so it is never left half-changed, and a poisoned lock
    /// must not take every other plugin of the worker down with it.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Entry, Option<Instant>)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let entries = self.lock();
        match entries.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => Ok(None),
            Some((Entry::Text(t), _)) => Ok(Some(t.clone())),
            Some((Entry::List(_), _)) => Err(KvError::NotAList(key.to_string())),
            None => Ok(None),
        }
    }

    fn ttl_of(&self, key: &str) -> Option<Duration> {
        let entries = self.lock();
        entries.get(key).and_then(|(_, e)| *e).map(|e| e.saturating_duration_since(Instant::now()))
    }

    fn make_room(&self, key: &str) -> Result<(), KvError> {
        let mut entries = self.lock();
        if entries.len() >= self.max_keys && !entries.contains_key(key) {
            let now = Instant::now();
            entries.retain(|_, (_, e)| e.is_none_or(|e| e > now));
            if entries.len() >= self.max_keys {
                return Err(KvError::Full(self.max_keys));
            }
        }
        Ok(())
    }

    fn set(&self, key: String, entry: Entry, ttl: Option<Duration>) -> Result<(), KvError> {
        self.make_room(&key)?;
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        self.lock().insert(key, (entry, expires));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_do_not_see_each_other() {
        let store = KeyValue::memory(100);
        let (a, b) = (store.namespaced("a/"), store.namespaced("b/"));
        a.set("k", "1", None).await.unwrap();
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some("1"));
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(b.incr("n", 2).await.unwrap(), 2);
        assert_eq!(b.incr("n", 3).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn lists_and_expiry_follow_redis() {
        let kv = KeyValue::memory(100);
        for v in ["a", "b", "c"] {
            kv.lpush("l", v).await.unwrap();
        }
        assert_eq!(kv.lrange("l", 0, -1).await.unwrap(), vec!["c", "b", "a"]);
        assert_eq!(kv.lrange("l", 0, 0).await.unwrap(), vec!["c"]);
        assert_eq!(kv.llen("l").await.unwrap(), 3);
        kv.set("t", "x", Some(Duration::from_millis(10))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(kv.get("t").await.unwrap(), None);
    }

    #[tokio::test]
    async fn extreme_arguments_are_errors_or_clamped_never_panics() {
        let kv = KeyValue::memory(100);
        kv.set("k", "1", None).await.unwrap();
        assert!(kv.expire("k", Duration::from_secs(u64::MAX)).await.unwrap());
        kv.set("t", "1", Some(Duration::MAX)).await.unwrap();
        assert_eq!(kv.get("t").await.unwrap().as_deref(), Some("1"));
        kv.set("n", &i64::MAX.to_string(), None).await.unwrap();
        assert!(matches!(kv.incr("n", 1).await, Err(KvError::Overflow(_))));
        kv.lpush("l", "a").await.unwrap();
        assert_eq!(kv.lrange("l", i64::MIN, i64::MAX).await.unwrap(), vec!["a"]);
        assert_eq!(kv.lrange("l", i64::MAX, i64::MIN).await.unwrap(), Vec::<String>::new());
        // The store goes on serving.
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn the_memory_store_is_bounded() {
        let kv = KeyValue::memory(2);
        kv.set("a", "1", None).await.unwrap();
        kv.set("b", "1", None).await.unwrap();
        kv.set("a", "2", None).await.unwrap();
        assert!(matches!(kv.set("c", "1", None).await, Err(KvError::Full(2))));
    }
}
