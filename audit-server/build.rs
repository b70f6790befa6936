// sqlx::migrate! embeds the migration files at compile time, but cargo does not know about them:
// without this, a migration added or edited after the last build is silently left out of the
// binary (sqlx's documented remedy, `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
