//! The Python side of the tests: one venv at `<workspace>/target/sql-venv` with the pinned
//! `sql/tests/requirements.txt` (fakesnow, sqruff, pytest), and pytest runs inside it.
//!
//! Shared by `sql_model.rs` (the SQL model suite) and `full_pipeline.rs` (agent → emulator → SQL
//! model), so both use the same venv, install stamp and lock. Everything fails loudly: missing
//! python3/venv/pip, a failed install, a failed pytest run, or a run in which no test passed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// File inside the venv recording which requirements.txt content was installed successfully.
const STAMP: &str = ".badge-requirements.stamp";

/// The workspace root (the `tests/` crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ crate lives one level below the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "\n\n*** pyenv: cannot run {what}: {e}\n*** {cmd:?}\n\
             *** The SQL tests need Python 3.11+ with the venv module and pip \
             (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip).\n"
        ),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn require_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "\n\n*** pyenv: {what} failed ({}):\n{}\n",
        out.status,
        text(out)
    );
}

/// Cross-process lock (a directory) so two concurrent `cargo test` runs do not pip-install into
/// the same venv at once. A lock older than ten minutes is considered stale and taken over.
struct VenvLock(PathBuf);

impl VenvLock {
    fn acquire(path: PathBuf) -> Self {
        let started = std::time::Instant::now();
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return VenvLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(600));
                    if stale || started.elapsed() > std::time::Duration::from_secs(900) {
                        let _ = std::fs::remove_dir(&path);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => panic!("cannot create lock {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for VenvLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The venv's python, creating the venv and installing the pinned requirements when needed.
pub fn prepare_venv(root: &Path) -> PathBuf {
    let venv = root.join("target").join("sql-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join("sql").join("tests").join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));

    std::fs::create_dir_all(root.join("target"))
        .unwrap_or_else(|e| panic!("cannot create target/: {e}"));
    let _lock = VenvLock::acquire(root.join("target").join("sql-venv.lock"));

    let version = run(
        Command::new("python3").arg("--version"),
        "python3 --version",
    );
    require_success(&version, "python3 --version (is python3 installed?)");

    if !python.exists() {
        let out = run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        );
        require_success(
            &out,
            "python3 -m venv target/sql-venv (is python3-venv installed?)",
        );
    }

    let stamp = venv.join(STAMP);
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if installed != wanted {
        let pip = run(
            Command::new(&python).args(["-m", "pip", "--version"]),
            "pip --version",
        );
        require_success(
            &pip,
            "pip inside the venv (is python3-pip / ensurepip available?)",
        );
        eprintln!(
            "pyenv: installing {} into {}",
            requirements.display(),
            venv.display()
        );
        let out = run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    "-r",
                ])
                .arg(&requirements),
            "pip install -r sql/tests/requirements.txt",
        );
        require_success(&out, "pip install -r sql/tests/requirements.txt");
        std::fs::write(&stamp, &wanted)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", stamp.display()));
    }
    python
}

/// What a pytest run printed and how many tests passed.
#[derive(Debug)]
pub struct PytestRun {
    /// stdout followed by stderr.
    pub output: String,
    /// From pytest's summary line.
    pub passed: u64,
}

/// Runs `python -m pytest <args>` from the workspace root in the venv (prepared first), with
/// extra environment variables; prints the output and panics unless pytest succeeded with at
/// least one passed test.
pub fn pytest<K, V>(args: &[&str], env: &[(K, V)]) -> PytestRun
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let root = workspace_root();
    let python = prepare_venv(&root);
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest"])
        .args(args)
        .args(["-p", "no:cacheprovider"])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, &format!("pytest {}", args.join(" ")));
    let output = text(&out);
    println!("{output}");
    assert!(
        out.status.success(),
        "\n\n*** pytest {} failed ({}); output above.\n",
        args.join(" "),
        out.status
    );
    let passed = passed_count(&output);
    assert!(
        passed > 0,
        "\n\n*** pytest {} collected/passed 0 tests; output above.\n",
        args.join(" ")
    );
    PytestRun { output, passed }
}

/// Number of passed tests in pytest's summary line (`… 37 passed in 50.1s`).
pub fn passed_count(output: &str) -> u64 {
    output
        .lines()
        .rev()
        .find_map(|line| {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            words
                .windows(2)
                .find(|w| w[1] == "passed")
                .and_then(|w| w[0].trim_start_matches('=').parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_count_reads_the_pytest_summary() {
        assert_eq!(passed_count("....\n37 passed in 50.12s\n"), 37);
        assert_eq!(passed_count("== 3 passed, 1 warning in 1.0s =="), 3);
        assert_eq!(passed_count("1 failed, 36 passed in 53.87s"), 36);
        assert_eq!(passed_count("no tests ran in 0.01s"), 0);
    }
}
