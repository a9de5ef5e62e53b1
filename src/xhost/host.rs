//! The host's side of a cross-host migration's iSCSI: the source's export
//! (LIO, through [`crate::iscsi::lio`]) and the destination's login
//! (open-iscsi's `iscsiadm`, through [`crate::exec`]).
//!
//! Invariants: the CHAP secret is on no process's command line. The
//! destination makes the node record with `iscsiadm -o new` and writes the
//! credentials into the record's file itself (mode 0600, a temporary file
//! renamed over it): `iscsiadm -o update -v SECRET` would show the secret to
//! every local user in `/proc/PID/cmdline` while it runs. open-iscsi reads
//! the record at `--login` and hands it to `iscsid` over its local socket.
//! The source gives it to configfs through the LIO driver. A logout deletes
//! the node record, so no credential stays on the destination.
//! Must not: decide anything, or touch a target that is not a migration's.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Attacher, Exporter, Target};
use crate::driver::{DataPath, PathKind};
use crate::exec::{Cmd, Runner};
use crate::iscsi::chap::Chap;
use crate::iscsi::lio::{Device, ExportSpec, LioDriver};

/// `iscsiadm`'s "no session / no record" exit code: nothing to do.
const NO_OBJS_FOUND: i32 = 21;

/// The source's exports in LIO's configfs.
pub struct LioExport {
    /// The LIO driver (configfs root).
    pub lio: LioDriver,
}

impl Exporter for LioExport {
    fn export(&self, uuid: Uuid, data: &DataPath, target: &Target) -> Result<(), String> {
        let device = match data.kind {
            PathKind::File => Device::File {
                path: data.path.clone(),
                size: data.len,
            },
            PathKind::Block => Device::Block(data.path.clone()),
        };
        self.lio
            .export(&ExportSpec {
                uuid,
                iqn: target.iqn.clone(),
                device,
                initiators: vec![target.initiator.clone()],
                chap: Some(Chap {
                    user: target.user.clone(),
                    password: target.secret.expose().to_owned(),
                }),
                mutual: None,
                portals: vec![target.portal.clone()],
                rehome: false,
            })
            .map(|_| ())
            .map_err(|e| crate::error_chain(&e))
    }

    fn unexport(&self, uuid: Uuid) -> Result<(), String> {
        // The destination logged out before it said `verified`; a session
        // still there belongs to nobody who may keep it.
        self.lio
            .unexport(uuid, true)
            .map(|_| ())
            .map_err(|e| crate::error_chain(&e))
    }
}

/// The destination's initiator: open-iscsi.
pub struct Iscsiadm<'a> {
    /// Runs `iscsiadm`.
    pub runner: &'a dyn Runner,
    /// Where the kernel lists SCSI sessions (`/sys/class/iscsi_session`).
    pub sysfs: PathBuf,
    /// How long a login's disk may take to appear.
    pub settle: Duration,
    /// Where open-iscsi keeps its node records, looked at in this order:
    /// builds differ (Debian's `/etc/iscsi/nodes`, others'
    /// `/var/lib/iscsi/nodes`).
    pub node_dbs: Vec<PathBuf>,
}

impl<'a> Iscsiadm<'a> {
    /// On this host.
    pub fn new(runner: &'a dyn Runner) -> Self {
        Iscsiadm {
            runner,
            sysfs: PathBuf::from("/sys/class/iscsi_session"),
            settle: Duration::from_secs(20),
            node_dbs: vec![
                PathBuf::from("/etc/iscsi/nodes"),
                PathBuf::from("/var/lib/iscsi/nodes"),
            ],
        }
    }

    /// The files of the node record of `t`, in the first node database
    /// that holds it: `DB/IQN/ADDR,PORT,TPGT/IFACE` (one file per
    /// interface, `default` for the default one), or the old style that
    /// open-iscsi still writes for a record made without discovery (no
    /// portal group tag): the file `DB/IQN/ADDR,PORT`.
    fn records(&self, t: &Target) -> Vec<PathBuf> {
        let (addr, port) = portal_parts(&t.portal);
        let base = format!("{addr},{port}");
        let prefix = format!("{base},");
        for db in &self.node_dbs {
            let Ok(entries) = std::fs::read_dir(db.join(&t.iqn)) else {
                continue;
            };
            let mut found = Vec::new();
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != base && !name.starts_with(&prefix) {
                    continue;
                }
                let path = e.path();
                match e.file_type() {
                    Ok(ft) if ft.is_dir() => {
                        let Ok(ifaces) = std::fs::read_dir(&path) else {
                            continue;
                        };
                        found.extend(
                            ifaces
                                .flatten()
                                .filter(|i| i.file_type().is_ok_and(|f| f.is_file()))
                                .filter(|i| !i.file_name().to_string_lossy().starts_with('.'))
                                .map(|i| i.path()),
                        );
                    }
                    Ok(ft) if ft.is_file() => found.push(path),
                    _ => {}
                }
            }
            if !found.is_empty() {
                found.sort();
                return found;
            }
        }
        Vec::new()
    }

    fn node(t: &Target) -> Cmd {
        Cmd::new("iscsiadm").args(["-m", "node", "-T", &t.iqn, "-p", &t.portal])
    }

    fn run(&self, cmd: &Cmd) -> Result<String, String> {
        self.runner
            .run(cmd)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| crate::error_chain(&e))
    }

    /// The disk of the session logged in to `iqn`, from sysfs:
    /// `iscsi_session/sessionN/targetname`, then its
    /// `device/target*/H:C:T:L/block/NAME`.
    fn disk(&self, iqn: &str) -> Option<PathBuf> {
        let sessions = std::fs::read_dir(&self.sysfs).ok()?;
        for s in sessions.flatten() {
            let name = std::fs::read_to_string(s.path().join("targetname")).unwrap_or_default();
            if name.trim() != iqn {
                continue;
            }
            if let Some(d) = block_of(&s.path().join("device")) {
                return Some(d);
            }
        }
        None
    }
}

