//! Tells the tests whether PostgreSQL variants can run: with `HOGLET_TEST_POSTGRES_URL` set at
//! build time, `cfg(hoglet_test_postgres)` is on; without it the PostgreSQL tests are compiled
//! as ignored (with the reason), so a run never counts them as passed.
fn main() {
    println!("cargo::rerun-if-env-changed=HOGLET_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(hoglet_test_postgres)");
    if std::env::var("HOGLET_TEST_POSTGRES_URL").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=hoglet_test_postgres");
    }
}
