//! Step 3: restrictions an operator sets for a token or a `token:distinct_id`: drop its
//! events, or skip person processing for them (a bot hammering one person, say).

use std::collections::HashSet;

#[derive(Debug, Default, Clone)]
pub struct Restrictions {
    drop: HashSet<String>,
    skip_persons: HashSet<String>,
}

impl Restrictions {
    /// From comma separated `token` or `token:distinct_id` lists.
    pub fn parse(drop: &str, skip_persons: &str) -> Self {
        let list = |s: &str| s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        Restrictions { drop: list(drop), skip_persons: list(skip_persons) }
    }

    pub fn drops(&self, token: &str, distinct_id: &str) -> bool {
        matches(&self.drop, token, distinct_id)
    }

    pub fn skips_persons(&self, token: &str, distinct_id: &str) -> bool {
        matches(&self.skip_persons, token, distinct_id)
    }
}

fn matches(set: &HashSet<String>, token: &str, distinct_id: &str) -> bool {
    !set.is_empty() && (set.contains(token) || set.contains(&sluice_schema::kafka_key(token, distinct_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_token_or_token_and_distinct_id() {
        let r = Restrictions::parse("phc_a, phc_b:bot ,", "phc_c:crawler");
        assert!(r.drops("phc_a", "anyone"));
        assert!(r.drops("phc_b", "bot"));
        assert!(!r.drops("phc_b", "human"));
        assert!(r.skips_persons("phc_c", "crawler"));
        assert!(!r.skips_persons("phc_c", "human"));
        assert!(!Restrictions::default().drops("phc_a", "x"));
    }
}
