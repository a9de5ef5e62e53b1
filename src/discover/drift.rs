//! `discover --diff`: what the back ends hold that the manifests do not
//! say, as YAML patches an admin can commit.
//!
//! Each patch is a document naming the object it concerns (`apiVersion`,
//! `kind`, `metadata.name`) after a comment that says where that object's
//! document is (`FILE:LINE:COL`) and what differs:
//! - a volume grown outside cinderblock (`lvextend`, `truncate`): a merge
//!   patch (RFC 7386) of `spec.size`;
//! - an export changed or made outside cinderblock: a merge patch of
//!   `spec.export` as LIO has it (the manifest's CHAP references kept: a
//!   secret is never read back);
//! - an object deleted outside cinderblock (the record says it existed): a
//!   `$patch: delete` document (the strategic-merge directive) saying the
//!   manifest can go, or the object be restored from a backup;
//! - an object of ours no manifest declares: its whole document, as
//!   `discover` writes it (apply would forget or delete it otherwise);
//! - with `--include-foreign`, the foreign entries that can be adopted.
//!
//! What a manifest says and the back ends do not have yet (a create, an
//! extend, an export not applied) is not drift: `plan` shows it. An export
//! the manifests declare and LIO lacks cannot be told from one not applied
//! yet, so it is left to `plan` too.
//!
//! Pure and deterministic like [`super::manifests`]: volumes, snapshots
//! and images by name, then undeclared objects by back end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_yaml::{Mapping, Value};

use super::{Ctx, Options, Output, backend_docs, foreign_docs, lio_export};
use crate::manifest::kinds::{API_VERSION, Export};
use crate::manifest::values::{Quantity, format_bytes_exact};
use crate::manifest::{ManifestSet, Name, Origin};
use crate::model::{Discovery, Health, ObjKind, Observed};
use crate::observe::{Exports, World};
use crate::plan::round_up;
use crate::plan::schedule::Scheduler;
use crate::state::record::Recorded;

/// The drift between `set` and `world`, as patches (`drift.yaml`, absent
/// when there is none).
#[allow(clippy::too_many_lines)] // one pass: declared objects, then undeclared
pub fn drift(set: &ManifestSet, world: &World, recorded: &Recorded, opts: &Options) -> Output {
    let mut out = Output::default();
    let mut text = String::new();
    let mut ours: BTreeMap<(ObjKind, &str), (&Name, &Observed)> = BTreeMap::new();
    for (b, view) in &world.backends {
        match &view.discovery {
            Discovery::Ok(inv) => {
                for o in inv.objects.iter().filter(|o| o.health != Health::Migrating) {
                    ours.entry((o.kind, o.name.as_str())).or_insert((b, o));
                }
            }
            Discovery::Failed(_) => out.notes.push(format!(
                "back end {b} could not be discovered; its drift is not known"
            )),
        }
    }
    let declared: BTreeSet<(ObjKind, &str)> = set
        .volumes
        .keys()
        .map(|n| (ObjKind::Volume, n.as_str()))
        .chain(
            set.snapshots
                .keys()
                .map(|n| (ObjKind::Snapshot, n.as_str())),
        )
        .chain(set.images.keys().map(|n| (ObjKind::Image, n.as_str())))
        .collect();

    for (name, doc) in &set.volumes {
        let Some((b, o)) = ours.get(&(ObjKind::Volume, name.as_str())) else {
            gone(
                &mut text,
                world,
                recorded,
                ObjKind::Volume,
                name,
                &doc.origin,
            );
            continue;
        };
        let a = format!("volume.{name}");
        let extent = world.backends.get(*b).map_or(1, |v| v.extent);
        let mut spec = Mapping::new();
        let mut said = Vec::new();
        let have = match o.health {
            Health::SizeMismatch { actual, .. } => actual.max(o.size),
            _ => o.size,
        };
        if have > round_up(doc.spec.size.bytes(), extent) {
            let q = Quantity::from_bytes(have);
            said.push(format!(
                "spec.size: {} -> {q} (grown outside cinderblock)",
                doc.spec.size
            ));
            spec.insert("size".into(), yaml(&q));
        }
        if matches!(world.exports, Exports::Found(_)) {
            let mut said_lio = Vec::new();
            let (lio, _) = lio_export(world, o, &a, &mut said_lio);
            // Where a CHAP secret lives is the manifest's to say; only
            // without one is its absence worth a note.
            let has_chap = doc
                .spec
                .export
                .as_ref()
                .is_some_and(|e| e.iscsi.chap_secret_ref.is_some());
            out.notes.extend(
                said_lio
                    .into_iter()
                    .filter(|n| !(has_chap && n.contains("chapSecretRef"))),
            );
            if let Some(mut lio) = lio {
                let differs = match &doc.spec.export {
                    None => Some("exported outside cinderblock".to_owned()),
                    Some(d) => export_changes(d, &lio),
                };
                if let Some(what) = differs {
                    if let Some(d) = &doc.spec.export {
                        lio.iscsi
                            .chap_secret_ref
                            .clone_from(&d.iscsi.chap_secret_ref);
                        lio.iscsi
                            .mutual_chap_secret_ref
                            .clone_from(&d.iscsi.mutual_chap_secret_ref);
                    }
                    said.push(format!("spec.export: {what} (as LIO has it)"));
                    spec.insert("export".into(), yaml(&lio));
                }
            }
        }
        if !spec.is_empty() {
            patch(
                &mut text,
                "Volume",
                name,
                &doc.origin,
                &said,
                Some(Value::Mapping(spec)),
            );
        }
    }
    for (name, doc) in &set.snapshots {
        if !ours.contains_key(&(ObjKind::Snapshot, name.as_str())) {
            gone(
                &mut text,
                world,
                recorded,
                ObjKind::Snapshot,
                name,
                &doc.origin,
            );
        }
    }
    for (name, doc) in &set.images {
        if !ours.contains_key(&(ObjKind::Image, name.as_str())) {
            gone(
                &mut text,
                world,
                recorded,
                ObjKind::Image,
                name,
                &doc.origin,
            );
        }
    }

    // Objects of ours no manifest declares, as discover writes them; then
    // foreign entries, when asked.
    let by_uuid: BTreeMap<uuid::Uuid, &Observed> =
        ours.values().map(|(_, o)| (o.uuid, *o)).collect();
    let sched = Scheduler::new(&set.scheduler_policy(), world);
    let ctx = Ctx {
        set,
        world,
        recorded,
        opts,
        sched: &sched,
        by_uuid: &by_uuid,
    };
    let mut taken: BTreeSet<(ObjKind, String)> =
        by_uuid.values().map(|o| (o.kind, o.name.clone())).collect();
    for (bname, view) in &world.backends {
        let Some(inv) = view.inventory() else {
            continue;
        };
        let mut docs = backend_docs(&ctx, bname, inv, &mut BTreeMap::new(), &mut out.notes);
        docs.retain(|(k, n, _)| !declared.contains(&(*k, n.as_str())));
        docs.sort();
        for (kind, n, doc) in docs {
            let said = format!(
                "---\n# {kind}.{n} is on back end {bname} but no manifest declares it: add this document to keep it as it is\n"
            );
            text.push_str(&doc.replacen("---\n", &said, 1));
        }
        if opts.include_foreign {
            text.push_str(&foreign_docs(opts, bname, view, &mut taken, &mut out.notes));
        }
    }
    if !text.is_empty() {
        out.files.insert("drift.yaml".into(), text);
    }
    out
}

