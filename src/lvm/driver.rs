//! The operations of an `lvm` back end: create (thick, thin, clones), snapshot,
//! extend, delete, release, and creating a declared thin pool.
//!
//! Every operation looks at the VG afresh (`lvs`, one command) and finds its LV
//! by the `cinderblock.uuid` tag, never by a name it remembers; then does only
//! what is missing. So each is idempotent by uuid, and a re-run after a crash at
//! any point finishes the job:
//!
//! | operation | steps | a crash in between leaves | the re-run |
//! | --- | --- | --- | --- |
//! | create thin/thick, snapshot, thin clone, pool | one `lvcreate` with every tag | nothing, or the tagged LV | sees it, `Unchanged` |
//! | thin clone larger than its source | `lvcreate -s` tagged, `lvextend` | a ready, smaller LV | the planner plans an extend |
//! | thick clone | `lvcreate` tagged `state=creating`, copy, `--deltag` | a `creating` LV (discovered as an interrupted create) | copies again from scratch, then clears the tag |
//! | delete | `--addtag state=deleting`, zero (thick), `lvremove` | a `deleting` LV (discovered as an interrupted delete) | zeroes and removes |
//! | release (`Retain`) | one `lvchange` swapping the owner mark for `cinderblock.released` | either mark | `Unchanged` once released |
//! | hand over (a thick LV to another thick back end of the VG) | one `lvchange` swapping `cinderblock.backend=<this>` for `=<to>` | either owner | `Unchanged` (absent here) |
//! | migration target in the source's VG | one tagged `lvcreate` under the second name (`volume-<uuid>-m`) while the source holds the first | the same as any target | found by its identity tag |
//!
//! Tags go on in the *same* `lvcreate` that makes the LV: there is no moment
//! when an LV of ours exists untagged, so there is nothing to guess on the next
//! run (the alternative, create then tag, would need a naming convention to
//! recognise orphans, which is exactly Cinder's weakness).
//!
//! Refusals, each with its reason: shrinking; extending a thick origin that has
//! thick snapshots (lvm2 resizes it only while inactive, which would cut off
//! its users); removing an LV that is open, or a thick origin with snapshots
//! (lvremove would take the snapshots with it); a thick clone of a volume that
//! is open (it would not be a point-in-time copy: clone a snapshot instead).
//! Anything without our owner mark is never changed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::cmd::{self, Runner};
use super::report::{self, Lv, LvKind, ReportError};
use super::tags::{self, Owned, Ownership};
use crate::blockio;
use crate::exec::{Cmd, ExecError};
use crate::model::{Mark, ObjKind};

pub use crate::model::Change;

/// How thick LVs are wiped before removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wipe {
    /// Zeroed (`volumeClear: zero`, the default).
    Zero,
    /// Removed as they are (`volumeClear: none`).
    None,
}

/// Errors of the LVM driver.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// An lvm2 command failed.
    #[error("cannot {op} {target}")]
    Command {
        /// What we were doing.
        op: &'static str,
        /// `vg/lv` or the VG.
        target: String,
        /// The command's failure (argv, status, stderr); boxed, it is large.
        #[source]
        source: Box<ExecError>,
    },
    /// The `lvs` report could not be read.
    #[error("cannot read the LVs of {vg}")]
    Report {
        /// VG.
        vg: String,
        /// Why.
        #[source]
        source: ReportError,
    },
    /// `thin_dump` or `thin_delta` printed XML we cannot read.
    #[error("cannot read the metadata of thin pool {vg}/{pool}")]
    ThinXml {
        /// VG.
        vg: String,
        /// Thin pool.
        pool: String,
        /// Why.
        #[source]
        source: Box<super::thin::ThinXmlError>,
    },
    /// Reading or writing a device failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No LV of ours has this identity.
    #[error("no LV of back end {backend} in {vg} carries cinderblock.uuid={uuid}")]
    NotFound {
        /// Identity.
        uuid: Uuid,
        /// VG.
        vg: String,
        /// Back end.
        backend: String,
    },
    /// An LV we would create exists without our mark.
    #[error(
        "{vg}/{lv} exists but is not this back end's (no cinderblock.backend={backend} tag); not touching it"
    )]
    Foreign {
        /// VG.
        vg: String,
        /// LV.
        lv: String,
        /// Back end.
        backend: String,
    },
    /// Two LVs carry one identity.
    #[error("{uuid} is carried by several LVs ({lvs}); remove the wrong tags by hand")]
    Ambiguous {
        /// Identity.
        uuid: Uuid,
        /// The LVs.
        lvs: String,
    },
    /// The request is refused, and why.
    #[error("{vg}/{lv}: {reason}")]
    Refused {
        /// VG.
        vg: String,
        /// LV.
        lv: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl LvmError {
    /// A command that timed out (a slow device, lvm2's lock held) or I/O on
    /// a device can be worth retrying; refusals, foreign or ambiguous LVs
    /// and unreadable reports need a change first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Command { source, .. } => source.is_retryable(),
            Self::Io { .. } => true,
            _ => false,
        }
    }
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// A volume, snapshot or image of ours.
    pub kind: ObjKind,
    /// Its identity.
    pub uuid: Uuid,
}

/// A volume or image to create.
#[derive(Debug, Clone, Copy)]
pub struct NewLv<'a> {
    /// Identity (chosen by the executor, journalled, reused on retry).
    pub uuid: Uuid,
    /// Manifest name.
    pub name: &'a str,
    /// Volume or image.
    pub kind: ObjKind,
    /// Size in bytes, a multiple of the extent size.
    pub size: u64,
    /// Copy of this object, if any.
    pub source: Option<Source>,
}

