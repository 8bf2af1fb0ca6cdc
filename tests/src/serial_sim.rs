//! Serial readers simulated on real kernel pseudo-terminals.
//!
//! The agent opens the pty's slave side exactly as it opens `/dev/ttyUSB0`; the test writes the
//! bytes a reader would send into the master side. A stable symlink stands in for
//! `/dev/serial/by-id/…`, so "unplug and replug" is: close the pty, open a new one, re-point the
//! link.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::{openpty, OpenptyResult};
use nix::sys::termios::{self, SetArg};

/// One simulated serial reader.
#[derive(Debug)]
pub struct SerialSim {
    master: File,
    _slave: OwnedFd,
    slave_path: PathBuf,
    link: Option<PathBuf>,
}

impl SerialSim {
    /// Opens a new pty in raw mode.
    pub fn open() -> anyhow::Result<Self> {
        let OpenptyResult { master, slave } = openpty(None, None).context("openpty")?;
        // Not inherited by the agent process: a master fd it held would keep the tty "plugged in".
        for fd in [&master, &slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("FD_CLOEXEC")?;
        }
        // Raw mode on the slave so the line discipline passes bytes (CR, 0x03) unchanged.
        let mut attrs = termios::tcgetattr(&slave).context("tcgetattr")?;
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&slave, SetArg::TCSANOW, &attrs).context("tcsetattr")?;
        let slave_path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&slave)
        ))
        .context("resolving the pty slave path")?;
        Ok(Self {
            master: File::from(master),
            _slave: slave,
            slave_path,
            link: None,
        })
    }

    /// Opens a pty and points `link` (a stand-in for `/dev/serial/by-id/…`) at it.
    pub fn open_linked(link: &Path) -> anyhow::Result<Self> {
        let mut sim = Self::open()?;
        let tmp = link.with_extension("tmp-link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&sim.slave_path, &tmp).context("symlink")?;
        std::fs::rename(&tmp, link).context("re-pointing the device link")?;
        sim.link = Some(link.to_owned());
        Ok(sim)
    }

    /// The device path the agent should open.
    pub fn device(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.slave_path)
    }

    /// Writes raw bytes as the reader would.
    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.master.write_all(bytes).context("writing to the pty")?;
        self.master.flush().context("flushing the pty")
    }
}

/// The 14-byte RDM6300 frame for a 40-bit EM4100 id: STX, 10 hex digits, 2 hex digits of XOR, ETX.
pub fn rdm6300_frame(id40: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..5).rev().map(|i| (id40 >> (8 * i)) as u8).collect();
    let checksum = data.iter().fold(0_u8, |acc, b| acc ^ b);
    let mut frame = vec![0x02];
    frame.extend(format!("{:010X}{checksum:02X}", id40 & 0xff_ffff_ffff).into_bytes());
    frame.push(0x03);
    frame
}

/// A converter line: the 24 data bits of a W26 frame as 6 hex digits and CR (WIE232 style).
pub fn converter_line(facility: u8, card: u16) -> Vec<u8> {
    format!("{facility:02X}{card:04X}\r").into_bytes()
}

/// Two serial readers on linked ptys (an RDM6300 module `rdm` and a Wiegand-to-serial converter
/// `conv`) and a thread presenting a new, unique badge every few milliseconds on alternating
/// readers, remembering each credential as the agent stores it.
pub struct BadgeWriter {
    /// The `[[reader]]` tables for the agent's config.
    pub readers_toml: String,
    sent: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ptys: Option<(SerialSim, SerialSim)>,
    id_base: u64,
}

impl BadgeWriter {
    /// Opens both ptys with their links in `dir`; badges flow once [`BadgeWriter::start`] is
    /// called. RDM6300 ids count up from `id_base`, so that two tests never share a badge.
    pub fn open(dir: &Path, id_base: u64) -> anyhow::Result<Self> {
        let rdm_link = dir.join("ttyRDM");
        let conv_link = dir.join("ttyCONV");
        let ptys = (
            SerialSim::open_linked(&rdm_link)?,
            SerialSim::open_linked(&conv_link)?,
        );
        Ok(Self {
            readers_toml: format!(
                "[[reader]]\nid = \"rdm\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"rdm6300\"\n\
                 [[reader]]\nid = \"conv\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"line\"\n",
                rdm_link.display(),
                conv_link.display()
            ),
            sent: Arc::default(),
            stop: Arc::default(),
            thread: None,
            ptys: Some(ptys),
            id_base,
        })
    }

    /// Starts presenting badges (once; a second call does nothing).
    pub fn start(&mut self) {
        let Some((mut rdm, mut conv)) = self.ptys.take() else {
            return;
        };
        let (sent, stop, id_base) = (Arc::clone(&self.sent), Arc::clone(&self.stop), self.id_base);
        self.thread = Some(std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let credential = if n.is_multiple_of(2) {
                    let id = id_base + n;
                    rdm.send(&rdm6300_frame(id))
                        .expect("writing to the RDM6300 pty");
                    format!("EM4100:{id:010x}")
                } else {
                    let (fc, card) = ((n >> 16) as u8, n as u16);
                    conv.send(&converter_line(fc, card))
                        .expect("writing to the converter pty");
                    format!("RAW24:{:06x}", (u32::from(fc) << 16) | u32::from(card))
                };
                sent.lock().expect("badge list").insert(credential);
                std::thread::sleep(Duration::from_millis(4));
            }
        }));
    }

    /// Stops the thread and returns every credential presented.
    pub fn stop(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the badge writer thread panicked");
        }
        let sent = self.sent.lock().expect("badge list");
        sent.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    #[test]
    fn rdm6300_frame_matches_the_reference_layout() {
        // RDM6300 (`docs/reader-formats.md`): STX, 10 hex, XOR checksum as 2 hex, ETX.
        let frame = rdm6300_frame(0x0A_0012_3456);
        assert_eq!(frame.len(), 14);
        assert_eq!(&frame[1..11], b"0A00123456");
        assert_eq!(
            &frame[11..13],
            format!("{:02X}", 0x0A ^ 0x12 ^ 0x34 ^ 0x56).as_bytes()
        );
        assert_eq!((frame[0], frame[13]), (0x02, 0x03));
    }

    #[test]
    fn bytes_written_to_the_master_arrive_unchanged_at_the_slave() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyRFID");
        let mut sim = SerialSim::open_linked(&link).unwrap();
        let mut slave = std::fs::File::open(sim.device()).unwrap();
        let frame = rdm6300_frame(0x01_0203_0405);
        sim.send(&frame).unwrap();
        let mut got = vec![0; frame.len()];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(got, frame);
    }
}
