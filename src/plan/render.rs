//! Plan output: Terraform's grammar in text, and a machine document in JSON.
//!
//! Text: drift first under `Note: Objects have changed outside of
//! cinderblock`, then one block per action with its `# ADDRESS will be …`
//! header, `# (because …)` reason, symbol, attributes (`old -> new`) and data
//! impact, then capacity per back end before → after, notes, errors and the
//! summary line `Plan: N to add, M to change, K to destroy, F to forget.`
//! (`No changes. Storage matches the manifests.` when empty). Pure: the same
//! plan renders to the same bytes.

use std::fmt::Write as _;

use serde::Serialize;

use super::capacity::{human, percent};
use super::exports::secret_source;
use super::{Action, Carry, ObjKind, Op, Plan, Tally};
use crate::manifest::values::format_bytes_exact;

fn kind_word(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Volume => "volume",
        ObjKind::Snapshot => "snapshot",
        ObjKind::Image => "image",
    }
}

/// The plan as text.
pub fn text(plan: &Plan) -> String {
    text_with(plan, "")
}

/// The plan as text with `extra` (a section the caller computed, such as
/// backup schedules) just before the summary line.
pub fn text_with(plan: &Plan, extra: &str) -> String {
    let mut s = String::new();
    if !plan.drift.is_empty() {
        s.push_str("Note: Objects have changed outside of cinderblock\n\n");
        for d in &plan.drift {
            let _ = writeln!(s, "  # {} {}", d.address, d.message);
        }
        s.push('\n');
        s.push_str(&"─".repeat(77));
        s.push_str("\n\n");
    }
    if !plan.actions.is_empty() {
        s.push_str("cinderblock will perform the following actions:\n\n");
        for a in &plan.actions {
            action(&mut s, a);
            s.push('\n');
        }
    }
    if !plan.capacity.is_empty() && (!plan.actions.is_empty() || !plan.errors.is_empty()) {
        s.push_str("Capacity (provisioned; virtual free by Cinder's formula):\n");
        let width = plan
            .capacity
            .iter()
            .map(|c| c.backend.len())
            .max()
            .unwrap_or(0);
        for c in &plan.capacity {
            #[allow(clippy::cast_precision_loss)]
            let prov = if c.provisioned_before == c.provisioned_after {
                human(c.provisioned_before as f64)
            } else {
                format!(
                    "{} -> {}",
                    human(c.provisioned_before as f64),
                    human(c.provisioned_after as f64)
                )
            };
            let (vb, va) = (human(c.virtual_free_before), human(c.virtual_free_after));
            let vfree = if vb == va {
                vb
            } else {
                format!("{vb} -> {va}")
            };
            #[allow(clippy::cast_precision_loss)]
            let total = human(c.total as f64);
            let kind = if c.thin {
                format!("thin, ratio {}", trim(c.ratio))
            } else {
                "thick".to_owned()
            };
            let _ = writeln!(
                s,
                "  {:<width$}  {prov} of {total} ({kind}); virtual free {vfree}",
                c.backend
            );
            for line in &c.details {
                detail(&mut s, width, line);
            }
        }
        s.push('\n');
    }
    for n in &plan.notes {
        let _ = writeln!(s, "Note: {n}");
    }
    if !plan.notes.is_empty() {
        s.push('\n');
    }
    for w in &plan.waiting {
        let _ = writeln!(s, "Waiting: {}: {}", w.address, w.reason);
    }
    if !plan.waiting.is_empty() {
        s.push('\n');
    }
    for e in &plan.errors {
        let _ = writeln!(s, "Error: {e}");
    }
    if !plan.errors.is_empty() {
        s.push('\n');
    }
    s.push_str(extra);
    s.push_str(&summary(plan));
    s.push('\n');
    s
}

/// A labelled line under a back end's capacity line: `LABEL: NAME VALUE,
/// ... (NOTE)`, bytes as `before -> after` when they change, percentages
/// `unknown (pool inactive)` when not known.
#[allow(clippy::cast_precision_loss)] // byte counts shown to people, rounded to 2 digits
fn detail(s: &mut String, width: usize, line: &super::CapacityLine) {
    let pad = " ".repeat(width + 4);
    let figures: Vec<String> = line
        .figures
        .iter()
        .map(|f| {
            let value = match f.value {
                super::FigureValue::Bytes { before, after } if before == after => {
                    human(before as f64)
                }
                super::FigureValue::Bytes { before, after } => {
                    format!("{} -> {}", human(before as f64), human(after as f64))
                }
                super::FigureValue::Percent { centi } => {
                    centi.map_or_else(|| "unknown (pool inactive)".to_owned(), percent)
                }
            };
            format!("{} {value}", f.name)
        })
        .collect();
    let note = line
        .note
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "{pad}{} {}: {}{note}",
        line.kind,
        line.name,
        figures.join(", ")
    );
}

