//! The fleet's placer: where each unpinned volume of the manifests goes,
//! over every host's published back ends, with the same scheduler and
//! weighers as one host's plan. Pure, like the planner: the elected agent
//! reads etcd, calls [`place`], and writes what it returns.
//!
//! Rules, in order, for each declared volume without `spec.backend`
//! (sources before their copies):
//! - placed already: left where it is (placements never move); if it does
//!   not exist yet, its size counts on its back end, so a batch does not
//!   over-place on views that lag behind the placements;
//! - exists on exactly one back end without a placement (made before the
//!   fleet, or its placement was lost): the placement records where it is;
//!   on several: nothing is placed and the placer says so;
//! - a copy (`source.volume`, `source.snapshot`, `source.image`) goes
//!   where its source is (placed, pinned or existing), a member of a
//!   consistency group where its group is; otherwise the scheduler picks a
//!   back end of a host that is up;
//! - nothing new is placed while a host that could take the volume has
//!   never published, or published a partial view (it might hold it).
//!
//! Must not: do I/O, or move a placement.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::kinds::VolumeSpec;
use crate::manifest::{Doc, ManifestSet, Name};
use crate::observe::{Placement, World};

use super::schedule::{self, Scheduler};
use super::{Waiting, request, round_up, volume_order};

/// What the placer reads.
#[derive(Debug, Clone, Default)]
pub struct PlacerInput {
    /// Every published back end of every host (a down host's with a failed
    /// discovery saying so), by name.
    pub world: World,
    /// The host of each back end in `world`.
    pub host_of: BTreeMap<Name, String>,
    /// Volumes that exist somewhere, by name: the back ends holding them.
    pub existing: BTreeMap<String, Vec<String>>,
    /// Hosts that have published a view.
    pub published: BTreeSet<String>,
    /// Hosts whose view is partial, with why.
    pub partial: BTreeMap<String, String>,
    /// Placements made, by volume.
    pub placements: BTreeMap<String, Placement>,
}

/// A placement to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPlacement {
    /// The volume.
    pub volume: String,
    /// The back end.
    pub backend: String,
    /// Its host.
    pub host: String,
    /// Size asked for.
    pub size: u64,
    /// Why there.
    pub reason: String,
}

/// What the placer decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Placements to write.
    pub placements: Vec<NewPlacement>,
    /// Volumes not placed, and why.
    pub waiting: Vec<Waiting>,
}

struct Placer<'a> {
    set: &'a ManifestSet,
    input: &'a PlacerInput,
    sched: Scheduler<'a>,
    /// Where each volume is or goes (pinned, placed, existing, decided).
    location: BTreeMap<&'a str, String>,
    out: Decision,
}

/// Places the manifests' unpinned volumes over the fleet.
pub fn place(set: &ManifestSet, input: &PlacerInput) -> Decision {
    let mut p = Placer {
        set,
        input,
        sched: Scheduler::new(&set.scheduler_policy(), &input.world),
        location: BTreeMap::new(),
        out: Decision::default(),
    };
    // Placed volumes that do not exist yet take their room first.
    for (v, pl) in &input.placements {
        if input.existing.contains_key(v) {
            continue;
        }
        if let (Some(doc), Some(bn)) = (
            set.volumes.get(v.as_str()),
            input
                .world
                .backends
                .keys()
                .find(|k| k.as_str() == pl.backend),
        ) {
            let extent = input.world.backends.get(bn).map_or(1, |b| b.extent);
            p.sched.commit(bn, round_up(doc.spec.size.bytes(), extent));
        }
    }
    for name in volume_order(set) {
        let doc = &set.volumes[name];
        p.volume(name, doc);
    }
    p.out
}

impl<'a> Placer<'a> {
    fn wait(&mut self, name: &Name, reason: String) {
        self.out.waiting.push(Waiting {
            address: format!("volume.{name}"),
            reason,
        });
    }

    fn host(&self, backend: &str) -> String {
        self.input
            .host_of
            .iter()
            .find(|(k, _)| k.as_str() == backend)
            .map(|(_, h)| h.clone())
            .or_else(|| {
                self.set
                    .backends
                    .iter()
                    .find(|(k, _)| k.as_str() == backend)
                    .and_then(|(_, b)| b.spec.host.clone())
            })
            .unwrap_or_default()
    }