/// One `lvm` back end: a VG, optionally a thin pool in it, and the back end
/// name written into every owner mark.
pub struct LvmBackend<'r> {
    pub(super) run: &'r dyn Runner,
    pub(super) backend: String,
    pub(super) vg: String,
    pub(super) pool: Option<String>,
    pub(super) wipe: Wipe,
    pub(super) dev: PathBuf,
}

impl<'r> LvmBackend<'r> {
    /// A back end on `vg` (thin in `pool` when given), owned as `backend`.
    pub fn new(
        run: &'r dyn Runner,
        backend: impl Into<String>,
        vg: impl Into<String>,
        pool: Option<String>,
        wipe: Wipe,
    ) -> Self {
        LvmBackend {
            run,
            backend: backend.into(),
            vg: vg.into(),
            pool,
            wipe,
            dev: PathBuf::from("/dev"),
        }
    }

    /// Looks for device nodes under `dir` instead of `/dev` (tests).
    #[must_use]
    pub fn with_dev_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dev = dir.into();
        self
    }

    /// The back end name in owner marks.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// `/dev/<vg>/<lv>`.
    pub fn device(&self, lv: &str) -> PathBuf {
        self.dev.join(&self.vg).join(lv)
    }

    /// The exception store of a thick snapshot: device-mapper names double
    /// every `-` of the VG and LV names and join them with one.
    pub fn cow_device(&self, lv: &str) -> PathBuf {
        let dm = |s: &str| s.replace('-', "--");
        self.dev
            .join("mapper")
            .join(format!("{}-{}-cow", dm(&self.vg), dm(lv)))
    }

    pub(super) fn target(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    pub(super) fn exec(&self, op: &'static str, target: String, cmd: &Cmd) -> Result<(), LvmError> {
        self.run
            .run(cmd)
            .map(|_| ())
            .map_err(|source| LvmError::Command {
                op,
                target,
                source: Box::new(source),
            })
    }

    pub(super) fn refused(&self, lv: &str, reason: String) -> LvmError {
        LvmError::Refused {
            vg: self.vg.clone(),
            lv: lv.to_owned(),
            reason,
        }
    }

    /// The VG's visible LVs, now.
    pub fn lvs(&self) -> Result<Vec<Lv>, LvmError> {
        let out = self
            .run
            .run(&cmd::lvs_cmd(&self.vg))
            .map_err(|source| LvmError::Command {
                op: "list the LVs of",
                target: self.vg.clone(),
                source: Box::new(source),
            })?;
        report::parse_lvs(&out.stdout).map_err(|source| LvmError::Report {
            vg: self.vg.clone(),
            source,
        })
    }

    pub(super) fn find<'l>(
        &self,
        lvs: &'l [Lv],
        uuid: Uuid,
    ) -> Result<Option<(&'l Lv, Owned)>, LvmError> {
        let mut hits = lvs
            .iter()
            .filter_map(|lv| match tags::ownership(lv, &self.backend) {
                Ownership::Ours(o) if o.uuid == uuid => Some((lv, o)),
                _ => None,
            });
        let first = hits.next();
        if let Some((second, _)) = hits.next() {
            let first_name = first.as_ref().map_or("", |(l, _)| l.name.as_str());
            return Err(LvmError::Ambiguous {
                uuid,
                lvs: format!("{first_name}, {}", second.name),
            });
        }
        Ok(first)
    }

    pub(super) fn ours<'l>(&self, lvs: &'l [Lv], uuid: Uuid) -> Result<(&'l Lv, Owned), LvmError> {
        self.find(lvs, uuid)?.ok_or_else(|| LvmError::NotFound {
            uuid,
            vg: self.vg.clone(),
            backend: self.backend.clone(),
        })
    }

    fn check_free_name(&self, lvs: &[Lv], lv: &str) -> Result<(), LvmError> {
        if lvs.iter().any(|l| l.name == lv) {
            return Err(LvmError::Foreign {
                vg: self.vg.clone(),
                lv: lv.to_owned(),
                backend: self.backend.clone(),
            });
        }
        Ok(())
    }

    /// Creates the back end's thin pool with `size` data and `metadata`
    /// metadata bytes; `Unchanged` when it exists.
    pub fn create_pool(&self, size: u64, metadata: u64) -> Result<Change, LvmError> {
        let Some(pool) = &self.pool else {
            return Err(self.refused("", "this back end has no thin pool".into()));
        };
        let lvs = self.lvs()?;
        if let Some(l) = lvs.iter().find(|l| &l.name == pool) {
            return if l.attr.kind == LvKind::ThinPool {
                Ok(Change::Unchanged)
            } else {
                Err(self.refused(
                    pool,
                    format!("exists and is not a thin pool (lv_attr {})", l.attr.raw),
                ))
            };
        }
        // A note for people (`lvs -o+tags`); ownership() ignores it.
        let tags = vec![tags::tag("cinderblock.pool", &self.backend)];
        self.exec(
            "create the thin pool",
            self.target(pool),
            &cmd::create_pool(&self.vg, pool, size, metadata, &tags),
        )?;
        tracing::info!(vg = %self.vg, %pool, size, metadata, "thin pool created");
        Ok(Change::Changed)
    }

    /// Creates a volume or image, empty or from `spec.source`; finishes an
    /// interrupted create of the same uuid.
    pub fn create(&self, spec: &NewLv<'_>) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let lv_name = tags::lv_name(spec.kind, spec.uuid);
        if let Some((lv, owned)) = self.find(&lvs, spec.uuid)? {
            return self.finish_create(&lvs, lv, &owned, spec);
        }
        self.check_free_name(&lvs, &lv_name)?;
        let mut owned = Owned {
            uuid: spec.uuid,
            name: spec.name.to_owned(),
            kind: spec.kind,
            parent: None,
            mark: Mark::Ready,
        };
        let Some(source) = spec.source else {
            let tags = tags::new_tags(&self.backend, &owned);
            let c = match &self.pool {
                Some(pool) => cmd::create_thin(&self.vg, pool, &lv_name, spec.size, &tags),
                None => cmd::create_thick(&self.vg, &lv_name, spec.size, &tags),
            };
            self.exec("create", self.target(&lv_name), &c)?;
            tracing::info!(uuid = %spec.uuid, lv = %lv_name, size = spec.size, "created");
            return Ok(Change::Changed);
        };
        let (src, src_owned) = self.ours(&lvs, source.uuid)?;
        if src_owned.kind != source.kind || src_owned.mark != Mark::Ready {
            return Err(self.refused(
                &src.name,
                format!(
                    "the source is a {} {}, not a ready {}",
                    src_owned.kind.as_str(),
                    if src_owned.mark == Mark::Ready {
                        ""
                    } else {
                        src_owned.mark.as_str()
                    },
                    source.kind.as_str()
                ),
            ));
        }
        let src_len = Self::readable_size(&lvs, src);
        if src_len > spec.size {
            return Err(self.refused(
                &lv_name,
                format!(
                    "{} bytes is less than its source {} ({src_len} bytes)",
                    spec.size, src.name
                ),
            ));
        }
        if src.attr.kind == LvKind::Thin {
            // O(1): a thin snapshot is an independent thin device; grow it after.
            let tags = tags::new_tags(&self.backend, &owned);
            self.exec(
                "create",
                self.target(&lv_name),
                &cmd::create_thin_snapshot(&self.vg, &src.name, &lv_name, &tags),
            )?;
            if spec.size > src.size {
                self.exec(
                    "extend",
                    self.target(&lv_name),
                    &cmd::extend(&self.vg, &lv_name, spec.size),
                )?;
            }
            tracing::info!(uuid = %spec.uuid, lv = %lv_name, source = %src.name, "cloned (thin)");
            return Ok(Change::Changed);
        }
        if self.pool.is_some() {
            return Err(self.refused(
                &src.name,
                "a thick source cannot be cloned into a thin pool by this version".into(),
            ));
        }
        if src_owned.kind != ObjKind::Snapshot && src.attr.open {
            return Err(self.refused(
                &src.name,
                "is open (in use): a copy of it would not be from one point in time; snapshot it and clone the snapshot".into(),
            ));
        }
        owned.mark = Mark::Creating;
        let tags = tags::new_tags(&self.backend, &owned);
        self.exec(
            "create",
            self.target(&lv_name),
            &cmd::create_thick(&self.vg, &lv_name, spec.size, &tags),
        )?;
        crate::driver::fault::named("lvm-copy");
        self.copy_into(src, &lv_name, spec.size)?;
        Ok(Change::Changed)
    }

    /// Creates an empty volume tagged `state=creating`, for a restore to
    /// fill; [`Self::mark_ready`] clears the state when the data is in. One
    /// of this identity still `creating` is found as it is (the caller fills
    /// it from scratch); any other is refused.
    pub fn create_restoring(&self, spec: &NewLv<'_>) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let lv_name = tags::lv_name(spec.kind, spec.uuid);
        if let Some((lv, owned)) = self.find(&lvs, spec.uuid)? {
            if owned.mark == Mark::Creating && owned.kind == spec.kind && lv.size >= spec.size {
                return Ok(Change::Unchanged);
            }
            return Err(self.refused(&lv.name, "exists already".into()));
        }
        self.check_free_name(&lvs, &lv_name)?;
        let owned = Owned {
            uuid: spec.uuid,
            name: spec.name.to_owned(),
            kind: spec.kind,
            parent: None,
            mark: Mark::Creating,
        };
        let tags = tags::new_tags(&self.backend, &owned);
        let c = match &self.pool {
            Some(pool) => cmd::create_thin(&self.vg, pool, &lv_name, spec.size, &tags),
            None => cmd::create_thick(&self.vg, &lv_name, spec.size, &tags),
        };
        self.exec("create", self.target(&lv_name), &c)?;
        tracing::info!(uuid = %spec.uuid, lv = %lv_name, size = spec.size, "created for a restore");
        Ok(Change::Changed)
    }

    /// Clears `state=creating` from object `uuid` (a restore finished), or
    /// promotes a migration's target ([`Self::promote`]); `Unchanged` when
    /// ready.
    pub fn mark_ready(&self, uuid: Uuid) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        match owned.mark {
            Mark::Ready => Ok(Change::Unchanged),
            Mark::Creating => {
                self.clear_state(&lv.name, Mark::Creating)?;
                Ok(Change::Changed)
            }
            Mark::Migrating => self.promote(uuid),
            Mark::Deleting => {
                Err(self.refused(&lv.name, "is being deleted; finish the delete first".into()))
            }
        }
    }

    /// Whether volumes of this back end are thin LVs.
    pub fn is_thin(&self) -> bool {
        self.pool.is_some()
    }

    /// Makes the interrupted, partly filled LV `lv` the empty volume `spec`
    /// declares: a thin LV is removed and created again (unmapped blocks read
    /// as zeros, and nothing is written into the pool); a thick LV is zeroed
    /// in place. Then its `creating` mark goes. Idempotent: a crash between
    /// the thin remove and create leaves no LV, and the next plan creates it.
    fn empty_interrupted(
        &self,
        lv: &Lv,
        owned: &Owned,
        spec: &NewLv<'_>,
    ) -> Result<Change, LvmError> {
        tracing::warn!(uuid = %spec.uuid, lv = %lv.name, "an interrupted fill of a volume declared empty: emptying it");
        if let (LvKind::Thin, Some(pool)) = (&lv.attr.kind, &self.pool) {
            self.exec(
                "remove",
                self.target(&lv.name),
                &cmd::remove(&self.vg, &lv.name),
            )?;
            let fresh = Owned {
                mark: Mark::Ready,
                ..owned.clone()
            };
            let tags = tags::new_tags(&self.backend, &fresh);
            self.exec(
                "create",
                self.target(&lv.name),
                &cmd::create_thin(&self.vg, pool, &lv.name, lv.size.max(spec.size), &tags),
            )?;
            return Ok(Change::Changed);
        }
        self.ensure_active(lv)?;
        let path = self.device(&lv.name);
        let f = open(&path, true)?;
        let len = blockio::size(&f).map_err(io_err("size", &path))?;
        blockio::zero(&f, 0, len).map_err(io_err("zero", &path))?;
        f.sync_all().map_err(io_err("sync", &path))?;
        self.clear_state(&lv.name, Mark::Creating)?;
        Ok(Change::Changed)
    }

    fn finish_create(
        &self,
        lvs: &[Lv],
        lv: &Lv,
        owned: &Owned,
        spec: &NewLv<'_>,
    ) -> Result<Change, LvmError> {
        if owned.kind != spec.kind {
            return Err(self.refused(
                &lv.name,
                format!(
                    "exists as a {}, not a {}",
                    owned.kind.as_str(),
                    spec.kind.as_str()
                ),
            ));
        }
        match owned.mark {
            Mark::Deleting => {
                Err(self.refused(&lv.name, "is being deleted; finish the delete first".into()))
            }
            Mark::Migrating => Err(self.refused(
                &lv.name,
                "is the target of a migration; finish or abandon the migration first".into(),
            )),
            Mark::Creating => {
                let Some(source) = spec.source else {
                    // An empty create never marks its LV `creating`: this one
                    // stopped while being filled (a restore or a copy started
                    // outside this plan), and what is declared now is an empty
                    // volume. It is emptied before it is ready, never handed
                    // out half-filled.
                    return self.empty_interrupted(lv, owned, spec);
                };
                tracing::info!(uuid = %spec.uuid, "finishing an interrupted copy");
                let (src, _) = self.ours(lvs, source.uuid)?;
                self.copy_into(src, &lv.name, lv.size)?;
                Ok(Change::Changed)
            }
            Mark::Ready if lv.size < spec.size => {
                self.exec(
                    "extend",
                    self.target(&lv.name),
                    &cmd::extend(&self.vg, &lv.name, spec.size),
                )?;
                Ok(Change::Changed)
            }
            Mark::Ready => Ok(Change::Unchanged),
        }
    }

    /// Bytes a reader of `lv`'s device gets: a thick snapshot reads as its
    /// origin (its own `lv_size` is the exception store's).
    fn readable_size(lvs: &[Lv], lv: &Lv) -> u64 {
        if matches!(
            lv.attr.kind,
            LvKind::ThickSnapshot | LvKind::InvalidSnapshot
        ) && let Some(o) = lv
            .origin
            .as_ref()
            .and_then(|o| lvs.iter().find(|l| &l.name == o))
        {
            return o.size;
        }
        lv.size
    }

    pub(super) fn ensure_active(&self, lv: &Lv) -> Result<(), LvmError> {
        if lv.attr.active {
            return Ok(());
        }
        self.exec(
            "activate",
            self.target(&lv.name),
            &cmd::activate(&self.vg, &lv.name),
        )
    }

    /// Copies `src`'s data onto the thick LV `dst` (zeroing the rest), then
    /// clears its `creating` state.
    fn copy_into(&self, src: &Lv, dst: &str, dst_size: u64) -> Result<(), LvmError> {
        self.ensure_active(src)?;
        let src_path = self.device(&src.name);
        let dst_path = self.device(dst);
        let src_file = open(&src_path, false)?;
        let dst_file = open(&dst_path, true)?;
        let src_len = blockio::size(&src_file).map_err(io_err("size", &src_path))?;
        let extents = crate::copy::Extents::all(src_len);
        let stats = crate::copy::copy(
            &crate::copy::Job {
                source: &src_file,
                source_path: &src_path,
                target: &dst_file,
                target_path: &dst_path,
                len: src_len,
                target_len: dst_size,
                extents: &extents,
                // A thick LV's extents hold whatever was there before.
                kind: crate::copy::Target::MustZero,
                start: 0,
                bandwidth: None,
                hash_source: false,
                read_back: false,
                writeback: false,
            },
            &mut crate::copy::Quiet,
        )
        .map_err(|e| LvmError::Io {
            op: "copy onto",
            path: dst_path.clone(),
            source: std::io::Error::other(crate::error_chain(&e)),
        })?;
        tracing::info!(lv = %dst, source = %src.name, written = stats.written, zeroed = stats.zeroed, "copied");
        self.clear_state(dst, Mark::Creating)
    }

    fn clear_state(&self, lv: &str, state: Mark) -> Result<(), LvmError> {
        self.exec(
            "update the tags of",
            self.target(lv),
            &cmd::retag(&self.vg, lv, &[], &[tags::tag(tags::STATE, state.as_str())]),
        )
    }

    /// A snapshot `uuid` named `name` of volume `volume`: thin (O(1)) when the
    /// volume is thin, else a copy-on-write snapshot with `cow` bytes of
    /// exception store.
    pub fn snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        cow: u64,
    ) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        if let Some((lv, owned)) = self.find(&lvs, uuid)? {
            return match (owned.kind, owned.mark) {
                (ObjKind::Snapshot, Mark::Ready) => Ok(Change::Unchanged),
                (ObjKind::Snapshot, m) => Err(self.refused(&lv.name, format!("is {}", m.as_str()))),
                (k, _) => Err(self.refused(
                    &lv.name,
                    format!("exists as a {}, not a snapshot", k.as_str()),
                )),
            };
        }
        let lv_name = tags::lv_name(ObjKind::Snapshot, uuid);
        self.check_free_name(&lvs, &lv_name)?;
        let (vol, vol_owned) = self.ours(&lvs, volume)?;
        if vol_owned.kind == ObjKind::Snapshot || vol_owned.mark != Mark::Ready {
            return Err(self.refused(&vol.name, "is not a ready volume".into()));
        }
        let tags = tags::new_tags(
            &self.backend,
            &Owned {
                uuid,
                name: name.to_owned(),
                kind: ObjKind::Snapshot,
                parent: Some(volume),
                mark: Mark::Ready,
            },
        );
        let c = if vol.attr.kind == LvKind::Thin {
            cmd::create_thin_snapshot(&self.vg, &vol.name, &lv_name, &tags)
        } else {
            cmd::create_thick_snapshot(&self.vg, &vol.name, &lv_name, cow, &tags)
        };
        self.exec("snapshot", self.target(&vol.name), &c)?;
        tracing::info!(%uuid, lv = %lv_name, origin = %vol.name, "snapshot created");
        Ok(Change::Changed)
    }

    /// A snapshot `uuid` named `name` of migration target `volume`, tagged
    /// as part of the same migration (`cinderblock.state=migrating`, its
    /// migration id and source back end) in the one `lvcreate` that makes
    /// it: thin when the target is, else copy-on-write with `cow` bytes.
    /// Named like any snapshot, or by the second name while the source (in
    /// this volume group) holds the first. `Unchanged` when it exists so.
    pub fn migration_snapshot(
        &self,
        volume: Uuid,
        uuid: Uuid,
        name: &str,
        cow: u64,
    ) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (vol, vol_owned) = self.ours(&lvs, volume)?;
        let migration = tags::migration_of(vol);
        let (id, from) = match (&migration, vol_owned.kind, vol_owned.mark) {
            (Some((id, from)), ObjKind::Volume, Mark::Migrating) => (*id, from.as_str()),
            _ => {
                return Err(self.refused(&vol.name, "is not a migration's target".into()));
            }
        };
        if let Some((lv, owned)) = self.find(&lvs, uuid)? {
            let same = owned.kind == ObjKind::Snapshot
                && owned.mark == Mark::Migrating
                && tags::migration_of(lv).is_some_and(|(i, _)| i == id);
            return if same {
                Ok(Change::Unchanged)
            } else {
                Err(self.refused(
                    &lv.name,
                    format!(
                        "is a {} {}, not a snapshot of this migration",
                        owned.mark.as_str(),
                        owned.kind.as_str()
                    ),
                ))
            };
        }
        let lv_name = self.target_name(&lvs, ObjKind::Snapshot, uuid, from)?;
        let mut t = tags::new_tags(
            &self.backend,
            &Owned {
                uuid,
                name: name.to_owned(),
                kind: ObjKind::Snapshot,
                parent: Some(volume),
                mark: Mark::Migrating,
            },
        );
        t.push(tags::tag(tags::MIGRATION, &id.to_string()));
        t.push(tags::tag(tags::MIGRATING_FROM, from));
        let c = if vol.attr.kind == LvKind::Thin {
            cmd::create_thin_snapshot(&self.vg, &vol.name, &lv_name, &t)
        } else {
            cmd::create_thick_snapshot(&self.vg, &vol.name, &lv_name, cow, &t)
        };
        self.exec("snapshot", self.target(&vol.name), &c)?;
        tracing::info!(%uuid, lv = %lv_name, origin = %vol.name, %id, "chain snapshot taken on a migration's target");
        Ok(Change::Changed)
    }

    /// Grows a volume to `size` bytes. Refuses to shrink, and to resize a thick
    /// origin of thick snapshots.
    pub fn extend(&self, uuid: Uuid, size: u64) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        // (A migration's target grows along the chain it carries.)
        if !matches!(owned.mark, Mark::Ready | Mark::Migrating) {
            return Err(self.refused(&lv.name, format!("is {}", owned.mark.as_str())));
        }
        if owned.kind == ObjKind::Snapshot {
            return Err(self.refused(&lv.name, "snapshots are not extended".into()));
        }
        if lv.size > size {
            return Err(self.refused(
                &lv.name,
                format!("refusing to shrink from {} to {size} bytes", lv.size),
            ));
        }
        if lv.size == size {
            return Ok(Change::Unchanged);
        }
        let snaps = thick_snapshots_of(&lvs, lv);
        if !snaps.is_empty() {
            return Err(self.refused(
                &lv.name,
                format!(
                    "is the origin of thick snapshot(s) {}: lvm2 resizes such an origin only while it is inactive, which would cut off its users; delete the snapshots first",
                    snaps.join(", ")
                ),
            ));
        }
        self.exec(
            "extend",
            self.target(&lv.name),
            &cmd::extend(&self.vg, &lv.name, size),
        )?;
        self.grow_layer(&lv.name, uuid, size)?;
        tracing::info!(%uuid, lv = %lv.name, size, "extended");
        Ok(Change::Changed)
    }

    /// Deletes an LV of ours: mark `deleting`, zero it (thick, unless the back
    /// end says `volumeClear: none`), remove. Absent is `Unchanged`.
    pub fn delete(&self, uuid: Uuid) -> Result<Change, LvmError> {
        let mut lvs = self.lvs()?;
        if self.find(&lvs, uuid)?.is_some() && self.remove_layer(uuid)? == Change::Changed {
            // The group snapshots' I/O layer above it held it open.
            lvs = self.lvs()?;
        }
        let Some((lv, owned)) = self.find(&lvs, uuid)? else {
            return Ok(Change::Unchanged);
        };
        if lv.attr.open {
            return Err(self.refused(&lv.name, "is open (in use); not removing it".into()));
        }
        let snaps = thick_snapshots_of(&lvs, lv);
        if !snaps.is_empty() {
            return Err(self.refused(
                &lv.name,
                format!(
                    "has thick snapshot(s) {}, which lvremove would remove with it",
                    snaps.join(", ")
                ),
            ));
        }
        self.mark_lv_deleting(lv, &owned)?;
        let thick = !matches!(lv.attr.kind, LvKind::Thin);
        if thick && self.wipe == Wipe::Zero {
            self.ensure_active(lv)?;
            // A thick snapshot's own blocks are its exception store; writing
            // through the snapshot device would fill the store instead.
            let path = if matches!(
                lv.attr.kind,
                LvKind::ThickSnapshot | LvKind::InvalidSnapshot
            ) {
                self.cow_device(&lv.name)
            } else {
                self.device(&lv.name)
            };
            let f = open(&path, true)?;
            let len = blockio::size(&f).map_err(io_err("size", &path))?;
            blockio::zero(&f, 0, len).map_err(io_err("zero", &path))?;
            f.sync_all().map_err(io_err("sync", &path))?;
            tracing::info!(lv = %lv.name, bytes = len, "zeroed");
        }
        self.exec(
            "remove",
            self.target(&lv.name),
            &cmd::remove(&self.vg, &lv.name),
        )?;
        tracing::info!(%uuid, lv = %lv.name, "removed");
        // A thin volume's kept backup base goes with it (nothing else uses it).
        for s in self.backup_snapshots(uuid)? {
            self.remove_backup_snapshot(&s.lv.name)?;
        }
        Ok(Change::Changed)
    }

    /// Lets go of an LV (`deletionPolicy: Retain` after its manifest was
    /// removed): the owner mark becomes `cinderblock.released=<backend>`, so the
    /// LV and its data stay, foreign from now on. Absent is `Unchanged`.
    pub fn release(&self, uuid: Uuid) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let Some((lv, _)) = self.find(&lvs, uuid)? else {
            return Ok(Change::Unchanged);
        };
        self.exec(
            "release",
            self.target(&lv.name),
            &cmd::retag(
                &self.vg,
                &lv.name,
                &[tags::tag(tags::RELEASED, &self.backend)],
                &[tags::tag(tags::BACKEND, &self.backend)],
            ),
        )?;
        tracing::info!(%uuid, lv = %lv.name, "released");
        Ok(Change::Changed)
    }

    /// Gives LV `uuid` the manifest name `name` (a rename in the
    /// manifests): its `cinderblock.name` tag replaced in one `lvchange`.
    /// The LV keeps its own name (LV names never carry manifest text), its
    /// identity, data and snapshots' parent tags. `Unchanged` when it has
    /// that name; refused when no LV of ours has this identity.
    pub fn rename(&self, uuid: Uuid, name: &str) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let Some((lv, _)) = self.find(&lvs, uuid)? else {
            return Err(self.refused(
                &uuid.to_string(),
                "no LV of this back end carries this identity".into(),
            ));
        };
        let new = tags::tag(tags::NAME, name);
        if lv.tags.contains(&new) {
            return Ok(Change::Unchanged);
        }
        let old: Vec<String> = lv
            .tags
            .iter()
            .filter(|t| t.split('=').next() == Some(tags::NAME))
            .cloned()
            .collect();
        self.exec(
            "rename",
            self.target(&lv.name),
            &cmd::retag(&self.vg, &lv.name, &[new], &old),
        )?;
        tracing::info!(%uuid, lv = %lv.name, name, "renamed");
        Ok(Change::Changed)
    }
}

