//! Runs the Snowflake model tests in `sql/tests` (sqruff parse gate + fakesnow logic tests) from
//! `cargo test`, so the project's single test command covers the SQL too.
//!
//! The venv (`target/sql-venv`, pinned `sql/tests/requirements.txt`) and the pytest run are
//! `badge_tests::pyenv`; it fails loudly when python3, venv or pip are missing, when an install
//! fails, when pytest fails, or when pytest collected no tests.

use badge_tests::pyenv;

#[test]
fn sql_model_tests_pass_under_pytest() {
    // test_full_pipeline.py needs the ledger of a real agent run; full_pipeline.rs runs it.
    let run = pyenv::pytest::<&str, &str>(
        &[
            "sql/tests",
            "-q",
            "--ignore=sql/tests/test_full_pipeline.py",
            "--ignore=sql/tests/test_dashboard.py",
        ],
        &[],
    );
    println!("sql_model: {} pytest tests passed", run.passed);
}
