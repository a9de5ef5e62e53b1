//! An in-memory back end for unit tests of the pipeline: objects, marks and
//! owner marks in a map, data in one file per object under a directory the
//! test owns (so the copy engine, hashing and restores run for real).
//!
//! It keeps the contract real drivers keep: every operation idempotent by
//! uuid, an interrupted create finished or refused as the real ones do, a
//! migration's target found as it is, shrinking refused. A "thick" fake
//! (`new_reads_zero: false`) fills every new object with `0xEE` bytes, as a
//! thick LV's extents hold an earlier LV's data, so a copy that forgets to
//! zero a gap fails its test.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::{
    Capabilities, Change, DataPath, Discovery, Driver, DriverError, Holders, Layout, Mark, NewMark,
    NewObject, ObjKind, Object, Op, PathKind, PitMethod, PitRequest, PointInTime, ReadMethod,
    ReadRecord, Reads, SnapshotSpace,
};
use crate::model::{Capacity, Health, InUse, Inventory, Observed};

/// One object of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeObject {
    /// Manifest name.
    pub name: String,
    /// Kind.
    pub kind: ObjKind,
    /// Size in bytes.
    pub size: u64,
    /// Mark.
    pub mark: Mark,
    /// Migration id, for a target.
    pub migration: Option<Uuid>,
    /// For snapshots: the volume.
    pub parent: Option<Uuid>,
    /// In use.
    pub in_use: bool,
    /// Its consistency group ([`Driver::set_group`]).
    pub group: Option<String>,
}

/// The in-memory back end. Clones share one state: a test keeps a handle
/// while the registry holds another (wrapped in a fault decorator, say).
#[derive(Clone)]
pub struct FakeDriver {
    name: String,
    root: PathBuf,
    thin: bool,
    objects: Arc<Mutex<BTreeMap<Uuid, FakeObject>>>,
    released: Arc<Mutex<Vec<Uuid>>>,
    /// A pool of this many bytes that written blocks draw on ([`Driver::room`]).
    pool: Option<u64>,
    /// Each object's place in the order of creation ([`Object::created`]).
    created: Arc<Mutex<BTreeMap<Uuid, u64>>>,
}

