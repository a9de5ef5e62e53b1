//! The host's side of a cross-host migration's iSCSI: the source's export
//! (LIO, through [`crate::iscsi::lio`]) and the destination's login
//! (open-iscsi's `iscsiadm`, through [`crate::exec`]).
//!
//! Invariants: the CHAP secret reaches `iscsiadm` only as a
//! [`crate::exec::Cmd::secret`] argument (shown as `<redacted>` wherever a
//! command line is shown) and configfs through the LIO driver; a logout
//! deletes the node record, so no credential stays on the destination.
//! Must not: decide anything, or touch a target that is not a migration's.

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
}

impl<'a> Iscsiadm<'a> {
    /// On this host.
    pub fn new(runner: &'a dyn Runner) -> Self {
        Iscsiadm {
            runner,
            sysfs: PathBuf::from("/sys/class/iscsi_session"),
            settle: Duration::from_secs(20),
        }
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
        for (k, v) in [
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", t.user.as_str()),
            ("node.startup", "manual"),
        ] {
            self.run(&Self::node(t).args(["-o", "update", "-n", k, "-v", v]))?;
        }
        self.run(
            &Self::node(t)
                .args(["-o", "update", "-n", "node.session.auth.password", "-v"])
                .secret(t.secret.expose()),
        )?;
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
