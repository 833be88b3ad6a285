//! How one event changes a person's properties: `$set_once` (only keys not present),
//! then `$set` (overrides), then `$unset`. Pure, so the order is tested on values.

use serde_json::{Map, Value};

/// The updates an event carries, read from its properties.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Updates {
    pub set_once: Map<String, Value>,
    pub set: Map<String, Value>,
    pub unset: Vec<String>,
}

impl Updates {
    pub(crate) fn from_properties(props: &Map<String, Value>) -> Updates {
        let object = |k: &str| props.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
        let unset = match props.get("$unset") {
            Some(Value::Array(keys)) => keys.iter().filter_map(|k| k.as_str().map(str::to_string)).collect(),
            Some(Value::Object(keys)) => keys.keys().cloned().collect(),
            _ => Vec::new(),
        };
        Updates { set_once: object("$set_once"), set: object("$set"), unset }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.set_once.is_empty() && self.set.is_empty() && self.unset.is_empty()
    }

    /// Properties of a person created by this event: `$set_once` ∪ `$set`, set wins.
    pub(crate) fn initial(&self) -> Map<String, Value> {
        let mut props = self.set_once.clone();
        for (k, v) in &self.set {
            props.insert(k.clone(), v.clone());
        }
        props
    }

    /// Whether the event's updates would change `props` (what [`Updates::apply`] would
    /// return), read from its properties without copying either: most events of a known
    /// person change nothing, and this is asked for every one of them.
    pub(crate) fn would_change(event_props: &Map<String, Value>, props: &Map<String, Value>) -> bool {
        let object = |k: &str| event_props.get(k).and_then(Value::as_object);
        if object("$set_once").is_some_and(|m| m.keys().any(|k| !props.contains_key(k))) {
            return true;
        }
        if object("$set").is_some_and(|m| m.iter().any(|(k, v)| props.get(k) != Some(v))) {
            return true;
        }
        match event_props.get("$unset") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).any(|k| props.contains_key(k)),
            Some(Value::Object(keys)) => keys.keys().any(|k| props.contains_key(k)),
            _ => false,
        }
    }

    /// Applies the updates in order; returns whether anything changed.
    pub(crate) fn apply(&self, props: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for (k, v) in &self.set_once {
            if !props.contains_key(k) {
                props.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        for (k, v) in &self.set {
            if props.get(k) != Some(v) {
                props.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        for k in &self.unset {
            changed |= props.remove(k).is_some();
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn updates(v: Value) -> Updates {
        Updates::from_properties(v.as_object().unwrap())
    }
    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn order_set_once_then_set_then_unset() {
        let u = updates(json!({"$set_once": {"a": 1, "b": 1, "c": 1}, "$set": {"b": 2}, "$unset": ["c"]}));
        let mut p = map(json!({"a": 0}));
        assert!(u.apply(&mut p));
        assert_eq!(Value::Object(p), json!({"a": 0, "b": 2}));
    }

    #[test]
    fn unchanged_is_reported() {
        let u = updates(json!({"$set_once": {"a": 5}, "$set": {"b": 2}, "$unset": {"zz": null}}));
        let mut p = map(json!({"a": 1, "b": 2}));
        assert!(!u.apply(&mut p));
    }

    #[test]
    fn initial_properties_let_set_win() {
        assert_eq!(
            Value::Object(updates(json!({"$set_once": {"a": 1, "b": 1}, "$set": {"b": 2}})).initial()),
            json!({"a": 1, "b": 2})
        );
        assert!(updates(json!({"$set": "nope"})).is_empty());
    }

    #[test]
    fn would_change_answers_as_apply_does() {
        let person = map(json!({"a": 1, "b": 2}));
        for event in [
            json!({}),
            json!({"$set": {"a": 1}}),
            json!({"$set": {"a": 2}}),
            json!({"$set_once": {"a": 5}}),
            json!({"$set_once": {"c": 5}}),
            json!({"$unset": ["c"]}),
            json!({"$unset": ["b"]}),
            json!({"$unset": {"b": true}}),
            json!({"$set": "not an object", "$unset": 3}),
        ] {
            let props = event.as_object().unwrap();
            let mut probe = person.clone();
            let applied = Updates::from_properties(props).apply(&mut probe);
            assert_eq!(Updates::would_change(props, &person), applied, "{event}");
        }
    }
}
