//! What the browser SDK is told when it loads: `/array/<token>/config` (and `config.js`),
//! `/flags` and `/decide`. posthog-js turns on session recording, its autocapture
//! settings and request compression only when this answer says so.
//!
//! Each team's settings come from the `teams` table, read in the background like every
//! other list capture keeps, never by a request: a refresh builds each team's answer
//! once, and requests are served from memory. Feature flags are not Sluice's: the answers
//! never carry one and say `hasFeatureFlags: false`, so recent posthog-js does not ask
//! `/flags` at all, and older ones are told there are none.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use sluice_common::every::{Every, Failures};

use crate::token_lookup::{Find, Looked, LookupLimits, TokenLookup};

/// Where posthog-js sends events and recordings when the config names them.
const EVENTS_ENDPOINT: &str = "/i/v0/e/";
const RECORDINGS_ENDPOINT: &str = "/s/";

/// One team's settings as the `teams` table holds them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct TeamSettings {
    pub api_token: String,
    pub session_recording_opt_in: bool,
    pub session_recording_sample_rate: Option<f64>,
    pub session_recording_minimum_duration_ms: Option<i32>,
    pub capture_console_log_opt_in: bool,
    pub autocapture_opt_out: bool,
    pub heatmaps_opt_in: bool,
    pub autocapture_exceptions_opt_in: bool,
    pub elements_chain_as_string: bool,
}

impl TeamSettings {
    /// What a team gets before its settings could be read: the table's defaults.
    fn defaults(token: &str) -> TeamSettings {
        TeamSettings {
            api_token: token.to_string(),
            session_recording_opt_in: false,
            session_recording_sample_rate: None,
            session_recording_minimum_duration_ms: None,
            capture_console_log_opt_in: false,
            autocapture_opt_out: false,
            heatmaps_opt_in: false,
            autocapture_exceptions_opt_in: false,
            elements_chain_as_string: true,
        }
    }
}

/// `TeamSettings`' columns, selected from `teams` followed by the rest of a query.
macro_rules! select_settings {
    ($rest:literal) => {
        concat!(
            "SELECT api_token, session_recording_opt_in, session_recording_sample_rate, ",
            "session_recording_minimum_duration_ms, capture_console_log_opt_in, autocapture_opt_out, heatmaps_opt_in, ",
            "autocapture_exceptions_opt_in, elements_chain_as_string FROM teams ",
            $rest
        )
    };
}
const SETTINGS_QUERY: &str = select_settings!("ORDER BY id LIMIT $1");
const ONE_TEAM_QUERY: &str = select_settings!("WHERE api_token = $1");

/// One team's config, as the JSON object and its two serialized forms.
struct Answers {
    config: Map<String, Value>,
    json: Bytes,
    script: Bytes,
}

impl Answers {
    fn build(team: &TeamSettings, compression: &[String]) -> Answers {
        let config = config(team, compression);
        let json = Bytes::from(Value::Object(config.clone()).to_string());
        let script = script(&team.api_token, &config);
        Answers { config, json, script }
    }
}

/// What the last refresh read.
#[derive(Default)]
struct Teams {
    by_token: HashMap<String, Arc<Answers>>,
    /// More teams than `SDK_CONFIG_MAX_TEAMS`: a token not held may still be a team's.
    truncated: bool,
}

/// The answers of every team, shared by the server and the refresher.
#[derive(Clone)]
pub(crate) struct SdkConfigs {
    teams: Arc<RwLock<Option<Arc<Teams>>>>,
    compression: Arc<Vec<String>>,
    /// Tokens the last read did not have (`None`: no database to ask).
    lookup: Option<Arc<TokenLookup<TeamSettings>>>,
    /// Teams found by a lookup since the last read, which will have them; at most
    /// `max_found`.
    found: Arc<RwLock<HashMap<String, Arc<Answers>>>>,
    max_found: usize,
}

/// One response, ready to send.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    /// For `capture_sdk_config_requests_total`: `team`, `defaults` or `unknown_token`.
    pub outcome: &'static str,
}

