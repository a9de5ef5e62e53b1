//! `discover`: what exists on this host's back ends, written as manifests.
//!
//! Owns the turn of an observed [`World`] (plus the recorded deletion
//! policies) into YAML documents an admin can commit: every object of ours
//! as the `Volume`, `Snapshot` or `Image` that would plan to "No changes"
//! (size, back-end pin, the one `VolumeType` that fits, its iSCSI export,
//! the deletion policy last applied, its consistency group), the
//! `ConsistencyGroup` of each group its volumes carry, and, when asked,
//! every foreign entry that could hold a volume as a `Volume` annotated
//! `cinderblock.dev/adopt`.
//!
//! Invariants: pure (no I/O, no clock), and deterministic: back ends,
//! files and documents are sorted, so the same world gives byte-identical
//! output. Every document is built from the manifest wire structs and
//! serialised by serde, so what it writes is what `validate` reads. Names
//! that cannot be manifest names (a foreign `vol_01.img`) are made into
//! DNS-1123 labels; the annotation keeps the real name.
//!
//! `drift` is `discover --diff`: the same documents and exports set
//! against manifests that exist, as patches (see its docs).
//!
//! Must not: know a back-end kind (it reads views, capabilities and
//! foreign entries), call a driver, or guess what the back ends do not
//! keep (a group's backup policy, where a secret lives): those are said in
//! [`Output::notes`] and in comments of the documents concerned.

mod drift;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use crate::manifest::kinds::{
    ADOPT, API_VERSION, ConsistencyGroupSpec, DeletionPolicy, Export, ImageSource, ImageSpec,
    IscsiExport, Metadata, SnapshotSpec, VolumeSpec,
};
use crate::manifest::values::{Quantity, ScalarString, shown};
use crate::manifest::{ManifestSet, Name};
use crate::model::{Health, ObjKind, Observed};
use crate::observe::{BackendView, World};
use crate::plan::schedule::{Request, Scheduler};
use crate::state::record::Recorded;

pub use drift::drift;

/// What to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Foreign entries too, as `Volume`s to adopt.
    pub include_foreign: bool,
    /// What each document's `# yaml-language-server: $schema=` line points
    /// at.
    pub schema: String,
}

/// The manifests, by file name, and what could not be said in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// `BACKEND.yaml` (our objects) and, with foreign entries,
    /// `BACKEND.foreign.yaml`; sorted.
    pub files: BTreeMap<String, String>,
    /// Objects left out or not fully described, with why.
    pub notes: Vec<String>,
}

impl Output {
    /// Every file, one after the other, as one multi-document stream.
    pub fn stream(&self) -> String {
        let mut out = String::new();
        for text in self.files.values() {
            out.push_str(text);
        }
        out
    }
}

/// One document on the wire.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a, S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: &'a S,
}

/// Writes what `world` holds as manifests.
pub fn manifests(set: &ManifestSet, world: &World, recorded: &Recorded, opts: &Options) -> Output {
    let mut out = Output::default();
    // Names by identity over every back end: a snapshot names its volume,
    // an image the volume it was cloned from.
    let by_uuid: BTreeMap<Uuid, &Observed> = world
        .backends
        .values()
        .filter_map(BackendView::inventory)
        .flat_map(|inv| inv.objects.iter())
        .filter(|o| o.health != Health::Migrating)
        .map(|o| (o.uuid, o))
        .collect();
    let sched = Scheduler::new(&set.scheduler_policy(), world);
    // Names taken by our objects, so adopted ones get others.
    let mut taken: BTreeSet<(ObjKind, String)> =
        by_uuid.values().map(|o| (o.kind, o.name.clone())).collect();
    for (bname, view) in &world.backends {
        let Some(inv) = view.inventory() else {
            out.notes.push(format!(
                "back end {bname} could not be discovered; nothing of it is written"
            ));
            continue;
        };
        let mut groups = BTreeMap::new();
        let mut docs = backend_docs(
            &Ctx {
                set,
                world,
                recorded,
                opts,
                sched: &sched,
                by_uuid: &by_uuid,
            },
            bname,
            inv,
            &mut groups,
            &mut out.notes,
        );
        if !docs.is_empty() {
            // Volumes, then snapshots, then images; each by name; the
            // consistency groups of the volumes first.
            docs.sort();
            let text: String = group_docs(opts, set, bname, groups, &mut out.notes)
                .into_iter()
                .chain(docs.into_iter().map(|(_, _, t)| t))
                .collect();
            out.files.insert(format!("{bname}.yaml"), text);
        }
        if opts.include_foreign {
            let text = foreign_docs(opts, bname, view, &mut taken, &mut out.notes);
            if !text.is_empty() {
                out.files.insert(format!("{bname}.foreign.yaml"), text);
            }
        }
    }
    out
}

