//! Fault injection for end-to-end tests: the descriptor limit of a running agent, a small tmpfs
//! for the buffer, and LazyFS, a FUSE file system that loses every unsynced write on command
//! (power cuts). Each helper fails loudly when its tool or privilege is missing; none skips.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::harness::Rig;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Points the rig's agent at another buffer directory and appends `extra` keys to `[buffer]`.
pub fn use_buffer(rig: &Rig, path: &Path, extra: &str) -> anyhow::Result<()> {
    let old = format!("path = \"{}\"\n", rig.dir.path().join("buffer").display());
    let config = std::fs::read_to_string(&rig.config)?;
    if !config.contains(&old) {
        bail!("the rig's config has no `{old}` line:\n{config}");
    }
    let config = config.replace(&old, &format!("path = \"{}\"\n{extra}", path.display()));
    std::fs::write(&rig.config, config)?;
    Ok(())
}

/// Gives the rig's agent a fixed loopback health port and returns its address.
pub fn use_health_port(rig: &Rig) -> anyhow::Result<SocketAddr> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = std::fs::read_to_string(&rig.config)?.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&rig.config, config)?;
    Ok(format!("127.0.0.1:{port}").parse()?)
}

/// `RLIMIT_NOFILE` (soft, hard) of a running process (util-linux `prlimit`).
pub fn nofile(pid: u32) -> anyhow::Result<(u64, u64)> {
    let out = run(Command::new("prlimit").arg(format!("--pid={pid}")).args([
        "--nofile",
        "--output=SOFT,HARD",
        "--noheadings",
        "--raw",
    ]))
    .context("reading the agent's descriptor limit (util-linux prlimit)")?;
    let mut it = out.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(soft)), Some(Ok(hard))) => Ok((soft, hard)),
        _ => bail!("unexpected prlimit output: {out}"),
    }
}