impl FakeDriver {
    /// A back end named `name` keeping data under `root` (created);
    /// `thin`: new objects read as zeros (else they hold garbage).
    pub fn new(name: &str, root: &Path, thin: bool) -> Self {
        let root = root.join(name);
        std::fs::create_dir_all(&root).unwrap_or_default();
        Self {
            name: name.to_owned(),
            root,
            thin,
            objects: Arc::new(Mutex::new(BTreeMap::new())),
            released: Arc::new(Mutex::new(Vec::new())),
            pool: None,
            created: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Its objects' written blocks draw on a pool of `bytes`, as a thin
    /// pool's do: [`Driver::room`] says what is left.
    #[must_use]
    pub fn with_pool(mut self, bytes: u64) -> Self {
        self.pool = Some(bytes);
        self
    }

    /// Notes that `uuid` was created now.
    fn born(&self, uuid: Uuid) {
        let mut c = self
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = c.values().max().map_or(1, |m| m + 1);
        c.insert(uuid, next);
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<Uuid, FakeObject>> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every object, by uuid.
    pub fn state(&self) -> BTreeMap<Uuid, FakeObject> {
        self.objects().clone()
    }

    /// Objects released (`Retain`).
    pub fn released(&self) -> Vec<Uuid> {
        self.released
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts an object in place (a test's starting state), its data `data`
    /// padded with zeros to `size`.
    pub fn put(&self, uuid: Uuid, object: FakeObject, data: &[u8]) {
        let f = self.file(uuid, true);
        f.set_len(object.size).unwrap_or_default();
        // Zero blocks stay holes, as on a sparse file or a thin LV.
        for (i, block) in data.chunks(4096).enumerate() {
            if block.iter().any(|b| *b != 0) {
                let _ = f.write_all_at(block, i as u64 * 4096);
            }
        }
        self.objects().insert(uuid, object);
        self.born(uuid);
    }

    /// The data of object `uuid`.
    pub fn data(&self, uuid: Uuid) -> Vec<u8> {
        std::fs::read(self.path(uuid)).unwrap_or_default()
    }

    /// Marks object `uuid` in use or not.
    pub fn set_in_use(&self, uuid: Uuid, in_use: bool) {
        if let Some(o) = self.objects().get_mut(&uuid) {
            o.in_use = in_use;
        }
    }

    fn path(&self, uuid: Uuid) -> PathBuf {
        self.root.join(uuid.to_string())
    }

    fn file(&self, uuid: Uuid, truncate: bool) -> std::fs::File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(self.path(uuid))
            .unwrap_or_else(|e| panic!("fake back end {}: {e}", self.root.display()))
    }

    fn refused(&self, op: Op, why: String) -> DriverError {
        DriverError::refused(&self.name, op, why)
    }

    /// A new data file of `size` bytes: the source's bytes when given, else
    /// zeros on a thin fake and garbage on a thick one.
    fn fill(&self, uuid: Uuid, size: u64, source: Option<Uuid>) {
        let f = self.file(uuid, true);
        let _ = f.set_len(size);
        match source {
            // A clone is its source's bytes, zeros after (as real clones).
            Some(s) => {
                let _ = f.write_all_at(&self.data(s), 0);
            }
            None if !self.thin => {
                let junk = vec![0xEE; usize::try_from(size).unwrap_or(0)];
                let _ = f.write_all_at(&junk, 0);
            }
            None => {}
        }
    }
}

/// A fake back end's capabilities: `thin` reads zeros where nothing was
/// written and knows its allocation; snapshots are copies; no pool.
pub fn capabilities(thin: bool) -> Capabilities {
    Capabilities {
        protocol: "fake".into(),
        thin,
        new_reads_zero: thin,
        knows_allocation: thin,
        extends_with_snapshots: true,
        snapshots: SnapshotSpace::Copy,
        space: None,
        relabel: false,
        pool: None,
        delete_note: None,
        retained: "the fake object {kind}-{uuid} stays, no longer managed".into(),
        group_snapshots: crate::model::GroupSnapshots::Idle,
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.thin)
    }

    fn discover(&self, _holders: &Holders) -> (u64, Discovery) {
        let objects = self
            .objects()
            .iter()
            .map(|(uuid, o)| Observed {
                uuid: *uuid,
                name: o.name.clone(),
                kind: o.kind,
                size: o.size,
                allocated: None,
                parent: o.parent,
                clone_of: None,
                health: Health::of_mark(o.mark),
                in_use: o.in_use.then(|| InUse::Named {
                    holder: "a test".into(),
                }),
                group: o.group.clone(),
            })
            .collect();
        (
            1,
            Discovery::Ok(Inventory {
                capacity: Capacity {
                    total: 1 << 40,
                    free: 1 << 40,
                    ..Capacity::default()
                },
                objects,
                foreign: Vec::new(),
                problems: Vec::new(),
                generation: None,
            }),
        )
    }

    fn create(&self, new: &NewObject<'_>) -> Result<Change, DriverError> {
        let existing = self.objects().get(&new.uuid).cloned();
        if let Some(o) = existing {
            return match (new.mark, o.mark) {
                (NewMark::Ready, Mark::Ready) if o.size == new.size => Ok(Change::Unchanged),
                (NewMark::Ready, Mark::Creating) => {
                    self.fill(new.uuid, new.size, new.source.map(|s| s.1));
                    self.objects().insert(
                        new.uuid,
                        FakeObject {
                            mark: Mark::Ready,
                            ..o
                        },
                    );
                    Ok(Change::Changed)
                }
                (NewMark::Filling, Mark::Creating) => Ok(Change::Unchanged),
                (NewMark::Migrating { .. }, Mark::Migrating) if o.size == new.size => {
                    Ok(Change::Unchanged)
                }
                _ => Err(self.refused(
                    Op::Create,
                    format!("{} exists as a {} {}", new.uuid, o.mark.as_str(), o.kind),
                )),
            };
        }
        if let Some((kind, s)) = new.source {
            match self.objects().get(&s) {
                Some(o) if o.kind == kind && o.mark == Mark::Ready && o.size <= new.size => {}
                _ => {
                    return Err(self.refused(Op::Create, format!("no ready source {s}")));
                }
            }
        }
        self.fill(new.uuid, new.size, new.source.map(|s| s.1));
        let (mark, migration) = match new.mark {
            NewMark::Ready => (Mark::Ready, None),
            NewMark::Filling => (Mark::Creating, None),
            NewMark::Migrating { id, .. } => (Mark::Migrating, Some(id)),
        };
        self.objects().insert(
            new.uuid,
            FakeObject {
                group: None,
                name: new.name.to_owned(),
                kind: new.kind,
                size: new.size,
                mark,
                migration,
                parent: None,
                in_use: false,
            },
        );
        self.born(new.uuid);
        Ok(Change::Changed)
    }

    fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        _space: u64,
    ) -> Result<Change, DriverError> {
        if let Some(o) = self.objects().get(&uuid) {
            return if o.kind == ObjKind::Snapshot && o.mark == Mark::Ready {
                Ok(Change::Unchanged)
            } else {
                Err(self.refused(Op::Snapshot, format!("{uuid} exists")))
            };
        }
        let Some(vol) = self.objects().get(&volume).cloned() else {
            return Err(self.refused(Op::Snapshot, format!("no volume {volume}")));
        };
        self.fill(uuid, vol.size, Some(volume));
        self.objects().insert(
            uuid,
            FakeObject {
                group: None,
                name: name.to_owned(),
                kind: ObjKind::Snapshot,
                size: vol.size,
                mark: Mark::Ready,
                migration: None,
                parent: Some(volume),
                in_use: false,
            },
        );
        self.born(uuid);
        Ok(Change::Changed)
    }

    fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        _space: u64,
    ) -> Result<Change, DriverError> {
        let Some(vol) = self.objects().get(&volume).cloned() else {
            return Err(self.refused(Op::Snapshot, format!("no volume {volume}")));
        };
        if vol.mark != Mark::Migrating || vol.migration.is_none() {
            return Err(self.refused(
                Op::Snapshot,
                format!("{volume} is not a migration's target"),
            ));
        }
        if let Some(o) = self.objects().get(&uuid) {
            return if o.kind == ObjKind::Snapshot
                && o.mark == Mark::Migrating
                && o.migration == vol.migration
            {
                Ok(Change::Unchanged)
            } else {
                Err(self.refused(Op::Snapshot, format!("{uuid} exists")))
            };
        }
        self.fill(uuid, vol.size, Some(volume));
        self.objects().insert(
            uuid,
            FakeObject {
                name: name.to_owned(),
                kind: ObjKind::Snapshot,
                group: None,
                size: vol.size,
                mark: Mark::Migrating,
                migration: vol.migration,
                parent: Some(volume),
                in_use: false,
            },
        );
        self.born(uuid);
        Ok(Change::Changed)
    }

    fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, DriverError> {
        let mut objects = self.objects();
        let Some(o) = objects.get_mut(&uuid) else {
            return Err(self.refused(Op::Extend, format!("no object {uuid}")));
        };
        if size < o.size {
            return Err(self.refused(Op::Extend, format!("refusing to shrink {uuid}")));
        }
        if size == o.size {
            return Ok(Change::Unchanged);
        }
        o.size = size;
        drop(objects);
        let _ = self.file(uuid, false).set_len(size);
        Ok(Change::Changed)
    }

    fn adopt(&self, a: &super::Adoption<'_>) -> Result<Change, DriverError> {
        if self.objects().contains_key(&a.uuid) {
            return Ok(Change::Unchanged);
        }
        // The fake holds nothing foreign: there is never anything to adopt.
        Err(DriverError::refused(
            &self.name,
            Op::Adopt,
            format!("no foreign entry {} here", a.entry),
        ))
    }

    fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, DriverError> {
        let mut objects = self.objects();
        let Some(o) = objects.get_mut(&uuid) else {
            return Err(self.refused(Op::Rename, format!("no object {uuid}")));
        };
        if o.name == name {
            return Ok(Change::Unchanged);
        }
        name.clone_into(&mut o.name);
        Ok(Change::Changed)
    }

    fn release(&self, uuid: Uuid) -> Result<Change, DriverError> {
        if self.objects().remove(&uuid).is_none() {
            return Ok(Change::Unchanged);
        }
        self.released
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(uuid);
        Ok(Change::Changed)
    }

    fn delete(&self, uuid: Uuid) -> Result<Change, DriverError> {
        let mut objects = self.objects();
        match objects.get_mut(&uuid) {
            None => Ok(Change::Unchanged),
            Some(o) if o.in_use => Err(self.refused(Op::Delete, format!("{uuid} is in use"))),
            Some(o) => {
                o.mark = Mark::Deleting;
                let _ = std::fs::remove_file(self.path(uuid));
                objects.remove(&uuid);
                Ok(Change::Changed)
            }
        }
    }

    fn set_mark(&self, uuid: Uuid, mark: Mark) -> Result<Change, DriverError> {
        let mut objects = self.objects();
        let Some(o) = objects.get_mut(&uuid) else {
            return Err(self.refused(Op::SetMark, format!("no object {uuid}")));
        };
        if o.mark == mark {
            return Ok(Change::Unchanged);
        }
        match mark {
            Mark::Ready | Mark::Deleting => {
                o.mark = mark;
                if mark == Mark::Ready {
                    o.migration = None;
                }
                Ok(Change::Changed)
            }
            Mark::Creating | Mark::Migrating => {
                Err(self.refused(Op::SetMark, "marked only when created".into()))
            }
        }
    }

    fn set_group(&self, uuid: Uuid, group: Option<&str>) -> Result<Change, DriverError> {
        let mut objects = self.objects();
        let Some(o) = objects.get_mut(&uuid) else {
            return Err(self.refused(Op::SetGroup, format!("no object {uuid}")));
        };
        if o.group.as_deref() == group {
            return Ok(Change::Unchanged);
        }
        o.group = group.map(str::to_owned);
        Ok(Change::Changed)
    }

    fn object(&self, uuid: Uuid) -> Result<Option<Object>, DriverError> {
        let created = self
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&uuid)
            .copied();
        Ok(self.objects().get(&uuid).map(|o| Object {
            created,
            uuid,
            name: o.name.clone(),
            kind: o.kind,
            size: o.size,
            mark: o.mark,
            migration: o.migration,
            in_use: o.in_use,
        }))
    }

