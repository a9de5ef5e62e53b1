//! This host's back ends: one [`Driver`] per `Backend` manifest, built once
//! from the manifests with an injected command runner, and handed to
//! observe, apply, migrate and backup.
//!
//! The one place outside the back ends themselves that knows which kinds
//! exist: a manifest's `file:` becomes a [`FileDriver`] (its NFS share
//! mounted, a root below the state directory created, at discovery), an
//! `lvm:` an [`LvmDriver`]. Everything downstream holds `&dyn Driver`.
//!
//! Discovery is batched where the tool batches: every volume group of the
//! registry's `lvm` back ends is read by one `lvm fullreport`
//! ([`crate::lvm::cmd::fullreport`]; a VG that cannot be read fails only the
//! back ends on it), every other back end discovers itself, at most
//! [`DISCOVERY_THREADS`] at once (a slow NFS share must not delay the rest).
//! A discovery that panics leaves its back end out ([`Discovered::missing`]).
//!
//! When `CINDERBLOCK_CRASH_AT` names a driver point, every driver is wrapped
//! in [`crate::driver::fault::Faulty`] (the crash tests).
//!
//! Must not: run anything at construction (no I/O until discovery), or
//! decide anything.

use std::collections::BTreeMap;
use std::path::Path;

use crate::driver::{Capabilities, Discovery, Driver, Holders, fault};
use crate::exec::Runner;
use crate::file::{Allocation, FileBackend, FileDriver};
use crate::lvm::{LvmBackend, LvmDriver, Wipe, cmd};
use crate::manifest::kinds::{self, BackendSpec, VolumeClear};
use crate::manifest::{Doc, ManifestSet, Name};

/// Back ends discovered at once.
pub const DISCOVERY_THREADS: usize = 8;

/// How a back end is discovered.
enum Batch {
    /// By its driver, alone.
    Alone,
    /// Out of the one report over every volume group.
    VolumeGroup,
}

struct Entry<'r> {
    driver: Box<dyn Driver + 'r>,
    /// The typed handle, for batched discovery.
    lvm: Option<LvmDriver<'r>>,
    batch: Batch,
}

/// The back ends, by manifest name.
pub struct Registry<'r> {
    entries: BTreeMap<Name, Entry<'r>>,
    run: Option<&'r dyn Runner>,
}

/// What discovery found, by back end.
#[derive(Debug, Default)]
pub struct Discovered {
    /// (allocation granularity in bytes, discovery) by back end.
    pub backends: BTreeMap<Name, (u64, Discovery)>,
    /// Back ends whose discovery panicked: left out.
    pub missing: Vec<Name>,
}

/// Whether a back end belongs to `host`: unnamed hosts belong to whoever runs.
pub fn is_local(spec: &BackendSpec, host: &str) -> bool {
    spec.host.as_deref().is_none_or(|h| h == host)
}

impl<'r> Registry<'r> {
    /// The back ends of `host` in `set`, running commands through `run`.
    pub fn new(set: &ManifestSet, host: &str, state_dir: &Path, run: &'r dyn Runner) -> Self {
        Self::build(
            set.backends.iter().filter(|(_, d)| is_local(&d.spec, host)),
            state_dir,
            run,
        )
    }

    /// Every back end in `set`, whatever its host (a restore into a back end
    /// named on the command line).
    pub fn all(set: &ManifestSet, state_dir: &Path, run: &'r dyn Runner) -> Self {
        Self::build(set.backends.iter(), state_dir, run)
    }

    /// Drivers built elsewhere (fakes in unit tests), each discovered alone.
    pub fn from_drivers(drivers: Vec<Box<dyn Driver + 'r>>) -> Self {
        let entries = drivers
            .into_iter()
            .filter_map(|d| {
                let name = d.name().parse::<Name>().ok()?;
                Some((
                    name,
                    Entry {
                        driver: d,
                        lvm: None,
                        batch: Batch::Alone,
                    },
                ))
            })
            .collect();
        Self { entries, run: None }
    }