    /// Where a source object is: a volume's location, a snapshot's volume's,
    /// an image's pinned back end.
    fn source_location(&self, doc: &Doc<VolumeSpec>) -> Option<Result<String, String>> {
        let s = doc.spec.source.as_ref()?;
        let (what, vol) = if let Some(v) = &s.volume {
            (format!("volume.{v}"), Some(v.as_str()))
        } else if let Some(sn) = &s.snapshot {
            (
                format!("snapshot.{sn}"),
                self.set
                    .snapshots
                    .get(sn)
                    .and_then(|d| d.spec.volume.as_ref())
                    .map(Name::as_str),
            )
        } else if let (Some(gs), Some(m)) = (&s.group_snapshot, &s.member) {
            (format!("snapshot.{gs}.{m}"), Some(m.as_str()))
        } else if let Some(i) = &s.image {
            return Some(
                self.set
                    .images
                    .get(i)
                    .map(|d| d.spec.backend.as_str().to_owned())
                    .ok_or_else(|| format!("its source image.{i} is not declared")),
            );
        } else {
            return None;
        };
        Some(
            vol.and_then(|v| self.location.get(v).cloned())
                .ok_or_else(|| format!("waits for its source {what} to be placed")),
        )
    }

    fn group_location(&self, name: &Name, doc: &Doc<VolumeSpec>) -> Option<(String, String)> {
        let g = doc.spec.consistency_group.as_ref()?;
        self.set
            .volumes
            .iter()
            .filter(|(n, d)| *n != name && d.spec.consistency_group.as_ref() == Some(g))
            .find_map(|(n, d)| {
                let n = n.as_str();
                self.location
                    .get(n)
                    .cloned()
                    .or_else(|| d.spec.backend.as_ref().map(|b| b.as_str().to_owned()))
                    .or_else(|| self.input.placements.get(n).map(|p| p.backend.clone()))
                    .or_else(|| match self.input.existing.get(n).map(Vec::as_slice) {
                        Some([one]) => Some(one.clone()),
                        _ => None,
                    })
            })
            .map(|b| (g.as_str().to_owned(), b))
    }

