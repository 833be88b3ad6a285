//! `plugin.json`: what a plugin is, which configuration it takes, which hosts it may
//! reach, which schedules it uses; and the validation of a team's configuration
//! against it. Pure, so every rule is tested on values.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub config: Vec<ConfigField>,
    #[serde(default)]
    pub http: HttpManifest,
    #[serde(default)]
    pub schedule: Vec<Schedule>,
    /// Events must not be stored unless this plugin processed them (a filter of personal
    /// data, say): when it fails on an event, is disabled, or cannot run, ingest
    /// dead-letters the event (`required_plugin`) instead of storing it unprocessed;
    /// `dlq replay` brings those events back once the plugin works again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Limits the plugin asks for; each is capped by the operator's (see
    /// [`crate::limits::Limits::asked_by`]), so asking can only lower them.
    #[serde(default, skip_serializing_if = "AskedLimits::is_empty")]
    pub limits: AskedLimits,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskedLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_event_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_event_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_timeout_ms: Option<u64>,
}

impl AskedLimits {
    fn is_empty(&self) -> bool {
        self == &AskedLimits::default()
    }
}

fn default_version() -> String {
    "0.0.0".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpManifest {
    /// Hosts `http.fetch` may reach: `example.com` or `*.example.com`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Whether the plugin asks for `http.fetch` inside `process_event` (the operator must
    /// allow it too).
    #[serde(default)]
    pub in_process_event: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    EveryMinute,
    EveryHour,
    EveryDay,
}

impl Schedule {
    pub fn hook(self) -> &'static str {
        match self {
            Schedule::EveryMinute => "every_minute",
            Schedule::EveryHour => "every_hour",
            Schedule::EveryDay => "every_day",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Number,
    Boolean,
    Json,
    Choice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigField {
    pub key: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default)]
    pub required: bool,
    /// Never shown back to the operator nor logged.
    #[serde(default)]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("plugin.json is not valid: {0}")]
    Invalid(String),
    #[error("config `{key}`: {problem}")]
    Config { key: String, problem: String },
}

/// A plugin as found in its folder: `plugin.json` and `main.lua` (text, never bytecode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSource {
    pub manifest: Manifest,
    pub main: String,
}

