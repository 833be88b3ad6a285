//! Whether and how two distinct ids become one person: a pure function of what each id
//! points at, so every case is tested without a database.

/// What a distinct id points at, as far as merging cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PersonRef {
    pub id: i64,
    pub is_identified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Same id, or both ids already on one person.
    Nothing,
    /// One of the ids may not be merged on (see [`is_illegal_id`]).
    IllegalId,
    /// Only the target has a person: the source id joins it.
    AttachSourceToTarget { person: PersonRef },
    /// Only the source has a person: the target id joins it.
    AttachTargetToSource { person: PersonRef },
    /// Neither has a person: one identified person holding both.
    CreateWithBoth,
    /// Two persons: the source's ids and properties move to the target, the source goes.
    Merge { source: PersonRef, target: PersonRef },
    /// The source person is identified already and the event is not `$merge_dangerously`.
    RefuseAlreadyIdentified,
}

/// `target` is the event's distinct_id; `source` the other (`$anon_distinct_id` or `alias`).
pub(crate) fn decide(
    target: &str,
    source: &str,
    target_person: Option<PersonRef>,
    source_person: Option<PersonRef>,
    dangerous: bool,
) -> Decision {
    if target == source {
        return Decision::Nothing;
    }
    if is_illegal_id(target) || is_illegal_id(source) {
        return Decision::IllegalId;
    }
    match (target_person, source_person) {
        (Some(t), Some(s)) if t.id == s.id => Decision::Nothing,
        (Some(t), None) => Decision::AttachSourceToTarget { person: t },
        (None, Some(s)) => Decision::AttachTargetToSource { person: s },
        (None, None) => Decision::CreateWithBoth,
        (Some(t), Some(s)) => {
            if s.is_identified && !dangerous {
                Decision::RefuseAlreadyIdentified
            } else {
                Decision::Merge { source: s, target: t }
            }
        }
    }
}

/// Ids that SDKs and apps send by mistake; merging on them would join strangers.
pub(crate) fn is_illegal_id(id: &str) -> bool {
    const CASE_INSENSITIVE: &[&str] = &[
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    ];
    const EXACT: &[&str] = &["[object Object]", "NaN", "None", "none", "null", "0"];
    let trimmed = id.trim();
    let unquoted = trimmed.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(trimmed).trim();
    unquoted.is_empty()
        || CASE_INSENSITIVE.iter().any(|bad| unquoted.eq_ignore_ascii_case(bad))
        || EXACT.contains(&unquoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: PersonRef = PersonRef { id: 1, is_identified: false };
    const KNOWN: PersonRef = PersonRef { id: 2, is_identified: true };
    const OTHER_ANON: PersonRef = PersonRef { id: 3, is_identified: false };

    #[test]
    fn every_case() {
        assert_eq!(decide("a", "a", None, None, false), Decision::Nothing);
        assert_eq!(decide("a", "b", Some(ANON), Some(ANON), false), Decision::Nothing);
        assert_eq!(decide("user", "null", None, None, false), Decision::IllegalId);
        assert_eq!(decide("user", "anon", Some(KNOWN), None, false), Decision::AttachSourceToTarget { person: KNOWN });
        assert_eq!(decide("user", "anon", None, Some(ANON), false), Decision::AttachTargetToSource { person: ANON });
        assert_eq!(decide("user", "anon", None, None, false), Decision::CreateWithBoth);
        assert_eq!(
            decide("user", "anon", Some(KNOWN), Some(ANON), false),
            Decision::Merge { source: ANON, target: KNOWN }
        );
        assert_eq!(
            decide("user", "anon", Some(OTHER_ANON), Some(ANON), false),
            Decision::Merge { source: ANON, target: OTHER_ANON }
        );
        assert_eq!(decide("a", "b", Some(ANON), Some(KNOWN), false), Decision::RefuseAlreadyIdentified);
        assert_eq!(decide("a", "b", Some(ANON), Some(KNOWN), true), Decision::Merge { source: KNOWN, target: ANON });
    }

    #[test]
    fn illegal_ids() {
        for id in [
            "",
            "  ",
            "anonymous",
            "Anonymous",
            "GUEST",
            "distinctId",
            "distinct_id",
            "id",
            "not_authenticated",
            "email",
            "undefined",
            "true",
            "FALSE",
        ] {
            assert!(is_illegal_id(id), "{id:?}");
        }
        for id in ["[object Object]", "NaN", "None", "none", "null", "0", "\"null\"", "\"undefined\"", "\" \""] {
            assert!(is_illegal_id(id), "{id:?}");
        }
        for id in ["NULL", "nan", "00", "user@example.com", "anonymous-1", "42"] {
            assert!(!is_illegal_id(id), "{id:?}");
        }
    }
}
