// `sqlx::migrate!` embeds the migrations when the crate compiles; without this, a new
// migration file does not make cargo compile it again, and the binaries keep the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
