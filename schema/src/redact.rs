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
}
