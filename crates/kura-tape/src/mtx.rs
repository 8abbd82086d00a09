//! A SCSI medium changer driven through the `mtx` program: [`MtxChanger`] runs
//! `mtx -f DEVICE status`, `load SLOT DRIVE` and `unload SLOT DRIVE`, each bounded in time.
//!
//! # Bounded commands
//! A command runs in its own process group with stdin closed; its stdout and stderr are read
//! on threads as they come (a full pipe never blocks it). When it has not exited by the
//! deadline, the whole group is killed (`SIGKILL`: a wrapper script's children too) and the
//! command reaped, and the result is [`Error::TimedOut`] naming the command line. A non-zero
//! exit is [`Error::Changer`] quoting its stderr (trimmed, at most about 500 characters).
//!
//! # `mtx status`
//! The format is `mtx`'s `Status()` (mtx.c): a header, one line per data transfer element
//! (drive, from 0), one per storage element (slot, from 1, `IMPORT/EXPORT` for mail slots):
//!
//! ```text
//!   Storage Changer /dev/sg3:2 Drives, 8 Slots ( 1 Import/Export )
//! Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = SSC003L6
//! Data Transfer Element 1:Empty
//!       Storage Element 1:Full :VolumeTag=SSC001L6
//!       Storage Element 8 IMPORT/EXPORT:Empty
//! ```
//!
//! A drive's tag is written `VolumeTag = X`, a slot's `VolumeTag=X`; `AlternateVolumeTag`
//! fields are ignored, and so are lines of no known form. A full element whose barcode the
//! library did not read has the barcode `Some("")`: it is not empty (so
//! [`LibraryStatus::empty_slot`] never picks it) and no barcode names it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::drive::{Changer, DriveSlotStatus, LibraryStatus, SlotStatus};
use crate::{Error, Result};

/// How much of stderr an error quotes.
const STDERR_QUOTE: usize = 500;
/// How much of a command's output is kept (a large library's status is some 100 KiB).
const OUTPUT_CAP: u64 = 16 << 20;
/// How often a running command is looked at.
const POLL: Duration = Duration::from_millis(20);

/// A changer at `device` (`/dev/sg3`), moved by running `command` (`mtx`); every command
/// is killed after `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtxChanger {
    pub device: PathBuf,
    pub command: PathBuf,
    pub timeout: Duration,
}

impl MtxChanger {
    pub fn new(device: PathBuf, command: PathBuf, timeout: Duration) -> MtxChanger {
        MtxChanger {
            device,
            command,
            timeout,
        }
    }

    /// Run `command -f device args…`; its stdout when it exits 0.
    fn run(&self, args: &[String]) -> Result<String> {
        let what = format!(
            "{} -f {} {}",
            self.command.display(),
            self.device.display(),
            args.join(" ")
        );
        let mut cmd = Command::new(&self.command);
        cmd.arg("-f")
            .arg(&self.device)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let started = Instant::now();
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                // The program is being replaced (or was just written): try again shortly.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    return Err(Error::Changer {
                        what,
                        reason: format!("cannot run it: {e}"),
                    });
                }
            }
        };
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let deadline = started + self.timeout;
        let status = match wait_until(&mut child, deadline) {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill_and_reap(&mut child);
                return Err(Error::TimedOut {
                    what,
                    after: self.timeout,
                });
            }
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(Error::Changer {
                    what,
                    reason: format!("waiting for it: {e}"),
                });
            }
        };
        // The output ends when every process holding the pipes has exited; one left behind
        // by the command would hold them open, so this waits only until the deadline.
        let grace = deadline.max(Instant::now() + Duration::from_secs(1));
        let out = collect(&stdout, grace);
        let err = collect(&stderr, grace);
        if out.is_none() || err.is_none() {
            kill_group(&child);
        }
        let (out, err) = (out.unwrap_or_default(), err.unwrap_or_default());
        if !status.success() {
            return Err(Error::Changer {
                what,
                reason: failure(status, &err, &out),
            });
        }
        tracing::debug!(command = %what, took = ?started.elapsed(), "changer command done");
        Ok(out)
    }
}

/// Read a pipe to its end (keeping at most [`OUTPUT_CAP`] bytes) on a thread.
fn reader(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    match pipe {
        Some(mut pipe) => {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut pipe).take(OUTPUT_CAP).read_to_end(&mut buf);
                // Drain the rest so the command is never blocked on a full pipe.
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            });
        }
        None => {
            let _ = tx.send(String::new());
        }
    }
    rx
}