/// Which endpoint asked, for the answer's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ask {
    /// `/array/<token>/config`.
    ConfigJson,
    /// `/array/<token>/config.js`.
    ConfigScript,
    /// `/flags`, the config merged in when the request says `config=true`.
    Flags { with_config: bool },
    /// `/decide?v=N`, the config always merged in.
    Decide { version: u32 },
}

impl Ask {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ask::ConfigJson => "config",
            Ask::ConfigScript => "config_js",
            Ask::Flags { .. } => "flags",
            Ask::Decide { .. } => "decide",
        }
    }
}

enum Found {
    Team(Arc<Answers>),
    /// Not read yet, a token past the list's bound, or a lookup that could not tell: the
    /// defaults are answered, since turning an SDK away would be worse than not turning
    /// its features on.
    Defaults,
    Unknown,
}

impl SdkConfigs {
    /// `compression`: what SDKs are offered (`supportedCompression`), e.g. `gzip-js`.
    pub(crate) fn new(compression: Vec<String>) -> SdkConfigs {
        SdkConfigs {
            teams: Arc::default(),
            compression: Arc::new(compression),
            lookup: None,
            found: Arc::default(),
            max_found: 0,
        }
    }

    /// Tokens not in the last read are looked up with `find`, within `limits`; at most
    /// `max_found` teams found so are held until the next read.
    fn with_lookup(mut self, find: Find<TeamSettings>, limits: LookupLimits, max_found: usize) -> SdkConfigs {
        self.lookup = Some(Arc::new(TokenLookup::new(find, limits)));
        self.max_found = max_found;
        self
    }

