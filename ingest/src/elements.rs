//! Autocapture elements as ClickHouse stores them: the `elements_chain` string.
//!
//! posthog-js sends the chain itself when the team's config says `elementsChainAsString`;
//! older SDK versions, and teams that ask for it, send `$elements`, a list of element
//! objects, which PostHog converts at ingestion and so does this. Either way both
//! properties leave the event's properties and the chain goes to the row's column.
//!
//! The format is PostHog's, byte for byte, because queries parse it: elements joined by
//! `;`, each `tag.class.class:key="value"key="value"` with the classes sorted, the
//! attributes (`text`, `href`, `attr_id`, `nth-child`, `nth-of-type` and every `attr__*`)
//! sorted by key, and double quotes in keys and values escaped. PostHog builds it in
//! JavaScript, so values are rendered as JavaScript renders them (`String(value)`), and
//! what makes JavaScript throw there (a `null` attribute, a number where text is sliced)
//! leaves the event with no chain and its properties as they were, as it does there.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Longest `text` and `href` kept, in characters.
const MAX_TEXT: usize = 400;
const MAX_HREF: usize = 2048;

/// Takes `$elements_chain` (or, without one, builds it from `$elements`) out of
/// `properties`.
pub(crate) fn take_chain(properties: &mut Map<String, Value>) -> String {
    let chain = match properties.get("$elements_chain") {
        Some(chain) if truthy(chain) => Ok(js_string(chain).unwrap_or_default()),
        _ => match properties.get("$elements") {
            Some(Value::Array(elements)) if !elements.is_empty() => chain_of(elements),
            _ => Ok(String::new()),
        },
    };
    match chain {
        Ok(chain) => {
            properties.remove("$elements_chain");
            properties.remove("$elements");
            chain
        }
        Err(Unrenderable) => String::new(),
    }
}

/// A value JavaScript would have thrown on.
#[derive(Debug, PartialEq)]
struct Unrenderable;

fn chain_of(elements: &[Value]) -> Result<String, Unrenderable> {
    let rendered: Result<Vec<String>, Unrenderable> = elements.iter().map(element).collect();
    Ok(rendered?.join(";"))
}

/// One element of `$elements` as its chain link.
fn element(el: &Value) -> Result<String, Unrenderable> {
    let empty = Map::new();
    let el = el.as_object().unwrap_or(&empty);
    let text = sliced(el.get("$el_text"), MAX_TEXT)?;
    let href = sliced(el.get("attr__href"), MAX_HREF)?;
    let mut link = String::new();
    if let Some(tag) = el.get("tag_name").filter(|t| truthy(t)) {
        link.push_str(&js_string(tag)?);
    }
    let mut classes = match el.get("attr__class") {
        Some(Value::Array(classes)) => {
            classes.iter().map(|c| c.as_str().map(str::to_string).ok_or(Unrenderable)).collect::<Result<_, _>>()?
        }
        Some(Value::String(classes)) if !classes.is_empty() => classes.split(' ').map(str::to_string).collect(),
        Some(other) if truthy(other) => return Err(Unrenderable),
        _ => Vec::new(),
    };
    classes.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    for class in classes {
        link.push('.');
        link.push_str(&class.replace('"', ""));
    }
    let mut attributes: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: String| match attributes.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => attributes.push((key.to_string(), value)),
    };
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        set("text", text);
    }
    set("nth-child", nth(el.get("nth_child"))?);
    set("nth-of-type", nth(el.get("nth_of_type"))?);
    if let Some(href) = href.filter(|h| !h.is_empty()) {
        set("href", href);
    }
    if let Some(id) = el.get("attr__id").filter(|id| truthy(id)) {
        set("attr_id", js_string(id)?);
    }
    for (key, value) in el.iter().filter(|(key, _)| key.starts_with("attr__")) {
        set(key, js_string(value)?);
    }
    attributes.sort_by(|(a, _), (b, _)| locale_compare(a, b));
    link.push(':');
    for (key, value) in attributes {
        link.push_str(&format!("{}=\"{}\"", escape_quotes(&key), escape_quotes(&value)));
    }
    Ok(link)
}

/// `text` and `href` are cut with `?.slice(0, n)`: absent stays absent, a string is cut,
/// anything else has no `slice` and throws.
fn sliced(value: Option<&Value>, max: usize) -> Result<Option<String>, Unrenderable> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.chars().take(max).collect())),
        Some(Value::Array(items)) => {
            // Arrays have a slice too; what is left is rendered as an array.
            Ok(Some(js_string(&Value::Array(items.iter().take(max).cloned().collect()))?))
        }
        Some(_) => Err(Unrenderable),
    }
}

/// `nth_child ?? 0`, rendered.
fn nth(value: Option<&Value>) -> Result<String, Unrenderable> {
    match value {
        None | Some(Value::Null) => Ok("0".to_string()),
        Some(v) => js_string(v),
    }
}

fn escape_quotes(s: &str) -> String {
    s.replace('"', "\\\"")
}

/// JavaScript's truthiness.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `value.toString()` as JavaScript does it; `null` has no `toString` and throws.
fn js_string(v: &Value) -> Result<String, Unrenderable> {
    match v {
        Value::Null => Err(Unrenderable),
        other => Ok(js_join_item(other)),
    }
}

/// `String(value)`, and how `Array.prototype.join` renders an item (`null` as nothing).
fn js_join_item(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => js_number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(js_join_item).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".to_string(),
    }
}

fn js_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

