//! Renames: a volume, snapshot or image declared under a new name with
//! `metadata.annotations: {cinderblock.dev/renamed-from: OLD}`.
//!
//! Runs before the rest of the planner. For each such document it finds
//! the object of ours named OLD and plans one `~ rename` step
//! ([`Op::Rename`]); the rest of the planner then sees the world as it will
//! be after the rename (the object under its new name), so the object is
//! never created under the new name nor forgotten or deleted under the old
//! one, and its exports, snapshots and backups (all keyed by identity) are
//! planned as they are. A rename the back end finished while the record
//! still names OLD (a run stopped mid-step) is planned again: the back end
//! has nothing left to do, the record and the backup catalogue do.
//!
//! Refused, as plan errors that name the annotation's file and line: OLD
//! and the new name both existing, OLD not existing on this host's back
//! ends (nothing is created in its place), OLD being migrated or halfway
//! through a create or delete. Validation already refused what the
//! manifests alone show (OLD still declared, two documents renamed from one
//! name, a name that is not one).
//!
//! Pure, like the planner: the renamed world is a copy, made only when a
//! rename is planned.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::kinds::RENAMED_FROM;
use crate::manifest::{FieldPath, ManifestSet, Name, Origin};
use crate::model::{Discovery, Health, ObjKind, Observed};
use crate::observe::World;
use crate::state::record::Recorded;

use super::{Action, Impact, Op, PlanError, PlanErrorKind, addr, kind_word};

/// What the renames add to a plan.
#[derive(Debug, Default)]
pub(super) struct Renames {
    /// The world with every renamed object under its new name, when a
    /// rename is planned.
    pub world: Option<World>,
    /// The `~ rename` steps, first in the plan.
    pub actions: Vec<Action>,
    /// Renames that cannot be planned.
    pub errors: Vec<PlanError>,
    /// Renames left to another host or to a later run.
    pub notes: Vec<String>,
    /// Declared objects renamed from one that is not found here: never
    /// created under the new name.
    pub unresolved: BTreeSet<(ObjKind, String)>,
    /// The old names: an object still under one (its rename refused) is
    /// never forgotten or deleted as undeclared.
    pub old_names: BTreeSet<(ObjKind, String)>,
}

/// One document that declares `cinderblock.dev/renamed-from`.
struct Wanted<'s> {
    kind: ObjKind,
    name: &'s Name,
    old: &'s str,
    origin: &'s Origin,
    /// The back end it is pinned to, when it is.
    pin: Option<&'s Name>,
}