/// The summary line.
pub fn summary(plan: &Plan) -> String {
    summary_of(
        Tally::of(&plan.actions),
        plan.errors.len(),
        plan.waiting.len(),
    )
}

/// The summary line of `tally` with `errors` plan errors and `waiting`
/// objects left for later (one host's plan, or a fleet's added up).
pub fn summary_of(tally: Tally, errors: usize, waiting: usize) -> String {
    let Tally {
        add,
        change,
        destroy,
        forget,
        migrate,
    } = tally;
    let waiting = match waiting {
        0 => String::new(),
        1 => " 1 object waits (see above).".to_owned(),
        n => format!(" {n} objects wait (see above)."),
    };
    if add + change + destroy + forget + migrate == 0 {
        return if errors > 0 {
            format!("Plan failed: {errors} error(s); nothing can be applied.")
        } else if waiting.is_empty() {
            "No changes. Storage matches the manifests.".to_owned()
        } else {
            format!("No changes now.{waiting}")
        };
    }
    let mut line = format!("Plan: {add} to add, {change} to change, {destroy} to destroy");
    if forget > 0 {
        let _ = write!(line, ", {forget} to forget");
    }
    if migrate > 0 {
        let _ = write!(line, ", {migrate} to migrate");
    }
    line.push('.');
    if errors > 0 {
        let _ = write!(line, " Not applicable: {errors} error(s).");
    }
    line.push_str(&waiting);
    line
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One action's block of the text plan (header, reason, attributes,
/// impact), as `plan` prints it.
pub fn action_block(a: &Action) -> String {
    let mut s = String::new();
    action(&mut s, a);
    s
}

#[allow(clippy::too_many_lines)] // one arm per operation, each short
fn action(s: &mut String, a: &Action) {
    let (verb, word, name) = match &a.op {
        Op::GroupSnapshot { name, members, .. } => (
            if members.iter().any(|m| m.uuid.is_some()) {
                "will be created (resumed)"
            } else {
                "will be created"
            },
            "group_snapshot",
            name.clone(),
        ),
        Op::Create {
            kind, name, resume, ..
        } => (
            if resume.is_some() {
                "will be created (resumed)"
            } else {
                "will be created"
            },
            kind_word(*kind),
            name.clone(),
        ),
        Op::CreatePool {
            volume_group, pool, ..
        } => (
            "will be created",
            "thin_pool",
            format!("{volume_group}/{pool}"),
        ),
        Op::Adopt {
            kind,
            name,
            released,
            ..
        } => (
            if *released {
                "will be taken back (adopted again)"
            } else {
                "will be adopted"
            },
            kind_word(*kind),
            name.clone(),
        ),
        Op::Extend { name, .. } => ("will be updated in-place", "volume", name.clone()),
        Op::Rename { kind, name, .. } => ("will be renamed", kind_word(*kind), name.clone()),
        Op::Record { kind, name, .. } => {
            ("will be updated in-place", kind_word(*kind), name.clone())
        }
        Op::Delete { kind, name, .. } => ("will be destroyed", kind_word(*kind), name.clone()),
        Op::Forget { kind, name, .. } => ("will be forgotten", kind_word(*kind), name.clone()),
        Op::Export { name, changes, .. } => (
            if changes.is_empty() {
                "will be exported"
            } else {
                "will have its export updated"
            },
            "iscsi_export",
            name.clone(),
        ),
        Op::Unexport { name, .. } => ("will no longer be exported", "iscsi_export", name.clone()),
        Op::DiscoveryAuth { new, .. } => (
            if *new {
                "will be enforced"
            } else {
                "will be updated in-place"
            },
            "iscsi_discovery_auth",
            "host".to_owned(),
        ),
        Op::Migrate { name, resume, .. } => (
            if *resume {
                "will be migrated (resumed)"
            } else {
                "will be migrated"
            },
            "volume",
            name.clone(),
        ),
    };
    let _ = writeln!(s, "  # {} {verb}", a.address);
    let _ = writeln!(s, "  # (because {})", a.reason);
    let sym = a.symbol();
    let _ = writeln!(s, "  {sym} {word} {name:?} {{");
    let mut attrs: Attrs = Vec::new(); // (mark, key, value)
    match &a.op {
        Op::GroupSnapshot {
            group,
            backend,
            members,
            deletion_policy,
            freeze,
            ..
        } => {
            attrs.push(("+".into(), "consistency_group".into(), format!("{group:?}")));
            attrs.push(("+".into(), "backend".into(), format!("{backend:?}")));
            attrs.push(("+".into(), "freeze".into(), freeze.clone()));
            attrs.push((
                "+".into(),
                "deletion_policy".into(),
                format!("{deletion_policy:?}"),
            ));
            for m in members {
                attrs.push((
                    "+".into(),
                    "member".into(),
                    format!(
                        "snapshot.{} of volume.{} ({})",
                        m.snapshot,
                        m.volume,
                        format_bytes_exact(m.size)
                    ),
                ));
            }
        }
        Op::Adopt {
            backend,
            entry,
            uuid,
            size,
            deletion_policy,
            parent,
            ..
        } => {
            attrs.push(("+".into(), "adopt".into(), format!("{entry:?}")));
            attrs.push(("+".into(), "backend".into(), format!("{backend:?}")));
            attrs.push(("+".into(), "size".into(), format_bytes_exact(*size)));
            attrs.push(("+".into(), "id".into(), uuid.to_string()));
            if let Some(p) = parent {
                attrs.push(("+".into(), "volume".into(), p.to_string()));
            }
            attrs.push((
                "+".into(),
                "deletion_policy".into(),
                format!("{deletion_policy:?}"),
            ));
            attrs.push((" ".into(), "data".into(), "(kept as it is)".into()));
        }
        Op::CreatePool {
            backend,
            size,
            metadata_size,
            ..
        } => {
            attrs.push(("+".into(), "backend".into(), format!("{backend:?}")));
            attrs.push(("+".into(), "size".into(), format_bytes_exact(*size)));
            attrs.push((
                "+".into(),
                "metadata".into(),
                format!(
                    "{} (and a spare of the same size)",
                    format_bytes_exact(*metadata_size)
                ),
            ));
        }
        Op::Create {
            backend,
            size,
            source,
            resume,
            from_file,
            backup,
            ..
        } => {
            attrs.push(("+".into(), "backend".into(), format!("{backend:?}")));
            attrs.push(("+".into(), "size".into(), format_bytes_exact(*size)));
            if let Some(src) = source {
                attrs.push((
                    "+".into(),
                    "source".into(),
                    format!("{}.{}", kind_word(src.kind), src.name),
                ));
            }
            if let Some(f) = from_file {
                attrs.push((
                    "+".into(),
                    "content".into(),
                    format!("from {}", f.display()),
                ));
            }
            if let Some(b) = backup {
                attrs.push((
                    "+".into(),
                    "source".into(),
                    format!(
                        "backup {} of volume.{} ({})",
                        b.id,
                        b.volume,
                        b.started_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                ));
            }
            if let Some(u) = resume {
                attrs.push((" ".into(), "id".into(), u.to_string()));
            }
        }
        Op::Rename {
            name,
            from,
            uuid,
            backend,
            ..
        } => {
            attrs.push(("~".into(), "name".into(), format!("{from:?} -> {name:?}")));
            attrs.push((" ".into(), "backend".into(), format!("{backend:?}")));
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
            attrs.push((
                " ".into(),
                "data".into(),
                "(kept as it is, with its exports, backups and snapshots)".into(),
            ));
        }
        Op::Extend {
            uuid,
            backend,
            from,
            to,
            ..
        } => {
            attrs.push((
                "~".into(),
                "size".into(),
                format!(
                    "{} -> {}",
                    format_bytes_exact(*from),
                    format_bytes_exact(*to)
                ),
            ));
            attrs.push((" ".into(), "backend".into(), format!("{backend:?}")));
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
        }
        Op::Record {
            uuid,
            backend,
            previous,
            deletion_policy,
            moved_from,
            resized_from,
            regrouped,
            ..
        } => {
            match previous {
                Some(p) if p == deletion_policy => {}
                Some(p) => attrs.push((
                    "~".into(),
                    "deletionPolicy".into(),
                    format!("{p:?} -> {deletion_policy:?}"),
                )),
                None => attrs.push((
                    "~".into(),
                    "deletionPolicy".into(),
                    format!("(none) -> {deletion_policy:?}"),
                )),
            }
            if let Some(from) = moved_from {
                attrs.push((
                    "~".into(),
                    "backend".into(),
                    format!("{from:?} -> {backend:?}"),
                ));
            }
            if let (Some(from), Op::Record { size, .. }) = (resized_from, &a.op) {
                attrs.push((
                    "~".into(),
                    "size".into(),
                    format!(
                        "{} -> {}",
                        format_bytes_exact(*from),
                        format_bytes_exact(*size)
                    ),
                ));
            }
            if let Some(g) = regrouped {
                let shown = |g: &Option<String>| {
                    g.as_ref().map_or("(none)".to_owned(), |g| format!("{g:?}"))
                };
                attrs.push((
                    "~".into(),
                    "consistencyGroup".into(),
                    format!("{} -> {}", shown(&g.from), shown(&g.to)),
                ));
            }
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
        }
        Op::Delete {
            uuid,
            backend,
            size,
            ..
        } => {
            attrs.push(("-".into(), "backend".into(), format!("{backend:?}")));
            attrs.push(("-".into(), "size".into(), format_bytes_exact(*size)));
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
        }
        Op::Export {
            uuid,
            backend,
            iqn,
            initiators,
            portals,
            chap,
            mutual,
            changes,
            relogin,
            ..
        } => {
            let mark = if changes.is_empty() { "+" } else { " " };
            attrs.push((mark.into(), "backend".into(), format!("{backend:?}")));
            attrs.push((
                mark.into(),
                "target".into(),
                iqn.clone().unwrap_or_else(|| {
                    format!(
                        "{}volume-(known after apply)",
                        crate::iscsi::names::IQN_PREFIX
                    )
                }),
            ));
            for c in changes {
                attrs.push(("~".into(), "change".into(), c.clone()));
            }
            attrs.push((mark.into(), "initiators".into(), initiators.join(", ")));
            attrs.push((
                mark.into(),
                "portals".into(),
                if portals.is_empty() {
                    crate::iscsi::lio::DEFAULT_PORTAL.to_owned()
                } else {
                    portals.join(", ")
                },
            ));
            attrs.push((
                mark.into(),
                "chap".into(),
                match chap {
                    Some(r) => format!("required (secret from {})", secret_source(r)),
                    None => "none".into(),
                },
            ));
            if let Some(r) = mutual {
                attrs.push((
                    mark.into(),
                    "mutual_chap".into(),
                    format!("answered (secret from {})", secret_source(r)),
                ));
            }
            if !relogin.is_empty() {
                attrs.push((
                    "!".into(),
                    "relogin".into(),
                    format!(
                        "{} (logged in: keeps its session; the change applies at its next login)",
                        relogin.join(", ")
                    ),
                ));
            }
            if let Some(u) = uuid {
                attrs.push((" ".into(), "id".into(), u.to_string()));
            }
        }
        Op::Unexport { uuid, iqn, .. } => {
            attrs.push((
                "-".into(),
                "target".into(),
                iqn.clone().unwrap_or_else(|| "(backstore only)".into()),
            ));
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
        }
        Op::DiscoveryAuth {
            chap,
            mutual,
            changes,
            new,
        } => {
            let mark = if *new { "+" } else { " " };
            for c in changes {
                attrs.push(("~".into(), "change".into(), c.clone()));
            }
            attrs.push((
                mark.into(),
                "chap".into(),
                format!("required (secret from {})", secret_source(chap)),
            ));
            attrs.push((
                mark.into(),
                "mutual_chap".into(),
                match mutual {
                    Some(r) => format!("answered (secret from {})", secret_source(r)),
                    None => "none".into(),
                },
            ));
        }
        Op::Forget {
            uuid,
            backend,
            gone,
            ..
        } => {
            attrs.push((" ".into(), "backend".into(), format!("{backend:?}")));
            attrs.push((" ".into(), "id".into(), uuid.to_string()));
            if *gone {
                attrs.push((" ".into(), "data".into(), "(already gone)".into()));
            } else {
                attrs.push((" ".into(), "data".into(), "(kept)".into()));
            }
        }
        Op::Migrate {
            uuid,
            from,
            to,
            size,
            target_size,
            read,
            target_free,
            bandwidth,
            carry,
            within,
            snapshots,
            across,
            ..
        } => migrate_attrs(
            &mut attrs,
            *uuid,
            (from, to, across.as_ref()),
            (*size, *target_size),
            (*read, *carry, within.as_deref()),
            *target_free,
            *bandwidth,
            snapshots,
        ),
    }
    let width = attrs.iter().map(|(_, k, _)| k.len()).max().unwrap_or(0);
    for (mark, key, value) in attrs {
        let _ = writeln!(s, "      {mark} {key:<width$} = {value}");
    }
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    impact: {}", a.impact.as_str());
}

type Attrs = Vec<(String, String, String)>;

// Byte counts shown to people, rounded; one argument per field of the op.
#[allow(
    clippy::cast_precision_loss,
    clippy::too_many_arguments,
    clippy::too_many_lines
)]
fn migrate_attrs(
    attrs: &mut Attrs,
    uuid: uuid::Uuid,
    (from, to, across): (&str, &str, Option<&super::Across>),
    (size, target_size): (u64, u64),
    (read, carry, within): (u64, Carry, Option<&str>),
    (free_before, free_after): (u64, u64),
    bandwidth: Option<u64>,
    snapshots: &[super::ChainSnapshot],
) {
    if let Some(x) = across {
        attrs.push((
            ">".into(),
            "backend".into(),
            format!(
                "{:?} -> {:?}",
                format!("{}/{from}", x.from_host),
                format!("{}/{to}", x.to_host)
            ),
        ));
        let doing = if x.source_gone {
            format!(
                "{} removed the source after {} verified its copy; {} promotes its target",
                x.from_host, x.to_host, x.to_host
            )
        } else {
            x.duties()
        };
        attrs.push((" ".into(), "hosts".into(), doing));
        attrs.push((
            " ".into(),
            "over".into(),
            format!(
                "iSCSI: a LIO export of the volume{} with an ACL for {}'s initiator and a one-time CHAP secret, removed with the source",
                if snapshots.is_empty() {
                    ""
                } else {
                    " and one of each snapshot"
                },
                x.to_host
            ),
        ));
        if let Some(p) = &x.phase {
            attrs.push((
                " ".into(),
                "job".into(),
                format!("{p} in etcd, {} copied", human(x.copied as f64)),
            ));
        }
    } else {
        attrs.push((">".into(), "backend".into(), format!("{from:?} -> {to:?}")));
    }
    attrs.push((" ".into(), "id".into(), uuid.to_string()));
    if target_size == size {
        attrs.push((" ".into(), "size".into(), format_bytes_exact(size)));
    } else {
        attrs.push((
            "~".into(),
            "size".into(),
            format!(
                "{} -> {}",
                format_bytes_exact(size),
                format_bytes_exact(target_size)
            ),
        ));
    }
    if carry == Carry::HandOver {
        let within = within.unwrap_or("one space");
        attrs.push((
            " ".into(),
            "read".into(),
            format!(
                "0 B (handed over inside {within}: only its owner mark changes, nothing is copied)"
            ),
        ));
        attrs.push((
            " ".into(),
            "disruption".into(),
            "none: name, id and data stay where they are; the volume must be unused for the one metadata update".into(),
        ));
        return;
    }
    if let Some(w) = within {
        attrs.push((
            " ".into(),
            "within".into(),
            format!("{w} (the copy stays inside it)"),
        ));
    }
    attrs.push((
        " ".into(),
        "read".into(),
        if read < size {
            format!(
                "{} (the allocated data; holes are not read)",
                human(read as f64)
            )
        } else {
            format!(
                "{} (the whole volume; zero blocks are detected and not written)",
                human(read as f64)
            )
        },
    ));
    chain_attrs(attrs, snapshots);
    match across {
        Some(x) if x.role == super::Role::Export => attrs.push((
            " ".into(),
            "target".into(),
            format!("{to} on host {}: its plan admits it", x.to_host),
        )),
        _ => attrs.push((
            " ".into(),
            "target".into(),
            format!(
                "{to}: virtual free {} -> {}",
                human(free_before as f64),
                human(free_after as f64)
            ),
        )),
    }
    attrs.push((
        " ".into(),
        "bandwidth".into(),
        bandwidth.map_or_else(
            || "unlimited".to_owned(),
            |b| format!("{}/s", human(b as f64)),
        ),
    ));
    attrs.push((
        " ".into(),
        "disruption".into(),
        "none: name and id are kept; the volume must stay unused until the step ends (a write during the copy fails the verification and keeps the source)".into(),
    ));
}