    fn build<'a>(
        docs: impl Iterator<Item = (&'a Name, &'a Doc<BackendSpec>)>,
        state_dir: &Path,
        run: &'r dyn Runner,
    ) -> Self {
        let mut entries = BTreeMap::new();
        for (name, doc) in docs {
            let Some(entry) = entry(doc, state_dir, run) else {
                // Validation refuses a back end with neither `lvm` nor
                // `file`; never guess a place to write.
                continue;
            };
            entries.insert(name.clone(), entry);
        }
        Self {
            entries,
            run: Some(run),
        }
    }

    /// The driver of back end `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Driver> {
        self.entries
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, e)| e.driver.as_ref())
    }

    /// The back ends' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.entries.keys()
    }

    /// Discovers every back end (see the module docs), with one scan of
    /// what holds files and devices open for all of them.
    pub fn discover(&self) -> Discovered {
        self.discover_where(None)
    }

    /// [`Registry::discover`] of the back ends in `names` only (after an
    /// apply changed them): one report over their volume groups, one scan
    /// of the holders.
    pub fn discover_only(&self, names: &std::collections::BTreeSet<Name>) -> Discovered {
        self.discover_where(Some(names))
    }

    fn discover_where(&self, only: Option<&std::collections::BTreeSet<Name>>) -> Discovered {
        let picked = |n: &Name| only.is_none_or(|o| o.contains(n));
        let vgs: Vec<&str> = {
            let mut v: Vec<&str> = self
                .entries
                .iter()
                .filter(|(n, _)| picked(n))
                .map(|(_, e)| e)
                .filter_map(|e| e.lvm.as_ref().map(LvmDriver::volume_group))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let reports = match (self.run, vgs.is_empty()) {
            (Some(run), false) => cmd::fullreport(run, &vgs),
            _ => cmd::Reports::default(),
        };
        // Who holds what open: one pass over /proc and the loop devices for
        // the whole discovery, whatever the number of back ends and volumes.
        let holders = if self.entries.is_empty() {
            Ok(crate::inuse::Holders::default())
        } else {
            crate::inuse::Holders::scan().map_err(|e| format!("cannot read /proc: {e}"))
        };
        self.discover_all(&reports, &holders, only)
    }

    /// [`Registry::discover`] with the volume groups' report read already and
    /// nothing seen open (benchmarks, tests).
    pub fn discover_with(&self, reports: &cmd::Reports) -> Discovered {
        self.discover_all(reports, &Ok(crate::inuse::Holders::default()), None)
    }

    fn discover_all(
        &self,
        reports: &cmd::Reports,
        holders: &Holders,
        only: Option<&std::collections::BTreeSet<Name>>,
    ) -> Discovered {
        let mut out = Discovered::default();
        let all: Vec<(&Name, &Entry<'r>)> = self
            .entries
            .iter()
            .filter(|(n, _)| only.is_none_or(|o| o.contains(*n)))
            .collect();
        for chunk in all.chunks(DISCOVERY_THREADS) {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(_, e)| {
                        scope.spawn(move || match (&e.batch, &e.lvm) {
                            (Batch::VolumeGroup, Some(l)) => l.discover_from(reports, holders),
                            _ => e.driver.discover(holders),
                        })
                    })
                    .collect();
                for (h, (name, _)) in handles.into_iter().zip(chunk) {
                    if let Ok(d) = h.join() {
                        out.backends.insert((*name).clone(), d);
                    } else {
                        tracing::error!(backend = %name, "discovery panicked; the back end is left out of this run");
                        out.missing.push((*name).clone());
                    }
                }
            });
        }
        out
    }
}

/// The capabilities of the back end `doc` declares (of another host's
/// too): its driver's, built without running anything. Pure.
pub fn capabilities(doc: &Doc<BackendSpec>) -> Capabilities {
    match entry(doc, Path::new("/"), crate::exec::Exec::host()) {
        Some(e) => e.driver.capabilities(),
        // Validation refuses such a back end; it can do nothing.
        None => Capabilities {
            protocol: String::new(),
            thin: false,
            new_reads_zero: false,
            knows_allocation: false,
            extends_with_snapshots: false,
            snapshots: crate::model::SnapshotSpace::Copy,
            space: None,
            relabel: false,
            pool: None,
            delete_note: None,
            retained: String::new(),
            group_snapshots: crate::model::GroupSnapshots::None,
        },
    }
}

/// The driver a `Backend` manifest declares.
fn entry<'r>(doc: &Doc<BackendSpec>, state_dir: &Path, run: &'r dyn Runner) -> Option<Entry<'r>> {
    let spec = &doc.spec;
    let name = doc.name().as_str();
    if let Some(f) = &spec.file {
        let backend = FileBackend::new(f.path.resolve(state_dir), name);
        let allocation = match f.allocation {
            kinds::Allocation::Sparse => Allocation::Sparse,
            kinds::Allocation::Preallocated => Allocation::Preallocated,
        };
        let mut driver = FileDriver::new(backend, allocation, run);
        if let Some(share) = &f.share {
            let options = f
                .mount_options
                .as_ref()
                .map(|o| o.as_str().split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            driver = driver.mounted(share.as_str(), options);
        } else if f.path.is_in_state() {
            driver = driver.creating_root();
        }
        return Some(Entry {
            driver: fault::wrap_from_env(Box::new(driver)),
            lvm: None,
            batch: Batch::Alone,
        });
    }
    let l = spec.lvm.as_ref()?;
    let wipe = match spec.volume_clear.unwrap_or_default() {
        VolumeClear::Zero => Wipe::Zero,
        VolumeClear::None => Wipe::None,
    };
    let lvm = || {
        LvmDriver::new(
            LvmBackend::new(
                run,
                name,
                l.volume_group.as_str(),
                l.thin_pool.as_ref().map(|p| p.as_str().to_owned()),
                wipe,
            ),
            l.thin_pool_size
                .map(crate::manifest::values::Quantity::bytes),
        )
    };
    Some(Entry {
        driver: fault::wrap_from_env(Box::new(lvm())),
        lvm: Some(lvm()),
        batch: Batch::VolumeGroup,
    })
}
