// The Postgres migrations are embedded by `sqlx::migrate!`, which cargo does not know
// to re-run when a migration file is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
