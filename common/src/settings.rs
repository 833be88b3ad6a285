//! How settings are read: durations are given in milliseconds (`*_MS`, as PostHog's and
//! librdkafka's settings are) and held as [`Duration`]s, so no code converts them again;
//! repeated pairs as `key=value`.

use std::time::Duration;

/// Parses a whole number of milliseconds.
pub fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))
}

/// Parses `key=value` (repeated settings such as `--config key=value`).
pub fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_milliseconds_only() {
        assert_eq!(millis("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(millis("0"), Ok(Duration::ZERO));
        assert!(millis("1.5").is_err());
        assert!(millis("5s").is_err());
        assert!(millis("-1").is_err());
    }

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(key_value("url=https://x/?a=b"), Ok(("url".into(), "https://x/?a=b".into())));
        assert!(key_value("no-pair").is_err());
    }
}