    fn data_path(&self, uuid: Uuid) -> Result<DataPath, DriverError> {
        let Some(o) = self.objects().get(&uuid).cloned() else {
            return Err(self.refused(Op::Open, format!("no object {uuid}")));
        };
        Ok(DataPath {
            path: self.path(uuid),
            len: o.size,
            kind: if self.thin {
                PathKind::File
            } else {
                PathKind::Block
            },
        })
    }

    fn room(&self, _uuid: Uuid) -> Result<Option<super::Room>, DriverError> {
        use std::os::unix::fs::MetadataExt as _;
        let Some(total) = self.pool else {
            return Ok(None);
        };
        let used: u64 = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum();
        Ok(Some(super::Room {
            what: format!("the fake pool of {}", self.name),
            free: total.saturating_sub(used),
            total,
            short: None,
            how: "give the fake a larger pool".into(),
        }))
    }

    fn layout(&self, _uuid: Uuid) -> Result<Layout, DriverError> {
        Ok(if self.thin {
            Layout::Seek
        } else {
            Layout::Everything
        })
    }

    fn group_snapshot(
        &self,
        cut: &super::GroupCut<'_>,
        _holds: &mut dyn super::Holds,
    ) -> Result<super::CutReport, DriverError> {
        super::idle_group_snapshot(self, cut, &|v| {
            Ok(self
                .objects()
                .get(&v)
                .is_some_and(|o| o.in_use)
                .then(|| "a test".to_owned()))
        })
    }

    fn point_in_time(&self, req: &PitRequest) -> Result<Box<dyn PointInTime + '_>, DriverError> {
        let path = self.data_path(req.volume)?.path;
        Ok(Box::new(FakePit {
            path,
            reads: Reads::DataExtents,
            read: ReadRecord::new(ReadMethod::AllocatedScan, "the fake's data extents", false),
        }))
    }
}

struct FakePit {
    path: PathBuf,
    reads: Reads,
    read: ReadRecord,
}

impl PointInTime for FakePit {
    fn path(&self) -> &Path {
        &self.path
    }
    fn reads(&self) -> &Reads {
        &self.reads
    }
    fn scratch(&self) -> bool {
        false
    }
    fn method(&self) -> PitMethod {
        PitMethod::Direct
    }
    fn read(&self) -> &ReadRecord {
        &self.read
    }
    fn check(&self) -> Result<(), DriverError> {
        Ok(())
    }
    fn commit(self: Box<Self>) -> Result<(), DriverError> {
        Ok(())
    }
}