/// The renames of `set` against `world` and `recorded`.
#[allow(clippy::too_many_lines)] // one pass over a rename's cases, kept together
pub(super) fn resolve(set: &ManifestSet, world: &World, recorded: &Recorded) -> Renames {
    let mut out = Renames::default();
    let wanted = wanted(set);
    if wanted.is_empty() {
        return out;
    }
    // Our objects by (kind, name), with their back end.
    let mut ours: BTreeMap<(ObjKind, &str), Vec<(&Name, &Observed)>> = BTreeMap::new();
    for (b, view) in &world.backends {
        if let Some(inv) = view.inventory() {
            for o in &inv.objects {
                ours.entry((o.kind, o.name.as_str()))
                    .or_default()
                    .push((b, o));
            }
        }
    }
    let undiscovered: Vec<&str> = world
        .backends
        .iter()
        .filter(|(_, v)| matches!(v.discovery, Discovery::Failed(_)))
        .map(|(n, _)| n.as_str())
        .chain(world.missing.iter().map(Name::as_str))
        .collect();
    let other_hosts = set.backends.keys().any(|k| !world.backends.contains_key(k));
    let mut renamed = Vec::new();
    for w in &wanted {
        out.old_names.insert((w.kind, w.old.to_owned()));
        let a = addr(w.kind, w.name.as_str());
        let at = at(w.origin);
        let what = kind_word(w.kind);
        let old = ours.get(&(w.kind, w.old)).map_or(&[][..], Vec::as_slice);
        let new = ours
            .get(&(w.kind, w.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let here = |list: &[(&Name, &Observed)]| {
            list.iter()
                .map(|(b, o)| format!("{} on {b}", o.uuid))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !old.is_empty() && !new.is_empty() {
            out.errors.push(PlanError::new(&a, PlanErrorKind::Refused, format!(
                "{at}: renamed from {what} {old_name}, but both exist ({old_name}: {}; {name}: {}); a rename cannot take a name that is taken: remove the annotation, or remove one of them first",
                here(old),
                here(new),
                old_name = w.old,
                name = w.name
            )));
            out.unresolved.insert((w.kind, w.name.as_str().to_owned()));
            continue;
        }
        if let [(b, o)] = new {
            // Renamed on its back end already: finish what a stopped run
            // left (the record, the catalogue).
            if recorded
                .objects
                .get(&o.uuid)
                .is_some_and(|r| r.name == w.old && r.kind == w.kind)
            {
                out.actions.push(step(w, o, b, "an earlier rename was interrupted after the back end took the new name; its records are finished".into()));
            }
            continue;
        }
        if !new.is_empty() {
            // Duplicates: the planner's index says so.
            continue;
        }
        match old {
            [(b, o)] if matches!(o.health, Health::Ready | Health::SizeMismatch { .. }) => {
                out.actions.push(step(
                    w,
                    o,
                    b,
                    format!(
                        "cinderblock.dev/renamed-from names {what} {}: only its name changes",
                        w.old
                    ),
                ));
                renamed.push((b.as_str().to_owned(), o.uuid, w.name.as_str().to_owned()));
            }
            [(b, o)] => {
                out.errors.push(PlanError::new(&a, PlanErrorKind::Refused, format!(
                    "{at}: {what} {} ({} on {b}) is {}; a rename waits until that is finished: apply with its old name first",
                    w.old,
                    o.uuid,
                    match o.health {
                        Health::Creating => "still being created (an earlier create was interrupted)",
                        Health::Deleting => "being deleted or migrated",
                        Health::Migrating => "the target of a migration in flight",
                        _ => "without its data",
                    }
                )));
                out.unresolved.insert((w.kind, w.name.as_str().to_owned()));
            }
            [_, ..] => {
                let migrating = old.iter().any(|(_, o)| o.health == Health::Migrating);
                out.errors.push(PlanError::new(
                    &a,
                    PlanErrorKind::Refused,
                    format!(
                        "{at}: {what} {} {} ({}); rename it once it exists once",
                        w.old,
                        if migrating {
                            "is being migrated"
                        } else {
                            "exists more than once"
                        },
                        here(old)
                    ),
                ));
                out.unresolved.insert((w.kind, w.name.as_str().to_owned()));
            }
            [] => {
                out.unresolved.insert((w.kind, w.name.as_str().to_owned()));
                let elsewhere = w.pin.is_some_and(|p| !world.backends.contains_key(p));
                if elsewhere {
                    continue;
                }
                if !undiscovered.is_empty() {
                    out.notes.push(format!(
                        "{a} is not planned: it is renamed from {what} {}, which may be on {}, which could not be discovered",
                        w.old,
                        undiscovered.join(", ")
                    ));
                } else if other_hosts && w.pin.is_none() {
                    out.notes.push(format!(
                        "{a}: renamed from {what} {}, which is on none of this host's back ends; the host that holds it renames it",
                        w.old
                    ));
                } else {
                    out.errors.push(PlanError::new(&a, PlanErrorKind::Refused, format!(
                        "{at}: renamed from {what} {old}, but no {what} {old} exists on this host's back ends (`cinderblock discover` lists what they hold); nothing is created under the new name: fix the old name, or remove the annotation to create an empty {what}",
                        old = w.old
                    )));
                }
            }
        }
    }
    if !renamed.is_empty() {
        let mut copy = world.clone();
        for (b, uuid, name) in renamed {
            if let Some(Discovery::Ok(inv)) = copy
                .backends
                .iter_mut()
                .find(|(n, _)| n.as_str() == b)
                .map(|(_, v)| &mut v.discovery)
                && let Some(o) = inv.objects.iter_mut().find(|o| o.uuid == uuid)
            {
                o.name = name;
            }
        }
        out.world = Some(copy);
    }
    out
}

/// The documents that declare a rename, volumes first, then snapshots and
/// images, each by name.
fn wanted(set: &ManifestSet) -> Vec<Wanted<'_>> {
    let mut out = Vec::new();
    for (name, doc) in &set.volumes {
        if let Some(old) = doc.meta.annotations.get(RENAMED_FROM) {
            out.push(Wanted {
                kind: ObjKind::Volume,
                name,
                old: &old.0,
                origin: &doc.origin,
                pin: doc.spec.backend.as_ref(),
            });
        }
    }
    for (name, doc) in &set.snapshots {
        if let Some(old) = doc.meta.annotations.get(RENAMED_FROM) {
            out.push(Wanted {
                kind: ObjKind::Snapshot,
                name,
                old: &old.0,
                origin: &doc.origin,
                pin: doc
                    .spec
                    .volume
                    .as_ref()
                    .and_then(|v| set.volumes.get(v))
                    .and_then(|v| v.spec.backend.as_ref()),
            });
        }
    }
    for (name, doc) in &set.images {
        if let Some(old) = doc.meta.annotations.get(RENAMED_FROM) {
            out.push(Wanted {
                kind: ObjKind::Image,
                name,
                old: &old.0,
                origin: &doc.origin,
                pin: Some(&doc.spec.backend),
            });
        }
    }
    out
}

/// `FILE:LINE:COL` of a document's `renamed-from` annotation, and the
/// field's path.
fn at(origin: &Origin) -> String {
    let path = FieldPath::annotation(RENAMED_FROM);
    let pos = origin.value_pos(&path);
    format!(
        "{}:{}:{}: metadata.annotations[\"{RENAMED_FROM}\"]",
        origin.file.display(),
        pos.line,
        pos.col
    )
}

/// The `~ rename` step of `w`'s object `o` on back end `b`.
fn step(w: &Wanted<'_>, o: &Observed, b: &Name, reason: String) -> Action {
    Action {
        address: addr(w.kind, w.name.as_str()),
        op: Op::Rename {
            kind: w.kind,
            name: w.name.as_str().to_owned(),
            from: w.old.to_owned(),
            uuid: o.uuid,
            backend: b.as_str().to_owned(),
        },
        reason,
        impact: Impact::MetadataOnly,
    }
}