/// Sets the soft `RLIMIT_NOFILE` of a running process; the hard limit stays.
pub fn set_nofile_soft(pid: u32, soft: u64) -> anyhow::Result<()> {
    let (_, hard) = nofile(pid)?;
    run(Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={}:{hard}", soft.min(hard))))
    .context("changing the agent's descriptor limit (same user or CAP_SYS_RESOURCE)")?;
    Ok(())
}

/// The lowest descriptor number a process has free: the kernel hands out the lowest free number
/// and refuses (EMFILE) when it is not below the soft limit.
pub fn lowest_free_fd(pid: u32) -> anyhow::Result<u64> {
    let mut used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    used.sort_unstable();
    Ok(used
        .iter()
        .enumerate()
        .find(|(i, fd)| *i as u64 != **fd)
        .map_or(used.len() as u64, |(i, _)| i as u64))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mounted(point: &Path, fstype: &str) -> bool {
    let needle = format!(" {} {fstype} ", point.display());
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(&needle))
}

/// A small tmpfs, unmounted on drop. Needs root (CAP_SYS_ADMIN).
#[derive(Debug)]
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `dir` (created).
    pub fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(dir))
        .context("mounting a tmpfs for the buffer (the test needs root)")?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Bytes available to unprivileged writers.
    pub fn available(&self) -> anyhow::Result<u64> {
        Ok(fs2::available_space(&self.dir)?)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Builds LazyFS with the team's offline build script into `target/lazyfs` and returns the
/// binary. Panics (fails the test) when the script, FUSE or the build is missing.
pub fn build_lazyfs() -> PathBuf {
    let root = repo_root();
    // LazyFS is not vendored: its source and offline build script (Debian packages only) sit in
    // a tools folder beside the clone on the team's machines and in CI; LAZYFS_BUILD_SCRIPT points
    // elsewhere.
    let script = match std::env::var_os("LAZYFS_BUILD_SCRIPT") {
        Some(path) => PathBuf::from(path),
        None => root
            .parent()
            .and_then(|beside| find_lazyfs_build_script(beside, &root, 3))
            .unwrap_or_else(|| {
                panic!(
                    "no LazyFS build script found beside the clone (a `lazyfs/build.sh` up to three \
                     folders below {}): the power-cut test cannot run; set LAZYFS_BUILD_SCRIPT to a \
                     LazyFS build script that takes the output directory and prints the binary's \
                     path last",
                    root.parent().unwrap_or(&root).display()
                )
            }),
    };
    assert!(
        script.exists(),
        "the LazyFS build script {} is missing: the power-cut test cannot run (set \
         LAZYFS_BUILD_SCRIPT to a LazyFS build script that takes the output directory and prints \
         the binary's path last)",
        script.display()
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the power-cut test needs FUSE (load the fuse module, or give the \
         container --device /dev/fuse --cap-add SYS_ADMIN)"
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg(root.join("target/lazyfs"))
        .stdin(Stdio::null())
        .output()
        .expect("running the LazyFS build script");
    assert!(
        out.status.success(),
        "building LazyFS failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(bin.is_file(), "LazyFS build printed no binary: {stdout}");
    for tool in ["fusermount3", "mkfifo"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing (the LazyFS build installs fuse3)"
        );
    }
    bin
}

/// The first `lazyfs/build.sh` at most `depth` folders below `dir` (sorted, so the choice is
/// stable), not looking inside the clone itself or any build output folder.
fn find_lazyfs_build_script(dir: &Path, clone: &Path, depth: usize) -> Option<PathBuf> {
    let candidate = dir.join("lazyfs").join("build.sh");
    if candidate.is_file() {
        return Some(candidate);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir() && path != clone && !path.ends_with("target"))
        .collect();
    subdirs.sort();
    subdirs
        .iter()
        .find_map(|sub| find_lazyfs_build_script(sub, clone, depth - 1))
}

/// One LazyFS mount over a backing directory on the local disk. Commands go through a FIFO; a
/// clear-cache drops every unsynced byte (the power cut).
pub struct LazyFs {
    bin: PathBuf,
    /// Short scratch directory (commands are limited to 100 bytes, paths included).
    pub work: tempfile::TempDir,
    /// Where the file system is mounted.
    pub mnt: PathBuf,
    /// The backing directory (what survives a cut).
    pub root: PathBuf,
    faults: PathBuf,
    done: File,
    out: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs").field("mnt", &self.mnt).finish()
    }
}

impl LazyFs {
    /// Prepares (does not mount) a LazyFS under a fresh short directory in `/var/tmp`.
    pub fn new(bin: &Path) -> anyhow::Result<Self> {
        // /var/tmp: on the local disk, and short.
        let work = tempfile::Builder::new()
            .prefix("lz")
            .tempdir_in("/var/tmp")?;
        let w = work.path();
        let (mnt, root) = (w.join("m"), w.join("r"));
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&root)?;
        let (faults, done) = (w.join("f.fifo"), w.join("d.fifo"));
        for fifo in [&faults, &done] {
            run(Command::new("mkfifo").arg(fifo))?;
        }
        // Read-write so opening never blocks and LazyFS never meets a reader-less FIFO.
        let done_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&done)?;
        std::fs::write(
            w.join("lazyfs.toml"),
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n[cache]\napply_eviction=false\n\
                 [cache.simple]\ncustom_size=\"256mb\"\nblocks_per_page=1\n[filesystem]\n\
                 log_all_operations=false\nlogfile=\"{}\"\n",
                faults.display(),
                done.display(),
                w.join("lazyfs.log").display()
            ),
        )?;
        Ok(Self {
            bin: bin.to_path_buf(),
            out: w.join("out"),
            work,
            mnt,
            root,
            faults,
            done: done_file,
            child: None,
        })
    }

    /// LazyFS's output so far (all mounts).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Mounts and waits until the mount is up.
    pub fn mount(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out)?;
        let child = Command::new(&self.bin)
            .arg(&self.mnt)
            .arg("--config-path")
            .arg(self.work.path().join("lazyfs.toml"))
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting LazyFS")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(&self.mnt, "fuse.lazyfs") {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "LazyFS exited ({status}) before mounting:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!("LazyFS did not mount within 20 s:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the LazyFS process still runs (a torn-write fault makes it exit).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        // LazyFS reads commands 100 bytes at a time: a longer one would be misread silently.
        if command.len() >= 100 {
            bail!(
                "LazyFS command too long ({} bytes): {command}",
                command.len()
            );
        }
        let mut fifo = std::fs::OpenOptions::new().write(true).open(&self.faults)?;
        fifo.write_all(format!("{command}\n").as_bytes())?;
        Ok(())
    }

    /// Drops every unsynced byte and waits until LazyFS confirms.
    pub fn clear_cache(&mut self) -> anyhow::Result<()> {
        self.send("lazyfs::clear-cache")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = String::new();
        loop {
            let mut buf = [0u8; 256];
            match self.done.read(&mut buf) {
                Ok(n) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if got.contains("finished::clear-cache") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("LazyFS never confirmed clear-cache:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a fault command (torn-op, torn-seq, crash) and waits until LazyFS accepted it.
    pub fn inject(&mut self, command: &str) -> anyhow::Result<()> {
        // A torn write is acknowledged with the first line, a crash fault with the second.
        let accepted = |out: &str| {
            out.matches("configured successfully").count()
                + out.matches("received: VALID crash fault").count()
        };
        let before = accepted(&self.output());
        self.send(command)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.output();
            if accepted(&out) > before {
                return Ok(());
            }
            if out.contains("INVALID") {
                bail!("LazyFS refused `{command}`:\n{out}");
            }
            if Instant::now() > deadline {
                bail!("LazyFS did not confirm `{command}`:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The power cut after a fault was armed: waits up to `within` for LazyFS to die of it, kills
    /// `agent`, and drops the unsynced data itself if the fault never fired. Returns whether it
    /// fired.
    pub fn cut_after_fault(&mut self, agent: &mut Child, within: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::harness::kill9(agent);
        if self.alive() {
            self.clear_cache()?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Unmounts (lazily if busy or after LazyFS died) and waits for the process.
    pub fn unmount(&mut self) -> anyhow::Result<()> {
        if mounted(&self.mnt, "fuse.lazyfs") {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                run(Command::new("fusermount3").arg("-uz").arg(&self.mnt))?;
            }
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}
