//! Plans as Markdown for pull-request and merge-request comments
//! (`plan --format markdown`), read on GitHub and GitLab.
//!
//! Layout: a title, the summary line in bold, a "Destroys data" call-out
//! listing every destructive action of every host, then one collapsible
//! `<details>` section per host and back end (sections with a destructive
//! action first and open, the rest closed; inside a section destructive
//! actions first, each marked ⛔), each with a table of its actions (step
//! number in apply order, symbol, address, what happens, impact) and the
//! text plan's blocks in a `diff` fence; then capacity before → after as a
//! table, drift, notes, errors and what the caller adds (backup schedules).
//!
//! Takes several hosts' plans so a fleet's plans render as one comment; one
//! host is the case of a list of one.
//!
//! Invariants: pure and deterministic (the same plans give the same bytes);
//! every piece of text that did not come from us (host names, reasons,
//! messages, paths) is escaped, so nothing a manifest or a host says can
//! break the table, close a fence or inject HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::capacity::{human, percent};
use super::render::{action_block, summary_of};
use super::{Action, CapacityChange, Impact, Op, Plan, Tally};
use crate::manifest::values::format_bytes_exact;

/// One host's plan, as rendered.
#[derive(Debug, Clone, Copy)]
pub struct HostPlan<'a> {
    /// The host's name.
    pub host: &'a str,
    /// Its plan.
    pub plan: &'a Plan,
}

