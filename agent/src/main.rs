//! The `badge-agent` binary; everything lives in the library so tests can drive it.
fn main() -> std::process::ExitCode {
    badge_agent::cli::main()
}
