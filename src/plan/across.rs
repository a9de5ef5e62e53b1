//! Moves between hosts: the same `> migrate` step planned on both hosts,
//! each with its half ([`Across`], [`Role`]; executed by
//! [`crate::xhost`]).
//!
//! The source host plans it when a volume of its own is wanted on a back
//! end of another host (`spec.backend`), or when a job it started is in
//! flight (its volume `deleting` after the destination verified). The
//! destination host plans it when a volume pinned to one of its back ends
//! lives on another host (as that host published it), or when it holds
//! the `migrating` target of a job; once the job is gone and the source is
//! on no host, only the target's promotion is left (`source_gone`).
//!
//! Needs the fleet (`--etcd`: the job and the destination's initiator name
//! live there); without it the source's plan says so, and the destination
//! never creates a volume another host holds. A volume's snapshots move
//! with it as a chain (`migrateSnapshots: true`), listed on both hosts'
//! plans (the destination reads them from the source host's published
//! view); without the flag the move is refused on both, naming them.
//! Refused too: a move of a consistency group member, of a volume exported
//! or in use.
//!
//! Pure, like the rest of the planner: it reads `World::remote` and
//! `World::fleet`, never etcd.

use super::{
    Across, Action, Carry, ChainSnapshot, Doc, Fleet, Found, Health, Impact, Name, Observed, Op,
    PlanErrorKind, Planner, Role, addr, format_bytes_exact, round_up,
};
use crate::manifest::kinds::VolumeSpec;
use crate::model::ObjKind;
use crate::observe::BackendView;

impl<'a> Planner<'a> {
    /// The host a back end of the manifests runs on (`spec.host`).
    fn host_of(&self, backend: &str) -> Option<String> {
        let n: Name = backend.parse().ok()?;
        self.set.backends.get(&n).and_then(|b| b.spec.host.clone())
    }

    /// `migrationBandwidth` of back end `backend`, in bytes per second.
    fn bandwidth_of(&self, backend: &str) -> Option<u64> {
        let n: Name = backend.parse().ok()?;
        self.set
            .backends
            .get(&n)
            .and_then(|b| b.spec.migration_bandwidth)
            .map(crate::manifest::values::Quantity::bytes)
    }

