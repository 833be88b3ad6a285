//! The optional team-token check against a real Postgres: unknown tokens are turned away
//! with 401 once the list is read, known ones pass, and an unreadable list fails open.

use serde_json::json;
use sluice_tests::{block_on, unique, Capture};

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sluice".into())
}

fn batch(token: &str, event: &str) -> String {
    json!({"api_key": token, "batch": [{"event": event, "distinct_id": "d"}]}).to_string()
}

#[test]
fn unknown_tokens_are_rejected_when_the_check_is_on() {
    let table = unique("teams").replace('-', "_");
    let known = unique("phc-known");
    block_on(async {
        let pool = sqlx::PgPool::connect(&database_url()).await.expect("postgres");
        sqlx::query(&format!("CREATE TABLE {table} (api_token text NOT NULL)")).execute(&pool).await.unwrap();
        sqlx::query(&format!("INSERT INTO {table} VALUES ($1)")).bind(&known).execute(&pool).await.unwrap();
    });
    let query = format!("SELECT api_token FROM {table}");
    let cap = Capture::start(
        "team-tokens",
        &[("TEAM_TOKEN_CHECK", "true"), ("TEAM_TOKEN_QUERY", &query), ("TEAM_TOKEN_REFRESH_INTERVAL_MS", "100")],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));

    let r = cap.post("/batch", "application/json", batch(&unique("phc-stranger"), "rejected"));
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["code"], "unknown_token");
    assert_eq!(cap.post("/batch", "application/json", batch(&known, "accepted")).status, 200);
    let main = cap.read(&cap.topics.main, 1);
    assert_eq!(main.iter().map(|r| r.value["event"].as_str().unwrap()).collect::<Vec<_>>(), vec!["accepted"]);
    block_on(async {
        let pool = sqlx::PgPool::connect(&database_url()).await.expect("postgres");
        sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
    });
}

#[test]
fn an_unreadable_token_list_fails_open() {
    let cap = Capture::start(
        "team-tokens-open",
        &[("TEAM_TOKEN_CHECK", "true"), ("TEAM_TOKEN_QUERY", "SELECT api_token FROM no_such_table_anywhere")],
    );
    let r = cap.post("/batch", "application/json", batch(&unique("phc-any"), "accepted"));
    assert_eq!(r.status, 200, "{}", r.text);
}
