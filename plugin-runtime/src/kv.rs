//! Where `ctx.cache` and `ctx.storage` keep values. The host namespaces every key by the
//! plugin configuration, so one plugin cannot read another's (or another team's) keys.
//!
//! In memory (for `sluice-plugin test` and unit tests) or Redis (cache) / Postgres
//! (storage) in ingest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::hook::PluginConfigId;

/// Longest time-to-live a value gets; longer ones (`2^63` seconds, say) are cut to it.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

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
    #[error("over this plugin's quota: {0}")]
    Quota(String),
    #[error("cache: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("storage: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("storage holds plain values: {0} is not supported")]
    Unsupported(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

/// What one plugin configuration may keep in one store (its cache, or its storage), on
/// every backend: one plugin cannot fill Redis, Postgres or a worker's memory for the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    pub keys: usize,
    /// Keys and values together.
    pub bytes: usize,
    pub key_bytes: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { keys: 10_000, bytes: 16 << 20, key_bytes: 512 }
    }
}

#[derive(Clone)]
pub struct KeyValue {
    namespace: String,
    /// The plugin config whose rows these are (Postgres storage).
    config_id: i64,
    /// Set for a plugin configuration's store; `None` for the unscoped store it is made from.
    quota: Option<Quota>,
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
        KeyValue {
            namespace: String::new(),
            config_id: 0,
            quota: None,
            backend: Backend::Memory(Arc::new(Memory::new(max_keys))),
        }
    }

    /// Redis, under `prefix` (which [`KeyValue::namespaced`] extends).
    pub fn redis(connection: redis::aio::ConnectionManager, prefix: &str) -> KeyValue {
        KeyValue { namespace: prefix.to_string(), config_id: 0, quota: None, backend: Backend::Redis(connection) }
    }

    /// Postgres `plugin_storage`, one row per (plugin config, key).
    pub fn postgres(pool: sqlx::PgPool) -> KeyValue {
        KeyValue { namespace: String::new(), config_id: 0, quota: None, backend: Backend::Postgres(pool) }
    }

    /// A store whose every call fails with `reason`.
    pub fn unavailable(reason: &str) -> KeyValue {
        KeyValue { namespace: String::new(), config_id: 0, quota: None, backend: Backend::Unavailable(reason.into()) }
    }

    /// The same store, with keys prefixed by `namespace` (e.g. `plugin-config/42/`).
    pub fn namespaced(&self, namespace: &str) -> KeyValue {
        KeyValue { namespace: format!("{}{namespace}", self.namespace), ..self.clone() }
    }

    /// The store of one plugin config: its own key prefix, or its own rows, within `quota`.
    pub fn for_plugin_config(&self, id: PluginConfigId, quota: Quota) -> KeyValue {
        KeyValue { config_id: id.0, quota: Some(quota), ..self.namespaced(&format!("plugin-config/{id}/")) }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// Opens the connection a first call would open (and loads Redis's quota script), so
    /// that cost is paid when a plugin loads, not inside its first `process_event` with
    /// its 50 ms limit. Memory needs nothing; a store that cannot be reached says why.
    pub async fn warm_up(&self) -> Result<(), KvError> {
        match &self.backend {
            Backend::Memory(_) | Backend::Unavailable(_) => Ok(()),
            Backend::Redis(c) => {
                let mut c = c.clone();
                redis::cmd("PING").query_async::<()>(&mut c).await?;
                redis::Script::new(QUOTA_SCRIPT).prepare_invoke().load_async(&mut c).await?;
                Ok(())
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
                Ok(())
            }
        }
    }

    /// Where Redis keeps what a plugin configuration's keys take: beside its keys, never
    /// among them.
    fn usage_keys(&self) -> (String, String) {
        let base = self.namespace.trim_end_matches('/');
        (format!("{base}#quota/index"), format!("{base}#quota/bytes"))
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        match self.quota {
            Some(q) if key.len() > q.key_bytes => {
                Err(KvError::Quota(format!("a key of {} bytes is over the {} byte limit", key.len(), q.key_bytes)))
            }
            _ => Ok(()),
        }
    }

    /// One write through the Redis quota script: `op` is `set`, `incr`, `lpush` or `del`.
    async fn redis_write(
        &self,
        c: &redis::aio::ConnectionManager,
        op: &str,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        let Some(quota) = self.quota else {
            let mut conn = c.clone();
            let key = self.key(key);
            return Ok(match op {
                "set" => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(value);
                    if let Some(ttl) = ttl {
                        cmd.arg("PX").arg(ttl.as_millis() as u64);
                    }
                    cmd.query_async::<()>(&mut conn).await?;
                    0
                }
                "incr" => redis::cmd("INCRBY").arg(&key).arg(value).query_async(&mut conn).await?,
                "lpush" => redis::cmd("LPUSH").arg(&key).arg(value).query_async(&mut conn).await?,
                _ => redis::cmd("DEL").arg(&key).query_async(&mut conn).await?,
            });
        };
        let (index, total) = self.usage_keys();
        let result = redis::Script::new(QUOTA_SCRIPT)
            .key(self.key(key))
            .key(index)
            .key(total)
            .arg(op)
            .arg(value)
            .arg(ttl.map_or(0, |t| t.as_millis() as u64))
            .arg(quota.keys)
            .arg(quota.bytes)
            .arg(self.namespace.len())
            .invoke_async::<i64>(&mut c.clone())
            .await;
        match result {
            Err(e) if e.to_string().contains("SLUICE_QUOTA") => {
                Err(KvError::Quota(format!("{} keys or {} bytes", quota.keys, quota.bytes)))
            }
            other => Ok(other?),
        }
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
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => {
                m.set(&self.namespace, self.quota, self.key(key), Entry::Text(value.to_string()), ttl)
            }
            Backend::Redis(c) => self.redis_write(c, "set", key, value, ttl).await.map(drop),
            Backend::Postgres(pool) => {
                let quota = self.quota.unwrap_or(Quota { keys: usize::MAX >> 1, bytes: usize::MAX >> 1, key_bytes: 0 });
                // The row is written only if the configuration's other rows leave room.
                let written = sqlx::query(
                    "INSERT INTO plugin_storage (plugin_config_id, key, value)
                     SELECT $1, $2, $3
                     WHERE (SELECT count(*) < $4 AND coalesce(sum(octet_length(key) + octet_length(value)), 0)
                                 + octet_length($2) + octet_length($3) <= $5
                            FROM plugin_storage WHERE plugin_config_id = $1 AND key <> $2)
                     ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = $3",
                )
                .bind(self.config_id)
                .bind(key)
                .bind(value)
                .bind(quota.keys as i64)
                .bind(quota.bytes as i64)
                .execute(pool)
                .await?;
                if written.rows_affected() == 0 {
                    return Err(KvError::Quota(format!("{} keys or {} bytes", quota.keys, quota.bytes)));
                }
                Ok(())
            }
            Backend::Unavailable(reason) => Err(KvError::Unavailable(reason.to_string())),
        }
    }

    pub async fn del(&self, key: &str) -> Result<(), KvError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.remove(&self.namespace, &self.key(key));
                Ok(())
            }
            Backend::Redis(c) => self.redis_write(c, "del", key, "", None).await.map(drop),
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
        self.check_key(key)?;
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => return self.redis_write(c, "incr", key, &by.to_string(), None).await,
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
        m.set(&self.namespace, self.quota, key, Entry::Text(next.to_string()), ttl)?;
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
        let mut state = m.lock();
        match state.entries.get_mut(&self.key(key)) {
            Some((_, expires)) => {
                *expires = Instant::now().checked_add(ttl);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn lpush(&self, key: &str, value: &str) -> Result<i64, KvError> {
        self.check_key(key)?;
        let m = match &self.backend {
            Backend::Memory(m) => m,
            Backend::Redis(c) => return self.redis_write(c, "lpush", key, value, None).await,
            Backend::Postgres(_) => return Err(KvError::Unsupported("lpush")),
            Backend::Unavailable(reason) => return Err(KvError::Unavailable(reason.to_string())),
        };
        m.lpush(&self.namespace, self.quota, self.key(key), value)
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
        let state = m.lock();
        match state.entries.get(&key).filter(|(_, e)| e.is_none_or(|e| e > Instant::now())) {
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

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Entry::Text(t) => t.len(),
            Entry::List(items) => items.iter().map(String::len).sum(),
        }
    }
}

/// Keys and bytes one namespace holds.
#[derive(Default, Clone, Copy)]
struct Usage {
    keys: usize,
    bytes: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, (Entry, Option<Instant>)>,
    /// Per namespace that has a quota.
    usage: HashMap<String, Usage>,
}

impl State {
    fn live(&self, key: &str) -> Option<&Entry> {
        match self.entries.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => None,
            Some((entry, _)) => Some(entry),
            None => None,
        }
    }

    fn forget(&mut self, namespace: &str, key: &str) {
        if let Some((entry, _)) = self.entries.remove(key) {
            if let Some(u) = self.usage.get_mut(namespace) {
                u.keys = u.keys.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(key.len().saturating_sub(namespace.len()) + entry.bytes());
            }
        }
    }

    /// Drops the namespace's expired entries, so they stop counting.
    fn purge(&mut self, namespace: &str) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, (_, e))| k.starts_with(namespace) && e.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.forget(namespace, &k);
        }
    }

    /// Whether `key` may hold `bytes` (value only) within the namespace's quota.
    fn fits(&mut self, namespace: &str, quota: Option<Quota>, key: &str, bytes: usize) -> Result<(), KvError> {
        let Some(q) = quota else { return Ok(()) };
        let own = key.len().saturating_sub(namespace.len());
        let check = |state: &State| {
            let u = state.usage.get(namespace).copied().unwrap_or_default();
            let old = state.entries.get(key).map(|(e, _)| own + e.bytes());
            let keys = u.keys + usize::from(old.is_none());
            let total = u.bytes - old.unwrap_or(0) + own + bytes;
            keys <= q.keys && total <= q.bytes
        };
        if check(self) {
            return Ok(());
        }
        self.purge(namespace);
        if check(self) {
            Ok(())
        } else {
            Err(KvError::Quota(format!("{} keys or {} bytes", q.keys, q.bytes)))
        }
    }

    fn put(&mut self, namespace: &str, quota: Option<Quota>, key: String, entry: Entry, expires: Option<Instant>) {
        let old = self.entries.get(&key).map(|(e, _)| e.bytes());
        self.account(namespace, quota, &key, old, entry.bytes());
        self.entries.insert(key, (entry, expires));
    }

    /// Books a key's value going from `old` bytes (`None`: a new key) to `new`.
    fn account(&mut self, namespace: &str, quota: Option<Quota>, key: &str, old: Option<usize>, new: usize) {
        if quota.is_some() {
            let own = key.len().saturating_sub(namespace.len());
            let u = self.usage.entry(namespace.to_string()).or_default();
            u.keys += usize::from(old.is_none());
            u.bytes = u.bytes - old.map_or(0, |b| own + b) + own + new;
        }
    }
}