    #[allow(clippy::too_many_lines)] // one decision, its cases kept together
    fn volume(&mut self, name: &'a Name, doc: &'a Doc<VolumeSpec>) {
        let v = name.as_str();
        if let Some(pin) = &doc.spec.backend {
            self.location.insert(v, pin.as_str().to_owned());
            // A pinned volume to be made counts on its back end, as a
            // placed one does.
            if !self.input.existing.contains_key(v) && self.input.world.backends.contains_key(pin) {
                let extent = self.input.world.backends.get(pin).map_or(1, |b| b.extent);
                self.sched
                    .commit(pin, round_up(doc.spec.size.bytes(), extent));
            }
            return;
        }
        if let Some(pl) = self.input.placements.get(v) {
            self.location.insert(v, pl.backend.clone());
            return;
        }
        match self.input.existing.get(v).map(Vec::as_slice) {
            Some([one]) => {
                self.location.insert(v, one.clone());
                self.out.placements.push(NewPlacement {
                    volume: v.to_owned(),
                    backend: one.clone(),
                    host: self.host(one),
                    size: doc.spec.size.bytes(),
                    reason: "it exists there already; the placement records it".into(),
                });
                return;
            }
            Some(many) if !many.is_empty() => {
                self.wait(
                    name,
                    format!(
                        "it exists on more than one back end ({}); nothing is placed until the extra copies are removed",
                        many.join(", ")
                    ),
                );
                return;
            }
            _ => {}
        }
        let req = request(self.set, doc);
        // Hosts that could hold it must have spoken, completely.
        let mut silent: Vec<String> = Vec::new();
        for (bname, bdoc) in &self.set.backends {
            let Some(h) = &bdoc.spec.host else { continue };
            let view = self
                .input
                .world
                .backends
                .get(bname)
                .cloned()
                .unwrap_or_else(|| {
                    crate::observe::declared_view(
                        bdoc,
                        crate::observe::Discovery::Failed(String::new()),
                    )
                });
            if self.sched.could_take(&view, &req).is_err() {
                continue;
            }
            if !self.input.published.contains(h) {
                silent.push(format!("host {h} has not published its view yet"));
            } else if let Some(why) = self.input.partial.get(h) {
                silent.push(format!("host {h} published a partial view ({why})"));
            }
        }
        silent.sort();
        silent.dedup();
        if !silent.is_empty() {
            self.wait(
                name,
                format!(
                    "not placed: {}; it may already hold the volume",
                    silent.join("; ")
                ),
            );
            return;
        }
        let fixed = match self.source_location(doc) {
            Some(Ok(b)) => {
                let why = format!("with its source on {b}");
                Some((b, why))
            }
            Some(Err(why)) => {
                self.wait(name, why);
                return;
            }
            None => self
                .group_location(name, doc)
                .map(|(g, b)| (b, format!("with its consistency group {g}"))),
        };
        let (backend, reason) = if let Some((b, why)) = fixed {
            let Some(bn) = self
                .input
                .world
                .backends
                .keys()
                .find(|k| k.as_str() == b)
                .cloned()
            else {
                self.wait(name, format!("{why}: back end {b} has not been published"));
                return;
            };
            if let Err(e) = self.sched.check(&bn, &req) {
                self.wait(
                    name,
                    format!(
                        "its place is {b} ({why}), which cannot take it:{}",
                        schedule::explain(&vec![(bn, e)])
                    ),
                );
                return;
            }
            self.sched.commit(&bn, req.size);
            (bn, why)
        } else {
            match self.sched.place(&req, None) {
                Ok(b) => (b, "by the scheduler".to_owned()),
                Err(rej) => {
                    self.wait(
                        name,
                        format!(
                            "no back end of the fleet can take it ({}):{}",
                            crate::manifest::values::format_bytes_exact(req.size),
                            schedule::explain(&rej)
                        ),
                    );
                    return;
                }
            }
        };
        let extent = self
            .input
            .world
            .backends
            .get(&backend)
            .map_or(1, |b| b.extent);
        let size = round_up(req.size, extent);
        if size > req.size {
            self.sched.grow(&backend, size - req.size);
        }
        let b = backend.as_str().to_owned();
        self.location.insert(v, b.clone());
        let host = self.host(&b);
        self.out.placements.push(NewPlacement {
            volume: v.to_owned(),
            reason: format!("placed on {b} (host {host}) {reason}"),
            backend: b,
            host,
            size: req.size,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::load_source;
    use crate::manifest::values::OverSubscription;
    use crate::observe::{BackendView, Capacity, Discovery, Health, Inventory, ObjKind, Observed};

    const GIB: u64 = 1 << 30;

    fn manifests(text: &str) -> ManifestSet {
        let loaded = load_source(Path::new("test.yaml"), text);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        loaded.set
    }

    fn doc(kind: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: cinderblock.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n"
        )
    }

    fn view(name: &str, objects: &[&str]) -> BackendView {
        BackendView {
            name: name.parse().unwrap(),
            backend_name: name.into(),
            zone: "nova".into(),
            caps: crate::driver::fake::capabilities(true),
            thin: true,
            extent: 1,
            ratio: OverSubscription::Ratio(20.0),
            reserved_percentage: 0,
            capabilities: BTreeMap::new(),
            discovery: Discovery::Ok(Inventory {
                capacity: Capacity {
                    total: 100 * GIB,
                    free: 100 * GIB,
                    provisioned: GIB * objects.len() as u64,
                    ..Capacity::default()
                },
                objects: objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| Observed {
                        group: None,
                        uuid: uuid::Uuid::from_u128(i as u128 + 1),
                        name: (*o).into(),
                        kind: ObjKind::Volume,
                        size: GIB,
                        allocated: None,
                        parent: None,
                        clone_of: None,
                        health: Health::Ready,
                        in_use: None,
                    })
                    .collect(),
                foreign: vec![],
                problems: vec![],
                generation: None,
            }),
        }
    }

    /// Back ends `lvm-1` on host server1 and `lvm-2` on server2, published
    /// with `objects`.
    fn fleet(a: &[&str], b: &[&str]) -> PlacerInput {
        let mut input = PlacerInput::default();
        for (name, host, objs) in [("lvm-1", "server1", a), ("lvm-2", "server2", b)] {
            let v = view(name, objs);
            for o in objs {
                input
                    .existing
                    .entry((*o).to_owned())
                    .or_default()
                    .push(name.into());
            }
            input.host_of.insert(v.name.clone(), host.into());
            input.world.backends.insert(v.name.clone(), v);
            input.published.insert(host.into());
        }
        input
    }

    fn site(vols: &str) -> ManifestSet {
        manifests(
            &(doc(
                "Backend",
                "lvm-1",
                "{host: server1, file: {path: /srv/lvm-1}}",
            ) + &doc(
                "Backend",
                "lvm-2",
                "{host: server2, file: {path: /srv/lvm-2}}",
            ) + &doc(
                "SchedulerPolicy",
                "default",
                "{weighers: [{name: VolumeNumberWeigher}]}",
            ) + vols),
        )
    }

    fn placed(d: &Decision) -> Vec<(&str, &str)> {
        d.placements
            .iter()
            .map(|p| (p.volume.as_str(), p.backend.as_str()))
            .collect()
    }

    #[test]
    fn the_volume_number_weigher_spreads_six_volumes_three_and_three_over_two_hosts() {
        let vols: String = (1..=6)
            .map(|i| doc("Volume", &format!("vol-{i}"), "{size: 1Gi}"))
            .collect();
        let d = place(&site(&vols), &fleet(&[], &[]));
        assert!(d.waiting.is_empty(), "{:?}", d.waiting);
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, b) in placed(&d) {
            *per.entry(b).or_default() += 1;
        }
        assert_eq!(per, BTreeMap::from([("lvm-1", 3), ("lvm-2", 3)]));
        assert_eq!(d.placements[0].host, "server1");
        assert_eq!(
            d.placements[0].reason,
            "placed on lvm-1 (host server1) by the scheduler"
        );
    }