/// `ADDR:PORT` (or `[ADDR]:PORT`) as the node database names it: the
/// address without brackets, and the port (3260 when none is given).
fn portal_parts(portal: &str) -> (&str, &str) {
    let (addr, port) = match portal.rsplit_once(':') {
        Some((a, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !a.ends_with(':') =>
        {
            (a, p)
        }
        _ => (portal, "3260"),
    };
    (addr.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Sets `settings` (`key = value` lines) in the node record `file`: each
/// key's line replaced, or added before `# END RECORD`; written to a
/// temporary file of mode 0600 beside it, synced, renamed over it, the
/// directory synced. The text never reaches a log (it holds the secret).
fn write_record(file: &Path, settings: &[(&str, &str)]) -> std::io::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let ours = |line: &str| {
        line.split_once('=')
            .is_some_and(|(k, _)| settings.iter().any(|(s, _)| *s == k.trim()))
    };
    let mut out = String::with_capacity(text.len() + 256);
    let mut added = false;
    let add = |out: &mut String| {
        for (k, v) in settings {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(v);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if ours(line) {
            continue;
        }
        if !added && line.trim() == "# END RECORD" {
            add(&mut out);
            added = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !added {
        add(&mut out);
    }
    let dir = file.parent().unwrap_or_else(|| Path::new("."));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.cinderblock-tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(out.as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// The first `block/NAME` below a session's `device` directory.
fn block_of(dir: &Path) -> Option<PathBuf> {
    for t in std::fs::read_dir(dir).ok()?.flatten() {
        if !t.file_name().to_string_lossy().starts_with("target") {
            continue;
        }
        for lun in std::fs::read_dir(t.path()).ok()?.flatten() {
            let block = lun.path().join("block");
            if let Some(b) = std::fs::read_dir(&block).ok().and_then(|mut r| r.next()) {
                let b = b.ok()?;
                return Some(Path::new("/dev").join(b.file_name()));
            }
        }
    }
    None
}

impl Attacher for Iscsiadm<'_> {
    fn login(&self, t: &Target) -> Result<PathBuf, String> {
        if let Some(d) = self.disk(&t.iqn) {
            return Ok(d);
        }
        self.run(&Self::node(t).args(["-o", "new"]))?;
        let files = self.records(t);
        if files.is_empty() {
            // What is there instead (names only: a record holds secrets).
            let seen: Vec<String> = self
                .node_dbs
                .iter()
                .filter_map(|d| std::fs::read_dir(d.join(&t.iqn)).ok())
                .flat_map(|r| r.flatten().map(|e| e.path().display().to_string()))
                .collect();
            return Err(format!(
                "iscsiadm made no node record for {} at {} under {} (found: {}); cannot set its CHAP credentials",
                t.iqn,
                t.portal,
                self.node_dbs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                if seen.is_empty() {
                    "nothing".to_owned()
                } else {
                    seen.join(", ")
                }
            ));
        }
        let settings = [
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", t.user.as_str()),
            ("node.session.auth.password", t.secret.expose()),
            ("node.startup", "manual"),
        ];
        for f in &files {
            write_record(f, &settings)
                .map_err(|e| format!("cannot write the node record {}: {e}", f.display()))?;
        }
        self.run(&Self::node(t).arg("--login"))?;
        let since = Instant::now();
        loop {
            if let Some(d) = self.disk(&t.iqn)
                && d.exists()
            {
                tracing::info!(iqn = %t.iqn, portal = %t.portal, device = %d.display(), "logged in to the migration's source");
                return Ok(d);
            }
            if since.elapsed() > self.settle {
                return Err(format!(
                    "logged in to {} at {}, but no disk appeared within {:?}",
                    t.iqn, t.portal, self.settle
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logout(&self, t: &Target) -> Result<(), String> {
        // A temporary file a killed login left beside the record holds the
        // secret, and would keep `-o delete` from removing the directory.
        for f in self.records(t) {
            if let (Some(dir), Some(name)) = (f.parent(), f.file_name()) {
                let tmp = dir.join(format!(".{}.cinderblock-tmp", name.to_string_lossy()));
                if let Err(e) = std::fs::remove_file(&tmp)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(format!("cannot remove {}: {e}", tmp.display()));
                }
            }
        }
        self.run(&Self::node(t).arg("--logout").ok_codes(&[0, NO_OBJS_FOUND]))?;
        self.run(
            &Self::node(t)
                .args(["-o", "delete"])
                .ok_codes(&[0, NO_OBJS_FOUND]),
        )?;
        tracing::info!(iqn = %t.iqn, "logged out of the migration's source; node record deleted");
        Ok(())
    }
}