/// The snapshots that move with a volume (`migrateSnapshots`), one line each.
#[allow(clippy::cast_precision_loss)] // byte counts shown to people, rounded
fn chain_attrs(attrs: &mut Attrs, snapshots: &[super::ChainSnapshot]) {
    if snapshots.is_empty() {
        return;
    }
    attrs.push((
        " ".into(),
        "chain".into(),
        format!(
            "with its {} snapshot(s), oldest first: the oldest copied, then each newer one and the volume as the blocks that differ; each snapshot keeps its name and id",
            snapshots.len()
        ),
    ));
    for c in snapshots {
        let size = if c.target_size == c.size {
            format_bytes_exact(c.size)
        } else {
            format!(
                "{} -> {}",
                format_bytes_exact(c.size),
                format_bytes_exact(c.target_size)
            )
        };
        attrs.push((
            ">".into(),
            "snapshot".into(),
            format!("{:?}: {size}, {} of data", c.name, human(c.read as f64)),
        ));
    }
}

/// The machine-readable plan document (`plan --json`).
#[derive(Serialize)]
pub struct JsonPlan<'a> {
    format_version: &'static str,
    fingerprint: &'a str,
    drift: &'a [super::Drift],
    resource_changes: Vec<JsonChange<'a>>,
    capacity: &'a [super::CapacityChange],
    notes: &'a [String],
    #[serde(skip_serializing_if = "<[super::Waiting]>::is_empty")]
    waiting: &'a [super::Waiting],
    errors: Vec<String>,
    summary: JsonSummary,
}

