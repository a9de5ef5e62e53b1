//! The `lvm` back end behind the seam: [`LvmDriver`] implements
//! [`crate::driver::Driver`] over an [`LvmBackend`] and the pool size the
//! manifest declares.
//!
//! Thin back ends (a thin pool) read zeros where nothing was written, know
//! what each LV holds (`data_percent`), resize origins live and take O(1)
//! snapshots; thick ones do none of these: their extents hold whatever was
//! there (so copies zero every gap), a migration reads them whole, and lvm2
//! resizes a thick origin of thick snapshots only while inactive. Both draw
//! from their volume group, which other back ends may share. The data path
//! is the LV's device node, activated on the way.
//!
//! Discovery of one back end alone runs `lvm fullreport` on its VG; the
//! registry reads every VG in one call instead.
//!
//! Must not: touch an LV without this back end's owner mark (the
//! [`LvmBackend`] refuses).

use uuid::Uuid;

use super::driver::Wipe;
use super::report::LvKind;
use super::{LvmBackend, LvmError, NewLv, Source, cmd, inventory, tags};
use crate::driver::{
    Adoption, Capabilities, Change, DataPath, Discovery, Driver, DriverError, Holders, Layout,
    Mark, NewMark, NewObject, Object, Op, PathKind, PitRequest, PointInTime, Room, SnapshotSpace,
    name_block_holders,
};
use crate::model::{PoolDecl, Space};

/// A thin pool's metadata this full (%) has no room for a copy's new
/// mappings, whatever data space is free.
const METADATA_FULL: f64 = 95.0;

/// One `lvm` back end, as a [`Driver`].
pub struct LvmDriver<'r> {
    lvm: LvmBackend<'r>,
    pool_size: Option<u64>,
}

impl<'r> LvmDriver<'r> {
    /// `lvm`; `pool_size` is the manifest's `thinPoolSize`, the size to create
    /// a missing thin pool with.
    pub fn new(lvm: LvmBackend<'r>, pool_size: Option<u64>) -> Self {
        Self { lvm, pool_size }
    }

    /// The back end.
    pub fn backend(&self) -> &LvmBackend<'r> {
        &self.lvm
    }

    /// The volume group.
    pub fn volume_group(&self) -> &str {
        &self.lvm.vg
    }

    /// What [`inventory::discovery`] needs to read this back end out of a
    /// report, and the declared pool size.
    pub fn discovery_config(&self) -> (inventory::Config<'_>, Option<u64>) {
        (
            inventory::Config {
                backend: &self.lvm.backend,
                vg: &self.lvm.vg,
                thin_pool: self.lvm.pool.as_deref(),
            },
            self.pool_size,
        )
    }

    /// This back end out of a discovery's report over its volume group
    /// (and maybe others), each open LV's holder named where one is seen.
    pub fn discover_from(&self, reports: &cmd::Reports, holders: &Holders) -> (u64, Discovery) {
        let (cfg, size) = self.discovery_config();
        let (extent, mut discovery) = inventory::discovery(reports, &cfg, size);
        if let Discovery::Ok(inv) = &mut discovery {
            name_block_holders(inv, holders);
            self.look_through_layers(inv, holders);
        }
        (extent, discovery)
    }

    /// A member volume's LV is held by its own I/O layer
    /// ([`super::freeze`]): what holds the volume is what holds the layer,
    /// and an idle layer holds nothing.
    fn look_through_layers(&self, inv: &mut crate::model::Inventory, holders: &Holders) {
        let Ok(h) = holders else { return };
        for o in &mut inv.objects {
            let layer = super::freeze::layer_name(o.uuid);
            let ours = matches!(&o.in_use, Some(crate::model::InUse::Named { holder }) if *holder == format!("device {layer}"));
            if ours {
                o.in_use = h.block_device(&self.lvm.layer_path(o.uuid)).map(|who| {
                    crate::model::InUse::Named {
                        holder: who.to_string(),
                    }
                });
            }
        }
    }

    fn err(&self, op: Op) -> impl FnOnce(LvmError) -> DriverError + '_ {
        move |e| {
            let retryable = e.is_retryable();
            DriverError::new(&self.lvm.backend, op, e, retryable)
        }
    }

    fn thin(&self) -> bool {
        self.lvm.pool.is_some()
    }
}

