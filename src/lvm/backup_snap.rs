//! Snapshots taken for backups: the point in time a backup reads.
//!
//! A backup snapshot is named `_backup-<backup id>` and tagged
//! `cinderblock.backup-of=<back end>`, `cinderblock.backup=<backup id>` and
//! `cinderblock.parent=<volume uuid>` in the `lvcreate` that makes it. It
//! carries no `cinderblock.backend` owner mark on purpose: it is not an object
//! of the manifests, so discovery must not offer it to the planner as an
//! undeclared snapshot (it skips LVs with this back end's `backup-of` mark),
//! and only the backup code and [`LvmBackend::delete`] of its volume remove it.
//! Nor does a kept thin base count as provisioned in the pool's capacity: it
//! shares its origin's blocks and costs only what changed since (visible in
//! the pool's `data_percent`).
//!
//! * thin volume → thin snapshot, kept after a successful backup as the base
//!   of the next incremental (`thin_delta` against it); the earlier base is
//!   removed then;
//! * thick volume → copy-on-write snapshot, removed after the run (zeroed
//!   first unless `volumeClear: none`: its exception store holds the volume's
//!   old blocks).

use uuid::Uuid;

use super::cmd;
use super::driver::{LvmBackend, LvmError, io_err, open};
use super::report::{Lv, LvKind};
use super::tags::{self, Owned};
use crate::blockio;
use crate::model::{Mark, ObjKind};

/// Tag key: the back end a backup snapshot belongs to.
pub const BACKUP_OF: &str = "cinderblock.backup-of";
/// Tag key: the backup a snapshot was taken for.
pub const BACKUP: &str = "cinderblock.backup";

/// A backup snapshot found in the VG.
#[derive(Debug, Clone)]
pub struct BackupSnap {
    /// The backup it was taken for.
    pub backup: Uuid,
    /// The volume it is a snapshot of.
    pub volume: Uuid,
    /// The LV.
    pub lv: Lv,
}

impl LvmBackend<'_> {
    /// The ready volume `uuid` of this back end: its LV and identity.
    pub fn volume_lv(&self, uuid: Uuid) -> Result<(Lv, Owned), LvmError> {
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        if owned.kind != ObjKind::Volume || owned.mark != Mark::Ready {
            return Err(self.refused(&lv.name, "is not a ready volume".into()));
        }
        Ok((lv.clone(), owned))
    }

    /// Whether `lv` carries this back end's backup-snapshot mark.
    pub fn is_backup_snapshot(&self, lv: &Lv) -> bool {
        lv.tag_value(BACKUP_OF).and_then(tags::decode).as_deref() == Some(self.backend.as_str())
    }

    /// This back end's backup snapshots of volume `volume`.
    pub fn backup_snapshots(&self, volume: Uuid) -> Result<Vec<BackupSnap>, LvmError> {
        Ok(self
            .lvs()?
            .into_iter()
            .filter(|l| self.is_backup_snapshot(l))
            .filter_map(|l| {
                let get = |k| {
                    l.tag_value(k)
                        .and_then(tags::decode)
                        .and_then(|v| Uuid::parse_str(&v).ok())
                };
                let (backup, parent) = (get(BACKUP)?, get(tags::PARENT)?);
                (parent == volume).then_some(BackupSnap {
                    backup,
                    volume: parent,
                    lv: l,
                })
            })
            .collect())
    }

    /// Takes the snapshot of volume `volume` for backup `backup`: thin for a
    /// thin volume, else copy-on-write with `cow` bytes of exception store.
    /// Returns its LV, fresh from `lvs`.
    pub fn backup_snapshot(&self, volume: Uuid, backup: Uuid, cow: u64) -> Result<Lv, LvmError> {
        let lvs = self.lvs()?;
        let (vol, _) = self.ours(&lvs, volume)?;
        let name = format!("_backup-{backup}");
        if lvs.iter().any(|l| l.name == name) {
            return Err(self.refused(&name, "exists already".into()));
        }
        let tags = vec![
            tags::tag(BACKUP_OF, &self.backend),
            tags::tag(BACKUP, &backup.to_string()),
            tags::tag(tags::PARENT, &volume.to_string()),
        ];
        let c = if vol.attr.kind == LvKind::Thin {
            cmd::create_thin_snapshot(&self.vg, &vol.name, &name, &tags)
        } else {
            cmd::create_thick_snapshot(&self.vg, &vol.name, &name, cow, &tags)
        };
        self.exec("snapshot for a backup", self.target(&vol.name), &c)?;
        let lvs = self.lvs()?;
        let lv = lvs
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| self.refused(&name, "not listed after lvcreate".into()))?;
        self.ensure_active(&lv)?;
        tracing::info!(lv = %name, origin = %vol.name, %backup, "backup snapshot taken");
        Ok(lv)
    }

    /// The backup snapshot `name` as `lvs` sees it now (`None` when gone).
    pub fn backup_snapshot_state(&self, name: &str) -> Result<Option<Lv>, LvmError> {
        Ok(self
            .lvs()?
            .into_iter()
            .find(|l| l.name == name && self.is_backup_snapshot(l)))
    }

    /// Removes backup snapshot `name` (thick ones zeroed first unless the
    /// back end says `volumeClear: none`). Absent is fine; an LV without our
    /// backup mark is refused.
    pub fn remove_backup_snapshot(&self, name: &str) -> Result<(), LvmError> {
        let lvs = self.lvs()?;
        let Some(lv) = lvs.iter().find(|l| l.name == name) else {
            return Ok(());
        };
        if !self.is_backup_snapshot(lv) {
            return Err(self.refused(name, "is not a backup snapshot of this back end".into()));
        }
        if matches!(
            lv.attr.kind,
            LvKind::ThickSnapshot | LvKind::InvalidSnapshot
        ) && self.wipe == super::Wipe::Zero
        {
            self.ensure_active(lv)?;
            let path = self.cow_device(name);
            let f = open(&path, true)?;
            let len = blockio::size(&f).map_err(io_err("size", &path))?;
            blockio::zero(&f, 0, len).map_err(io_err("zero", &path))?;
            f.sync_all().map_err(io_err("sync", &path))?;
        }
        self.exec("remove", self.target(name), &cmd::remove(&self.vg, name))?;
        tracing::info!(lv = %name, "backup snapshot removed");
        Ok(())
    }
}