    /// Looks tokens up in `database`, one query each, on a pool of its own.
    pub(crate) fn looking_up(self, database: PgConnectOptions, limits: LookupLimits, max_found: usize) -> SdkConfigs {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(limits.concurrency.max(1)).unwrap_or(u32::MAX))
            .acquire_timeout(limits.wait)
            .connect_lazy_with(database);
        let find: Find<TeamSettings> = Arc::new(move |token: String| {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_as::<_, TeamSettings>(ONE_TEAM_QUERY)
                    .bind(token)
                    .fetch_optional(&pool)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        self.with_lookup(find, limits, max_found)
    }

    fn replace(&self, teams: &[TeamSettings], truncated: bool) {
        let by_token =
            teams.iter().map(|t| (t.api_token.clone(), Arc::new(Answers::build(t, &self.compression)))).collect();
        *self.teams.write().expect("sdk config lock") = Some(Arc::new(Teams { by_token, truncated }));
        // The read has every team a lookup found before it began.
        self.found.write().expect("sdk config lock").clear();
    }

    fn has_read(&self) -> bool {
        self.teams.read().expect("sdk config lock").is_some()
    }

    fn find(&self, token: &str) -> Found {
        let teams = self.teams.read().expect("sdk config lock").clone();
        match teams {
            None => Found::Defaults,
            Some(teams) => match teams.by_token.get(token) {
                Some(answers) => Found::Team(answers.clone()),
                None if teams.truncated => Found::Defaults,
                None => match self.found.read().expect("sdk config lock").get(token) {
                    Some(answers) => Found::Team(answers.clone()),
                    None => Found::Unknown,
                },
            },
        }
    }

    /// A token the last read did not have: a team created since, or no team's.
    async fn look_up(&self, token: &str) -> Found {
        let Some(lookup) = &self.lookup else { return Found::Unknown };
        match lookup.look_up(token).await {
            Looked::Found(team) => {
                let answers = Arc::new(Answers::build(&team, &self.compression));
                let mut found = self.found.write().expect("sdk config lock");
                if found.len() < self.max_found {
                    found.insert(token.to_string(), answers.clone());
                }
                Found::Team(answers)
            }
            Looked::Unknown => Found::Unknown,
            Looked::CannotTell => Found::Defaults,
        }
    }

    /// The answer to `ask` for `token` (`None`: the request named none).
    /// `recordings_limited`: the token is over its recordings quota, so recording is off.
    pub(crate) async fn answer(&self, ask: Ask, token: Option<&str>, recordings_limited: bool) -> Answer {
        let Some(token) = token.filter(|t| !t.is_empty()) else { return refused(ask, "missing_api_key") };
        let found = match self.find(token) {
            Found::Unknown => self.look_up(token).await,
            found => found,
        };
        let (answers, outcome) = match found {
            Found::Team(answers) => (answers, "team"),
            Found::Defaults => {
                (Arc::new(Answers::build(&TeamSettings::defaults(token), &self.compression)), "defaults")
            }
            Found::Unknown => return refused(ask, "invalid_api_key"),
        };
        let config = if recordings_limited {
            let mut limited = answers.config.clone();
            limited.insert("sessionRecording".into(), Value::Bool(false));
            limited.insert("quotaLimited".into(), json!(["recordings"]));
            limited
        } else {
            answers.config.clone()
        };
        let (content_type, body) = match ask {
            Ask::ConfigJson if !recordings_limited => (JSON, answers.json.clone()),
            Ask::ConfigScript if !recordings_limited => (SCRIPT, answers.script.clone()),
            Ask::ConfigJson => (JSON, Bytes::from(Value::Object(config).to_string())),
            Ask::ConfigScript => (SCRIPT, script(token, &config)),
            Ask::Flags { with_config } => (JSON, Bytes::from(flags(with_config.then_some(config)).to_string())),
            Ask::Decide { version } => (JSON, Bytes::from(decide(version, config).to_string())),
        };
        Answer { status: StatusCode::OK, content_type, body, outcome }
    }
}

const JSON: &str = "application/json";
const SCRIPT: &str = "application/javascript";

/// A request without a team: the flag endpoints answer 401 as PostHog's do (posthog-js
/// logs it and goes on without flags); the config endpoints 404.
fn refused(ask: Ask, code: &'static str) -> Answer {
    let detail = match code {
        "missing_api_key" => "No project API key in the request (`token` or `api_key`).",
        _ => "No team has this project API key (see `sluice-ingest teams list`).",
    };
    let (status, kind) = match ask {
        Ask::ConfigJson | Ask::ConfigScript => (StatusCode::NOT_FOUND, "validation_error"),
        Ask::Flags { .. } | Ask::Decide { .. } => (StatusCode::UNAUTHORIZED, "authentication_error"),
    };
    let body = json!({"type": kind, "code": code, "detail": detail}).to_string();
    Answer { status, content_type: JSON, body: Bytes::from(body), outcome: "unknown_token" }
}

/// The config object, in the shape posthog-js reads from `/array/<token>/config`.
fn config(team: &TeamSettings, compression: &[String]) -> Map<String, Value> {
    let session_recording = if team.session_recording_opt_in {
        json!({
            "endpoint": RECORDINGS_ENDPOINT,
            "consoleLogRecordingEnabled": team.capture_console_log_opt_in,
            "recorderVersion": "v2",
            // A string with two decimals, as PostHog sends it; absent means every session.
            "sampleRate": team.session_recording_sample_rate.filter(|r| *r < 1.0).map(|r| format!("{r:.2}")),
            "minimumDurationMilliseconds": team.session_recording_minimum_duration_ms.filter(|ms| *ms > 0),
            "linkedFlag": null,
            "networkPayloadCapture": null,
            "masking": null,
            "urlTriggers": [],
            "urlBlocklist": [],
            "eventTriggers": [],
            "triggerMatchType": null,
            "scriptConfig": null,
        })
    } else {
        Value::Bool(false)
    };
    let mut config = json!({
        "token": team.api_token,
        "supportedCompression": compression,
        "hasFeatureFlags": false,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "autocapture_opt_out": team.autocapture_opt_out,
        "autocaptureExceptions": team.autocapture_exceptions_opt_in,
        "analytics": {"endpoint": EVENTS_ENDPOINT},
        "errorTracking": {"autocaptureExceptions": team.autocapture_exceptions_opt_in, "suppressionRules": []},
        "logs": {"captureConsoleLogs": false},
        "sessionRecording": session_recording,
        "heatmaps": team.heatmaps_opt_in,
        "conversations": false,
        "surveys": false,
        "productTours": false,
        "defaultIdentifiedOnly": true,
        "siteApps": [],
    });
    let Value::Object(ref mut map) = config else { unreachable!("a JSON object literal") };
    // PostHog leaves the key out for teams that get the `$elements` list.
    if team.elements_chain_as_string {
        map.insert("elementsChainAsString".into(), Value::Bool(true));
    }
    std::mem::take(map)
}

/// `config.js`: the same config, set where posthog-js's loader looks for it.
fn script(token: &str, config: &Map<String, Value>) -> Bytes {
    let token = Value::String(token.to_string());
    let config = Value::Object(config.clone());
    Bytes::from(format!(
        "(function() {{\n  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {{}};\n  \
         window._POSTHOG_REMOTE_CONFIG[{token}] = {{\n    config: {config},\n    siteApps: []\n  }}\n}})();\n"
    ))
}

/// `/flags?v=2`: no flag, ever; the config merged in when asked for.
fn flags(config: Option<Map<String, Value>>) -> Value {
    let mut answer = config.unwrap_or_default();
    for (key, value) in [
        ("flags", json!({})),
        ("featureFlags", json!({})),
        ("featureFlagPayloads", json!({})),
        ("errorsWhileComputingFlags", json!(false)),
        ("quotaLimited", answer.get("quotaLimited").cloned().unwrap_or_else(|| json!([]))),
        ("requestId", json!(uuid::Uuid::new_v4().to_string())),
    ] {
        answer.insert(key.into(), value);
    }
    Value::Object(answer)
}

/// `/decide?v=N`, as older posthog-js versions read it: the config's fields at the top,
/// flags as a list before v2 and an object from v2, `flags` from v4.
fn decide(version: u32, mut answer: Map<String, Value>) -> Value {
    answer.insert("config".into(), json!({"enable_collect_everything": true}));
    answer.insert("toolbarParams".into(), json!({}));
    answer.insert("isAuthenticated".into(), json!(false));
    answer.insert("featureFlags".into(), if version < 2 { json!([]) } else { json!({}) });
    answer.insert("featureFlagPayloads".into(), json!({}));
    answer.insert("errorsWhileComputingFlags".into(), json!(false));
    if version >= 4 {
        answer.insert("flags".into(), json!({}));
    }
    Value::Object(answer)
}

pub(crate) struct Refresh {
    /// `None`: answers are the defaults for every well-formed token (`SDK_CONFIG=false`).
    pub database: Option<PgConnectOptions>,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_teams: usize,
}

/// Re-reads every team's settings every `interval` until `stop` changes. A failed read
/// keeps the answers of the last good one.
pub(crate) fn spawn_refresher(
    configs: SdkConfigs,
    settings: Refresh,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(database) = settings.database else { return };
        let pool =
            PgPoolOptions::new().max_connections(1).acquire_timeout(settings.timeout).connect_lazy_with(database);
        let mut every = Every::now(settings.interval, stop);
        let mut failures = Failures::default();
        let mut told_truncated = false;
        while every.tick().await {
            let read = sqlx::query_as::<_, TeamSettings>(SETTINGS_QUERY)
                .bind(i64::try_from(settings.max_teams).unwrap_or(i64::MAX).saturating_add(1))
                .fetch_all(&pool);
            let error = match tokio::time::timeout(settings.timeout, read).await {
                Ok(Ok(mut teams)) => {
                    let truncated = teams.len() > settings.max_teams;
                    teams.truncate(settings.max_teams);
                    if truncated && !told_truncated {
                        warn!(
                            max = settings.max_teams,
                            "more teams than SDK_CONFIG_MAX_TEAMS: the others get the default SDK config"
                        );
                    }
                    told_truncated = truncated;
                    if failures.succeeded() || !configs.has_read() {
                        info!(teams = teams.len(), "sdk config read");
                    }
                    configs.replace(&teams, truncated);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            failures.failed(
                &error,
                "team settings for the SDK config cannot be read (run `sluice-ingest migrate`?); answering the last read, or the defaults",
                "sdk config refresh failed",
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(token: &str) -> TeamSettings {
        TeamSettings::defaults(token)
    }

    fn body(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).expect("json")
    }

    fn configs_with(teams: &[TeamSettings]) -> SdkConfigs {
        let configs = SdkConfigs::new(vec!["gzip".into(), "gzip-js".into()]);
        configs.replace(teams, false);
        configs
    }

    #[tokio::test]
    async fn a_team_with_recording_gets_the_recording_endpoint_and_its_sample_rate() {
        let mut recorded = team("phc_rec");
        recorded.session_recording_opt_in = true;
        recorded.session_recording_sample_rate = Some(0.5);
        recorded.capture_console_log_opt_in = true;
        let configs = configs_with(&[recorded, team("phc_plain")]);

        let answer = configs.answer(Ask::ConfigJson, Some("phc_rec"), false).await;
        assert_eq!((answer.status, answer.outcome), (StatusCode::OK, "team"));
        let config = body(&answer);
        assert_eq!(config["sessionRecording"]["endpoint"], "/s/");
        assert_eq!(config["sessionRecording"]["sampleRate"], "0.50");
        assert_eq!(config["sessionRecording"]["consoleLogRecordingEnabled"], true);
        assert_eq!(config["supportedCompression"], json!(["gzip", "gzip-js"]));
        assert_eq!(config["hasFeatureFlags"], false);
        assert_eq!(config["analytics"]["endpoint"], "/i/v0/e/");
        assert_eq!(config["elementsChainAsString"], true);

        let plain = body(&configs.answer(Ask::ConfigJson, Some("phc_plain"), false).await);
        assert_eq!(plain["sessionRecording"], false);
    }

    #[tokio::test]
    async fn the_script_sets_the_config_where_posthog_js_reads_it() {
        let configs = configs_with(&[team("phc_js")]);
        let answer = configs.answer(Ask::ConfigScript, Some("phc_js"), false).await;
        assert_eq!(answer.content_type, "application/javascript");
        let text = String::from_utf8(answer.body.to_vec()).unwrap();
        assert!(text.contains("window._POSTHOG_REMOTE_CONFIG[\"phc_js\"] = {"), "{text}");
        let json_start = text.find("config: ").unwrap() + "config: ".len();
        let json_end = text.find(",\n    siteApps").unwrap();
        let config: Value = serde_json::from_str(&text[json_start..json_end]).expect("the embedded config is JSON");
        assert_eq!(config["token"], "phc_js");
    }

    #[tokio::test]
    async fn unknown_tokens_are_refused_once_the_teams_are_read_and_get_defaults_before() {
        let unread = SdkConfigs::new(vec!["gzip-js".into()]);
        let before = unread.answer(Ask::ConfigJson, Some("phc_any"), false).await;
        assert_eq!((before.status, before.outcome), (StatusCode::OK, "defaults"));
        assert_eq!(body(&before)["sessionRecording"], false);

        let configs = configs_with(&[team("phc_known")]);
        let config = configs.answer(Ask::ConfigJson, Some("phc_nobody"), false).await;
        assert_eq!(config.status, StatusCode::NOT_FOUND);
        assert_eq!(body(&config)["code"], "invalid_api_key");
        let flags = configs.answer(Ask::Flags { with_config: false }, Some("phc_nobody"), false).await;
        assert_eq!(flags.status, StatusCode::UNAUTHORIZED);
        assert_eq!(body(&flags)["type"], "authentication_error");
        let missing = configs.answer(Ask::Decide { version: 3 }, None, false).await;
        assert_eq!(
            (missing.status, body(&missing)["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("missing_api_key"))
        );

        let truncated = SdkConfigs::new(vec![]);
        truncated.replace(&[team("phc_known")], true);
        assert_eq!(truncated.answer(Ask::ConfigJson, Some("phc_later"), false).await.outcome, "defaults");
    }

    #[tokio::test]
    async fn flags_and_decide_never_carry_a_flag_and_decide_carries_the_config() {
        let mut recorded = team("phc_old");
        recorded.session_recording_opt_in = true;
        let configs = configs_with(&[recorded]);
        let flags = body(&configs.answer(Ask::Flags { with_config: false }, Some("phc_old"), false).await);
        assert_eq!(flags["flags"], json!({}));
        assert_eq!(flags["featureFlags"], json!({}));
        assert!(flags.get("sessionRecording").is_none(), "no config unless asked");
        let with_config = body(&configs.answer(Ask::Flags { with_config: true }, Some("phc_old"), false).await);
        assert_eq!(with_config["sessionRecording"]["endpoint"], "/s/");

        let v1 = body(&configs.answer(Ask::Decide { version: 1 }, Some("phc_old"), false).await);
        assert_eq!(v1["featureFlags"], json!([]));
        let v3 = body(&configs.answer(Ask::Decide { version: 3 }, Some("phc_old"), false).await);
        assert_eq!(v3["featureFlags"], json!({}));
        assert_eq!(v3["sessionRecording"]["endpoint"], "/s/");
        assert_eq!(v3["supportedCompression"], json!(["gzip", "gzip-js"]));
        assert!(v3.get("flags").is_none());
        let v4 = body(&configs.answer(Ask::Decide { version: 4 }, Some("phc_old"), false).await);
        assert_eq!(v4["flags"], json!({}));
    }

    #[tokio::test]
    async fn a_token_over_its_recordings_quota_is_told_recording_is_off() {
        let mut recorded = team("phc_quota");
        recorded.session_recording_opt_in = true;
        let configs = configs_with(&[recorded]);
        for ask in [Ask::ConfigJson, Ask::Decide { version: 3 }, Ask::Flags { with_config: true }] {
            let answer = body(&configs.answer(ask, Some("phc_quota"), true).await);
            assert_eq!(answer["sessionRecording"], false, "{ask:?}");
            assert_eq!(answer["quotaLimited"], json!(["recordings"]), "{ask:?}");
        }
        let script = configs.answer(Ask::ConfigScript, Some("phc_quota"), true).await;
        assert!(String::from_utf8_lossy(&script.body).contains("\"sessionRecording\":false"));
    }

    #[tokio::test]
    async fn a_team_can_ask_for_the_elements_list_instead_of_the_chain() {
        let mut listed = team("phc_list");
        listed.elements_chain_as_string = false;
        let configs = configs_with(&[listed]);
        assert!(body(&configs.answer(Ask::ConfigJson, Some("phc_list"), false).await)
            .get("elementsChainAsString")
            .is_none());
    }

    #[tokio::test]
    async fn a_team_created_after_the_read_is_looked_up_and_served_at_once() {
        let find: Find<TeamSettings> =
            Arc::new(|token: String| Box::pin(async move { Ok((token == "phc_new").then(|| team(&token))) }));
        let limits = LookupLimits {
            concurrency: 1,
            wait: Duration::from_secs(1),
            unknown_for: Duration::from_secs(5),
            max_unknown: 10,
        };
        let configs = SdkConfigs::new(vec![]).with_lookup(find, limits, 10);
        configs.replace(&[team("phc_old")], false);
        let answer = configs.answer(Ask::ConfigJson, Some("phc_new"), false).await;
        assert_eq!((answer.status, answer.outcome), (StatusCode::OK, "team"));
        assert_eq!(body(&answer)["token"], "phc_new");
        assert_eq!(configs.found.read().unwrap().len(), 1, "held until the next read");
        let unknown = configs.answer(Ask::Flags { with_config: false }, Some("phc_none"), false).await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
        configs.replace(&[team("phc_old"), team("phc_new")], false);
        assert!(configs.found.read().unwrap().is_empty(), "the read has it now");
        assert_eq!(configs.answer(Ask::ConfigJson, Some("phc_new"), false).await.outcome, "team");
    }
}
