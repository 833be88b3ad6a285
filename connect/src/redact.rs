//! Settings hold credentials (`postgres://user:password@host/db`); whatever either binary
//! prints of them goes through here first.

/// `url` with the password of its user info replaced by `***`; anything that is not a
/// URL with a password comes back as it was.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last `@` ends the user info: a password may itself contain `@`.
    let Some((user_info, host)) = authority.rsplit_once('@') else { return url.to_string() };
    let user = match user_info.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => return url.to_string(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

/// The password of `url`'s user info, if it has one.
pub fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let user_info = authority.rsplit_once('@')?.0;
    user_info.split_once(':').map(|(_, password)| password).filter(|p| !p.is_empty())
}

/// `text` (an error from a library that may quote what it was given) with every
/// occurrence of each secret replaced by `***`.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        // Too short to tell apart from ordinary words; such a password is not one.
        if secret.len() >= 4 {
            text = text.replace(secret, "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            url("postgres://u:SECRETPW@db:5432/sluice?sslmode=require"),
            "postgres://u:***@db:5432/sluice?sslmode=require"
        );
        assert_eq!(url("rediss://default:p@ss@cache:6380/0"), "rediss://default:***@cache:6380/0");
        assert_eq!(url("https://ch:pw@clickhouse.example:8443"), "https://ch:***@clickhouse.example:8443");
        assert_eq!(url("postgres://postgres@127.0.0.1:5432/sluice"), "postgres://postgres@127.0.0.1:5432/sluice");
        assert_eq!(url("http://127.0.0.1:8123/?user=a@b"), "http://127.0.0.1:8123/?user=a@b");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn passwords_are_found_and_scrubbed_from_free_text() {
        assert_eq!(password("rediss://default:p@ss@cache:6380/0"), Some("p@ss"));
        assert_eq!(password("postgres://postgres@127.0.0.1/sluice"), None);
        assert_eq!(password("https://u:@ch"), None);
        assert_eq!(
            scrub("bad url postgres://u:SECRET@h: SECRET rejected", ["SECRET", "ab"]),
            "bad url postgres://u:***@h: *** rejected"
        );
    }
}