/// What differs between the declared export `d` and LIO's `lio`, in words
/// (`None`: nothing LIO shows).
fn export_changes(d: &Export, lio: &Export) -> Option<String> {
    let sorted = |v: &[crate::manifest::values::IscsiName]| {
        let mut v: Vec<String> = v.iter().map(|n| n.as_str().to_owned()).collect();
        v.sort();
        v
    };
    let mut what = Vec::new();
    if sorted(&d.iscsi.initiators) != sorted(&lio.iscsi.initiators) {
        what.push("initiators");
    }
    let name = |e: &Export| e.iscsi.target_name.as_ref().map(|n| n.as_str().to_owned());
    if name(d) != name(lio) {
        what.push("targetName");
    }
    let portals = |e: &Export| {
        let mut p = e.iscsi.portals.clone();
        p.sort();
        if p == [crate::iscsi::lio::DEFAULT_PORTAL] {
            p.clear();
        }
        p
    };
    if portals(d) != portals(lio) {
        what.push("portals");
    }
    (!what.is_empty()).then(|| format!("{} changed outside cinderblock", what.join(", ")))
}

/// A declared object not found: a `$patch: delete` when the record says it
/// existed on a back end that was discovered (otherwise it is only not
/// created yet, or unknown).
fn gone(
    text: &mut String,
    world: &World,
    recorded: &Recorded,
    kind: ObjKind,
    name: &Name,
    origin: &Origin,
) {
    let Some((uuid, r)) = recorded
        .objects
        .iter()
        .find(|(_, r)| r.kind == kind && r.name == name.as_str())
    else {
        return;
    };
    let discovered = world
        .backends
        .iter()
        .any(|(n, v)| n.as_str() == r.backend && v.inventory().is_some());
    if !discovered {
        return;
    }
    let said = [format!(
        "deleted outside cinderblock ({uuid} on {}, {} when last applied): remove its document, or restore it from a backup",
        r.backend,
        format_bytes_exact(r.size)
    )];
    patch(text, kind_name(kind), name, origin, &said, None);
}

/// The manifest kind of an object kind.
fn kind_name(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Volume => "Volume",
        ObjKind::Snapshot => "Snapshot",
        ObjKind::Image => "Image",
    }
}

/// One patch: the comment (where the document is, what differs), then the
/// document: `spec` merged, or `$patch: delete` when `spec` is `None`.
fn patch(
    text: &mut String,
    kind: &str,
    name: &Name,
    origin: &Origin,
    said: &[String],
    spec: Option<Value>,
) {
    let _ = writeln!(text, "---\n# {}: {kind}/{name}", origin.describe());
    for s in said {
        let _ = writeln!(text, "#   {s}");
    }
    let mut doc = Mapping::new();
    if spec.is_none() {
        doc.insert("$patch".into(), "delete".into());
    }
    doc.insert("apiVersion".into(), API_VERSION.into());
    doc.insert("kind".into(), kind.into());
    let mut meta = Mapping::new();
    meta.insert("name".into(), name.as_str().into());
    doc.insert("metadata".into(), Value::Mapping(meta));
    if let Some(s) = spec {
        doc.insert("spec".into(), s);
    }
    text.push_str(&serde_yaml::to_string(&Value::Mapping(doc)).unwrap_or_default());
}

/// A wire value as YAML (plain data: `serde_yaml` cannot fail on it).
fn yaml<T: serde::Serialize>(v: &T) -> Value {
    serde_yaml::to_value(v).unwrap_or(Value::Null)
}