    /// The source's half: volume `name` (`obj` on `backend`) is wanted on
    /// `to`, a back end of host `to_host`. Always deals with it (an action
    /// or an error).
    #[allow(clippy::too_many_lines)] // the refusals, then the step
    pub(super) fn send_across(
        &mut self,
        name: &Name,
        doc: &'a Doc<VolumeSpec>,
        (backend, obj): (&'a BackendView, &'a Observed),
        (to, to_host): (&Name, &str),
        why: &str,
    ) {
        let a = addr(ObjKind::Volume, name.as_str());
        let cur = &backend.name;
        match &self.world.fleet {
            Fleet::Off => {
                self.error(&a, PlanErrorKind::Refused, format!(
                    "{why}, but {to} is a back end of host {to_host}: a move between hosts runs through the fleet (the job, and {to_host}'s iSCSI initiator name, live in etcd); run the agents, and plan/apply, with --etcd; until then set spec.backend back to {cur}"
                ));
                return;
            }
            Fleet::Unavailable(w) => {
                self.error(&a, PlanErrorKind::Refused, format!(
                    "{why}, but {to} is a back end of host {to_host}, and the fleet is unavailable ({w}): the move waits for etcd"
                ));
                return;
            }
            Fleet::On(_) => {}
        }
        let Some(from_host) = self.host_of(cur.as_str()) else {
            self.error(&a, PlanErrorKind::Refused, format!(
                "{why}, but its back end {cur} names no spec.host, so no host can export it to {to_host}; set spec.host on Backend/{cur}"
            ));
            return;
        };
        let job = self
            .world
            .remote
            .jobs
            .get(name.as_str())
            .filter(|j| j.uuid == obj.uuid);
        let mut refusals: Vec<String> = Vec::new();
        if let Some(j) = job
            && (j.from.host != from_host || j.to.backend != to.as_str())
        {
            refusals.push(format!(
                "a migration job from {} to {} is in flight for it; let it finish (spec.backend: {}) or remove it with `etcdctl del` after checking both hosts",
                j.from, j.to, j.to.backend
            ));
        }
        if let Some(g) = &doc.spec.consistency_group {
            refusals.push(format!("it is a member of consistency group {g}, whose volumes stay on one back end (Cinder's rule); remove spec.consistencyGroup first"));
        }
        // Its snapshots move with it as a chain (`migrateSnapshots: true`),
        // or it is refused, naming them. A job in flight names its own.
        let chain = if job.is_some() {
            self.chain_in_flight(obj.uuid)
        } else {
            // Sizes as they are: the destination rounds them to its extent.
            self.chain_of(name, doc, obj, (backend, 1), &mut refusals)
        };
        if let Some(e) = self.world.exports.get(obj.uuid).filter(|e| {
            !e.iqn
                .as_deref()
                .is_some_and(crate::iscsi::names::is_migration_iqn)
        }) {
            let iqn = e.iqn.as_deref().unwrap_or("(backstore only)");
            refusals.push(if e.logged_in.is_empty() {
                format!("it is exported over iSCSI as {iqn}: remove spec.export for the move and add it back afterwards")
            } else {
                format!("it is in use: initiator(s) {} are logged in to {iqn}; log them out and remove spec.export for the move, then add it back", e.logged_in.join(", "))
            });
        }
        if let Some(h) = self.holder(obj) {
            refusals.push(format!(
                "it is in use by {h}: stop or detach it, then plan again"
            ));
        }
        if matches!(obj.health, Health::SizeMismatch { .. }) {
            refusals.push("its size differs from the recorded one; let the pending extend finish first (keep spec.backend for one apply)".to_owned());
        }
        if doc.spec.size.bytes() < obj.size {
            refusals.push(format!(
                "spec.size {} is smaller than its {}: shrinking is refused",
                doc.spec.size,
                format_bytes_exact(obj.size)
            ));
        }
        if obj.health == Health::Deleting && job.is_none() {
            refusals.push(format!("it is marked deleting on {cur} and no migration job names it; an earlier delete was interrupted"));
        }
        if !refusals.is_empty() {
            let kind = if obj.in_use.is_some() || self.world.exports.get(obj.uuid).is_some() {
                PlanErrorKind::InUse
            } else {
                PlanErrorKind::Refused
            };
            self.error(
                &a,
                kind,
                format!(
                    "{why}, but the volume cannot be moved to host {to_host}: {}",
                    refusals.join("; ")
                ),
            );
            return;
        }
        self.sched.release(cur, obj.size, true);
        for c in &chain {
            self.sched.release(cur, c.size, false);
        }
        let read = if backend.caps.knows_allocation {
            obj.allocated.unwrap_or(obj.size).min(obj.size)
        } else {
            obj.size
        };
        let across = Across {
            from_host: from_host.clone(),
            to_host: to_host.to_owned(),
            role: Role::Export,
            phase: job.map(|j| j.phase.as_str().to_owned()),
            copied: job.map_or(0, |j| j.copied),
            source_gone: false,
        };
        let reason = match job {
            Some(j) => format!(
                "{why} (host {to_host}); the job is {} ({} of {} copied): {from_host} goes on with its half",
                j.phase.as_str(),
                format_bytes_exact(j.copied),
                format_bytes_exact(j.to_copy)
            ),
            None => format!("{why} (host {to_host}): {}", across.duties()),
        };
        self.out.actions.push(Action {
            address: a,
            op: Op::Migrate {
                name: name.as_str().to_owned(),
                uuid: obj.uuid,
                from: cur.as_str().to_owned(),
                to: to.as_str().to_owned(),
                size: obj.size,
                target_size: obj.size.max(doc.spec.size.bytes()),
                read,
                target_free: (0, 0),
                bandwidth: self.bandwidth_of(cur.as_str()),
                resume: job.is_some(),
                deletion_policy: doc.spec.deletion_policy,
                carry: Carry::Copy,
                within: None,
                snapshots: chain,
                across: Some(across),
            },
            reason,
            impact: Impact::Moves,
        });
    }