fn collect(rx: &mpsc::Receiver<String>, until: Instant) -> Option<String> {
    rx.recv_timeout(until.saturating_duration_since(Instant::now()))
        .ok()
}

/// Poll the child until it exits or the deadline passes (`Ok(None)`).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Kill the command's process group (it leads it: `process_group(0)`).
fn kill_group(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

fn kill_and_reap(child: &mut Child) {
    kill_group(child);
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a command failed: its exit status and the end of its stderr (or stdout, when it
/// said nothing on stderr).
fn failure(status: ExitStatus, stderr: &str, stdout: &str) -> String {
    let said = match stderr.trim() {
        "" => stdout.trim(),
        s => s,
    };
    if said.is_empty() {
        return format!("{status}");
    }
    let quoted = match said.char_indices().rev().nth(STDERR_QUOTE - 1) {
        // Keep the end: mtx prints the reason last.
        Some((i, _)) if i > 0 => format!("…{}", &said[i..]),
        _ => said.to_string(),
    };
    format!("{status}: {quoted}")
}

/// Parse `mtx status` output (see the module docs).
pub fn parse_status(text: &str) -> Result<LibraryStatus> {
    let mut status = LibraryStatus::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Data Transfer Element") {
            let Some((number, state)) = rest.split_once(':') else {
                continue;
            };
            // Old single-drive versions print no number.
            let drive = match number.trim() {
                "" => 0,
                n => match n.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            let (full, barcode) = element_state(state);
            let source_slot = state
                .split_once("(Storage Element ")
                .and_then(|(_, s)| s.split_once(' '))
                .and_then(|(n, _)| n.parse::<u32>().ok());
            status.drives.push(DriveSlotStatus {
                drive,
                barcode: full.then(|| barcode.unwrap_or_default()),
                source_slot: source_slot.filter(|_| full),
            });
        } else if let Some(rest) = line.strip_prefix("Storage Element ") {
            let Some((id, state)) = rest.split_once(':') else {
                continue;
            };
            let mut words = id.split_whitespace();
            let Some(Ok(slot)) = words.next().map(str::parse::<u32>) else {
                continue;
            };
            let import_export = words.any(|w| w.eq_ignore_ascii_case("IMPORT/EXPORT"));
            let (full, barcode) = element_state(state);
            status.slots.push(SlotStatus {
                slot,
                barcode: full.then(|| barcode.unwrap_or_default()),
                import_export,
            });
        }
    }
    if status.drives.is_empty() && status.slots.is_empty() {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Changer {
            what: "status".into(),
            reason: format!(
                "cannot read mtx status: no drive or slot in its output (first line: {:?})",
                first.chars().take(200).collect::<String>()
            ),
        });
    }
    Ok(status)
}

/// An element's state after its number: `Full (…):VolumeTag = X:AlternateVolumeTag = Y`,
/// `Full :VolumeTag=X`, `Full `, `Empty`. Whether it is full, and its primary tag.
fn element_state(state: &str) -> (bool, Option<String>) {
    let mut fields = state.split(':');
    let full = fields
        .next()
        .is_some_and(|f| f.trim_start().starts_with("Full"));
    let barcode = fields.find_map(|f| {
        let (key, value) = f.split_once('=')?;
        (key.trim() == "VolumeTag")
            .then(|| value.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    (full, barcode)
}

impl Changer for MtxChanger {
    fn status(&mut self) -> Result<LibraryStatus> {
        let out = self.run(&["status".into()])?;
        parse_status(&out).map_err(|e| match e {
            Error::Changer { reason, .. } => Error::Changer {
                what: format!(
                    "{} -f {} status",
                    self.command.display(),
                    self.device.display()
                ),
                reason,
            },
            e => e,
        })
    }

    fn load(&mut self, slot: u32, drive: u32) -> Result<()> {
        self.run(&["load".into(), slot.to_string(), drive.to_string()])
            .map(drop)
    }

    fn unload(&mut self, drive: u32, slot: u32) -> Result<()> {
        // mtx takes the slot first: `unload [<storage-element>] [<drive>]`.
        self.run(&["unload".into(), slot.to_string(), drive.to_string()])
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two drives, barcodes, a full slot without one, a mail slot.
    const TWO_DRIVES: &str = "  Storage Changer /dev/sg3:2 Drives, 8 Slots ( 1 Import/Export )
Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = SSC003L6
Data Transfer Element 1:Empty
      Storage Element 1:Full :VolumeTag=SSC001L6
      Storage Element 2:Full :VolumeTag=SSC002L6
      Storage Element 3:Empty
      Storage Element 4:Full 
      Storage Element 8 IMPORT/EXPORT:Empty
";

    /// An autoloader with no barcode reader, its tape's origin unknown (after a power cycle).
    const NO_BARCODES: &str = "  Storage Changer /dev/sg1:1 Drives, 4 Slots ( 0 Import/Export )
Data Transfer Element 0:Full (Unknown Storage Element Loaded)
      Storage Element 1:Full 
      Storage Element 2:Empty
      Storage Element 3:Full 
      Storage Element 4:Empty
";

    /// A larger library: alternate tags, padded tags, several mail slots, a cleaning tape,
    /// and lines of other forms around (a warning, a blank line).
    const ALTERNATE_TAGS: &str = "mtx: warning: element status truncated
  Storage Changer /dev/tape/by-id/scsi-1IBM_3573-TL:2 Drives, 10 Slots ( 2 Import/Export )
Data Transfer Element 0:Full (Storage Element 2 Loaded):VolumeTag = A00002L8  :AlternateVolumeTag = 00000002
Data Transfer Element 1:Full (Storage Element 7 Loaded):VolumeTag=CLN007L1

      Storage Element 1:Full :VolumeTag=A00001L8:AlternateVolumeTag=00000001
      Storage Element 2:Empty
      Storage Element 3:Full :VolumeTag=A00003L8
      Storage Element 4:Empty:VolumeTag=
      Storage Element 9 IMPORT/EXPORT:Full :VolumeTag=IMP009L8
      Storage Element 10 IMPORT/EXPORT:Empty
";

    /// An old single-drive mtx: no drive number.
    const OLD_SINGLE_DRIVE: &str =
        "  Storage Changer /dev/sgb:1 Drives, 2 Slots ( 0 Import/Export )
Data Transfer Element:Empty
      Storage Element 1:Full :VolumeTag=OLD001
      Storage Element 2:Full :VolumeTag=OLD002
";

    fn drive(drive: u32, barcode: Option<&str>, source_slot: Option<u32>) -> DriveSlotStatus {
        DriveSlotStatus {
            drive,
            barcode: barcode.map(String::from),
            source_slot,
        }
    }

    fn slot(slot: u32, barcode: Option<&str>, import_export: bool) -> SlotStatus {
        SlotStatus {
            slot,
            barcode: barcode.map(String::from),
            import_export,
        }
    }

    #[test]
    fn parses_two_drives_and_a_mail_slot() {
        let s = parse_status(TWO_DRIVES).unwrap();
        assert_eq!(
            s.drives,
            vec![drive(0, Some("SSC003L6"), Some(3)), drive(1, None, None)]
        );
        assert_eq!(
            s.slots,
            vec![
                slot(1, Some("SSC001L6"), false),
                slot(2, Some("SSC002L6"), false),
                slot(3, None, false),
                slot(4, Some(""), false), // full, no barcode
                slot(8, None, true),
            ]
        );
        assert_eq!(s.slot_of("SSC002L6"), Some(2));
        assert_eq!(s.drive_of("SSC003L6"), Some(0));
        assert_eq!(s.empty_slot(), Some(3));
    }

    #[test]
    fn parses_an_autoloader_without_barcodes() {
        let s = parse_status(NO_BARCODES).unwrap();
        assert_eq!(s.drives, vec![drive(0, Some(""), None)]);
        assert_eq!(
            s.slots,
            vec![
                slot(1, Some(""), false),
                slot(2, None, false),
                slot(3, Some(""), false),
                slot(4, None, false),
            ]
        );
        assert_eq!(
            s.empty_slot(),
            Some(2),
            "a full slot is never taken for empty"
        );
    }

    #[test]
    fn ignores_alternate_tags_and_other_lines() {
        let s = parse_status(ALTERNATE_TAGS).unwrap();
        assert_eq!(
            s.drives,
            vec![
                drive(0, Some("A00002L8"), Some(2)),
                drive(1, Some("CLN007L1"), Some(7)),
            ]
        );
        assert_eq!(
            s.slots,
            vec![
                slot(1, Some("A00001L8"), false),
                slot(2, None, false),
                slot(3, Some("A00003L8"), false),
                slot(4, None, false),
                slot(9, Some("IMP009L8"), true),
                slot(10, None, true),
            ]
        );
        let old = parse_status(OLD_SINGLE_DRIVE).unwrap();
        assert_eq!(old.drives, vec![drive(0, None, None)]);
        assert_eq!(old.slot_of("OLD002"), Some(2));
    }

    #[test]
    fn output_without_elements_is_an_error() {
        for text in [
            "",
            "mtx: Request Sense: Long Report=yes\n",
            "  Storage Changer /dev/sg3:0 Drives, 0 Slots ( 0 Import/Export )\n",
        ] {
            match parse_status(text) {
                Err(Error::Changer { reason, .. }) => {
                    assert!(reason.contains("cannot read mtx status"), "{reason}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    /// A fake `mtx`: a shell script in `dir`.
    fn fake(dir: &std::path::Path, body: &str) -> MtxChanger {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("mtx");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        MtxChanger::new("/dev/sg3".into(), path, Duration::from_secs(10))
    }

    /// Is the process running? (A zombie is not: dead, only not yet reaped by its parent.)
    fn running(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn a_command_that_hangs_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut c = fake(
            dir.path(),
            &format!("echo $$ > {d}/pid\nsleep 30 &\necho $! > {d}/child\nwait"),
        );
        c.timeout = Duration::from_millis(500);
        let started = Instant::now();
        let e = c.status().unwrap_err();
        let took = started.elapsed();
        match &e {
            Error::TimedOut { what, after } => {
                assert!(what.ends_with("mtx -f /dev/sg3 status"), "{what}");
                assert_eq!(*after, c.timeout);
            }
            other => panic!("{other:?}"),
        }
        assert!(took < c.timeout + Duration::from_secs(1), "{took:?}");
        let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
        let child = std::fs::read_to_string(dir.path().join("child")).unwrap();
        let gone_by = Instant::now() + Duration::from_secs(2);
        while (running(&pid) || running(&child)) && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(&pid), "the command {pid} survived");
        assert!(!running(&child), "its child {child} survived");
    }

    #[test]
    fn a_failing_command_quotes_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = fake(
            dir.path(),
            "echo 'Loading media from Storage Element 3 into drive 0...' \n\
             echo 'Drive 0 Full (Storage Element 5 loaded)' >&2\nexit 1",
        );
        match c.load(3, 0).unwrap_err() {
            Error::Changer { what, reason } => {
                assert!(what.ends_with("mtx -f /dev/sg3 load 3 0"), "{what}");
                assert!(reason.contains("exit status: 1"), "{reason}");
                assert!(
                    reason.contains("Drive 0 Full (Storage Element 5 loaded)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Much output on both pipes: no deadlock, and the quote stays short.
        let mut c = fake(
            dir.path(),
            "head -c 1000000 /dev/zero | tr '\\0' o\nhead -c 1000000 /dev/zero | tr '\\0' e >&2\n\
             echo ' the reason' >&2\nexit 2",
        );
        match c.status().unwrap_err() {
            Error::Changer { reason, .. } => {
                assert!(reason.len() < 600, "{} bytes", reason.len());
                assert!(reason.ends_with("the reason"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut missing = MtxChanger::new(
            "/dev/sg3".into(),
            dir.path().join("no-such-mtx"),
            Duration::from_secs(10),
        );
        assert!(
            matches!(missing.status(), Err(Error::Changer { reason, .. }) if reason.contains("cannot run"))
        );
    }

    #[test]
    fn status_load_and_unload_run_mtx_with_the_right_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("status.txt"), TWO_DRIVES).unwrap();
        let mut c = fake(
            dir.path(),
            &format!(
                "echo \"$@\" >> {d}/args\nif [ \"$3\" = status ]; then cat {d}/status.txt; fi"
            ),
        );
        assert_eq!(c.status().unwrap(), parse_status(TWO_DRIVES).unwrap());
        c.load(2, 1).unwrap();
        c.unload(0, 3).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("args")).unwrap(),
            "-f /dev/sg3 status\n-f /dev/sg3 load 2 1\n-f /dev/sg3 unload 3 0\n"
        );
    }
}