struct Memory {
    max_keys: usize,
    state: Mutex<State>,
}

impl Memory {
    fn new(max_keys: usize) -> Memory {
        Memory { max_keys, state: Mutex::default() }
    }

    /// The map, even after a panic elsewhere while it was held: every change to it is
    /// made whole under the lock, and a poisoned lock must not take every other plugin
    /// of the worker down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self.lock().live(key) {
            Some(Entry::Text(t)) => Ok(Some(t.clone())),
            Some(Entry::List(_)) => Err(KvError::NotAList(key.to_string())),
            None => Ok(None),
        }
    }

    fn ttl_of(&self, key: &str) -> Option<Duration> {
        let state = self.lock();
        state.entries.get(key).and_then(|(_, e)| *e).map(|e| e.saturating_duration_since(Instant::now()))
    }

    fn make_room(&self, state: &mut State, key: &str) -> Result<(), KvError> {
        if state.entries.len() >= self.max_keys && !state.entries.contains_key(key) {
            let now = Instant::now();
            let expired: Vec<String> = state
                .entries
                .iter()
                .filter(|(_, (_, e))| e.is_some_and(|e| e <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                let namespace = state.usage.keys().find(|n| k.starts_with(n.as_str())).cloned().unwrap_or_default();
                state.forget(&namespace, &k);
            }
            if state.entries.len() >= self.max_keys {
                return Err(KvError::Full(self.max_keys));
            }
        }
        Ok(())
    }

    fn set(
        &self,
        namespace: &str,
        quota: Option<Quota>,
        key: String,
        entry: Entry,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        let mut state = self.lock();
        self.make_room(&mut state, &key)?;
        state.fits(namespace, quota, &key, entry.bytes())?;
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        state.put(namespace, quota, key, entry, expires);
        Ok(())
    }

    fn remove(&self, namespace: &str, key: &str) {
        self.lock().forget(namespace, key);
    }

    fn lpush(&self, namespace: &str, quota: Option<Quota>, key: String, value: &str) -> Result<i64, KvError> {
        let mut state = self.lock();
        self.make_room(&mut state, &key)?;
        if state.live(&key).is_none() {
            state.forget(namespace, &key);
        }
        let old = match state.entries.get(&key) {
            Some((Entry::Text(_), _)) => return Err(KvError::NotAList(key)),
            Some((entry, _)) => Some(entry.bytes()),
            None => None,
        };
        let new = old.unwrap_or(0) + value.len();
        state.fits(namespace, quota, &key, new)?;
        state.account(namespace, quota, &key, old, new);
        let (entry, _) = state.entries.entry(key).or_insert_with(|| (Entry::List(VecDeque::new()), None));
        let Entry::List(items) = entry else { unreachable!("a text entry was refused above") };
        items.push_front(value.to_string());
        Ok(items.len() as i64)
    }
}

