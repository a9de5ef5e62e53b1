//! The planner's iSCSI passes: exports of the declared volumes compared with
//! what LIO has, unexports of a removed `spec.export`, and the host's
//! discovery authentication.
//!
//! What an export is compared on: the target name, ACLs, portals, CHAP
//! (required or not, and whether the credentials behind `chapSecretRef` and
//! `mutualChapSecretRef` still match configfs: fingerprints, see
//! [`crate::iscsi::chap`]), a `fileio` backstore's size against its volume's,
//! the backstore's HBA folder (the shared folder of earlier versions), and
//! whether the portal group is enabled.
//!
//! Invariants: a logged-in initiator is never cut off. A change that would
//! remove its ACL, rename its target or remove the export is a plan error
//! naming it; a change of credentials or of CHAP requirements is applied
//! under it (LIO checks CHAP at login only), and the plan names it under
//! `relogin`: it keeps its session, and its next login needs what changed.
//! A backstore in a shared folder moves only while nobody is logged in to it.
//! Secrets are compared as fingerprints and never appear in a plan: only
//! where they come from, and whether the user name, the password or both
//! changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use uuid::Uuid;

use super::{Action, Impact, Op, PlanError, PlanErrorKind, Planner, addr};
use crate::iscsi::chap::CredentialPrint;
use crate::iscsi::configfs::{BackstoreKind, ChapPresence};
use crate::iscsi::lio::{self, ObservedExport};
use crate::iscsi::names;
use crate::manifest::kinds::SecretRef;
use crate::manifest::values::format_bytes_exact;
use crate::observe::{Exports, ObjKind};

/// The plan address of the host's discovery authentication.
const A: &str = "iscsi.discovery-auth";

/// The removal of volume `uuid`'s export, or the error refusing it while an
/// initiator is logged in.
pub(super) fn unexport_action(
    a: &str,
    name: &str,
    uuid: Uuid,
    o: &ObservedExport,
    why: &str,
) -> Result<Action, PlanError> {
    let iqn = o.iqn.as_deref().unwrap_or_default();
    if !o.logged_in.is_empty() {
        return Err(PlanError::new(
            a,
            PlanErrorKind::InUse,
            format!(
                "in use: initiator(s) {} are logged in to {iqn}; log them out first (iscsiadm -m node -T {iqn} --logout on those hosts)",
                o.logged_in.join(", "),
            ),
        ));
    }
    Ok(Action {
        address: a.to_owned(),
        op: Op::Unexport {
            name: name.to_owned(),
            uuid,
            iqn: o.iqn.clone(),
        },
        reason: format!(
            "{why}: the iSCSI target{} is removed (no initiator is logged in)",
            o.iqn
                .as_deref()
                .map(|i| format!(" {i}"))
                .unwrap_or_default()
        ),
        impact: Impact::MetadataOnly,
    })
}

/// Where a secret comes from, for plan text.
pub(super) fn secret_source(r: &SecretRef) -> String {
    match (&r.file, &r.env) {
        (Some(f), _) => format!("file {}", f.as_path().display()),
        (None, Some(e)) => format!("${e}"),
        (None, None) => "nowhere".into(),
    }
}

/// How one pair of credentials changes, in words that reveal no value:
/// `None` when configfs already holds `want` on every ACL in `have`.
fn credential_change(
    want: Option<CredentialPrint>,
    have: impl Iterator<Item = Option<CredentialPrint>>,
    what: &str,
) -> Option<String> {
    let mut new = false;
    let mut dropped = false;
    let mut diff: BTreeSet<&'static str> = BTreeSet::new();
    for h in have {
        match (want, h) {
            (Some(_), None) => new = true,
            (None, Some(_)) => dropped = true,
            (Some(w), Some(h)) => diff.extend(w.difference(&h)),
            (None, None) => {}
        }
    }
    if new {
        Some(format!("set {what} credentials"))
    } else if dropped {
        Some(format!("clear {what} credentials"))
    } else if diff.contains("user name and password")
        || (diff.contains("user name") && diff.contains("password"))
    {
        Some(format!("new {what} user name and password"))
    } else {
        diff.first().map(|d| format!("new {what} {d}"))
    }
}

