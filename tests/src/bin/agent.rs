//! The `badge-agent` binary, built inside the test package so end-to-end tests can spawn it.
fn main() -> std::process::ExitCode {
    badge_agent::cli::main()
}