/// What [`backend_docs`] reads.
struct Ctx<'a> {
    set: &'a ManifestSet,
    world: &'a World,
    recorded: &'a Recorded,
    opts: &'a Options,
    sched: &'a Scheduler<'a>,
    /// Our objects over every back end, by identity.
    by_uuid: &'a BTreeMap<Uuid, &'a Observed>,
}

/// The members of one consistency group found on a back end: each
/// member's name and the volume type written for it.
type GroupsSeen = BTreeMap<Name, Vec<(Name, Option<Name>)>>;

/// The `ConsistencyGroup` documents of the groups whose members back end
/// `bname` holds (a member carries its group on the object: an LV tag, a
/// sidecar field): as the manifests declare a group, when they do; else
/// pinned to the back end with the types written for its members, and a
/// comment saying what the back end does not keep (its backup policy).
fn group_docs(
    opts: &Options,
    set: &ManifestSet,
    bname: &Name,
    groups: GroupsSeen,
    notes: &mut Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (g, members) in groups {
        if let Some(doc) = set.consistency_groups.get(&g) {
            out.push(document(
                opts,
                "ConsistencyGroup",
                g,
                BTreeMap::new(),
                &doc.spec,
                "",
            ));
            continue;
        }
        let types: BTreeSet<Name> = members.iter().filter_map(|(_, t)| t.clone()).collect();
        if types.is_empty() {
            notes.push(format!(
                "consistency group {g} (members {} on {bname}): no volume type fits its members; add the group's volumeTypes and each member's volumeType",
                members
                    .iter()
                    .map(|(m, _)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let spec = ConsistencyGroupSpec {
            volume_types: types.into_iter().collect(),
            availability_zone: None,
            backup_policy: None,
            backend: Some(bname.clone()),
            description: None,
        };
        out.push(document(
            opts,
            "ConsistencyGroup",
            g,
            BTreeMap::new(),
            &spec,
            "# Found as the group its member volumes carry; a back end does not keep a\n# group's backupPolicy: add it if the group was backed up together.\n",
        ));
    }
    out
}

/// The documents of back end `bname`'s objects of ours, as (kind, name,
/// text), and the consistency groups its volumes are members of (into
/// `groups`); what cannot be written goes to `notes`.
fn backend_docs(
    ctx: &Ctx<'_>,
    bname: &Name,
    inv: &crate::model::Inventory,
    groups: &mut GroupsSeen,
    notes: &mut Vec<String>,
) -> Vec<(ObjKind, String, String)> {
    let valid = |o: &Observed| o.name.parse::<Name>().ok();
    let mut docs: Vec<(ObjKind, String, String)> = Vec::new();
    for o in &inv.objects {
        let a = format!("{}.{}", o.kind, o.name);
        if !keep(o, &a, bname, notes) {
            continue;
        }
        let Some(name) = valid(o) else {
            notes.push(format!(
                "{} {} on {bname} is named {}, which is not a manifest name; left out",
                o.kind,
                o.uuid,
                shown(&o.name)
            ));
            continue;
        };
        let policy = ctx
            .recorded
            .objects
            .get(&o.uuid)
            .map_or(DeletionPolicy::default(), |r| r.deletion_policy);
        let text = match o.kind {
            ObjKind::Volume => {
                let group = o.group.as_deref().and_then(|g| {
                    let n = g.parse::<Name>().ok();
                    if n.is_none() {
                        notes.push(format!(
                            "{a} ({} on {bname}) is a member of group {}, which is not a manifest name; its consistencyGroup is left out",
                            o.uuid,
                            shown(g)
                        ));
                    }
                    n
                });
                let (text, vt) =
                    volume_doc(ctx, bname, o, (name.clone(), group.clone()), policy, notes);
                if let Some(g) = group {
                    groups.entry(g).or_default().push((name, vt));
                }
                text
            }
            ObjKind::Snapshot => {
                let Some(parent) = o
                    .parent
                    .and_then(|p| ctx.by_uuid.get(&p))
                    .and_then(|p| valid(p))
                else {
                    notes.push(format!(
                        "{a} ({} on {bname}): its volume is not one of ours here; left out",
                        o.uuid
                    ));
                    continue;
                };
                let spec = SnapshotSpec {
                    volume: Some(parent),
                    consistency_group: None,
                    size: None,
                    deletion_policy: policy,
                };
                document(ctx.opts, "Snapshot", name, BTreeMap::new(), &spec, "")
            }
            ObjKind::Image => image_doc(ctx.opts, bname, o, name, policy, ctx.by_uuid),
        };
        docs.push((o.kind, o.name.clone(), text));
    }
    docs
}

/// Whether object `o` (at address `a`) goes into the output: not a
/// migration's target (the volume is on its source) nor half deleted;
/// an interrupted create or lost data is written with a note.
fn keep(o: &Observed, a: &str, bname: &Name, notes: &mut Vec<String>) -> bool {
    match o.health {
        Health::Migrating => return false,
        Health::Deleting => {
            notes.push(format!(
                "{a} ({} on {bname}) is being deleted; left out",
                o.uuid
            ));
            return false;
        }
        Health::Creating => notes.push(format!(
            "{a} ({} on {bname}): an earlier create was interrupted; the next apply finishes it",
            o.uuid
        )),
        Health::DataMissing => notes.push(format!(
            "{a} ({} on {bname}): its data is gone; plan will say so",
            o.uuid
        )),
        Health::Ready | Health::SizeMismatch { .. } => {}
    }
    true
}

/// The `Image` document of our image `o` on back end `bname`: made from
/// the volume it was cloned from, when that is one of ours; otherwise from
/// a raw file the back end does not remember, said in a comment.
fn image_doc(
    opts: &Options,
    bname: &Name,
    o: &Observed,
    name: Name,
    policy: DeletionPolicy,
    by_uuid: &BTreeMap<Uuid, &Observed>,
) -> String {
    let source_vol = o
        .clone_of
        .and_then(|c| by_uuid.get(&c))
        .filter(|v| v.kind == ObjKind::Volume)
        .and_then(|v| v.name.parse::<Name>().ok());
    let (source, comment) = match source_vol {
        Some(v) => (
            ImageSource {
                path: None,
                volume: Some(v),
            },
            "",
        ),
        None => (
            ImageSource {
                path: "/dev/null".parse().ok(),
                volume: None,
            },
            "# The raw file this image was made from is not kept on the back end:\n# source.path is read only to make the image again; set it to that file.\n",
        ),
    };
    let spec = ImageSpec {
        disk_format: "raw".into(),
        container_format: "bare".into(),
        source,
        backend: bname.clone(),
        deletion_policy: policy,
    };
    document(opts, "Image", name, BTreeMap::new(), &spec, comment)
}

/// The `Volume` document of our volume `o` on back end `bname`, named
/// `name` and a member of `group`, and the volume type written in it.
fn volume_doc(
    ctx: &Ctx<'_>,
    bname: &Name,
    o: &Observed,
    (name, group): (Name, Option<Name>),
    policy: DeletionPolicy,
    notes: &mut Vec<String>,
) -> (String, Option<Name>) {
    let (opts, set, world, sched) = (ctx.opts, ctx.set, ctx.world, ctx.sched);
    let a = format!("volume.{name}");
    let size = match o.health {
        Health::SizeMismatch { recorded, actual } => recorded.max(actual),
        _ => o.size,
    };
    // The one volume type this back end fits: with two or more, which one
    // the admin meant cannot be told.
    let fitting: Vec<&Name> = set
        .volume_types
        .iter()
        .filter(|(_, t)| {
            sched
                .fits(
                    bname,
                    &Request {
                        size,
                        zone: None,
                        extra_specs: Some(&t.spec.extra_specs),
                    },
                )
                .is_ok()
        })
        .map(|(n, _)| n)
        .collect();
    // A member's type is one of its group's, when the manifests declare
    // the group.
    let fitting: Vec<&Name> = match group.as_ref().and_then(|g| set.consistency_groups.get(g)) {
        Some(g) => fitting
            .into_iter()
            .filter(|t| g.spec.volume_types.contains(t))
            .collect(),
        None => fitting,
    };
    let volume_type = match fitting.as_slice() {
        [one] => Some((*one).clone()),
        [] => None,
        more => {
            notes.push(format!(
                "{a}: volume types {} all fit back end {bname}; none is written, add the one you mean",
                more.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    };
    let (export, comment) = lio_export(world, o, &a, notes);
    let spec = VolumeSpec {
        volume_type: volume_type.clone(),
        backend: Some(bname.clone()),
        export,
        deletion_policy: policy,
        consistency_group: group,
        ..minimal(size)
    };
    (
        document(opts, "Volume", name, BTreeMap::new(), &spec, &comment),
        volume_type,
    )
}

/// Volume `o`'s export as LIO has it (its ACLs, its target name when not
/// the default, its portals when not the default one), and a comment for
/// its document when LIO requires CHAP (a secret is never read back).
fn lio_export(
    world: &World,
    o: &Observed,
    a: &str,
    notes: &mut Vec<String>,
) -> (Option<Export>, String) {
    let mut comment = String::new();
    let export = world.exports.get(o.uuid).and_then(|e| {
        let iqn = e.iqn.as_deref()?;
        let mut initiators = Vec::new();
        for i in &e.initiators {
            match i.parse() {
                Ok(n) => initiators.push(n),
                Err(_) => notes.push(format!(
                    "{a}: the ACL of initiator {} is not a valid iSCSI name; left out",
                    shown(i)
                )),
            }
        }
        let target_name = if crate::iscsi::names::is_default(iqn, o.uuid) {
            None
        } else {
            iqn.parse().ok()
        };
        let portals = if e.portals == [crate::iscsi::lio::DEFAULT_PORTAL] {
            Vec::new()
        } else {
            e.portals.clone()
        };
        if e.chap {
            comment = "# Its export requires CHAP: add spec.export.iscsi.chapSecretRef (cinderblock\n# never reads a secret back from LIO).\n".into();
            notes.push(format!(
                "{a}: its export requires CHAP; add spec.export.iscsi.chapSecretRef naming where the secret is"
            ));
        }
        Some(Export {
            iscsi: IscsiExport {
                initiators,
                chap_secret_ref: None,
                mutual_chap_secret_ref: None,
                target_name,
                portals,
            },
        })
    });
    (export, comment)
}

/// A volume of `size` bytes and nothing else said.
fn minimal(size: u64) -> VolumeSpec {
    VolumeSpec {
        size: Quantity::from_bytes(size),
        volume_type: None,
        backend: None,
        availability_zone: None,
        source: None,
        consistency_group: None,
        backup_policy: None,
        export: None,
        deletion_policy: DeletionPolicy::default(),
        migration_policy: crate::manifest::kinds::MigrationPolicy::default(),
        migrate_snapshots: false,
    }
}

/// The foreign entries of one back end: a `Volume` to adopt for each that
/// can hold one, a comment line for each that cannot.
fn foreign_docs(
    opts: &Options,
    bname: &Name,
    view: &BackendView,
    taken: &mut BTreeSet<(ObjKind, String)>,
    notes: &mut Vec<String>,
) -> String {
    let Some(inv) = view.inventory() else {
        return String::new();
    };
    let mut header = String::new();
    let mut body = String::new();
    for f in &inv.foreign {
        let unfit = f
            .unfit
            .clone()
            .or_else(|| crate::manifest::validate::entry_problem(&f.name).map(str::to_owned))
            .or_else(|| match f.size {
                None => Some("no size".to_owned()),
                Some(s) => crate::manifest::validate::volume_size_problem(s),
            });
        let (Some(size), None) = (f.size, &unfit) else {
            let _ = writeln!(
                header,
                "# not adoptable: {}: {}",
                shown(&f.name),
                unfit.as_deref().unwrap_or_default()
            );
            continue;
        };
        if let Some(r) = &f.released
            && r.kind != ObjKind::Volume
        {
            let _ = writeln!(
                header,
                "# released {} {} ({}): adopt it as a {} by hand",
                r.kind,
                shown(&r.name),
                r.uuid,
                r.kind
            );
            continue;
        }
        let wanted = f
            .released
            .as_ref()
            .map_or_else(|| label(&f.name), |r| r.name.clone());
        let name = unique(&wanted, taken);
        let Ok(name) = name.parse::<Name>() else {
            notes.push(format!(
                "{} on {bname}: no manifest name could be made of it; left out",
                shown(&f.name)
            ));
            continue;
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(ADOPT.to_owned(), ScalarString(f.name.clone()));
        let spec = VolumeSpec {
            backend: Some(bname.clone()),
            ..minimal(size)
        };
        let comment = f.released.as_ref().map_or_else(String::new, |r| {
            format!(
                "# Released by this back end (deletionPolicy: Retain): was volume {} ({}).\n",
                shown(&r.name),
                r.uuid
            )
        });
        body.push_str(&document(
            opts,
            "Volume",
            name,
            annotations,
            &spec,
            &comment,
        ));
    }
    if body.is_empty() && header.is_empty() {
        return String::new();
    }
    format!(
        "# Foreign entries of back end {bname}, as found by `cinderblock discover --include-foreign`.\n# Commit the volumes to take into management; apply only marks them (no data is touched).\n{header}{body}"
    )
}

/// One document: the schema line, a comment, then the YAML.
fn document<S: Serialize>(
    opts: &Options,
    kind: &'static str,
    name: Name,
    annotations: BTreeMap<String, ScalarString>,
    spec: &S,
    comment: &str,
) -> String {
    let doc = Document {
        api_version: API_VERSION,
        kind,
        metadata: Metadata {
            name,
            labels: BTreeMap::new(),
            annotations,
        },
        spec,
    };
    let mut value = match serde_yaml::to_value(&doc) {
        Ok(v) => v,
        // The wire structs are plain data; serde_yaml refuses only maps
        // with non-string keys, which they have none of.
        Err(e) => return format!("# cannot write this document: {e}\n"),
    };
    strip_defaults(&mut value);
    let yaml = serde_yaml::to_string(&value).unwrap_or_default();
    format!(
        "---\n# yaml-language-server: $schema={}\n{comment}{yaml}",
        opts.schema
    )
}

/// Drops the fields that say only their default (`migrationPolicy: never`,
/// `migrateSnapshots: false`), so a discovered volume reads as an admin
/// would write it.
fn strip_defaults(doc: &mut serde_yaml::Value) {
    let Some(spec) = doc
        .get_mut("spec")
        .and_then(serde_yaml::Value::as_mapping_mut)
    else {
        return;
    };
    let default_policy =
        serde_yaml::to_value(crate::manifest::kinds::MigrationPolicy::default()).ok();
    if spec.get("migrationPolicy") == default_policy.as_ref() {
        spec.remove("migrationPolicy");
    }
    if spec.get("migrateSnapshots") == Some(&serde_yaml::Value::Bool(false)) {
        spec.remove("migrateSnapshots");
    }
}

/// A DNS-1123 label made of a foreign name: lower case, every other
/// character a `-`, no leading or trailing `-`, at most 63 characters
/// (`vol_01.img` → `vol-01-img`).
pub fn label(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-');
    let s: String = s.chars().take(63).collect();
    let s = s.trim_end_matches('-').to_owned();
    if s.is_empty() { "adopted".into() } else { s }
}

/// `wanted`, or `wanted-2`, `wanted-3`, ... when a volume has that name
/// already; the result is taken.
fn unique(wanted: &str, taken: &mut BTreeSet<(ObjKind, String)>) -> String {
    let mut n = 1;
    loop {
        let candidate = if n == 1 {
            wanted.to_owned()
        } else {
            let suffix = format!("-{n}");
            let keep = 63usize.saturating_sub(suffix.len());
            format!(
                "{}{suffix}",
                wanted
                    .chars()
                    .take(keep)
                    .collect::<String>()
                    .trim_end_matches('-')
            )
        };
        if taken.insert((ObjKind::Volume, candidate.clone())) {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_names_become_labels() {
        assert_eq!(label("vol_01.img"), "vol-01-img");
        assert_eq!(label("Data__Disk"), "data-disk");
        assert_eq!(label("_snapshot-x"), "snapshot-x");
        assert_eq!(label("___"), "adopted");
        assert_eq!(label(&"a".repeat(80)).len(), 63);
        for n in ["vol_01.img", "Data__Disk", "-x-", &"b_".repeat(50)] {
            assert!(label(n).parse::<Name>().is_ok(), "{n}");
        }
    }

    #[test]
    fn taken_names_get_a_suffix() {
        let mut taken = BTreeSet::from([(ObjKind::Volume, "db".to_owned())]);
        assert_eq!(unique("db", &mut taken), "db-2");
        assert_eq!(unique("db", &mut taken), "db-3");
        assert_eq!(unique("web", &mut taken), "web");
        let long = "x".repeat(63);
        taken.insert((ObjKind::Volume, long.clone()));
        let u = unique(&long, &mut taken);
        assert_eq!(u.len(), 63);
        assert!(u.ends_with("-2"));
    }
}