impl PluginSource {
    pub fn from_dir(dir: &Path) -> Result<PluginSource, ManifestError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| ManifestError::Read { path: path.display().to_string(), error: e.to_string() })
        };
        let manifest = Manifest::parse(&read("plugin.json")?)?;
        Ok(PluginSource { manifest, main: read("main.lua")? })
    }
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if m.name.trim().is_empty() {
            return Err(ManifestError::Invalid("`name` is empty".into()));
        }
        let l = &m.limits;
        let asked = [l.memory_mb.map(|v| v as u64), l.process_event_timeout_ms, l.process_event_ticks];
        if asked.into_iter().chain([l.hook_timeout_ms, l.http_timeout_ms]).any(|v| v == Some(0)) {
            return Err(ManifestError::Invalid("a limit in `limits` is 0; leave it out to take the operator's".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &m.config {
            if !seen.insert(f.key.as_str()) {
                return Err(ManifestError::Invalid(format!("config key `{}` appears twice", f.key)));
            }
            if f.kind == FieldType::Choice && f.choices.as_ref().is_none_or(Vec::is_empty) {
                return Err(ManifestError::Invalid(format!("config `{}` is a choice without choices", f.key)));
            }
            if let Some(d) = &f.default {
                f.check(d).map_err(|problem| ManifestError::Invalid(format!("default of `{}`: {problem}", f.key)))?;
            }
        }
        Ok(m)
    }

    /// Checks a team's configuration: known keys only, types, choices, required keys;
    /// applies defaults. Text values (from `--config k=v`) are read as the field's type.
    pub fn validate_config(&self, given: &Map<String, Value>) -> Result<Map<String, Value>, ManifestError> {
        let fields: BTreeMap<&str, &ConfigField> = self.config.iter().map(|f| (f.key.as_str(), f)).collect();
        if let Some(unknown) = given.keys().find(|k| !fields.contains_key(k.as_str())) {
            return Err(ManifestError::Config { key: unknown.clone(), problem: "not a setting of this plugin".into() });
        }
        let mut out = Map::new();
        for f in &self.config {
            let value = match given.get(&f.key) {
                Some(v) if !v.is_null() => f.coerce(v),
                _ => match &f.default {
                    Some(d) => d.clone(),
                    None if f.required => {
                        return Err(ManifestError::Config { key: f.key.clone(), problem: "required".into() })
                    }
                    None => continue,
                },
            };
            f.check(&value).map_err(|problem| ManifestError::Config { key: f.key.clone(), problem })?;
            out.insert(f.key.clone(), value);
        }
        Ok(out)
    }

    /// The configuration with secret values masked, for showing and logging.
    pub fn redact(&self, config: &Map<String, Value>) -> Map<String, Value> {
        let mut out = config.clone();
        for f in self.config.iter().filter(|f| f.secret) {
            if let Some(v) = out.get_mut(&f.key) {
                *v = Value::String("••••••".into());
            }
        }
        out
    }
}

impl ConfigField {
    /// Text given for a number, boolean or json field is read as one.
    fn coerce(&self, v: &Value) -> Value {
        let Value::String(text) = v else { return v.clone() };
        match self.kind {
            FieldType::Number => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
            FieldType::Boolean => match text.as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            FieldType::Json => serde_json::from_str(text).ok(),
            FieldType::String | FieldType::Choice => None,
        }
        .unwrap_or_else(|| v.clone())
    }

    fn check(&self, v: &Value) -> Result<(), String> {
        let ok = match self.kind {
            FieldType::String => v.is_string(),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Json => true,
            FieldType::Choice => {
                let choices = self.choices.as_deref().unwrap_or_default();
                return match v.as_str() {
                    Some(s) if choices.iter().any(|c| c == s) => Ok(()),
                    _ => Err(format!("must be one of {choices:?}, got {v}")),
                };
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("must be a {:?}, got {v}", self.kind).to_lowercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest::parse(
            &json!({
                "name": "example",
                "config": [
                    {"key": "rate", "type": "number", "default": 10},
                    {"key": "enabled", "type": "boolean", "required": true},
                    {"key": "mode", "type": "choice", "choices": ["a", "b"], "default": "a"},
                    {"key": "api_key", "type": "string", "secret": true},
                    {"key": "rules", "type": "json"}
                ],
                "http": {"allow": ["*.example.com"]},
                "schedule": ["every_minute"]
            })
            .to_string(),
        )
        .unwrap()
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_apply_and_text_is_read_as_the_type() {
        let m = manifest();
        let c = m.validate_config(&map(json!({"enabled": "true", "rules": "{\"x\": 1}", "rate": "2.5"}))).unwrap();
        assert_eq!(Value::Object(c), json!({"rate": 2.5, "enabled": true, "mode": "a", "rules": {"x": 1}}));
        assert_eq!(m.schedule, vec![Schedule::EveryMinute]);
    }

    #[test]
    fn bad_configuration_is_refused_with_the_key() {
        let m = manifest();
        let err = |v: Value| m.validate_config(&map(v)).unwrap_err().to_string();
        assert_eq!(err(json!({})), "config `enabled`: required");
        assert!(err(json!({"enabled": true, "rate": "fast"})).starts_with("config `rate`: must be a number"));
        assert!(err(json!({"enabled": true, "mode": "c"})).starts_with("config `mode`: must be one of"));
        assert_eq!(err(json!({"enabled": true, "nope": 1})), "config `nope`: not a setting of this plugin");
    }

    #[test]
    fn secrets_are_masked() {
        let m = manifest();
        let c = m.validate_config(&map(json!({"enabled": true, "api_key": "s3cret"}))).unwrap();
        assert_eq!(m.redact(&c)["api_key"], "••••••");
        assert_eq!(c["api_key"], "s3cret");
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(Manifest::parse("{}").is_err());
        assert!(Manifest::parse(r#"{"name": " "}"#).is_err());
        assert!(Manifest::parse(r#"{"name": "x", "config": [{"key": "k", "type": "choice"}]}"#).is_err());
        assert!(
            Manifest::parse(r#"{"name": "x", "config": [{"key": "k", "type": "number", "default": "no"}]}"#).is_err()
        );
        assert!(Manifest::parse(
            r#"{"name": "x", "config": [{"key": "k", "type": "string"}, {"key": "k", "type": "string"}]}"#
        )
        .is_err());
        assert!(Manifest::parse(r#"{"name": "x", "limits": {"memory_mb": 0}}"#).is_err());
        assert!(Manifest::parse(r#"{"name": "x", "limits": {"cpu": 1}}"#).is_err(), "unknown limit");
        let m = Manifest::parse(r#"{"name": "x", "limits": {"memory_mb": 4}}"#).unwrap();
        assert_eq!(m.limits.memory_mb, Some(4));
    }
}