/// Writes with a quota per plugin configuration, atomically in Redis. The index hash
/// maps each key to what it takes; keys that expired are forgotten when they are met,
/// and all of them before a write is refused.
const QUOTA_SCRIPT: &str = r#"
local key, index, total = KEYS[1], KEYS[2], KEYS[3]
local op, value, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_keys, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local own = #key - tonumber(ARGV[6])
local old = tonumber(redis.call('HGET', index, key) or '0')
if old > 0 and redis.call('EXISTS', key) == 0 then
  redis.call('HDEL', index, key)
  redis.call('DECRBY', total, old)
  old = 0
end
if op == 'del' then
  redis.call('DEL', key)
  if old > 0 then
    redis.call('HDEL', index, key)
    redis.call('DECRBY', total, old)
  end
  return 0
end
local new
if op == 'set' then
  new = own + #value
elseif op == 'incr' then
  new = own + 20
else
  new = (old > 0 and old or own) + #value
end
local function fits()
  local keys = redis.call('HLEN', index)
  if old == 0 then keys = keys + 1 end
  local bytes = tonumber(redis.call('GET', total) or '0') - old + new
  return keys <= max_keys and bytes <= max_bytes
end
if not fits() then
  for _, k in ipairs(redis.call('HKEYS', index)) do
    if redis.call('EXISTS', k) == 0 then
      redis.call('DECRBY', total, tonumber(redis.call('HGET', index, k)))
      redis.call('HDEL', index, k)
    end
  end
  if not fits() then
    return redis.error_reply('SLUICE_QUOTA')
  end