/// `a.localeCompare(b)` for the keys a chain holds: Unicode's default collation, which
/// puts punctuation before digits before letters, compares letters without case first,
/// and orders `_` before `-`. (A plain byte comparison differs for `-` and `_`, digits
/// against `_`, and capitals.)
fn locale_compare(a: &str, b: &str) -> Ordering {
    let primary = |s: &str| s.chars().map(collation_weight).collect::<Vec<_>>();
    primary(a).cmp(&primary(b)).then_with(|| {
        // Equal but for case: lower case first.
        let tertiary = |s: &str| s.chars().map(|c| c.is_uppercase()).collect::<Vec<_>>();
        tertiary(a).cmp(&tertiary(b))
    })
}

/// Primary weight of one character in Unicode's default (CLDR root) collation, for ASCII;
/// other characters after ASCII letters, by code point.
fn collation_weight(c: char) -> u32 {
    const PUNCTUATION: &str = "\t\n\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$";
    if let Some(i) = PUNCTUATION.find(c) {
        return i as u32;
    }
    match c {
        '0'..='9' => 100 + (c as u32 - '0' as u32),
        'a'..='z' => 200 + (c as u32 - 'a' as u32),
        'A'..='Z' => 200 + (c as u32 - 'A' as u32),
        _ => 1_000 + c as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(elements: Value) -> String {
        let mut properties = json!({"$elements": elements}).as_object().unwrap().clone();
        let chain = take_chain(&mut properties);
        assert!(properties.is_empty(), "$elements leaves the properties");
        chain
    }

    /// posthog-js's `$elements` for a click on a button inside a link inside a div.
    #[test]
    fn a_recorded_autocapture_click_becomes_posthogs_chain() {
        let elements = json!([
            {"tag_name": "button", "$el_text": "Buy \"now\"", "attr__class": "btn primary", "classes": ["btn", "primary"],
             "attr__id": "buy", "attr__data-attr": "buy-button", "nth_child": 2, "nth_of_type": 1},
            {"tag_name": "a", "attr__href": "/checkout?step=1", "nth_child": 1, "nth_of_type": 1},
            {"tag_name": "div", "attr__class": ["shop", "area"], "nth_child": 3, "nth_of_type": 2},
            {"tag_name": "body", "nth_child": 2, "nth_of_type": 1},
        ]);
        assert_eq!(
            chain(elements),
            concat!(
                r#"button.btn.primary:attr__class="btn primary"attr__data-attr="buy-button"attr__id="buy"attr_id="buy"nth-child="2"nth-of-type="1"text="Buy \"now\"";"#,
                r#"a:attr__href="/checkout?step=1"href="/checkout?step=1"nth-child="1"nth-of-type="1";"#,
                r#"div.area.shop:attr__class="shop,area"nth-child="3"nth-of-type="2";"#,
                r#"body:nth-child="2"nth-of-type="1""#,
            )
        );
    }

    #[test]
    fn a_chain_the_sdk_sent_wins_and_both_properties_leave() {
        let mut properties =
            json!({"$elements_chain": "a:nth-child=\"1\"nth-of-type=\"1\"", "$elements": [{"tag_name": "b"}], "x": 1})
                .as_object()
                .unwrap()
                .clone();
        assert_eq!(take_chain(&mut properties), "a:nth-child=\"1\"nth-of-type=\"1\"");
        assert_eq!(Value::Object(properties), json!({"x": 1}));
    }

    #[test]
    fn missing_nth_values_are_zero_and_empty_text_is_left_out() {
        assert_eq!(chain(json!([{"tag_name": "span", "$el_text": ""}])), r#"span:nth-child="0"nth-of-type="0""#);
        assert_eq!(chain(json!([{}])), r#":nth-child="0"nth-of-type="0""#);
    }

    #[test]
    fn long_text_and_href_are_cut() {
        let long = "é".repeat(500);
        let built = chain(json!([{"tag_name": "p", "$el_text": long, "attr__href": "h".repeat(3000)}]));
        assert!(built.contains(&format!("text=\"{}\"", "é".repeat(400))));
        assert!(built.contains(&format!("href=\"{}\"", "h".repeat(2048))));
        // The attr__href attribute itself is kept whole, as PostHog keeps it.
        assert!(built.contains(&format!("attr__href=\"{}\"", "h".repeat(3000))));
    }

    #[test]
    fn values_render_as_javascript_renders_them() {
        let built = chain(json!([{"tag_name": "input", "attr__disabled": true, "attr__tabindex": 3,
                                  "attr__size": 1.5, "attr__list": ["a", null, 2], "attr__obj": {"k": 1}}]));
        assert_eq!(
            built,
            r#"input:attr__disabled="true"attr__list="a,,2"attr__obj="[object Object]"attr__size="1.5"attr__tabindex="3"nth-child="0"nth-of-type="0""#
        );
    }

    #[test]
    fn what_javascript_throws_on_leaves_no_chain_and_the_properties_untouched() {
        for elements in [json!([{"tag_name": "a", "attr__title": null}]), json!([{"$el_text": 5}])] {
            let mut properties = json!({"$elements": elements.clone()}).as_object().unwrap().clone();
            assert_eq!(take_chain(&mut properties), "");
            assert_eq!(properties["$elements"], elements);
        }
    }

    #[test]
    fn keys_sort_as_locale_compare_does() {
        let mut keys =
            vec!["attr__data_x", "attr__data-x", "attr__data1", "nth-of-type", "attr_id", "Text", "text", "href"];
        keys.sort_by(|a, b| locale_compare(a, b));
        assert_eq!(
            keys,
            vec!["attr__data_x", "attr__data-x", "attr__data1", "attr_id", "href", "nth-of-type", "text", "Text"]
        );
    }
}