impl Planner<'_> {
    /// The fingerprint of the secret `r`, or `None` after a plan error
    /// saying why it cannot be read (the error names the source only).
    fn secret(&mut self, a: &str, field: &str, r: &SecretRef) -> Option<CredentialPrint> {
        match self.world.secrets.get(r) {
            Some(Ok(p)) => Some(*p),
            Some(Err(e)) => {
                self.error(a, PlanErrorKind::Refused, format!("{field}: {e}"));
                None
            }
            None => {
                self.error(
                    a,
                    PlanErrorKind::Refused,
                    format!("{field}: the secret in {} was not read", secret_source(r)),
                );
                None
            }
        }
    }

    /// Both secrets of an export or of discovery: `Err(())` after a plan
    /// error. RFC 7143 (section 12.1.3) forbids one secret in both
    /// directions, so equal passwords are an error too.
    fn secret_pair(
        &mut self,
        a: &str,
        field: &str,
        chap: Option<&SecretRef>,
        mutual: Option<&SecretRef>,
    ) -> Result<(Option<CredentialPrint>, Option<CredentialPrint>), ()> {
        let c = match chap {
            Some(r) => Some(
                self.secret(a, &format!("{field}.chapSecretRef"), r)
                    .ok_or(())?,
            ),
            None => None,
        };
        let m = match mutual {
            Some(r) => Some(
                self.secret(a, &format!("{field}.mutualChapSecretRef"), r)
                    .ok_or(())?,
            ),
            None => None,
        };
        if let (Some(c), Some(m)) = (c, m)
            && c.password == m.password
        {
            self.error(a, PlanErrorKind::Refused, format!("{field}.mutualChapSecretRef: its password is the one of chapSecretRef; RFC 7143 (section 12.1.3) forbids using one secret in both directions: give the target a secret of its own"
            ));
            return Err(());
        }
        Ok((c, m))
    }

    /// Whether LIO can be read: else a plan error for `a`.
    fn lio_ready(&mut self, a: &str, what: &str) -> bool {
        match &self.world.exports {
            Exports::Absent => {
                self.error(a, PlanErrorKind::Refused, format!("{what} needs LIO, which is not loaded on this host ({} does not exist): modprobe target_core_mod iscsi_target_mod, and mount configfs",
                    lio::root().display()
                ));
                false
            }
            Exports::Failed(e) => {
                self.error(
                    a,
                    PlanErrorKind::Refused,
                    format!("cannot read LIO's exports: {e}"),
                );
                false
            }
            Exports::Found(_) => true,
        }
    }

    /// Exports whose `spec.export` was removed from a volume that stays:
    /// planned before the volumes' own actions, so a migration in the same
    /// change moves a volume nothing holds open any more.
    pub(super) fn unexports(&mut self) {
        for (name, doc) in &self.set.volumes {
            if doc.spec.export.is_some() {
                continue;
            }
            let Some(f) = self.found.get(&(ObjKind::Volume, name.as_str().to_owned())) else {
                continue;
            };
            let Some(o) = self.world.exports.get(f.obj.uuid) else {
                continue;
            };
            // A move to another host's export: the move removes it.
            if o.iqn.as_deref().is_some_and(names::is_migration_iqn) {
                continue;
            }
            let a = addr(ObjKind::Volume, name.as_str());
            match unexport_action(&a, name.as_str(), f.obj.uuid, o, "spec.export was removed") {
                Ok(x) => self.out.actions.push(x),
                Err(e) => self.out.errors.push(e),
            }
        }
    }

    /// Whether `o`'s backstore must leave the HBA folder it shares: always
    /// when something foreign is in there; among ours only, all but one
    /// (the first with an initiator logged in, else the first by uuid).
    fn must_rehome(&self, o: &ObservedExport) -> bool {
        if o.backstore.neighbours.is_empty() {
            return false;
        }
        let ours: Option<Vec<Uuid>> = o
            .backstore
            .neighbours
            .iter()
            .map(|n| lio::owner(n))
            .collect();
        let Some(mut members) = ours else {
            return true;
        };
        members.push(o.uuid);
        members.sort();
        let busy = |u: &Uuid| {
            self.world
                .exports
                .get(*u)
                .is_some_and(|e| !e.logged_in.is_empty())
        };
        let stays = members
            .iter()
            .find(|u| busy(u))
            .or_else(|| members.first())
            .copied();
        stays != Some(o.uuid)
    }

    /// iSCSI exports of the declared volumes: new ones and changed ones
    /// (ACLs, portals, CHAP and its credentials, mutual CHAP, IQN, a file
    /// volume's LUN size, the backstore's folder), each compared with what
    /// LIO has. An initiator that is logged in is never cut off: a change
    /// that would remove its ACL or the whole export is a plan error naming
    /// it.
    #[allow(clippy::too_many_lines)] // one pass over an export's fields, kept together
    pub(super) fn exports(&mut self) {
        for (name, doc) in &self.set.volumes {
            let key = (ObjKind::Volume, name.as_str().to_owned());
            let (uuid, backend) = match (self.found.get(&key), self.planned.get(&key)) {
                (Some(f), _) => (Some(f.obj.uuid), f.backend.name.as_str().to_owned()),
                (None, Some(b)) => (None, b.clone()),
                // Not placed here (an error already says why, or it lives on
                // another host).
                (None, None) => continue,
            };
            let a = addr(ObjKind::Volume, name.as_str());
            let observed = uuid.and_then(|u| self.world.exports.get(u));
            let Some(want) = doc.spec.export.as_ref().map(|e| &e.iscsi) else {
                // Unexported already, by `unexports`.
                continue;
            };
            if !self.lio_ready(&a, "spec.export") {
                continue;
            }
            let Ok((chap, mutual)) = self.secret_pair(
                &a,
                "spec.export.iscsi",
                want.chap_secret_ref.as_ref(),
                want.mutual_chap_secret_ref.as_ref(),
            ) else {
                continue;
            };
            let mut initiators: Vec<String> = want
                .initiators
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect();
            initiators.sort();
            initiators.dedup();
            let mut portals: Vec<String> = want.portals.clone();
            portals.sort();
            portals.dedup();
            // An export made under an earlier default name keeps it.
            let iqn = want
                .target_name
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .or_else(|| {
                    let (u, o) = (uuid?, observed?);
                    o.iqn.clone().filter(|i| names::is_default(i, u))
                })
                .or_else(|| uuid.map(names::default_iqn));
            let op = |changes: Vec<String>, relogin: Vec<String>, rehome: bool| Op::Export {
                name: name.as_str().to_owned(),
                uuid,
                backend: backend.clone(),
                iqn: iqn.clone(),
                initiators: initiators.clone(),
                portals: portals.clone(),
                chap: want.chap_secret_ref.clone(),
                mutual: want.mutual_chap_secret_ref.clone(),
                changes,
                relogin,
                rehome,
            };
            let new_export = Action {
                address: a.clone(),
                op: op(Vec::new(), Vec::new(), false),
                reason: format!(
                    "spec.export: iSCSI target for {} initiator(s){}",
                    initiators.len(),
                    match (&chap, &mutual) {
                        (Some(_), Some(_)) => ", CHAP required, mutual CHAP answered",
                        (Some(_), None) => ", CHAP required",
                        _ => "",
                    }
                ),
                impact: Impact::MetadataOnly,
            };
            let Some(o) = observed else {
                self.out.actions.push(new_export);
                continue;
            };
            let Some(u) = uuid else { continue };
            if o.iqn.is_none() || o.iqn != iqn {
                // Only the backstore is left (an interrupted export), or the
                // IQN changes: tear down, then export anew.
                if o.iqn.is_some() && !o.logged_in.is_empty() {
                    self.error(&a, PlanErrorKind::InUse, format!("changing the target name from {} cuts off the logged-in initiator(s) {}; log them out first",
                        o.iqn.as_deref().unwrap_or_default(),
                        o.logged_in.join(", ")
                    ));
                    continue;
                }
                match unexport_action(&a, name.as_str(), u, o, "the target name changes") {
                    Ok(x) => self.out.actions.push(x),
                    Err(e) => {
                        self.out.errors.push(e);
                        continue;
                    }
                }
                self.out.actions.push(new_export);
                continue;
            }
            let iqn_text = o.iqn.as_deref().unwrap_or_default();
            let mut changes = Vec::new();
            // Logged-in initiators a change reaches only at their next login.
            let mut relogin: BTreeSet<&str> = BTreeSet::new();
            let have: BTreeSet<&str> = o.initiators.iter().map(String::as_str).collect();
            let want_set: BTreeSet<&str> = initiators.iter().map(String::as_str).collect();
            let added: Vec<&str> = want_set.difference(&have).copied().collect();
            let removed: Vec<&str> = have.difference(&want_set).copied().collect();
            let cut: Vec<&str> = removed
                .iter()
                .copied()
                .filter(|i| o.logged_in.iter().any(|l| l == i))
                .collect();
            if !cut.is_empty() {
                self.error(&a, PlanErrorKind::InUse, format!("removing the ACL of {} cuts off a logged-in initiator; log it out first (iscsiadm -m node -T {iqn_text} --logout on that host)",
                    cut.join(", "),
                ));
                continue;
            }
            if !added.is_empty() {
                changes.push(format!("allow {}", added.join(", ")));
            }
            if !removed.is_empty() {
                changes.push(format!("deny {}", removed.join(", ")));
            }
            let want_portals = if portals.is_empty() {
                vec![lio::DEFAULT_PORTAL.to_owned()]
            } else {
                portals.clone()
            };
            if o.portals != want_portals {
                changes.push(format!(
                    "portals {} -> {}",
                    o.portals.join(","),
                    want_portals.join(",")
                ));
            }
            // CHAP: required or not, then the credentials of the ACLs that
            // stay (new ACLs get them with `allow`).
            let kept: Vec<&str> = want_set.intersection(&have).copied().collect();
            let acl = |i: &str| o.credentials.get(i).cloned().unwrap_or_default();
            let mut auth_changes = Vec::new();
            match (o.chap, chap) {
                (false, Some(_)) => {
                    auth_changes.push("require CHAP".to_owned());
                    if mutual.is_some() {
                        auth_changes.push("answer mutual CHAP".to_owned());
                    }
                }
                // The credentials go with it (mutual ones too).
                (true, None) => auth_changes.push("stop requiring CHAP".to_owned()),
                (true, Some(c)) => {
                    auth_changes.extend(credential_change(
                        Some(c),
                        kept.iter().map(|i| acl(i).one_way),
                        "CHAP",
                    ));
                    auth_changes.extend(credential_change(
                        mutual,
                        kept.iter().map(|i| acl(i).mutual),
                        "mutual CHAP",
                    ));
                }
                (false, None) => {}
            }
            if !auth_changes.is_empty() {
                relogin.extend(
                    o.logged_in
                        .iter()
                        .map(String::as_str)
                        .filter(|i| want_set.contains(i)),
                );
                changes.extend(auth_changes);
            }
            // A file volume's LUN: LIO's size does not follow the file.
            let planned_size = self.out.actions.iter().find_map(|x| match x.op {
                Op::Extend { uuid: eu, to, .. } if eu == u => Some(to),
                _ => None,
            });
            let volume_size = planned_size.or_else(|| self.found.get(&key).map(|f| f.obj.size));
            if o.backstore.kind == BackstoreKind::File
                && let (Some(have), Some(size)) = (o.size, volume_size)
            {
                if have > size {
                    self.error(&a, PlanErrorKind::Refused, format!("LIO gives its LUN {}, more than the volume's {}: the file was shrunk outside cinderblock, and a LUN is never shrunk under an initiator; grow spec.size back to at least {}, or remove spec.export (with no initiator logged in), apply, and add it back",
                        format_bytes_exact(have),
                        format_bytes_exact(size),
                        format_bytes_exact(have)
                    ));
                    continue;
                }
                if have < size {
                    changes.push(format!(
                        "LUN size {} -> {} (LIO's fileio backstore does not follow its file; initiators see it after a rescan: iscsiadm -m session --rescan)",
                        format_bytes_exact(have),
                        format_bytes_exact(size)
                    ));
                }
            }
            // The shared HBA folder of earlier versions.
            let mut rehome = false;
            if self.must_rehome(o) {
                let shared = format!(
                    "its backstore shares core/{} with {} (the layout of earlier versions, which targetcli cannot manage)",
                    o.backstore.hba,
                    o.backstore.neighbours.join(", ")
                );
                if o.logged_in.is_empty() {
                    rehome = true;
                    changes.push(format!(
                        "move the backstore from core/{} to a folder of its own (the target is made again; no initiator is logged in)",
                        o.backstore.hba
                    ));
                } else {
                    self.out.notes.push(format!(
                        "{a}: {shared}; it moves to a folder of its own at the first apply with no initiator logged in to {iqn_text} ({} is)",
                        o.logged_in.join(", ")
                    ));
                }
            }
            if !o.enabled {
                changes.push("enable the portal group".into());
            }
            if let Some(x) = self
                .out
                .actions
                .iter_mut()
                .find(|x| matches!(x.op, Op::Extend { uuid: eu, .. } if eu == u))
            {
                let _ = if o.logged_in.is_empty() {
                    write!(
                        x.reason,
                        "; its iSCSI export {iqn_text} shows the new size to initiators at their next login or rescan"
                    )
                } else {
                    write!(
                        x.reason,
                        "; its iSCSI export {iqn_text} follows, and the logged-in initiator(s) {} see the new size after a rescan (iscsiadm -m session --rescan)",
                        o.logged_in.join(", ")
                    )
                };
            }
            if changes.is_empty() {
                continue;
            }
            let relogin: Vec<String> = if rehome {
                Vec::new()
            } else {
                relogin.into_iter().map(str::to_owned).collect()
            };
            let mut reason = format!(
                "its export differs from spec.export: {}",
                changes.join("; ")
            );
            if !relogin.is_empty() {
                let _ = write!(
                    reason,
                    "; logged in: {} (they keep their sessions, and the change reaches them at their next login: update node.session.auth.* there first)",
                    relogin.join(", ")
                );
            }
            self.out.actions.push(Action {
                address: a.clone(),
                reason,
                op: op(changes, relogin, rehome),
                impact: Impact::MetadataOnly,
            });
        }
    }

    /// This host's discovery authentication, from its back ends'
    /// `spec.iscsi.discoveryAuth`: they must agree (LIO has one setting per
    /// host); when none declares it, the host's setting is left alone.
    pub(super) fn discovery_auth(&mut self) {
        let declared: BTreeMap<&str, &crate::manifest::kinds::DiscoveryAuth> = self
            .world
            .backends
            .keys()
            .filter_map(|n| {
                let d = self
                    .set
                    .backends
                    .get(n)?
                    .spec
                    .iscsi
                    .as_ref()?
                    .discovery_auth
                    .as_ref()?;
                Some((n.as_str(), d))
            })
            .collect();
        let Some((&first_name, &first)) = declared.iter().next() else {
            return;
        };
        if let Some((other, _)) = declared.iter().find(|(_, d)| **d != first) {
            self.error(A, PlanErrorKind::Refused, format!("backend.{first_name} and backend.{other} declare different spec.iscsi.discoveryAuth; LIO has one discovery setting per host: declare the same on both, or on one only"
            ));
            return;
        }
        if !self.lio_ready(A, "spec.iscsi.discoveryAuth") {
            return;
        }
        // No `iscsi/discovery_auth` yet: the iSCSI fabric registers on the
        // first use of `iscsi/` (the driver's mkdir), unenforced.
        let seen = self.world.discovery_auth.clone().unwrap_or_default();
        let field = format!("backend.{first_name}: spec.iscsi.discoveryAuth");
        let Ok((Some(chap), mutual)) = self.secret_pair(
            A,
            &field,
            Some(&first.chap_secret_ref),
            first.mutual_chap_secret_ref.as_ref(),
        ) else {
            return;
        };
        let ChapPresence {
            one_way: have_chap,
            mutual: have_mutual,
        } = seen.chap;
        let mut changes = Vec::new();
        if !seen.enforced {
            changes.push("enforce discovery authentication".to_owned());
        }
        changes.extend(credential_change(
            Some(chap),
            [have_chap].into_iter(),
            "CHAP",
        ));
        changes.extend(credential_change(
            mutual,
            [have_mutual].into_iter(),
            "mutual CHAP",
        ));
        if changes.is_empty() {
            return;
        }
        let names: Vec<String> = declared.keys().map(|n| format!("backend.{n}")).collect();
        self.out.actions.push(Action {
            address: A.to_owned(),
            reason: format!(
                "spec.iscsi.discoveryAuth of {}: {}; host-wide: discovering any target of this host (others' too) needs these credentials from then on, while logins and sessions are not touched",
                names.join(", "),
                changes.join("; ")
            ),
            op: Op::DiscoveryAuth {
                chap: first.chap_secret_ref.clone(),
                mutual: first.mutual_chap_secret_ref.clone(),
                changes,
                new: !seen.enforced,
            },
            impact: Impact::MetadataOnly,
        });
    }
}