end
local result = 0
if op == 'set' then
  if ttl > 0 then redis.call('SET', key, value, 'PX', ttl) else redis.call('SET', key, value) end
elseif op == 'incr' then
  result = redis.call('INCRBY', key, value)
else
  result = redis.call('LPUSH', key, value)
end
redis.call('HSET', index, key, new)
redis.call('INCRBY', total, new - old)
return result
"#;

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
    async fn each_plugin_config_has_a_quota_of_keys_and_bytes() {
        let store = KeyValue::memory(1_000);
        let quota = Quota { keys: 3, bytes: 100, key_bytes: 8 };
        let (a, b) =
            (store.for_plugin_config(PluginConfigId(1), quota), store.for_plugin_config(PluginConfigId(2), quota));
        for k in ["k1", "k2", "k3"] {
            a.set(k, "v", None).await.unwrap();
        }
        assert!(matches!(a.set("k4", "v", None).await, Err(KvError::Quota(_))), "a fourth key");
        a.set("k1", "replaced", None).await.unwrap();
        assert!(matches!(a.set("k2", &"x".repeat(200), None).await, Err(KvError::Quota(_))), "too many bytes");
        assert!(matches!(a.set("a-long-key", "v", None).await, Err(KvError::Quota(_))), "key over 8 bytes");
        assert!(matches!(a.lpush("k3", "x").await, Err(KvError::NotAList(_))));
        b.set("k4", "v", None).await.unwrap();
        a.del("k1").await.unwrap();
        a.set("k4", "v", None).await.unwrap();
        // Expired keys stop counting.
        a.set("k2", "v", Some(Duration::from_millis(5))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        a.set("k5", "v", None).await.unwrap();
        // Lists count their items.
        let c = store.for_plugin_config(PluginConfigId(3), quota);
        for _ in 0..9 {
            c.lpush("l", "0123456789").await.unwrap();
        }
        assert!(matches!(c.lpush("l", "0123456789").await, Err(KvError::Quota(_))));
        assert_eq!(c.llen("l").await.unwrap(), 9);
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
