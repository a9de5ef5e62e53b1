//! Group snapshots in the plan: a `Snapshot` with `spec.consistencyGroup`
//! is one [`Op::GroupSnapshot`] listing a snapshot per member, named
//! `<snapshot>.<volume>`; its member snapshots are declared with it,
//! recorded together once the cut is complete, and deleted together.
//!
//! A cut is complete once any of its member snapshots is recorded (the
//! executor records them only after the whole cut); before that, what
//! exists is an interrupted cut, which the step takes again (the driver
//! removes the partial set first). A volume that joins the group after the
//! cut is not in it, and the plan says so.
//!
//! Must not: take a cut on a back end that cannot
//! ([`crate::model::GroupSnapshots::None`]), or on one whose members must be
//! idle while a member is in use (the plan error names the holders).

use std::collections::BTreeSet;

use super::{Action, GroupMember, Impact, Op, PlanErrorKind, Planner, addr, round_up};
use crate::manifest::Name;
use crate::manifest::values::format_bytes_exact;
use crate::model::{GroupSnapshots, ObjKind, SnapshotSpace};

pub use crate::model::FREEZE_LIMIT_MS;

/// The group snapshot a member snapshot belongs to (`nightly` of
/// `nightly.db`), by its name.
pub(super) fn cut_of(name: &str) -> Option<&str> {
    name.split_once('.').map(|(cut, _)| cut)
}