    /// The source's last step when its volume is gone already: a verified
    /// job of this host whose source was removed before the job (a kill
    /// between the two) is finished — the job removed. `true` when planned.
    pub(super) fn finish_send(&mut self, name: &Name, doc: &'a Doc<VolumeSpec>) -> bool {
        let Some(j) = self.world.remote.jobs.get(name.as_str()) else {
            return false;
        };
        let Ok(from) = j.from.backend.parse::<Name>() else {
            return false;
        };
        if j.phase != crate::model::Phase::Verified || !self.world.backends.contains_key(&from) {
            return false;
        }
        let across = Across {
            from_host: j.from.host.clone(),
            to_host: j.to.host.clone(),
            role: Role::Export,
            phase: Some(j.phase.as_str().to_owned()),
            copied: j.copied,
            source_gone: false,
        };
        self.out.actions.push(Action {
            address: addr(ObjKind::Volume, name.as_str()),
            op: Op::Migrate {
                name: name.as_str().to_owned(),
                uuid: j.uuid,
                from: j.from.backend.clone(),
                to: j.to.backend.clone(),
                size: 0,
                target_size: 0,
                read: 0,
                target_free: (0, 0),
                bandwidth: None,
                resume: true,
                deletion_policy: doc.spec.deletion_policy,
                carry: Carry::Copy,
                within: None,
                snapshots: Vec::new(),
                across: Some(across),
            },
            reason: format!(
                "the move to {} was verified there and the source is removed; its export and job are removed",
                j.to
            ),
            impact: Impact::Moves,
        });
        true
    }