/// The whole comment: `hosts` (sorted by name here), then `extra` (Markdown
/// the caller built, such as backup schedules) before the footer.
pub fn markdown(hosts: &[HostPlan<'_>], extra: &str) -> String {
    let mut hosts: Vec<HostPlan<'_>> = hosts.to_vec();
    hosts.sort_by(|a, b| a.host.cmp(b.host));
    let mut s = String::new();
    let title = match hosts.as_slice() {
        [one] => format!("cinderblock plan for <code>{}</code>", text(one.host)),
        many => format!("cinderblock plan for {} hosts", many.len()),
    };
    let _ = writeln!(s, "### {title}\n");

    let tally = hosts
        .iter()
        .fold(Tally::default(), |t, h| t.plus(Tally::of(&h.plan.actions)));
    let errors: usize = hosts.iter().map(|h| h.plan.errors.len()).sum();
    let waiting: usize = hosts.iter().map(|h| h.plan.waiting.len()).sum();
    let _ = writeln!(s, "**{}**\n", text(&summary_of(tally, errors, waiting)));
    if hosts.len() > 1 {
        for h in &hosts {
            let t = Tally::of(&h.plan.actions);
            let _ = writeln!(
                s,
                "- <code>{}</code>: {}",
                text(h.host),
                text(&summary_of(t, h.plan.errors.len(), h.plan.waiting.len()))
            );
        }
        s.push('\n');
    }

    destroys(&mut s, &hosts);
    for h in &hosts {
        for sec in sections(h.plan) {
            section(&mut s, h.host, &sec);
        }
    }
    capacity(&mut s, &hosts);
    listed(&mut s, &hosts, "Changed outside cinderblock", |p| {
        p.drift
            .iter()
            .map(|d| format!("<code>{}</code> {}", text(&d.address), text(&d.message)))
            .collect()
    });
    listed(&mut s, &hosts, "Notes", |p| {
        p.notes.iter().map(|n| text(n)).collect()
    });
    listed(&mut s, &hosts, "Waiting", |p| {
        p.waiting
            .iter()
            .map(|w| format!("<code>{}</code> {}", text(&w.address), text(&w.reason)))
            .collect()
    });
    listed(&mut s, &hosts, "⛔ Errors (nothing can be applied)", |p| {
        p.errors.iter().map(|e| text(&e.to_string())).collect()
    });
    s.push_str(extra);
    if tally.add + tally.change + tally.destroy + tally.forget + tally.migrate > 0 {
        s.push_str(
            "<sub>Steps are numbered in the order <code>apply</code> runs them; \
             actions that destroy data are listed first and marked ⛔.</sub>\n",
        );
    }
    s
}

/// The "Destroys data" call-out: every destructive action, every host.
fn destroys(s: &mut String, hosts: &[HostPlan<'_>]) {
    let mut lines = Vec::new();
    for h in hosts {
        for a in h.plan.actions.iter().filter(|a| destructive(a)) {
            let (backend, size) = match &a.op {
                Op::Delete { backend, size, .. } => {
                    (Some(backend.as_str()), Some(format_bytes_exact(*size)))
                }
                _ => (None, None),
            };
            let mut line = format!("> - ⛔ <code>{}</code>", text(&a.address));
            let mut said = Vec::new();
            if hosts.len() > 1 {
                said.push(format!("host <code>{}</code>", text(h.host)));
            }
            if let Some(b) = backend {
                said.push(format!("back end <code>{}</code>", text(b)));
            }
            if let Some(z) = size {
                said.push(z);
            }
            if !said.is_empty() {
                let _ = write!(line, " ({})", said.join(", "));
            }
            let _ = write!(line, ": {}", text(&a.reason));
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "> **⛔ Destroys data: {} action{}**",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    s.push_str(">\n");
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    s.push('\n');
}

fn destructive(a: &Action) -> bool {
    a.impact == Impact::DestroysData
}

/// The actions of one back end (or of none: an unexport whose volume is not
/// otherwise in the plan), with their step numbers.
struct Section<'a> {
    backend: Option<&'a str>,
    actions: Vec<(usize, &'a Action)>,
}

impl Section<'_> {
    fn destroys(&self) -> bool {
        self.actions.iter().any(|(_, a)| destructive(a))
    }
}

/// The back end an action belongs to: where it creates, changes or removes
/// something; a migration belongs to its target.
fn backend_of<'a>(a: &'a Action, plan: &'a Plan) -> Option<&'a str> {
    match &a.op {
        Op::Create { backend, .. }
        | Op::GroupSnapshot { backend, .. }
        | Op::Adopt { backend, .. }
        | Op::CreatePool { backend, .. }
        | Op::Extend { backend, .. }
        | Op::Rename { backend, .. }
        | Op::Record { backend, .. }
        | Op::Delete { backend, .. }
        | Op::Forget { backend, .. }
        | Op::Export { backend, .. } => Some(backend),
        Op::Migrate { to, .. } => Some(to),
        Op::Unexport { uuid, .. } => plan.actions.iter().find_map(|o| match &o.op {
            Op::Delete {
                uuid: u, backend, ..
            }
            | Op::Forget {
                uuid: u, backend, ..
            } if u == uuid => Some(backend.as_str()),
            Op::Migrate { uuid: u, from, .. } if u == uuid => Some(from.as_str()),
            _ => None,
        }),
        // Host-wide: no back end's.
        Op::DiscoveryAuth { .. } => None,
    }
}

/// Sections of one plan: those with a destructive action first, then by
/// back end name; inside, destructive actions first, then in apply order.
fn sections(plan: &Plan) -> Vec<Section<'_>> {
    let mut by: BTreeMap<Option<&str>, Vec<(usize, &Action)>> = BTreeMap::new();
    for (i, a) in plan.actions.iter().enumerate() {
        by.entry(backend_of(a, plan)).or_default().push((i + 1, a));
    }
    let mut out: Vec<Section<'_>> = by
        .into_iter()
        .map(|(backend, mut actions)| {
            actions.sort_by_key(|(n, a)| (!destructive(a), *n));
            Section { backend, actions }
        })
        .collect();
    out.sort_by_key(|s| !s.destroys()); // stable: name order otherwise
    out
}

fn section(s: &mut String, host: &str, sec: &Section<'_>) {
    let tally = Tally::of(sec.actions.iter().map(|(_, a)| *a));
    let mut counts = Vec::new();
    for (n, word) in [
        (tally.add, "to add"),
        (tally.change, "to change"),
        (tally.migrate, "to migrate"),
        (tally.forget, "to forget"),
        (tally.destroy, "to destroy"),
    ] {
        if n > 0 {
            counts.push(format!("{n} {word}"));
        }
    }
    let place = match sec.backend {
        Some(b) => format!("back end <code>{}</code>", text(b)),
        None => "iSCSI exports".to_owned(),
    };
    let (open, mark) = if sec.destroys() {
        (" open", "⛔ ")
    } else {
        ("", "")
    };
    let _ = writeln!(
        s,
        "<details{open}>\n<summary>{mark}<code>{}</code> · {place}: {}</summary>\n",
        text(host),
        counts.join(", ")
    );
    s.push_str("| step | | address | change | impact |\n| --: | :-: | --- | --- | --- |\n");
    for (n, a) in &sec.actions {
        let mark = if destructive(a) { "⛔ " } else { "" };
        let impact = if destructive(a) {
            format!("**{}**", text(a.impact.as_str()))
        } else {
            text(a.impact.as_str())
        };
        let _ = writeln!(
            s,
            "| {n} | {mark}<code>{}</code> | <code>{}</code> | {} | {impact} |",
            text(a.symbol()),
            text(&a.address),
            text(&headline(a)),
        );
    }
    s.push('\n');
    let mut body = String::new();
    for (_, a) in &sec.actions {
        body.push_str(&diff_lines(&action_block(a)));
        body.push('\n');
    }
    fenced(s, "diff", body.trim_end_matches('\n'));
    s.push_str("\n</details>\n\n");
}

/// "will be created", "will be migrated (from a to b)": the header's verb.
fn headline(a: &Action) -> String {
    let block = action_block(a);
    let first = block.lines().next().unwrap_or_default();
    let verb = first
        .trim_start()
        .trim_start_matches('#')
        .trim_start()
        .strip_prefix(a.address.as_str())
        .unwrap_or(first)
        .trim();
    match &a.op {
        Op::Migrate {
            from,
            to,
            across: Some(x),
            ..
        } => format!("{verb} ({}/{from} → {}/{to})", x.from_host, x.to_host),
        Op::Migrate { from, to, .. } => format!("{verb} ({from} → {to})"),
        _ => verb.to_owned(),
    }
}

/// The text plan's block with each line's change mark moved to the first
/// column, where a `diff` fence colours it: `+` green, `-` red, `~` shown
/// as `!` (changed). Every line gains that one column and a mark's old place
/// becomes a space, so the block keeps the text plan's alignment.
fn diff_lines(block: &str) -> String {
    let mut out = String::new();
    for line in block.lines() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let mark = match body.as_bytes() {
            [b'+', b' ', ..] => Some('+'),
            [b'-', b' ', ..] => Some('-'),
            [b'~', b' ', ..] => Some('!'),
            _ => None,
        };
        match mark {
            Some(m) => {
                let _ = writeln!(out, "{m}{} {}", " ".repeat(indent), &body[1..]);
            }
            None => {
                let _ = writeln!(out, " {line}");
            }
        }
    }
    out
}

/// A fenced code block whose fence is longer than any backtick run in
/// `body`, so no content can close it.
fn fenced(s: &mut String, lang: &str, body: &str) {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(s, "{fence}{lang}\n{body}\n{fence}");
}

#[allow(clippy::cast_precision_loss)] // byte counts shown to people, rounded
fn capacity(s: &mut String, hosts: &[HostPlan<'_>]) {
    let rows: Vec<(&str, &CapacityChange)> = hosts
        .iter()
        .filter(|h| !h.plan.actions.is_empty() || !h.plan.errors.is_empty())
        .flat_map(|h| h.plan.capacity.iter().map(move |c| (h.host, c)))
        .collect();
    if rows.is_empty() {
        return;
    }
    s.push_str("#### Capacity before → after\n\n");
    let many = hosts.len() > 1;
    let any_details = rows.iter().any(|(_, c)| !c.details.is_empty());
    if many {
        s.push_str("| host ");
    }
    s.push_str("| back end | type | provisioned | total | virtual free |");
    s.push_str(if any_details { " details |\n" } else { "\n" });
    if many {
        s.push_str("| --- ");
    }
    s.push_str("| --- | --- | --: | --: | --: |");
    s.push_str(if any_details { " --- |\n" } else { "\n" });
    for (host, c) in rows {
        if many {
            let _ = write!(s, "| <code>{}</code> ", text(host));
        }
        let kind = if c.thin {
            format!("thin, ratio {}", trim(c.ratio))
        } else {
            "thick".to_owned()
        };
        let details: Vec<String> = c.details.iter().map(detail).collect();
        let _ = write!(
            s,
            "| <code>{}</code> | {kind} | {} | {} | {} |",
            text(&c.backend),
            arrow(
                human(c.provisioned_before as f64),
                &human(c.provisioned_after as f64)
            ),
            human(c.total as f64),
            arrow(human(c.virtual_free_before), &human(c.virtual_free_after)),
        );
        if any_details {
            let _ = write!(s, " {} |", details.join("; "));
        }
        s.push('\n');
    }
    s.push('\n');
}

/// One labelled line of a back end's capacity details: `volume group
/// <code>vg0</code>: free 10 GiB → **8 GiB**`.
#[allow(clippy::cast_precision_loss)] // byte counts shown to people, rounded
fn detail(line: &super::CapacityLine) -> String {
    let figures: Vec<String> = line
        .figures
        .iter()
        .map(|f| {
            let value = match f.value {
                super::FigureValue::Bytes { before, after } => {
                    arrow(human(before as f64), &human(after as f64))
                }
                super::FigureValue::Percent { centi } => {
                    centi.map_or_else(|| "unknown (pool inactive)".to_owned(), percent)
                }
            };
            format!("{} {value}", text(&f.name))
        })
        .collect();
    format!(
        "{} <code>{}</code>: {}{}",
        text(&line.kind),
        text(&line.name),
        figures.join(", "),
        line.note
            .as_ref()
            .map(|n| format!(" ({})", text(n)))
            .unwrap_or_default()
    )
}

fn arrow(before: String, after: &str) -> String {
    if before == after {
        before
    } else {
        format!("{before} → **{after}**")
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A heading and a bullet list of what `pick` finds in each host's plan
/// (nothing when every list is empty).
fn listed(
    s: &mut String,
    hosts: &[HostPlan<'_>],
    heading: &str,
    pick: impl Fn(&Plan) -> Vec<String>,
) {
    let mut items = Vec::new();
    for h in hosts {
        for item in pick(h.plan) {
            if hosts.len() > 1 {
                items.push(format!("<code>{}</code>: {item}", text(h.host)));
            } else {
                items.push(item);
            }
        }
    }
    if items.is_empty() {
        return;
    }
    let _ = writeln!(s, "#### {heading}\n");
    for i in items {
        // A multi-line message stays in its bullet.
        let _ = writeln!(s, "- {}", i.replace('\n', "<br>"));
    }
    s.push('\n');
}

/// Text that is not ours, made inert in Markdown and HTML: the characters
/// that start markup become numeric character references, which GitHub and
/// GitLab show as the characters themselves.
pub fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' | '<' | '>' | '"' | '\'' | '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '~' | '#'
            | '!' | '$' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\n' => out.push('\n'),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::kinds::DeletionPolicy;
    use crate::plan::{CapacityLine, Drift, Figure, FigureValue, ObjKind};
    use uuid::Uuid;

    const GIB: u64 = 1 << 30;

    fn act(address: &str, op: Op, reason: &str, impact: Impact) -> Action {
        Action {
            address: address.into(),
            op,
            reason: reason.into(),
            impact,
        }
    }

    /// Host `stor-a`: a thin LVM back end and a file back end; a create, an
    /// extend, an unexport before a delete, a migration, a forget.
    #[allow(clippy::too_many_lines, clippy::cast_precision_loss)] // one literal plan
    fn plan_a() -> Plan {
        let old = Uuid::from_u128(7);
        Plan {
            fingerprint: "f".into(),
            drift: vec![Drift {
                address: "volume.logs".into(),
                message: "was resized outside cinderblock: 1Gi -> 2Gi".into(),
            }],
            actions: vec![
                act(
                    "volume.db",
                    Op::Create {
                        kind: ObjKind::Volume,
                        name: "db".into(),
                        backend: "thin".into(),
                        size: 10 * GIB,
                        source: None,
                        resume: None,
                        backup: None,
                        deletion_policy: DeletionPolicy::Retain,
                        from_file: None,
                        placement: None,
                        consistency_group: None,
                    },
                    "it is declared and does not exist; placed by the scheduler",
                    Impact::Grows,
                ),
                act(
                    "volume.web",
                    Op::Extend {
                        name: "web".into(),
                        uuid: Uuid::from_u128(1),
                        backend: "thin".into(),
                        from: GIB,
                        to: 2 * GIB,
                    },
                    "spec.size grew",
                    Impact::Grows,
                ),
                act(
                    "iscsi_export.old",
                    Op::Unexport {
                        name: "old".into(),
                        uuid: old,
                        iqn: Some("iqn.2025-01.dev.cinderblock:volume-old".into()),
                    },
                    "the volume is no longer declared",
                    Impact::MetadataOnly,
                ),
                act(
                    "volume.old",
                    Op::Delete {
                        kind: ObjKind::Volume,
                        name: "old".into(),
                        uuid: old,
                        backend: "files".into(),
                        size: 4 * GIB,
                    },
                    "it is no longer declared and its deletionPolicy is Delete",
                    Impact::DestroysData,
                ),
                act(
                    "volume.archive",
                    Op::Migrate {
                        name: "archive".into(),
                        uuid: Uuid::from_u128(3),
                        from: "thin".into(),
                        to: "files".into(),
                        size: 2 * GIB,
                        target_size: 2 * GIB,
                        read: GIB / 2,
                        target_free: (100 * GIB, 98 * GIB),
                        bandwidth: Some(100 << 20),
                        resume: false,
                        deletion_policy: DeletionPolicy::Retain,
                        carry: crate::plan::Carry::Copy,
                        within: None,
                        snapshots: vec![],
                        across: None,
                    },
                    "spec.backend changed: thin -> files",
                    Impact::Moves,
                ),
                act(
                    "volume.kept",
                    Op::Forget {
                        kind: ObjKind::Volume,
                        name: "kept".into(),
                        uuid: Uuid::from_u128(4),
                        backend: "files".into(),
                        gone: false,
                    },
                    "it is no longer declared and its deletionPolicy is Retain",
                    Impact::MetadataOnly,
                ),
            ],
            errors: vec![],
            notes: vec!["deletes of snapshot.x are held: back end <b> failed | twice".into()],
            waiting: vec![],
            capacity: vec![
                CapacityChange {
                    backend: "files".into(),
                    thin: false,
                    total: 100 * GIB,
                    provisioned_before: 8 * GIB,
                    provisioned_after: 6 * GIB,
                    virtual_free_before: (92 * GIB) as f64,
                    virtual_free_after: (94 * GIB) as f64,
                    ratio: 1.0,
                    details: vec![],
                },
                CapacityChange {
                    backend: "thin".into(),
                    thin: true,
                    total: 50 * GIB,
                    provisioned_before: 20 * GIB,
                    provisioned_after: 29 * GIB,
                    virtual_free_before: (80 * GIB) as f64,
                    virtual_free_after: (71 * GIB) as f64,
                    ratio: 2.0,
                    details: vec![
                        CapacityLine {
                            kind: "volume group".into(),
                            name: "vg0".into(),
                            figures: vec![Figure {
                                name: "free".into(),
                                value: FigureValue::Bytes {
                                    before: 10 * GIB,
                                    after: 10 * GIB,
                                },
                            }],
                            note: None,
                        },
                        CapacityLine {
                            kind: "thin pool".into(),
                            name: "vg0/pool".into(),
                            figures: vec![
                                Figure {
                                    name: "data".into(),
                                    value: FigureValue::Percent { centi: Some(4_250) },
                                },
                                Figure {
                                    name: "metadata".into(),
                                    value: FigureValue::Percent { centi: Some(310) },
                                },
                            ],
                            note: Some("high-water mark 80%".into()),
                        },
                    ],
                },
            ],
            unrecorded: vec![],
        }
    }

    /// Host `stor-b`: nothing to do but an error.
    fn plan_b() -> Plan {
        Plan {
            fingerprint: "g".into(),
            drift: vec![],
            actions: vec![],
            errors: vec![crate::plan::PlanError::new(
                "volume.big",
                crate::plan::PlanErrorKind::NoRoom,
                "no back end can take it (1Ti):\n      - b1: CapacityFilter: needs 1Ti".into(),
            )],
            notes: vec![],
            waiting: vec![],
            capacity: vec![],
            unrecorded: vec![],
        }
    }

    #[test]
    fn one_host_plan_as_markdown() {
        let p = plan_a();
        let md = markdown(
            &[HostPlan {
                host: "stor-a",
                plan: &p,
            }],
            "",
        );
        insta::assert_snapshot!(md);
    }

    #[test]
    fn a_fleet_plan_as_markdown_sorts_hosts_and_names_them() {
        let (a, b) = (plan_a(), plan_b());
        let md = markdown(
            &[
                HostPlan {
                    host: "stor-b",
                    plan: &b,
                },
                HostPlan {
                    host: "stor-a",
                    plan: &a,
                },
            ],
            "",
        );
        insta::assert_snapshot!(md);
        // The same plans in any order give the same bytes.
        let again = markdown(
            &[
                HostPlan {
                    host: "stor-a",
                    plan: &a,
                },
                HostPlan {
                    host: "stor-b",
                    plan: &b,
                },
            ],
            "",
        );
        assert_eq!(md, again);
    }

    #[test]
    fn destroys_come_first_in_the_call_out_the_sections_and_the_tables() {
        let p = plan_a();
        let md = markdown(
            &[HostPlan {
                host: "h",
                plan: &p,
            }],
            "",
        );
        let callout = md.find("⛔ Destroys data: 1 action").unwrap();
        let files = md
            .find("<summary>⛔ <code>h</code> · back end <code>files</code>")
            .unwrap();
        let thin = md
            .find("<code>h</code> · back end <code>thin</code>")
            .unwrap();
        assert!(callout < files && files < thin, "{md}");
        // In the files section the delete (step 4) is listed before the
        // unexport (step 3) and the migration (step 5).
        let section = &md[files..thin];
        let row = |step: &str| section.find(&format!("| {step} |")).unwrap();
        assert!(row("4") < row("3") && row("3") < row("5"), "{section}");
        assert!(section.contains("| 4 | ⛔ <code>-</code> | <code>volume.old</code> | will be destroyed | **destroys data** |"), "{section}");
    }

    #[test]
    fn an_empty_plan_says_no_changes_and_nothing_else() {
        let p = Plan {
            fingerprint: "f".into(),
            drift: vec![],
            actions: vec![],
            errors: vec![],
            notes: vec![],
            waiting: vec![],
            capacity: vec![],
            unrecorded: vec![],
        };
        assert_eq!(
            markdown(
                &[HostPlan {
                    host: "h",
                    plan: &p
                }],
                ""
            ),
            "### cinderblock plan for <code>h</code>\n\n**No changes. Storage matches the manifests.**\n\n"
        );
    }

    #[test]
    fn untrusted_text_cannot_open_markup() {
        assert_eq!(
            text("a|b <script> `x` *y* [z](u) ~~s~~"),
            "a&#124;b &#60;script&#62; &#96;x&#96; &#42;y&#42; &#91;z&#93;(u) &#126;&#126;s&#126;&#126;"
        );
        assert_eq!(text("db-1.volume"), "db-1.volume");
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_inside() {
        let mut s = String::new();
        fenced(&mut s, "diff", "a ```` b");
        assert!(s.starts_with("`````diff\n"), "{s}");
        assert!(s.ends_with("\n`````\n"), "{s}");
    }

    #[test]
    fn change_marks_move_to_the_first_column() {
        let block = "  # volume.a will be created\n  + volume \"a\" {\n      + size = 1Gi\n      ~ x = 1 -> 2\n    }\n";
        assert_eq!(
            diff_lines(block),
            "   # volume.a will be created\n+    volume \"a\" {\n+        size = 1Gi\n!        x = 1 -> 2\n     }\n"
        );
    }
}
