//! Runs the dashboard tests in `sql/tests/test_dashboard.py` from `cargo test`: Streamlit's
//! AppTest on every page with known data, and every page opened in headless Debian chromium
//! (screenshots under target/dashboard-screenshots/). Separate from `sql_model.rs` because the
//! app keeps a fakesnow patch open for its whole process. Fails loudly when Python, the venv, a
//! package or chromium is missing (`.ci/run` installs chromium).

use badge_tests::pyenv;

#[test]
fn sql_dashboard_tests_pass_under_pytest() {
    let run = pyenv::pytest::<&str, &str>(&["sql/tests/test_dashboard.py", "-q"], &[]);
    assert!(run.passed >= 2, "both dashboard tests must run");
    println!("sql_dashboard: {} pytest tests passed", run.passed);
}