    /// The destination's half: volume `name`, pinned to a back end of this
    /// host, lives on another host (or only its `migrating` target, `target`,
    /// is here). `true` when dealt with (an action or an error); `false`
    /// leaves it to the rest of the planner.
    #[allow(clippy::too_many_lines)] // the cases of the module docs, in order
    pub(super) fn receive_across(
        &mut self,
        name: &Name,
        doc: &'a Doc<VolumeSpec>,
        target: Option<&Found<'a>>,
    ) -> bool {
        if !matches!(self.world.fleet, Fleet::On(_)) {
            return false;
        }
        let Some(to) = doc.spec.backend.as_ref() else {
            return false;
        };
        let Some(tview) = self.world.backends.get(to) else {
            return false;
        };
        if let Some(t) = target
            && t.backend.name != *to
        {
            return false;
        }
        let a = addr(ObjKind::Volume, name.as_str());
        let Some(to_host) = self.host_of(to.as_str()) else {
            return false;
        };
        let job = self
            .world
            .remote
            .jobs
            .get(name.as_str())
            .filter(|j| j.to.host == to_host && j.to.backend == to.as_str());
        let sources: Vec<&crate::observe::RemoteVolume> = self
            .world
            .remote
            .volumes
            .get(name.as_str())
            .map(|v| {
                v.iter()
                    .filter(|r| r.host != to_host && r.health != Health::Migrating)
                    .collect()
            })
            .unwrap_or_default();
        if sources.len() > 1 {
            let where_: Vec<String> = sources
                .iter()
                .map(|r| format!("{} on {}/{}", r.uuid, r.host, r.backend))
                .collect();
            self.error(&a, PlanErrorKind::Lost, format!(
                "exists more than once on other hosts ({}); remove the extra copies by hand or rename them",
                where_.join(", ")
            ));
            return true;
        }
        let source = sources.first().copied();
        let (uuid, from_host, from, size, allocated) = match (job, source, target) {
            (Some(j), _, _) => (
                j.uuid,
                j.from.host.clone(),
                j.from.backend.clone(),
                source.map_or(j.to_copy, |s| s.size),
                Some(j.to_copy),
            ),
            (None, Some(s), _) => (
                s.uuid,
                s.host.clone(),
                s.backend.clone(),
                s.size,
                s.allocated,
            ),
            (None, None, Some(t)) => {
                // The source host removed the source and the job after
                // the verification: only the promotion is left.
                let (from_host, from_backend) = ("another host".to_owned(), "(removed)".to_owned());
                let chain = self.chain_in_flight(t.obj.uuid);
                self.push_receive(
                    name,
                    doc,
                    tview,
                    (t.obj.uuid, t.obj.size, 0),
                    (from_host, from_backend, to_host),
                    (None, true, true),
                    chain,
                );
                return true;
            }
            (None, None, None) => return false,
        };
        if let Some(t) = target
            && t.obj.uuid != uuid
        {
            self.error(&a, PlanErrorKind::Lost, format!(
                "the migration target {} on {to} is not the volume {uuid} of host {from_host}; remove the target by hand after checking it",
                t.obj.uuid
            ));
            return true;
        }
        if self.host_of(&from).is_some_and(|h| h == to_host) {
            return false;
        }
        let want = round_up(doc.spec.size.bytes(), tview.extent);
        let target_size = round_up(size, tview.extent).max(want);
        if want < size {
            self.error(
                &a,
                PlanErrorKind::Refused,
                format!(
                    "spec.size {} is smaller than its {} on host {from_host}: shrinking is refused",
                    doc.spec.size,
                    format_bytes_exact(size)
                ),
            );
            return true;
        }
        // Its snapshots: what a job in flight moves (as the source still
        // publishes them, or as this host holds them), or the chain that
        // may move now.
        let chain = match (job, source) {
            (Some(_), Some(s)) => s
                .snapshots
                .iter()
                .map(|x| remote_link(x, tview.extent))
                .collect(),
            (Some(_), None) => self.chain_in_flight(uuid),
            (None, Some(s)) => match self.remote_chain(name, doc, s, tview.extent) {
                Ok(c) => c,
                Err(why) => {
                    self.error(&a, PlanErrorKind::Refused, format!(
                        "it lives on {from} of host {from_host} and is pinned to {to}, but cannot move here: {why}"
                    ));
                    return true;
                }
            },
            (None, None) => Vec::new(),
        };
        if job.is_none()
            && !tview.caps.extends_with_snapshots
            && let Some(c) = chain.iter().find(|c| c.target_size != target_size)
        {
            self.error(&a, PlanErrorKind::Refused, format!(
                "it lives on {from} of host {from_host} and is pinned to {to}, which cannot grow a volume that has snapshots, so every snapshot moving with it must have the volume's size there ({}), and snapshot.{} has {}; move it to a back end that extends volumes with snapshots, or delete the smaller snapshots first",
                format_bytes_exact(target_size),
                c.name,
                format_bytes_exact(c.target_size)
            ));
            return true;
        }
        let resume = target.is_some();
        if !resume
            && let Some(r) = self
                .sched
                .pool(to)
                .and_then(|p| p.admit(target_size).reason)
        {
            self.error(&a, PlanErrorKind::NoRoom, format!(
                "it lives on {from} of host {from_host} and is pinned to {to}, which cannot take it: CapacityFilter: {r}"
            ));
            return true;
        }
        self.push_receive(
            name,
            doc,
            tview,
            (uuid, target_size, allocated.unwrap_or(size).min(size)),
            (from_host, from, to_host),
            (job, resume, false),
            chain,
        );
        true
    }