impl LvmBackend<'_> {
    /// Marks foreign LV `a.entry` as ours (see [`crate::driver::Driver::adopt`]):
    /// the identity tags and the owner mark in one `lvchange`, a released
    /// mark of this back end dropped in the same call. Its data and name
    /// stay. `Unchanged` once `a.uuid` is ours.
    pub fn adopt(&self, a: &crate::driver::Adoption<'_>) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        if self.find(&lvs, a.uuid)?.is_some() {
            return Ok(Change::Unchanged);
        }
        let Some(lv) = lvs.iter().find(|l| l.name == a.entry) else {
            return Err(self.refused(
                a.entry,
                "no such LV (it was removed or renamed since the plan)".into(),
            ));
        };
        let value = |key: &str| lv.tag_value(key).and_then(tags::decode);
        if let Some(owner) = value(tags::BACKEND) {
            return Err(self.refused(
                &lv.name,
                format!(
                    "it is marked as back end {owner}'s ({}={owner})",
                    tags::BACKEND
                ),
            ));
        }
        let released = value(tags::RELEASED).as_deref() == Some(self.backend.as_str());
        if let Some(id) = value(tags::UUID)
            && id != a.uuid.to_string()
        {
            return Err(self.refused(
                &lv.name,
                format!("it carries another identity ({}={id})", tags::UUID),
            ));
        }
        if lv.size != a.size {
            return Err(self.refused(
                &lv.name,
                format!(
                    "it is {} bytes, not the {} bytes planned (it changed since the plan)",
                    lv.size, a.size
                ),
            ));
        }
        let cfg = super::inventory::Config {
            backend: &self.backend,
            vg: &self.vg,
            thin_pool: self.pool.as_deref(),
        };
        if let Some(why) = super::inventory::foreign_lv(lv, &cfg).unfit {
            return Err(self.refused(&lv.name, format!("it is {why}")));
        }
        let owned = Owned {
            uuid: a.uuid,
            name: a.name.to_owned(),
            kind: a.kind,
            parent: a.parent,
            mark: Mark::Ready,
        };
        let add: Vec<String> = tags::new_tags(&self.backend, &owned)
            .into_iter()
            .filter(|t| !lv.tags.contains(t))
            .collect();
        // Tags of our keys that would contradict the new identity (a
        // released object's old name or state) go in the same commit.
        let del: Vec<String> = lv
            .tags
            .iter()
            .filter(|t| t.starts_with(tags::PREFIX) && !add.contains(t))
            .filter(|t| {
                let key = t.split('=').next().unwrap_or_default();
                (key == tags::RELEASED && released)
                    || key == tags::STATE
                    || add.iter().any(|n| n.split('=').next() == Some(key))
            })
            .cloned()
            .collect();
        self.exec(
            "adopt",
            self.target(&lv.name),
            &cmd::retag(&self.vg, &lv.name, &add, &del),
        )?;
        tracing::info!(uuid = %a.uuid, lv = %lv.name, released, "adopted");
        Ok(Change::Changed)
    }
}

