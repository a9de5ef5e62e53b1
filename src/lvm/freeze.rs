//! Crash-consistent group snapshots on LVM: the I/O layer above each member
//! and the freeze around the members' snapshots.
//!
//! Where to hold I/O was found in the lab (`tests/lab/groups.rs`):
//! suspending each thin LV's own device and then running `lvcreate -s`
//! breaks the pool (lvm2 finds the origin suspended, skips its own suspend
//! and never sends the pool its `create_snap` message: "unexpected
//! transaction id"). What holds, thick and thin, is a device of ours that
//! lvm2 never touches: a linear device-mapper device over the whole LV,
//! named `cinderblock-<uuid>` (the *layer*). A group cut suspends every
//! member's layer (in-flight writes complete, new ones wait), snapshots
//! each LV with lvm2 as usual (lvm2 suspends and resumes the LV below,
//! which nothing else writes), and resumes the layers. No write
//! acknowledged after the first suspend reaches any snapshot, and every
//! write acknowledged before it is in all of them: the cut is one instant.
//!
//! A member's users must write through its layer: once it exists, it is the
//! volume's data path ([`LvmBackend::data_path_of`]), so exports and copies
//! use it. A member gets its layer at its first group snapshot, when
//! nothing holds its LV open (an LV already in use without the layer is
//! refused, naming how to give it one: stop its users, apply, start them
//! again; they reopen the data path, now the layer). A layer goes when its
//! volume is deleted, and follows it when it is extended.
//!
//! Bounded and repaired: every command inside the freeze runs with the
//! time left before the freeze limit; past it (or on any failure) every
//! layer held is resumed, the snapshots made are removed, and the step
//! fails. The executor journals each hold before it is placed; a run killed
//! inside the freeze leaves layers suspended, and the next one resumes every
//! suspended device named `cinderblock-*` ([`LvmBackend::thaw`]) before
//! anything else. Snapshots of a cut are all or none: a complete set found
//! is the cut (they are only ever made inside one freeze); a partial set is
//! removed and the cut taken again.
//!
//! Must not: touch a device-mapper device not named by [`layer_name`], or
//! hold I/O past the limit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::cmd;
use super::driver::{LvmBackend, LvmError};
use super::report::{Lv, LvKind};
use super::tags::{self, Owned};
use crate::driver::{CutReport, GroupCut, Holds, fault};
use crate::exec::Cmd;
use crate::model::{Change, Mark, ObjKind};

/// Device-mapper names of our layers start with this.
pub const LAYER_PREFIX: &str = "cinderblock-";

/// The tag naming the consistency group on a member snapshot.
pub const GROUP_TAG: &str = "cinderblock.group";

/// The layer's device-mapper name for volume `uuid`.
pub fn layer_name(uuid: Uuid) -> String {
    format!("{LAYER_PREFIX}{uuid}")
}

/// One member's part of a cut: the member, its layer's name, its
/// snapshot's LV name, the `lvcreate` that makes it.
type CutStep<'c> = (&'c crate::driver::CutMember<'c>, String, String, Cmd);

/// One device-mapper device as `dmsetup info -c` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmState {
    /// Open count.
    pub open: u32,
    /// Suspended.
    pub suspended: bool,
}

/// Parses `dmsetup info -c --noheadings --separator : -o
/// name,open,suspended` (see [`cmd::dm_info`]); "No devices found" is
/// none. A line that does not parse is skipped: only our own names matter,
/// and those never hold a `:`.
pub fn parse_info(out: &[u8]) -> BTreeMap<String, DmState> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().rsplitn(3, ':');
            let state = parts.next()?;
            let open = parts.next()?.trim().parse().ok()?;
            let name = parts.next()?;
            Some((
                name.to_owned(),
                DmState {
                    open,
                    suspended: state.trim() == "Suspended",
                },
            ))
        })
        .collect()
}