    /// The snapshots of volume `name` that move here with it from another
    /// host (`source`, as its host published it): every one declared and
    /// taken there, ready, with `migrateSnapshots: true`; or why not
    /// (naming them).
    fn remote_chain(
        &self,
        name: &Name,
        doc: &Doc<VolumeSpec>,
        source: &crate::observe::RemoteVolume,
        extent: u64,
    ) -> Result<Vec<ChainSnapshot>, String> {
        let declared = self.declared_snapshots(name);
        let theirs: std::collections::BTreeMap<&str, &crate::observe::RemoteSnapshot> = source
            .snapshots
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let all: std::collections::BTreeSet<&str> =
            declared.iter().chain(theirs.keys()).copied().collect();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let (host, cur) = (&source.host, &source.backend);
        if !doc.spec.migrate_snapshots {
            let list: Vec<String> = all.iter().map(|s| format!("snapshot.{s}")).collect();
            return Err(format!(
                "it has snapshots ({}), which live on its back end; set migrateSnapshots: true to move them with it as a chain, or delete them first (deletionPolicy: Delete, then remove their manifests)",
                list.join(", ")
            ));
        }
        let mut why = Vec::new();
        let mut chain = Vec::new();
        for s in all {
            match theirs.get(s) {
                None => why.push(format!("snapshot.{s} is declared but not taken yet: apply once with spec.backend: {cur} so it is taken on host {host}, then move the volume with it")),
                Some(_) if !declared.contains(s) => why.push(format!("snapshot.{s} is no longer declared: let its removal apply on host {host} first (keep spec.backend: {cur} for one apply)")),
                Some(x) if x.health != Health::Ready => why.push(format!("snapshot.{s} is not ready on host {host} ({:?}); let the pending change finish first", x.health)),
                Some(x) => chain.push(remote_link(x, extent)),
            }
        }
        if why.is_empty() {
            Ok(chain)
        } else {
            Err(why.join("; "))
        }
    }

    /// Pushes the destination's `> migrate` step.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn push_receive(
        &mut self,
        name: &Name,
        doc: &'a Doc<VolumeSpec>,
        tview: &'a BackendView,
        (uuid, target_size, read): (uuid::Uuid, u64, u64),
        (from_host, from, to_host): (String, String, String),
        (job, resume, source_gone): (Option<&crate::model::JobView>, bool, bool),
        chain: Vec<ChainSnapshot>,
    ) {
        let to = &tview.name;
        let before = self.virtual_free(to);
        if !resume {
            self.sched.commit(to, target_size);
            for c in &chain {
                self.sched.grow(to, c.space);
            }
        }
        let after = self.virtual_free(to);
        let across = Across {
            from_host: from_host.clone(),
            to_host,
            role: Role::Copy,
            phase: job.map(|j| j.phase.as_str().to_owned()),
            copied: job.map_or(0, |j| j.copied),
            source_gone,
        };
        let reason = if source_gone {
            format!(
                "spec.backend is {to}; host {from_host} removed the source after this host verified its copy: the target is promoted, nothing is copied"
            )
        } else if let Some(j) = job {
            format!(
                "spec.backend is {to}; the volume lives on {from} of host {from_host}, and the move is {} ({} of {} copied): this host goes on with its half",
                j.phase.as_str(),
                format_bytes_exact(j.copied),
                format_bytes_exact(j.to_copy)
            )
        } else {
            format!(
                "spec.backend is {to}; the volume lives on {from} of host {from_host}: {}",
                across.duties()
            )
        };
        self.out.actions.push(Action {
            address: addr(ObjKind::Volume, name.as_str()),
            op: Op::Migrate {
                name: name.as_str().to_owned(),
                uuid,
                from: from.clone(),
                to: to.as_str().to_owned(),
                size: target_size,
                target_size,
                read: if source_gone { 0 } else { read },
                target_free: (before, after),
                bandwidth: self.bandwidth_of(&from),
                resume,
                deletion_policy: doc.spec.deletion_policy,
                carry: Carry::Copy,
                within: None,
                snapshots: chain,
                across: Some(across),
            },
            reason,
            impact: Impact::Moves,
        });
        self.planned.insert(
            (ObjKind::Volume, name.as_str().to_owned()),
            to.as_str().to_owned(),
        );
    }
}

/// A snapshot of another host's volume, as it moves here (sizes rounded
/// up to this back end's `extent`).
fn remote_link(s: &crate::observe::RemoteSnapshot, extent: u64) -> ChainSnapshot {
    let target_size = round_up(s.size, extent);
    ChainSnapshot {
        name: s.name.clone(),
        uuid: s.uuid,
        size: s.size,
        target_size,
        space: target_size,
        read: s.allocated.unwrap_or(s.size).min(s.size),
    }
}