/// A migration's source or target on an LVM back end, opened for I/O.
#[derive(Debug, Clone)]
pub struct MigrationLv {
    /// The device node.
    pub device: PathBuf,
    /// `lv_size` in bytes.
    pub size: u64,
    /// A thin LV (reads zeros where unmapped).
    pub thin: bool,
    /// The LV's name.
    pub lv: String,
    /// Open (in use).
    pub open: bool,
    /// The migration identity, for a target.
    pub migration: Option<Uuid>,
    /// Its mark (the state tag).
    pub mark: Mark,
}

impl LvmBackend<'_> {
    fn migration_lv(lv: &Lv, owned: &Owned, device: PathBuf) -> MigrationLv {
        MigrationLv {
            device,
            size: lv.size,
            thin: lv.attr.kind == LvKind::Thin,
            lv: lv.name.clone(),
            open: lv.attr.open,
            migration: tags::migration_of(lv).map(|(id, _)| id),
            mark: owned.mark,
        }
    }

    /// Volume `uuid` as a migration's source (activated), or `None` when it
    /// is not here.
    pub fn migration_source(&self, uuid: Uuid) -> Result<Option<MigrationLv>, LvmError> {
        let lvs = self.lvs()?;
        let Some((lv, owned)) = self.find(&lvs, uuid)? else {
            return Ok(None);
        };
        if owned.kind != ObjKind::Volume {
            return Err(self.refused(
                &lv.name,
                format!("is a {}, not a volume", owned.kind.as_str()),
            ));
        }
        self.ensure_active(lv)?;
        Ok(Some(Self::migration_lv(lv, &owned, self.device(&lv.name))))
    }

    /// The target of migration `id` of volume `uuid` from back end `from`:
    /// found when it exists as this migration's target (a resumed run),
    /// else created thin or thick per the back end, tagged
    /// `cinderblock.state=migrating` with the migration's identity in the
    /// same `lvcreate`, and activated. An LV of this identity in any other
    /// state is refused.
    pub fn migration_target(
        &self,
        uuid: Uuid,
        name: &str,
        size: u64,
        id: Uuid,
        from: &str,
    ) -> Result<MigrationLv, LvmError> {
        let lvs = self.lvs()?;
        if let Some((lv, owned)) = self.find(&lvs, uuid)? {
            if owned.mark != Mark::Migrating || lv.size != size {
                return Err(self.refused(
                    &lv.name,
                    format!(
                        "carries volume {uuid} but is not a migration target of {size} bytes (state {}, {} bytes)",
                        owned.mark.as_str(),
                        lv.size
                    ),
                ));
            }
            self.ensure_active(lv)?;
            return Ok(Self::migration_lv(lv, &owned, self.device(&lv.name)));
        }
        let lv_name = self.target_name(&lvs, ObjKind::Volume, uuid, from)?;
        let owned = Owned {
            uuid,
            name: name.to_owned(),
            kind: ObjKind::Volume,
            parent: None,
            mark: Mark::Migrating,
        };
        let mut t = tags::new_tags(&self.backend, &owned);
        t.push(tags::tag(tags::MIGRATION, &id.to_string()));
        t.push(tags::tag(tags::MIGRATING_FROM, from));
        let c = match &self.pool {
            Some(pool) => cmd::create_thin(&self.vg, pool, &lv_name, size, &t),
            None => cmd::create_thick(&self.vg, &lv_name, size, &t),
        };
        self.exec("create", self.target(&lv_name), &c)?;
        tracing::info!(%uuid, lv = %lv_name, size, %id, "migration target created");
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        self.ensure_active(lv)?;
        Ok(Self::migration_lv(lv, &owned, self.device(&lv.name)))
    }

    /// The name of a migration target of object `uuid` from back end
    /// `from`: the usual one, or the second one while the source (an LV of
    /// `from` carrying `uuid`, in this volume group) holds it. Anything else
    /// holding the name is foreign: refused.
    fn target_name(
        &self,
        lvs: &[Lv],
        kind: ObjKind,
        uuid: Uuid,
        from: &str,
    ) -> Result<String, LvmError> {
        let first = tags::lv_name(kind, uuid);
        let source_holds_it = lvs.iter().any(|l| {
            l.name == first
                && matches!(tags::ownership(l, from), Ownership::Ours(o) if o.uuid == uuid)
        });
        let name = if source_holds_it {
            tags::second_lv_name(kind, uuid)
        } else {
            first
        };
        self.check_free_name(lvs, &name)?;
        Ok(name)
    }

    /// Gives volume `uuid` to back end `to` on this volume group: one
    /// `lvchange` swapping the owner mark `cinderblock.backend=<this>` for
    /// `cinderblock.backend=<to>` (one metadata commit: the LV is this
    /// back end's or `to`'s, never both or neither). Thick LVs only (a thin
    /// LV belongs to its pool); refused while it is open, not ready, or the
    /// origin of thick snapshots (they would stay behind). Absent is
    /// `Unchanged`.
    pub fn hand_over(&self, uuid: Uuid, to: &str) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let Some((lv, owned)) = self.find(&lvs, uuid)? else {
            return Ok(Change::Unchanged);
        };
        let refuse = |why: String| Err(self.refused(&lv.name, why));
        if to == self.backend {
            return refuse(format!("is back end {to}'s already"));
        }
        if owned.mark != Mark::Ready || owned.kind != ObjKind::Volume {
            return refuse(format!(
                "is a {} {}, not a ready volume",
                owned.mark.as_str(),
                owned.kind.as_str()
            ));
        }
        if lv.attr.open {
            return refuse("is open (in use); not handing it over".into());
        }
        let snaps = thick_snapshots_of(&lvs, lv);
        if !snaps.is_empty() {
            return refuse(format!(
                "is the origin of thick snapshot(s) {}, which would stay behind",
                snaps.join(", ")
            ));
        }
        if self.pool.is_some() || lv.attr.kind != LvKind::Plain {
            return refuse(
                "is not a plain thick LV: a thin LV belongs to its pool and moves by a copy".into(),
            );
        }
        self.exec(
            "hand over",
            self.target(&lv.name),
            &cmd::retag(
                &self.vg,
                &lv.name,
                &[tags::tag(tags::BACKEND, to)],
                &[tags::tag(tags::BACKEND, &self.backend)],
            ),
        )?;
        tracing::info!(%uuid, lv = %lv.name, from = %self.backend, %to, "handed over");
        Ok(Change::Changed)
    }

    /// Makes a migration's target the volume: one `lvchange` removing the
    /// `migrating` state and the migration tags. `Unchanged` when done.
    pub fn promote(&self, uuid: Uuid) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        match owned.mark {
            Mark::Ready => return Ok(Change::Unchanged),
            Mark::Migrating => {}
            s => {
                return Err(self.refused(
                    &lv.name,
                    format!("is {}, not a migration target", s.as_str()),
                ));
            }
        }
        let del: Vec<String> = lv
            .tags
            .iter()
            .filter(|t| {
                t.starts_with(&format!("{}=", tags::MIGRATION))
                    || t.starts_with(&format!("{}=", tags::MIGRATING_FROM))
            })
            .cloned()
            .chain(std::iter::once(tags::tag(
                tags::STATE,
                Mark::Migrating.as_str(),
            )))
            .collect();
        self.exec(
            "promote",
            self.target(&lv.name),
            &cmd::retag(&self.vg, &lv.name, &[], &del),
        )?;
        tracing::info!(%uuid, lv = %lv.name, "migration target promoted");
        Ok(Change::Changed)
    }

    /// Marks a volume `deleting` (the first step of [`LvmBackend::delete`])
    /// without removing it yet: a migration's source once the target is
    /// verified. `Unchanged` when marked already.
    pub fn mark_deleting(&self, uuid: Uuid) -> Result<Change, LvmError> {
        let lvs = self.lvs()?;
        let (lv, owned) = self.ours(&lvs, uuid)?;
        self.mark_lv_deleting(lv, &owned)
    }

    /// Swaps the state tag for `deleting` in one `lvchange`.
    fn mark_lv_deleting(&self, lv: &Lv, owned: &Owned) -> Result<Change, LvmError> {
        if owned.mark == Mark::Deleting {
            return Ok(Change::Unchanged);
        }
        let del: Vec<String> = Some(owned.mark)
            .filter(|m| *m != Mark::Ready)
            .map(|m| tags::tag(tags::STATE, m.as_str()))
            .into_iter()
            .collect();
        self.exec(
            "mark for deletion",
            self.target(&lv.name),
            &cmd::retag(
                &self.vg,
                &lv.name,
                &[tags::tag(tags::STATE, Mark::Deleting.as_str())],
                &del,
            ),
        )?;
        Ok(Change::Changed)
    }
}

/// Thick snapshots (valid or not) whose origin is `lv`.
fn thick_snapshots_of(lvs: &[Lv], lv: &Lv) -> Vec<String> {
    lvs.iter()
        .filter(|s| {
            matches!(s.attr.kind, LvKind::ThickSnapshot | LvKind::InvalidSnapshot)
                && s.origin.as_deref() == Some(lv.name.as_str())
        })
        .map(|s| s.name.clone())
        .collect()
}

pub(super) fn open(path: &Path, write: bool) -> Result<File, LvmError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(io_err("open", path))
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LvmError {
    let path = path.to_owned();
    move |source| LvmError::Io { op, path, source }
}
