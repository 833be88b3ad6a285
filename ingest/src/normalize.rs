//! Step 6: the event's properties in the shape the rest of the pipeline and the queries
//! expect: clean strings, `$set`/`$set_once` merged, `$ip`, `$sent_at`, and the initial
//! and campaign properties a person keeps from their first visit.

use serde_json::{Map, Value};

/// Whether a property is copied into `$set` and, as `$initial_*`, into `$set_once`: the
/// person's device and page, then the campaign's utm and click ids. A `match` (a branch
/// on the length, then the bytes) rather than a scan of a list: it is asked of every
/// property of every event.
fn copied_to_person(key: &str) -> bool {
    matches!(
        key,
        "$browser"
            | "$browser_version"
            | "$os"
            | "$os_version"
            | "$device_type"
            | "$current_url"
            | "$pathname"
            | "$referrer"
            | "$referring_domain"
            | "$screen_height"
            | "$screen_width"
            | "$viewport_height"
            | "$viewport_width"
            | "$app_version"
            | "$app_build"
            | "$app_name"
            | "$app_namespace"
            | "$raw_user_agent"
            | "utm_source"
            | "utm_medium"
            | "utm_campaign"
            | "utm_content"
            | "utm_term"
            | "gclid"
            | "gad_source"
            | "fbclid"
            | "msclkid"
            | "ttclid"
            | "li_fat_id"
            | "twclid"
            | "mc_cid"
            | "igshid"
            | "dclid"
            | "wbraid"
            | "gbraid"
    )
}

/// What normalization needs besides the event itself.
pub(crate) struct Context<'a> {
    pub ip: Option<&'a str>,
    pub sent_at: Option<&'a str>,
}

/// Normalizes `data` (the event as the client sent it) in place and returns its properties.
pub(crate) fn properties(data: &mut Map<String, Value>, ctx: &Context<'_>) -> Map<String, Value> {
    let mut props = match data.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    for key in ["$set", "$set_once"] {
        if let Some(Value::Object(top)) = data.remove(key) {
            let target = object_entry(&mut props, key);
            for (k, v) in top {
                // Top-level values win: they are what the SDK's identify/set call sent.
                target.insert(k, v);
            }
        }
    }
    if let Some(ip) = ctx.ip {
        props.entry("$ip").or_insert_with(|| Value::String(ip.to_string()));
    }
    if let Some(sent_at) = ctx.sent_at {
        props.insert("$sent_at".into(), Value::String(sent_at.to_string()));
    }

    // One pass over the event's properties (tens) rather than a lookup per listed name
    // (35): this runs for every event.
    let copied: Vec<(String, Value)> = props
        .iter()
        .filter(|(k, v)| !v.is_null() && copied_to_person(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !copied.is_empty() {
        for (k, v) in &copied {
            object_entry(&mut props, "$set").entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in copied {
            let initial = format!("$initial_{}", k.trim_start_matches('$'));
            object_entry(&mut props, "$set_once").entry(initial).or_insert(v);
        }
    }
    sanitize(&mut props);
    props
}

fn object_entry<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

/// NUL characters break ClickHouse and Postgres text; replace them everywhere.
pub(crate) fn sanitize(props: &mut Map<String, Value>) {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => {
                let keys_with_nul: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
                for k in keys_with_nul {
                    if let Some(val) = map.remove(&k) {
                        map.insert(k.replace('\0', "\u{fffd}"), val);
                    }
                }
                map.values_mut().for_each(walk);
            }
            _ => {}
        }
    }
    let mut as_value = Value::Object(std::mem::take(props));
    walk(&mut as_value);
    if let Value::Object(map) = as_value {
        *props = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(data: Value, ip: Option<&str>) -> Value {
        let mut data = data.as_object().unwrap().clone();
        Value::Object(properties(&mut data, &Context { ip, sent_at: Some("2024-05-01T10:00:00Z") }))
    }

    #[test]
    fn initial_and_campaign_properties() {
        let p = run(
            json!({"properties": {"$browser": "Firefox", "utm_source": "news", "$set": {"$browser": "Chrome"}}}),
            None,
        );
        assert_eq!(p["$set"]["$browser"], "Chrome", "an explicit $set is not overwritten");
        assert_eq!(p["$set"]["utm_source"], "news");
        assert_eq!(p["$set_once"]["$initial_browser"], "Firefox");
        assert_eq!(p["$set_once"]["$initial_utm_source"], "news");
        assert_eq!(p["$sent_at"], "2024-05-01T10:00:00Z");
    }

    /// PostHog's two lists, name for name; names beside them are not copied.
    #[test]
    fn exactly_the_person_and_campaign_properties_are_copied() {
        let person = "$browser $browser_version $os $os_version $device_type $current_url $pathname $referrer \
            $referring_domain $screen_height $screen_width $viewport_height $viewport_width $app_version $app_build \
            $app_name $app_namespace $raw_user_agent";
        let campaign = "utm_source utm_medium utm_campaign utm_content utm_term gclid gad_source fbclid msclkid \
            ttclid li_fat_id twclid mc_cid igshid dclid wbraid gbraid";
        let listed: Vec<&str> = person.split_whitespace().chain(campaign.split_whitespace()).collect();
        assert_eq!(listed.len(), 35);
        for name in &listed {
            assert!(copied_to_person(name), "{name}");
            let p = run(json!({"properties": {*name: "v"}}), None);
            assert_eq!(p["$set_once"][format!("$initial_{}", name.trim_start_matches('$'))], "v", "{name}");
        }
        for name in ["$browser_language", "$os_name", "utm", "utm_sourcex", "", "$current_url ", "GCLID", "$lib"] {
            assert!(!copied_to_person(name), "{name:?}");
        }
    }

    #[test]
    fn top_level_set_merges_into_properties() {
        let p =
            run(json!({"$set": {"plan": "pro"}, "$set_once": {"first": 1}, "properties": {"$set": {"a": 1}}}), None);
        assert_eq!(p["$set"], json!({"a": 1, "plan": "pro"}));
        assert_eq!(p["$set_once"], json!({"first": 1}));
    }

    #[test]
    fn ip_from_capture_unless_present() {
        assert_eq!(run(json!({"properties": {}}), Some("203.0.113.1"))["$ip"], "203.0.113.1");
        assert_eq!(run(json!({"properties": {"$ip": "1.1.1.1"}}), Some("203.0.113.1"))["$ip"], "1.1.1.1");
    }

    #[test]
    fn nul_is_replaced_in_keys_and_values() {
        let p = run(json!({"properties": {"a\u{0}b": ["x\u{0}"], "n": {"m": "\u{0}"}}}), None);
        assert_eq!(p["a\u{fffd}b"], json!(["x\u{fffd}"]));
        assert_eq!(p["n"]["m"], "\u{fffd}");
    }
}