impl Driver for LvmDriver<'_> {
    fn name(&self) -> &str {
        &self.lvm.backend
    }

    fn capabilities(&self) -> Capabilities {
        let thin = self.thin();
        let vg = &self.lvm.vg;
        Capabilities {
            protocol: "iSCSI".into(),
            thin,
            new_reads_zero: thin,
            knows_allocation: thin,
            extends_with_snapshots: thin,
            snapshots: if thin {
                SnapshotSpace::Shared
            } else {
                SnapshotSpace::CopyOnWrite
            },
            space: Some(Space {
                kind: "volume group".into(),
                name: vg.clone(),
            }),
            relabel: !thin,
            pool: self.lvm.pool.as_ref().map(|p| PoolDecl {
                kind: "thin pool".into(),
                name: p.clone(),
                size: self.pool_size,
                field: "spec.lvm.thinPoolSize".into(),
            }),
            delete_note: (!thin && self.lvm.wipe == Wipe::Zero)
                .then(|| "the LV is zeroed before it is removed (volumeClear: zero)".to_owned()),
            retained: format!(
                "the LV tagged cinderblock.uuid={{uuid}} stays in volume group {vg}, marked cinderblock.released={} and no longer managed",
                self.lvm.backend
            ),
            group_snapshots: crate::model::GroupSnapshots::Freeze,
        }
    }

    fn discover(&self, holders: &Holders) -> (u64, Discovery) {
        let reports = cmd::fullreport(self.lvm.run, &[self.lvm.vg.as_str()]);
        self.discover_from(&reports, holders)
    }

    fn create(&self, new: &NewObject<'_>) -> Result<Change, DriverError> {
        let lv = NewLv {
            uuid: new.uuid,
            name: new.name,
            kind: new.kind,
            size: new.size,
            source: new.source.map(|(kind, uuid)| Source { kind, uuid }),
        };
        let err = self.err(Op::Create);
        match new.mark {
            NewMark::Ready => self.lvm.create(&lv),
            NewMark::Filling => self.lvm.create_restoring(&lv),
            NewMark::Migrating { id, from } => self
                .lvm
                .migration_target(new.uuid, new.name, new.size, id, from)
                .map(|t| Change::from_bool(t.migration == Some(id))),
        }
        .map_err(err)
    }

    fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError> {
        self.lvm
            .snapshot(volume, uuid, name, space)
            .map_err(self.err(Op::Snapshot))
    }

    fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        space: u64,
    ) -> Result<Change, DriverError> {
        self.lvm
            .migration_snapshot(volume, uuid, name, space)
            .map_err(self.err(Op::Snapshot))
    }

    fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, DriverError> {
        self.lvm.extend(uuid, size).map_err(self.err(Op::Extend))
    }

    fn release(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.lvm.release(uuid).map_err(self.err(Op::Release))
    }

    fn adopt(&self, a: &Adoption<'_>) -> Result<Change, DriverError> {
        self.lvm.adopt(a).map_err(self.err(Op::Adopt))
    }

    fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, DriverError> {
        self.lvm.rename(uuid, name).map_err(self.err(Op::Rename))
    }

    fn delete(&self, uuid: Uuid) -> Result<Change, DriverError> {
        self.lvm.delete(uuid).map_err(self.err(Op::Delete))
    }

    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        match mark {
            Mark::Ready => self.lvm.mark_ready(uuid),
            Mark::Deleting => self.lvm.mark_deleting(uuid),
            Mark::Creating | Mark::Migrating => {
                return Err(DriverError::refused(
                    &self.lvm.backend,
                    Op::SetMark,
                    format!(
                        "{uuid}: an LV is marked {} only in the lvcreate that makes it",
                        mark.as_str()
                    ),
                ));
            }
        }
        .map_err(self.err(Op::SetMark))
    }

    fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, DriverError> {
        self.lvm
            .set_group(uuid, group)
            .map_err(self.err(Op::SetGroup))
    }

    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError> {
        let lvs = self.lvm.lvs().map_err(self.err(Op::Lookup))?;
        let Some((lv, owned)) = self.lvm.find(&lvs, uuid).map_err(self.err(Op::Lookup))? else {
            return Ok(None);
        };
        Ok(Some(Object {
            uuid,
            name: owned.name,
            kind: owned.kind,
            size: lv.size,
            mark: owned.mark,
            migration: tags::migration_of(lv).map(|(id, _)| id),
            in_use: lv.attr.open,
            // Thin device ids grow with creation; lvm2 keeps no such key
            // for thick LVs here (their snapshots move in name order).
            created: lv.thin_id.map(u64::from),
        }))
    }

    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        let lvs = self.lvm.lvs().map_err(self.err(Op::Open))?;
        let (lv, _) = self.lvm.ours(&lvs, uuid).map_err(self.err(Op::Open))?;
        self.lvm.ensure_active(lv).map_err(self.err(Op::Open))?;
        Ok(DataPath {
            path: self.lvm.data_path_of(lv, uuid),
            len: lv.size,
            kind: PathKind::Block,
        })
    }

    fn layout(&self, uuid: Uuid) -> Result<Layout, DriverError> {
        let lvs = self.lvm.lvs().map_err(self.err(Op::Layout))?;
        let (lv, owned) = self.lvm.ours(&lvs, uuid).map_err(self.err(Op::Layout))?;
        if lv.attr.kind != LvKind::Thin || owned.mark != Mark::Ready {
            return Ok(Layout::Everything);
        }
        // A thin LV reads zeros where unmapped: read only its mapped ranges
        // (from a metadata snapshot of the pool). Should that fail,
        // zero-detection over the whole LV is slower but correct.
        match self.lvm.thin_mapped_ranges(&lv.name) {
            Ok(r) => Ok(Layout::Ranges(r)),
            Err(e) => {
                tracing::warn!(lv = %lv.name, error = %crate::error_chain(&e), "cannot read the thin LV's mapped ranges; reading all of it");
                Ok(Layout::Everything)
            }
        }
    }

    fn room(&self, _uuid: Uuid) -> Result<Option<Room>, DriverError> {
        // A thick LV's extents are allocated when it is made.
        let Some(pool) = &self.lvm.pool else {
            return Ok(None);
        };
        let lvs = self.lvm.lvs().map_err(self.err(Op::Lookup))?;
        let Some(p) = lvs.iter().find(|l| &l.name == pool) else {
            return Ok(None);
        };
        let used = p.data_percent.unwrap_or(0.0).clamp(0.0, 100.0) / 100.0;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let free = (p.size as f64 * (1.0 - used)) as u64;
        // lvm2 stops a pool whose metadata is full, whatever data is free.
        let short = p
            .metadata_percent
            .filter(|m| *m >= METADATA_FULL)
            .map(|m| format!("its metadata is {m:.1}% used"));
        Ok(Some(Room {
            what: format!("thin pool {}/{pool}", self.lvm.vg),
            free,
            total: p.size,
            short,
            how: format!(
                "grow it (lvextend -L +SIZE {vg}/{pool}, or --poolmetadatasize for its metadata) or free blocks in it",
                vg = self.lvm.vg
            ),
        }))
    }

    fn point_in_time(&self, req: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError> {
        let pit = super::pit::take(&self.lvm, req).map_err(self.err(Op::PointInTime))?;
        Ok(Box::new(pit))
    }

    fn hand_over(&self, uuid: Uuid, to: &str) -> Result<Change, DriverError> {
        self.lvm.hand_over(uuid, to).map_err(self.err(Op::HandOver))
    }

    fn group_snapshot(
        &self,
        cut: &crate::driver::GroupCut<'_>,
        holds: &mut dyn crate::driver::Holds,
    ) -> Result<crate::driver::CutReport, DriverError> {
        self.lvm
            .group_snapshot(cut, holds)
            .map_err(self.err(Op::GroupSnapshot))
    }

    fn thaw(&self) -> Result<Change, DriverError> {
        self.lvm.thaw().map_err(self.err(Op::Thaw))
    }

    fn create_pool(&self, size: u64, metadata: u64) -> Result<Change, DriverError> {
        self.lvm
            .create_pool(size, metadata)
            .map_err(self.err(Op::CreatePool))
    }
}