#[derive(Serialize)]
struct JsonChange<'a> {
    address: &'a str,
    action: &'static str,
    impact: &'static str,
    reason: &'a str,
    change: &'a Op,
}

#[derive(Serialize)]
struct JsonSummary {
    add: usize,
    change: usize,
    destroy: usize,
    forget: usize,
    migrate: usize,
    destroys_data: bool,
    applicable: bool,
    #[serde(skip_serializing_if = "is_zero")]
    waiting: usize,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The plan as a JSON document.
pub fn json(plan: &Plan) -> JsonPlan<'_> {
    let (add, change, destroy, forget) = plan.counts();
    let change = change - plan.migrations();
    JsonPlan {
        format_version: "1.0",
        fingerprint: &plan.fingerprint,
        drift: &plan.drift,
        resource_changes: plan
            .actions
            .iter()
            .map(|a| JsonChange {
                address: &a.address,
                action: match a.op {
                    Op::Create { .. }
                    | Op::GroupSnapshot { .. }
                    | Op::CreatePool { .. }
                    | Op::DiscoveryAuth { new: true, .. } => "create",
                    Op::Adopt { .. } => "adopt",
                    Op::Export { ref changes, .. } if changes.is_empty() => "create",
                    Op::Extend { .. }
                    | Op::Record { .. }
                    | Op::Export { .. }
                    | Op::DiscoveryAuth { .. } => "update",
                    Op::Rename { .. } => "rename",
                    Op::Migrate { .. } => "migrate",
                    Op::Delete { .. } | Op::Unexport { .. } => "delete",
                    Op::Forget { .. } => "forget",
                },
                impact: a.impact.as_str(),
                reason: &a.reason,
                change: &a.op,
            })
            .collect(),
        capacity: &plan.capacity,
        notes: &plan.notes,
        waiting: &plan.waiting,
        errors: plan.errors.iter().map(ToString::to_string).collect(),
        summary: JsonSummary {
            add,
            change,
            destroy,
            forget,
            migrate: plan.migrations(),
            destroys_data: plan.destroys_data(),
            applicable: plan.errors.is_empty(),
            waiting: plan.waiting.len(),
        },
    }
}