    #[test]
    fn placements_hold_existing_volumes_are_recorded_and_duplicates_are_refused() {
        let vols = doc("Volume", "old", "{size: 1Gi}")
            + &doc("Volume", "twice", "{size: 1Gi}")
            + &doc("Volume", "done", "{size: 1Gi}")
            + &doc("Volume", "pinned", "{size: 1Gi, backend: lvm-1}")
            + &doc("Volume", "new", "{size: 1Gi}");
        let mut input = fleet(&["old", "twice"], &["twice"]);
        input.placements.insert(
            "done".into(),
            Placement {
                backend: "lvm-1".into(),
                host: "server1".into(),
                revision: Some(9),
            },
        );
        let d = place(&site(&vols), &input);
        // `done` (placed, not made yet) and `old` count on lvm-1: `new` goes to lvm-2.
        assert_eq!(placed(&d), [("new", "lvm-2"), ("old", "lvm-1")]);
        assert_eq!(
            d.placements[1].reason,
            "it exists there already; the placement records it"
        );
        assert_eq!(d.waiting.len(), 1);
        assert_eq!(
            d.waiting[0].reason,
            "it exists on more than one back end (lvm-1, lvm-2); nothing is placed until the extra copies are removed"
        );
    }

    #[test]
    fn a_down_host_gets_nothing_new_and_a_silent_host_blocks_what_it_might_hold() {
        let vols = doc("Volume", "a", "{size: 1Gi}") + &doc("Volume", "b", "{size: 1Gi}");
        let mut input = fleet(&[], &[]);
        let down: Name = "lvm-1".parse().unwrap();
        input.world.backends.get_mut(&down).unwrap().discovery =
            Discovery::Failed("host server1 is down".into());
        let d = place(&site(&vols), &input);
        assert_eq!(placed(&d), [("a", "lvm-2"), ("b", "lvm-2")]);

        input.published.remove("server1");
        let d = place(&site(&vols), &input);
        assert!(d.placements.is_empty());
        assert_eq!(
            d.waiting[0].reason,
            "not placed: host server1 has not published its view yet; it may already hold the volume"
        );
    }

    #[test]
    fn copies_follow_their_source_and_members_their_group() {
        let vols = doc("VolumeType", "t", "{}")
            + &doc("ConsistencyGroup", "g", "{volumeTypes: [t]}")
            + &doc("Volume", "src", "{size: 1Gi}")
            + &doc("Volume", "copy", "{size: 1Gi, source: {volume: src}}")
            + &doc("Snapshot", "s", "{volume: src}")
            + &doc("Volume", "from-snap", "{size: 1Gi, source: {snapshot: s}}")
            + &doc(
                "Volume",
                "m1",
                "{size: 1Gi, volumeType: t, consistencyGroup: g}",
            )
            + &doc(
                "Volume",
                "m2",
                "{size: 1Gi, volumeType: t, consistencyGroup: g}",
            )
            + &doc(
                "Volume",
                "m3",
                "{size: 1Gi, volumeType: t, consistencyGroup: g}",
            );
        let input = fleet(&["m2"], &["src"]);
        let d = place(&site(&vols), &input);
        assert!(d.waiting.is_empty(), "{:?}", d.waiting);
        assert_eq!(
            placed(&d),
            [
                ("m1", "lvm-1"),
                ("m2", "lvm-1"),
                ("m3", "lvm-1"),
                ("src", "lvm-2"),
                ("copy", "lvm-2"),
                ("from-snap", "lvm-2"),
            ]
        );
        assert_eq!(
            d.placements[0].reason,
            "placed on lvm-1 (host server1) with its consistency group g"
        );
        assert_eq!(
            d.placements[4].reason,
            "placed on lvm-2 (host server2) with its source on lvm-2"
        );
    }
}
