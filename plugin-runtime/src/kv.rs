//! Where `ctx.cache` and `ctx.storage` keep values. The host namespaces every key by the
//! plugin configuration, so one plugin cannot read another's (or another team's) keys.
//!
//! In memory (for `sluice-plugin test` and unit tests) or Redis (cache) / Postgres
//! (storage) in ingest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("{0} is not a list")]
    NotAList(String),
    #[error("{0} does not hold an integer")]
    NotAnInteger(String),
    #[error("the in-memory store is full ({0} keys)")]
    Full(usize),
}

#[derive(Clone)]
pub struct KeyValue {
    namespace: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Memory>),
}

impl KeyValue {
    /// An in-memory store of at most `max_keys` keys, shared by every namespace made
    /// from it with [`KeyValue::namespaced`].
    pub fn memory(max_keys: usize) -> KeyValue {
        KeyValue { namespace: String::new(), backend: Backend::Memory(Arc::new(Memory::new(max_keys))) }
    }

    /// The same store, with keys prefixed by `namespace` (e.g. `plugin-config/42/`).
    pub fn namespaced(&self, namespace: &str) -> KeyValue {
        KeyValue { namespace: format!("{}{namespace}", self.namespace), backend: self.backend.clone() }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let Backend::Memory(m) = &self.backend;
        m.get(&self.key(key))
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        let Backend::Memory(m) = &self.backend;
        m.set(self.key(key), Entry::Text(value.to_string()), ttl)
    }

    pub async fn del(&self, key: &str) -> Result<(), KvError> {
        let Backend::Memory(m) = &self.backend;
        m.entries.lock().expect("kv lock").remove(&self.key(key));
        Ok(())
    }

    pub async fn incr(&self, key: &str, by: i64) -> Result<i64, KvError> {
        let Backend::Memory(m) = &self.backend;
        let key = self.key(key);
        let current = match m.get(&key)? {
            None => 0,
            Some(t) => t.parse::<i64>().map_err(|_| KvError::NotAnInteger(key.clone()))?,
        };
        let ttl = m.ttl_of(&key);
        m.set(key, Entry::Text((current + by).to_string()), ttl)?;
        Ok(current + by)
    }

    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, KvError> {
        let Backend::Memory(m) = &self.backend;
        let mut entries = m.entries.lock().expect("kv lock");
        match entries.get_mut(&self.key(key)) {
            Some((_, expires)) => {
                *expires = Some(Instant::now() + ttl);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn lpush(&self, key: &str, value: &str) -> Result<i64, KvError> {
        let Backend::Memory(m) = &self.backend;
        let key = self.key(key);
        m.make_room(&key)?;
        let mut entries = m.entries.lock().expect("kv lock");
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
        let Backend::Memory(m) = &self.backend;
        let key = self.key(key);
        let entries = m.entries.lock().expect("kv lock");
        match entries.get(&key).filter(|(_, e)| e.is_none_or(|e| e > Instant::now())) {
            None => Ok(Vec::new()),
            Some((Entry::Text(_), _)) => Err(KvError::NotAList(key)),
            Some((Entry::List(items), _)) => {
                let len = items.len() as i64;
                let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
                let (from, to) = (norm(start), norm(stop).min(len - 1));
                Ok((from..=to).filter_map(|i| items.get(i as usize).cloned()).collect())
            }
        }
    }

    pub async fn llen(&self, key: &str) -> Result<i64, KvError> {
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

    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let entries = self.entries.lock().expect("kv lock");
        match entries.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => Ok(None),
            Some((Entry::Text(t), _)) => Ok(Some(t.clone())),
            Some((Entry::List(_), _)) => Err(KvError::NotAList(key.to_string())),
            None => Ok(None),
        }
    }

    fn ttl_of(&self, key: &str) -> Option<Duration> {
        let entries = self.entries.lock().expect("kv lock");
        entries.get(key).and_then(|(_, e)| *e).map(|e| e.saturating_duration_since(Instant::now()))
    }

    fn make_room(&self, key: &str) -> Result<(), KvError> {
        let mut entries = self.entries.lock().expect("kv lock");
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
        let expires = ttl.map(|t| Instant::now() + t);
        self.entries.lock().expect("kv lock").insert(key, (entry, expires));
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
    async fn the_memory_store_is_bounded() {
        let kv = KeyValue::memory(2);
        kv.set("a", "1", None).await.unwrap();
        kv.set("b", "1", None).await.unwrap();
        kv.set("a", "2", None).await.unwrap();
        assert!(matches!(kv.set("c", "1", None).await, Err(KvError::Full(2))));
    }
}