impl LvmBackend<'_> {
    /// `/dev/mapper/cinderblock-<uuid>`.
    pub fn layer_path(&self, uuid: Uuid) -> PathBuf {
        self.dev.join("mapper").join(layer_name(uuid))
    }

    /// The device a volume's users read and write: its layer when it has
    /// one, else the LV.
    pub fn data_path_of(&self, lv: &Lv, uuid: Uuid) -> PathBuf {
        let layer = self.layer_path(uuid);
        if layer.exists() {
            layer
        } else {
            self.device(&lv.name)
        }
    }

    fn dm(&self, op: &'static str, target: &str, c: &Cmd) -> Result<(), LvmError> {
        self.exec(op, target.to_owned(), c)
    }

    fn dm_states(&self) -> Result<BTreeMap<String, DmState>, LvmError> {
        let out = self
            .run
            .run(&cmd::dm_info())
            .map_err(|source| LvmError::Command {
                op: "list the device-mapper devices",
                target: "dmsetup".into(),
                source: Box::new(source),
            })?;
        Ok(parse_info(&out.stdout))
    }

    /// Tags volume `uuid` with its consistency group (`cinderblock.group`),
    /// or removes the tag; one `lvchange`, none when it is as asked.
    pub fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (lv, _) = self.ours(&lvs, uuid)?;
        let have: Vec<String> = lv
            .tags
            .iter()
            .filter(|t| t.starts_with(&format!("{GROUP_TAG}=")))
            .cloned()
            .collect();
        let want: Vec<String> = group.map(|g| tags::tag(GROUP_TAG, g)).into_iter().collect();
        if have == want {
            return Ok(Change::Unchanged);
        }
        self.exec(
            "update the tags of",
            self.target(&lv.name),
            &cmd::retag(&self.vg, &lv.name, &want, &have),
        )?;
        Ok(Change::Changed)
    }

    /// Resumes every layer of ours left suspended (a run killed inside a
    /// group snapshot's freeze); `Unchanged` when none is.
    pub fn thaw(&self) -> Result<Change, LvmError> {
        let mut change = Change::Unchanged;
        for (name, st) in self.dm_states()? {
            if name.starts_with(LAYER_PREFIX) && st.suspended {
                tracing::warn!(device = %name, "resuming a layer an interrupted group snapshot left suspended");
                self.dm("resume", &name, &cmd::dm_resume(&name))?;
                change = Change::Changed;
            }
        }
        Ok(change)
    }

    /// Removes volume `uuid`'s layer, when it has one (before the LV goes).
    /// Refused by the kernel while a user holds the layer open.
    pub fn remove_layer(&self, uuid: Uuid) -> Result<Change, LvmError> {
        if !self.layer_path(uuid).exists() {
            return Ok(Change::Unchanged);
        }
        let name = layer_name(uuid);
        self.dm("remove the I/O layer", &name, &cmd::dm_remove(&name))?;
        tracing::info!(%uuid, device = %name, "I/O layer removed");
        Ok(Change::Changed)
    }

    /// After `lv` grew: its layer, when it has one, covers all of it.
    pub fn grow_layer(&self, lv: &str, uuid: Uuid, size: u64) -> Result<(), LvmError> {
        if !self.layer_path(uuid).exists() {
            return Ok(());
        }
        let name = layer_name(uuid);
        self.dm(
            "reload the I/O layer",
            &name,
            &cmd::dm_reload_linear(&name, size / 512, &self.device(lv)),
        )?;
        self.dm("resume the I/O layer", &name, &cmd::dm_resume(&name))
    }

    /// Makes sure `lv` (volume `uuid`) has its layer and nothing bypasses
    /// it: with a layer, the LV is open once (by the layer); without one,
    /// it must not be open at all, and the layer is made.
    fn ensure_layer(
        &self,
        lv: &Lv,
        uuid: Uuid,
        states: &BTreeMap<String, DmState>,
    ) -> Result<(), LvmError> {
        let name = layer_name(uuid);
        let lv_open = states
            .get(&cmd::dm_name(&self.vg, &lv.name))
            .map_or(0, |s| s.open);
        if states.contains_key(&name) {
            if lv_open > 1 {
                return Err(self.refused(
                    &lv.name,
                    format!(
                        "is open {lv_open} times: something writes to the LV beside its I/O layer /dev/mapper/{name}, so a freeze of the layer would not hold it; its users must use /dev/mapper/{name}"
                    ),
                ));
            }
            return Ok(());
        }
        if lv_open > 0 || lv.attr.open {
            return Err(self.refused(
                &lv.name,
                format!(
                    "is in use without an I/O layer, so its writes cannot be held for a group snapshot; stop its users (unexport it), apply (it gets its layer /dev/mapper/{name}), then start them again on the layer"
                ),
            ));
        }
        self.ensure_active(lv)?;
        self.dm(
            "create the I/O layer",
            &name,
            &cmd::dm_create_linear(&name, lv.size / 512, &self.device(&lv.name)),
        )?;
        self.dm("create the node of", &name, &cmd::dm_mknodes(&name))?;
        tracing::info!(%uuid, lv = %lv.name, device = %name, "I/O layer created");
        Ok(())
    }

    /// The group snapshot `cut` (see the module docs).
    pub fn group_snapshot(
        &self,
        cut: &GroupCut<'_>,
        holds: &mut dyn Holds,
    ) -> Result<CutReport, LvmError> {
        self.thaw()?;
        let lvs = self.lvs()?;
        let mut found = Vec::new();
        for m in cut.members {
            if self.find(&lvs, m.snapshot)?.is_some() {
                found.push(m.snapshot);
            }
        }
        if found.len() == cut.members.len() {
            return Ok(CutReport {
                change: Change::Unchanged,
                freeze: None,
            });
        }
        for s in &found {
            tracing::warn!(snapshot = %s, "removing a member snapshot of an interrupted group snapshot");
            self.delete(*s)?;
        }
        let lvs = if found.is_empty() { lvs } else { self.lvs()? };
        let plan = self.cut_commands(cut, &lvs)?;
        // Every hold journalled before the first: no write of the journal
        // inside the freeze.
        for (m, layer, _, _) in &plan {
            holds
                .before_hold(&self.backend, m.volume)
                .map_err(|why| self.refused(layer, format!("cannot journal the hold: {why}")))?;
        }
        self.cut(cut, &plan)
    }

    /// Per member of `cut`: its layer (made when missing), its snapshot's
    /// LV name and `lvcreate`.
    fn cut_commands<'c>(
        &self,
        cut: &'c GroupCut<'c>,
        lvs: &[Lv],
    ) -> Result<Vec<CutStep<'c>>, LvmError> {
        let states = self.dm_states()?;
        let mut plan = Vec::new();
        for m in cut.members {
            let (vol, owned) = self.ours(lvs, m.volume)?;
            if owned.kind != ObjKind::Volume || owned.mark != Mark::Ready {
                return Err(self.refused(&vol.name, "is not a ready volume".into()));
            }
            self.ensure_layer(vol, m.volume, &states)?;
            let lv_name = tags::lv_name(ObjKind::Snapshot, m.snapshot);
            let mut t = tags::new_tags(
                &self.backend,
                &Owned {
                    uuid: m.snapshot,
                    name: m.name.to_owned(),
                    kind: ObjKind::Snapshot,
                    parent: Some(m.volume),
                    mark: Mark::Ready,
                },
            );
            t.push(tags::tag(GROUP_TAG, cut.group));
            let c = if vol.attr.kind == LvKind::Thin {
                cmd::create_thin_snapshot(&self.vg, &vol.name, &lv_name, &t)
            } else {
                cmd::create_thick_snapshot(&self.vg, &vol.name, &lv_name, m.space, &t)
            };
            plan.push((m, layer_name(m.volume), lv_name, c));
        }
        Ok(plan)
    }

    /// The freeze: every layer held, every snapshot taken, every layer
    /// released; on a failure or past the limit, everything released and
    /// what was made removed.
    fn cut(&self, cut: &GroupCut<'_>, plan: &[CutStep<'_>]) -> Result<CutReport, LvmError> {
        let start = Instant::now();
        let deadline = start + cut.limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut held: Vec<&str> = Vec::new();
        let mut made: Vec<Uuid> = Vec::new();
        let mut failure = None;
        for (_, layer, _, _) in plan {
            match self.timed("hold the I/O of", layer, cmd::dm_suspend(layer), left()) {
                Ok(()) => held.push(layer),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            fault::named("group-held");
            for (m, _, lv_name, c) in plan {
                match self.timed("snapshot", lv_name, c.clone(), left()) {
                    Ok(()) => made.push(m.snapshot),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                fault::named("group-member");
            }
        }
        let mut resume_error = None;
        for layer in &held {
            if let Err(e) = self.dm("release the I/O of", layer, &cmd::dm_resume(layer)) {
                resume_error.get_or_insert(e);
            }
        }
        let freeze = start.elapsed();
        if let Some(e) = failure.or(resume_error) {
            for s in &made {
                if let Err(undo) = self.delete(*s) {
                    tracing::warn!(snapshot = %s, error = %crate::error_chain(&undo), "cannot remove a member snapshot of a failed group snapshot; the next run removes it");
                }
            }
            tracing::warn!(
                group = cut.group,
                ?freeze,
                "group snapshot failed; every layer released"
            );
            return Err(e);
        }
        tracing::info!(
            group = cut.group,
            members = plan.len(),
            freeze_ms = freeze.as_millis(),
            "group snapshot taken"
        );
        Ok(CutReport {
            change: Change::Changed,
            freeze: Some(freeze),
        })
    }

    /// Runs `c` with `left` as its timeout; none left is a timeout at once.
    fn timed(
        &self,
        op: &'static str,
        target: &str,
        c: Cmd,
        left: Duration,
    ) -> Result<(), LvmError> {
        if left.is_zero() {
            return Err(self.refused(
                target,
                "the group snapshot's freeze limit passed; every hold was released".into(),
            ));
        }
        self.dm(op, target, &c.timeout(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmsetup_info_lines_parse_and_no_devices_is_empty() {
        let out = b"cinderblock-0b6d8a39-6b1e-4a53-9c1f-2f8f0d9c3e11:1:Suspended\nvg0-volume--0b6d:1:Active\nvg0-pool0-tpool:2:Active\n";
        let m = parse_info(out);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m["cinderblock-0b6d8a39-6b1e-4a53-9c1f-2f8f0d9c3e11"],
            DmState {
                open: 1,
                suspended: true
            }
        );
        assert!(!m["vg0-pool0-tpool"].suspended);
        assert!(parse_info(b"No devices found\n").is_empty());
    }
}