impl Planner<'_> {
    /// Whether snapshot `name` is a member of a declared group snapshot.
    pub(super) fn in_declared_cut(&self, name: &str) -> bool {
        cut_of(name)
            .and_then(|c| self.set.snapshots.iter().find(|(n, _)| n.as_str() == c))
            .is_some_and(|(_, d)| d.spec.consistency_group.is_some())
    }

    /// For a member snapshot whose group snapshot goes: why none of the
    /// members may go, when another one is in use (they go together).
    pub(super) fn cut_held(&self, kind: ObjKind, name: &str) -> Option<String> {
        let cut = cut_of(name).filter(|_| kind == ObjKind::Snapshot)?;
        let held: Vec<String> = self
            .found
            .iter()
            .filter(|((k, n), _)| *k == ObjKind::Snapshot && cut_of(n) == Some(cut))
            .filter_map(|((_, n), f)| Some(format!("snapshot.{n} by {}", self.holder(f.obj)?)))
            .collect();
        (!held.is_empty()).then(|| {
            format!(
                "it is a member of group snapshot {cut}, whose members are deleted together, and {} in use; stop or detach them, then plan again",
                held.join(", ")
            )
        })
    }

    /// Plans `Snapshot/name` of consistency group `g` (see the module docs).
    #[allow(clippy::too_many_lines)] // one pass over a group snapshot's cases
    pub(super) fn group_snapshot(&mut self, name: &Name, g: &Name) {
        let set = self.set;
        let doc = &set.snapshots[name];
        let a = addr(ObjKind::Snapshot, name.as_str());
        let policy = doc.spec.deletion_policy;
        let members: Vec<&Name> = set
            .volumes
            .iter()
            .filter(|(_, d)| d.spec.consistency_group.as_ref() == Some(g))
            .map(|(n, _)| n)
            .collect();
        if members.is_empty() {
            self.error(
                &a,
                PlanErrorKind::Refused,
                format!("consistency group {g} has no member volumes: nothing to snapshot"),
            );
            return;
        }
        let snap_of = |v: &Name| format!("{name}.{v}");
        let key = |v: &Name| (ObjKind::Snapshot, snap_of(v));
        let complete = members.iter().any(|v| {
            self.found
                .get(&key(v))
                .is_some_and(|f| self.recorded.objects.contains_key(&f.obj.uuid))
        });
        if complete {
            for v in &members {
                let Some(f) = self.found.get(&key(v)) else {
                    self.out.notes.push(format!(
                        "{a}: volume.{v} joined consistency group {g} after the group snapshot was taken; it is not in it (declare a new group snapshot to include it)"
                    ));
                    continue;
                };
                let (uuid, bname, size) =
                    (f.obj.uuid, f.backend.name.as_str().to_owned(), f.obj.size);
                self.record_if_needed(
                    ObjKind::Snapshot,
                    &snap_of(v),
                    uuid,
                    &bname,
                    size,
                    None,
                    policy,
                );
            }
            return;
        }
        if let Some(v) = members.iter().find(|v| {
            self.waiting
                .contains(&(ObjKind::Volume, v.as_str().to_owned()))
        }) {
            self.wait(
                ObjKind::Snapshot,
                name.as_str(),
                format!("waits for its member volume.{v}"),
            );
            return;
        }
        let mut backends = BTreeSet::new();
        for v in &members {
            let Some(b) = self.backend_of(ObjKind::Volume, v.as_str()) else {
                if !self.held_back(ObjKind::Snapshot, name.as_str(), None) {
                    self.error(
                        &a,
                        PlanErrorKind::Refused,
                        format!(
                            "its member volume.{v} does not exist and is not created by this plan"
                        ),
                    );
                }
                return;
            };
            backends.insert(b);
        }
        let Some(backend) = backends.first().cloned().filter(|_| backends.len() == 1) else {
            self.error(
                &a,
                PlanErrorKind::Refused,
                format!(
                    "the members of consistency group {g} live on several back ends ({}); a group snapshot is taken on one",
                    backends.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
            return;
        };
        if self.failed.contains(&backend) {
            self.held_back(ObjKind::Snapshot, name.as_str(), None);
            return;
        }
        let Some((bn, view)) = self
            .world
            .backends
            .iter()
            .find(|(k, _)| k.as_str() == backend)
        else {
            // Another host's back end: its agent takes the cut.
            return;
        };
        let (bn, caps, extent) = (bn.clone(), view.caps.clone(), view.extent);
        let (freeze, limit) = match caps.group_snapshots {
            GroupSnapshots::None => {
                self.error(
                    &a,
                    PlanErrorKind::Unsupported,
                    format!("back end {backend} takes no group snapshots"),
                );
                return;
            }
            GroupSnapshots::Idle => {
                let held: Vec<String> = members
                    .iter()
                    .filter_map(|v| {
                        let f = self.found.get(&(ObjKind::Volume, v.as_str().to_owned()))?;
                        Some(format!("volume.{v} by {}", self.holder(f.obj)?))
                    })
                    .collect();
                if !held.is_empty() {
                    self.error(
                        &a,
                        PlanErrorKind::InUse,
                        format!(
                            "on {backend} a group snapshot is consistent only while no member is in use (it cannot hold their writes), and {} in use; stop or detach them, then plan again",
                            held.join(", ")
                        ),
                    );
                    return;
                }
                (
                    "none: no member is in use, so one snapshot after another holds one instant"
                        .to_owned(),
                    None,
                )
            }
            GroupSnapshots::Freeze => (
                format!(
                    "the writes of all {} members are held above each volume while {} snapshots are taken (expected: as long as {} snapshot commands); at most {} s, then every hold is released and the step fails",
                    members.len(),
                    members.len(),
                    members.len(),
                    FREEZE_LIMIT_MS / 1000
                ),
                Some(FREEZE_LIMIT_MS),
            ),
        };
        let mut list = Vec::new();
        let mut total = 0u64;
        let mut resumed = false;
        for v in &members {
            let vol = self.found.get(&(ObjKind::Volume, v.as_str().to_owned()));
            let vsize = vol
                .map(|f| f.obj.size)
                .or_else(|| set.volumes.get(*v).map(|d| d.spec.size.bytes()))
                .unwrap_or(0);
            let size = match caps.snapshots {
                SnapshotSpace::Shared => round_up(vsize, extent),
                SnapshotSpace::CopyOnWrite => round_up(
                    doc.spec
                        .size
                        .map_or(vsize, crate::manifest::values::Quantity::bytes),
                    extent,
                ),
                SnapshotSpace::Copy => vsize,
            };
            total += size;
            let old = self.found.get(&key(v)).map(|f| f.obj.uuid);
            resumed |= old.is_some();
            self.planned.insert(key(v), backend.clone());
            list.push(GroupMember {
                volume: v.as_str().to_owned(),
                volume_uuid: vol.map(|f| f.obj.uuid),
                snapshot: snap_of(v),
                uuid: old,
                size,
            });
        }
        if let Some(why) = self.sched.pool(&bn).and_then(|p| p.admit(total).reason) {
            self.error(
                &a,
                PlanErrorKind::NoRoom,
                format!(
                    "no room on {backend} for {} of member snapshots: {why}",
                    format_bytes_exact(total)
                ),
            );
            return;
        }
        self.sched.grow(&bn, total);
        let reason = if resumed {
            format!(
                "an earlier group snapshot of consistency group {g} was interrupted; its partial set is removed and the cut taken again"
            )
        } else {
            format!(
                "it is declared and does not exist; one crash-consistent snapshot of each of the {} members of consistency group {g}",
                list.len()
            )
        };
        self.out.actions.push(Action {
            address: a,
            op: Op::GroupSnapshot {
                name: name.as_str().to_owned(),
                group: g.as_str().to_owned(),
                backend,
                members: list,
                deletion_policy: policy,
                freeze_limit_ms: limit,
                freeze,
            },
            reason,
            impact: Impact::Grows,
        });
    }
}
