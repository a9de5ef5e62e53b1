//! One LVM back end as seen in a report: our objects, foreign LVs, problems and
//! capacity, read from a [`FullReport`] (pure; the command that produced it is
//! run by [`super::cmd::fullreport`]).
//!
//! Capacity follows Cinder's LVM driver, with what it leaves out:
//! * thick: total = VG size, free = VG free, provisioned = allocated extents
//!   (VG size − VG free: foreign LVs and pools take space too);
//! * thin: total = pool data size, free = total × (1 − `data_percent`/100),
//!   provisioned = the virtual sizes of every thin LV in the pool (ours and
//!   foreign alike: they all draw on the same blocks), plus the pool's
//!   `data_percent` and `metadata_percent` for the high-water guard Cinder lacks.

use std::collections::BTreeMap;

use super::report::{FullReport, Lv, LvKind};
use super::tags::{self, Owned, Ownership};
use crate::model::{
    self, Capacity, Discovery, Health, InUse, Mark, ObjKind, Observed, PoolFill, PoolSizes,
    SharedSpace, round_up,
};

/// Which back end to read from a report.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// The back end's manifest name (the owner mark).
    pub backend: &'a str,
    /// The volume group.
    pub vg: &'a str,
    /// The thin pool, for thin back ends.
    pub thin_pool: Option<&'a str>,
}

/// The volume group's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgState {
    /// `vg_size`, bytes.
    pub size: u64,
    /// `vg_free`, bytes.
    pub free: u64,
    /// `vg_extent_size`, bytes.
    pub extent: u64,
    /// `vg_seqno`: grows with every metadata change.
    pub seqno: u64,
}

/// A thin pool's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolState {
    /// Data size, bytes.
    pub size: u64,
    /// Data use, percent (`None` while the pool is inactive).
    pub data_percent: Option<f64>,
    /// Metadata use, percent (`None` while the pool is inactive).
    pub metadata_percent: Option<f64>,
    /// Sum of the virtual sizes of every thin LV in the pool.
    pub provisioned: u64,
}

/// One LV of ours.
#[derive(Debug, Clone, PartialEq)]
pub struct LvObject {
    /// The LV's name.
    pub lv: String,
    /// Its identity tags.
    pub owned: Owned,
    /// `lv_size` (virtual size for thin LVs, COW size for thick snapshots).
    pub size: u64,
    /// Bytes really taken, when known.
    pub allocated: Option<u64>,
    /// A thin LV.
    pub thin: bool,
    /// A thick snapshot that overflowed (`S`): its data is lost.
    pub invalid: bool,
    /// Open (in use: mounted, mapped, exported).
    pub open: bool,
    /// The object of ours this LV is a snapshot of (`origin`): for a thin
    /// clone, what it shares blocks with. `None` for thick copies.
    pub origin: Option<uuid::Uuid>,
    /// Its `cinderblock.group` tag.
    pub group: Option<String>,
}

/// What the report says about one back end.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The volume group.
    pub vg: VgState,
    /// The thin pool, when the back end has one and it exists.
    pub pool: Option<PoolState>,
    /// The back end names a thin pool that does not exist.
    pub pool_missing: bool,
    /// Our LVs, sorted by uuid.
    pub objects: Vec<LvObject>,
    /// Other LVs of the VG, sorted by name; the back end's own pool
    /// excluded.
    pub foreign: Vec<model::Foreign>,
    /// Things that make the view partial (no deletes in the run).
    pub problems: Vec<String>,
}

/// Why a back end cannot be read from the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// The VG is not in the report.
    #[error("volume group {0} not found")]
    NoVg(String),
    /// The pool name belongs to an LV that is not a thin pool.
    #[error("{vg}/{lv} is not a thin pool (lv_attr {attr})")]
    NotAPool {
        /// VG.
        vg: String,
        /// LV.
        lv: String,
        /// Its attributes.
        attr: String,
    },
}

impl Inventory {
    /// Capacity for the scheduler: (total, free, provisioned) in bytes.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )] // a percentage of a byte count, floored, fits
    pub fn capacity(&self) -> (u64, u64, u64) {
        match &self.pool {
            Some(p) => {
                let used = p.data_percent.unwrap_or(0.0) / 100.0;
                let free = (p.size as f64 * (1.0 - used)).floor().max(0.0) as u64;
                (p.size, free.min(p.size), p.provisioned)
            }
            None => (
                self.vg.size,
                self.vg.free,
                self.vg.size - self.vg.free.min(self.vg.size),
            ),
        }
    }
}

/// Reads back end `cfg` from `report`.
pub fn inventory(report: &FullReport, cfg: &Config<'_>) -> Result<Inventory, InventoryError> {
    let vg = report
        .vgs
        .iter()
        .find(|v| v.name == cfg.vg)
        .ok_or_else(|| InventoryError::NoVg(cfg.vg.to_owned()))?;
    let lvs: Vec<&Lv> = report.lvs.iter().filter(|l| l.vg == cfg.vg).collect();
    let mut pool = None;
    let mut pool_missing = false;
    if let Some(p) = cfg.thin_pool {
        match lvs.iter().find(|l| l.name == p) {
            None => pool_missing = true,
            Some(l) if l.attr.kind != LvKind::ThinPool => {
                return Err(InventoryError::NotAPool {
                    vg: cfg.vg.to_owned(),
                    lv: p.to_owned(),
                    attr: l.attr.raw.clone(),
                });
            }
            Some(l) => {
                pool = Some(PoolState {
                    size: l.size,
                    data_percent: l.data_percent,
                    metadata_percent: l.metadata_percent,
                    // A backup's kept base snapshot is plumbing, not a
                    // volume: it shares its origin's blocks and costs only
                    // what changed since (which `data_percent` shows).
                    provisioned: lvs
                        .iter()
                        .filter(|t| {
                            t.pool.as_deref() == Some(p) && !backup_snapshot(t, cfg.backend)
                        })
                        .map(|t| t.size)
                        .sum(),
                });
            }
        }
    }
    let mut objects: Vec<LvObject> = Vec::new();
    let mut foreign = Vec::new();
    let mut problems = Vec::new();
    let mut by_uuid: BTreeMap<uuid::Uuid, String> = BTreeMap::new();
    for lv in &lvs {
        if Some(lv.name.as_str()) == cfg.thin_pool {
            continue;
        }
        match tags::ownership(lv, cfg.backend) {
            // Backup snapshots are the backup code's, not objects of the
            // manifests (see `backup_snap`).
            Ownership::Foreign if backup_snapshot(lv, cfg.backend) => {}
            Ownership::Foreign => foreign.push(foreign_lv(lv, cfg)),
            Ownership::Damaged(why) => problems.push(why),
            Ownership::Ours(owned) => {
                if let Some(first) = by_uuid.get(&owned.uuid) {
                    problems.push(format!(
                        "LVs {}/{first} and {}/{} carry the same identity {}",
                        cfg.vg, cfg.vg, lv.name, owned.uuid
                    ));
                    continue;
                }
                by_uuid.insert(owned.uuid, lv.name.clone());
                let thin = lv.attr.kind == LvKind::Thin;
                objects.push(LvObject {
                    lv: lv.name.clone(),
                    size: lv.size,
                    allocated: allocated(lv, thin),
                    thin,
                    invalid: lv.attr.kind == LvKind::InvalidSnapshot,
                    open: lv.attr.open,
                    owned,
                    origin: None,
                    group: lv.tag_value(super::freeze::GROUP_TAG).map(str::to_owned),
                });
            }
        }
    }
    let origins: BTreeMap<&str, &str> = lvs
        .iter()
        .filter_map(|lv| Some((lv.name.as_str(), lv.origin.as_deref()?)))
        .collect();
    let uuid_of: BTreeMap<String, uuid::Uuid> = objects
        .iter()
        .map(|o| (o.lv.clone(), o.owned.uuid))
        .collect();
    for o in &mut objects {
        o.origin = origins
            .get(o.lv.as_str())
            .and_then(|n| uuid_of.get(*n))
            .copied();
    }
    objects.sort_by_key(|o| o.owned.uuid);
    foreign.sort_by(|a: &model::Foreign, b| a.name.cmp(&b.name));
    Ok(Inventory {
        vg: VgState {
            size: vg.size,
            free: vg.free,
            extent: vg.extent_size,
            seqno: vg.seqno,
        },
        pool,
        pool_missing,
        objects,
        foreign,
        problems,
    })
}

/// One back end's discovery out of a discovery run's reports, in the shared
/// model: (extent size, what was found). A VG that could not be read, a
/// pool name that is not a pool, or a missing pool without `thinPoolSize`
/// fails this back end only.
pub fn discovery(
    reports: &super::cmd::Reports,
    cfg: &Config<'_>,
    thin_pool_size: Option<u64>,
) -> (u64, Discovery) {
    let vg = cfg.vg;
    if let Some(e) = reports.failed.get(vg) {
        return (
            1,
            Discovery::Failed(format!("cannot read volume group {vg}: {e}")),
        );
    }
    let inv = match inventory(&reports.report, cfg) {
        Ok(inv) => inv,
        Err(e) => return (1, Discovery::Failed(crate::error_chain(&e))),
    };
    let extent = inv.vg.extent.max(1);
    if inv.pool_missing && thin_pool_size.is_none() {
        return (
            extent,
            Discovery::Failed(format!(
                "thin pool {vg}/{} does not exist; create it, or declare spec.lvm.thinPoolSize to have cinderblock create it",
                cfg.thin_pool.unwrap_or_default()
            )),
        );
    }
    let create_pool = thin_pool_size.filter(|_| inv.pool_missing).map(|s| {
        let data = round_up(s, extent);
        PoolSizes {
            data,
            metadata: pool_metadata_size(data, extent),
        }
    });
    (extent, Discovery::Ok(inv.to_model(cfg, create_pool)))
}

/// Hundredths of a percent from lvm2's two-decimal percentage.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=100 × 100, rounded
fn centi(p: Option<f64>) -> Option<u32> {
    p.map(|p| (p * 100.0).round().clamp(0.0, 10_000.0) as u32)
}

impl Inventory {
    /// This back end in the shared model: our LVs as objects (their mark
    /// read from the state tag, an overflowed thick snapshot as lost data),
    /// the capacity (a pool to create counts as empty and full size), the
    /// VG as the space back ends on it share, the pool's fill.
    pub fn to_model(&self, cfg: &Config<'_>, create_pool: Option<PoolSizes>) -> model::Inventory {
        let objects = self
            .objects
            .iter()
            .map(|o| Observed {
                uuid: o.owned.uuid,
                name: o.owned.name.clone(),
                kind: o.owned.kind,
                size: o.size,
                allocated: o.allocated,
                parent: o.owned.parent,
                clone_of: o.origin.filter(|_| o.owned.kind != ObjKind::Snapshot),
                // Who holds it is for discovery to find out (`observe`
                // names the holder of `/dev/VG/LV` when it can).
                in_use: o.open.then(|| InUse::Unnamed {
                    device: format!("/dev/{}/{}", cfg.vg, o.lv),
                }),
                group: o.group.clone(),
                health: if o.invalid && o.owned.mark == Mark::Ready {
                    Health::DataMissing
                } else {
                    Health::of_mark(o.owned.mark)
                },
            })
            .collect();
        let (total, free, provisioned) = match create_pool {
            Some(p) => (p.data, p.data, 0),
            None => self.capacity(),
        };
        let fill = cfg.thin_pool.map(|pool| PoolFill {
            kind: "thin pool".into(),
            name: format!("{}/{pool}", cfg.vg),
            data_centi: self.pool.and_then(|p| centi(p.data_percent)),
            metadata_centi: self.pool.and_then(|p| centi(p.metadata_percent)),
        });
        model::Inventory {
            capacity: Capacity {
                total,
                free,
                provisioned,
                fill,
                shared: Some(SharedSpace {
                    kind: "volume group".into(),
                    name: cfg.vg.to_owned(),
                    free: self.vg.free,
                    draws_provisioned: cfg.thin_pool.is_none(),
                }),
                create_pool,
            },
            objects,
            foreign: self.foreign.clone(),
            problems: self.problems.clone(),
            generation: Some(self.vg.seqno),
        }
    }
}

/// A foreign LV as the pipeline sees it: its size, whether it could be a
/// volume of this back end (a thin LV of its pool, or a plain LV when it is
/// thick), and the identity it kept when this back end released it.
pub(super) fn foreign_lv(lv: &Lv, cfg: &Config<'_>) -> model::Foreign {
    let unfit = match (lv.attr.kind, cfg.thin_pool) {
        _ if lv.is_hidden() => Some("a hidden LV (lvm2's own)".to_owned()),
        (LvKind::Thin, Some(p)) if lv.pool.as_deref() == Some(p) => None,
        (LvKind::Thin, Some(p)) => Some(format!(
            "a thin LV of pool {}, not of this back end's pool {p}",
            lv.pool.as_deref().unwrap_or("?")
        )),
        (LvKind::Thin, None) => Some(format!(
            "a thin LV (of pool {}), and this back end is thick",
            lv.pool.as_deref().unwrap_or("?")
        )),
        (LvKind::Plain | LvKind::ThickOrigin, None) => None,
        (LvKind::Plain | LvKind::ThickOrigin, Some(p)) => Some(format!(
            "a thick LV, and this back end's volumes are thin LVs of pool {p}"
        )),
        (LvKind::ThickSnapshot | LvKind::InvalidSnapshot, _) => Some(format!(
            "a thick snapshot of {}",
            lv.origin.as_deref().unwrap_or("?")
        )),
        (LvKind::ThinPool | LvKind::PoolData | LvKind::PoolMetadata, _) => {
            Some("a thin pool or a part of one".to_owned())
        }
        (LvKind::Other(c), _) => Some(format!("an LV of type '{c}' (mirror, RAID, cache, ...)")),
    };
    let value = |key: &str| lv.tag_value(key).and_then(tags::decode);
    let released = (value(tags::RELEASED).as_deref() == Some(cfg.backend))
        .then(|| {
            Some(model::Released {
                uuid: uuid::Uuid::parse_str(&value(tags::UUID)?).ok()?,
                kind: ObjKind::parse(&value(tags::KIND)?)?,
                name: value(tags::NAME)?,
            })
        })
        .flatten();
    model::Foreign {
        name: lv.name.clone(),
        size: Some(lv.size),
        unfit,
        released,
    }
}

/// Whether `lv` is a backup snapshot of back end `backend`.
fn backup_snapshot(lv: &Lv, backend: &str) -> bool {
    lv.tag_value(super::backup_snap::BACKUP_OF)
        .and_then(tags::decode)
        .as_deref()
        == Some(backend)
}

/// The metadata size cinderblock gives a thin pool of `data` bytes: lvm2's
/// own estimate (64 bytes per 64 KiB chunk) doubled, because snapshots share
/// blocks and every shared mapping costs metadata, at least 4 MiB, rounded up
/// to the extent and at most lvm2's limit (16 GiB less one extent, roughly).
/// Explicit rather than lvm2's choice, so the plan can show it and check the VG
/// has room for it and for lvm2's spare of the same size.
pub fn pool_metadata_size(data: u64, extent: u64) -> u64 {
    const MIN: u64 = 4 << 20;
    const MAX: u64 = (16 << 30) - (128 << 20);
    let estimate = (data / (64 << 10)).saturating_mul(64).saturating_mul(2);
    let extent = extent.max(1);
    let size = estimate
        .clamp(MIN, MAX)
        .div_ceil(extent)
        .saturating_mul(extent);
    size.min(MAX / extent * extent)
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)] // a two-decimal percentage of a byte count, rounded: an estimate by nature
fn allocated(lv: &Lv, thin: bool) -> Option<u64> {
    if thin {
        lv.data_percent
            .map(|p| (lv.size as f64 * p / 100.0).round() as u64)
    } else {
        Some(lv.size)
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)] // expected values computed as lvm2 does, in floating point
mod tests {
    use super::*;
    use crate::lvm::report::parse_fullreport;

    const FULLREPORT: &[u8] = include_bytes!("../../tests/fixtures/lvm/fullreport.json");
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// The fixture with the owner mark added to the LVs the lab tagged, and to
    /// the thin snapshot `vol-thin-snap` (whose tags the agent writes itself,
    /// since thin snapshots inherit none).
    fn marked() -> FullReport {
        let mut r = parse_fullreport(FULLREPORT).unwrap();
        for lv in &mut r.lvs {
            match lv.name.as_str() {
                "vol-thick" | "vol-thin" => lv.tags.push("cinderblock.backend=lvm".into()),
                "vol-thin-snap" => {
                    lv.tags = vec![
                        "cinderblock.uuid=00000000-0000-0000-0000-000000000005".into(),
                        "cinderblock.name=vol-thin-snap".into(),
                        "cinderblock.kind=snapshot".into(),
                        "cinderblock.backend=lvm".into(),
                        "cinderblock.parent=9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f".into(),
                    ];
                }
                _ => {}
            }
        }
        r
    }

    #[test]
    fn thick_back_end_sees_the_whole_vg() {
        let inv = inventory(
            &marked(),
            &Config {
                backend: "lvm",
                vg: "labvg",
                thin_pool: None,
            },
        )
        .unwrap();
        assert_eq!(
            inv.vg,
            VgState {
                size: 8_581_545_984,
                free: 7_625_244_672,
                extent: 4 * MIB,
                seqno: 16
            }
        );
        assert!(inv.pool.is_none() && !inv.pool_missing);
        let names: Vec<&str> = inv.objects.iter().map(|o| o.owned.name.as_str()).collect();
        // sorted by uuid: 0…05, 5d0c…, 9b8e…
        assert_eq!(names, ["vol-thin-snap", "vol-thick", "vol-thin"]);
        let thick = &inv.objects[1];
        assert_eq!(
            (thick.lv.as_str(), thick.size, thick.thin),
            ("vol-thick", 256 * MIB, false)
        );
        assert_eq!(thick.allocated, Some(256 * MIB));
        let snap = &inv.objects[0];
        assert_eq!(
            snap.owned.parent,
            Some(uuid::Uuid::parse_str("9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f").unwrap())
        );
        assert_eq!(snap.allocated, Some((GIB as f64 * 0.0156).round() as u64));
        assert_eq!(
            inv.foreign
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            [
                "legacy",
                "pool0",
                "vol-big",
                "vol-thick-snap",
                "vol-thin-snap2"
            ],
            "untagged LVs, the thin snapshot we did not tag, other pools"
        );
        assert!(inv.problems.is_empty());
        assert_eq!(
            inv.capacity(),
            (8_581_545_984, 7_625_244_672, 8_581_545_984 - 7_625_244_672)
        );
    }

    #[test]
    fn thin_back_end_counts_every_thin_lv_in_the_pool() {
        let inv = inventory(
            &marked(),
            &Config {
                backend: "lvm",
                vg: "labvg",
                thin_pool: Some("pool0"),
            },
        )
        .unwrap();
        let pool = inv.pool.unwrap();
        assert_eq!(pool.size, 512 * MIB);
        assert_eq!(
            (pool.data_percent, pool.metadata_percent),
            (Some(6.45), Some(10.79))
        );
        // vol-big 8 GiB (foreign) + vol-thin 1 GiB + two 1 GiB snapshots
        assert_eq!(pool.provisioned, 11 * GIB);
        assert!(
            !inv.foreign.iter().any(|f| f.name == "pool0"),
            "the pool is the back end's own"
        );
        let (total, free, prov) = inv.capacity();
        assert_eq!((total, prov), (512 * MIB, 11 * GIB));
        assert_eq!(free, (512.0 * MIB as f64 * (1.0 - 0.0645)).floor() as u64);
    }

    #[test]
    fn missing_pool_vg_and_non_pools() {
        let r = marked();
        let inv = inventory(
            &r,
            &Config {
                backend: "lvm",
                vg: "labvg",
                thin_pool: Some("pool9"),
            },
        )
        .unwrap();
        assert!(inv.pool_missing && inv.pool.is_none());
        let err = inventory(
            &r,
            &Config {
                backend: "lvm",
                vg: "nosuch",
                thin_pool: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "volume group nosuch not found");
        let err = inventory(
            &r,
            &Config {
                backend: "lvm",
                vg: "labvg",
                thin_pool: Some("legacy"),
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "labvg/legacy is not a thin pool (lv_attr -wi-a-----)"
        );
    }

    #[test]
    fn duplicate_identities_and_damaged_marks_are_problems() {
        let mut r = marked();
        for lv in &mut r.lvs {
            if lv.name == "vol-big" {
                lv.tags = r_tags("9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f");
            }
            if lv.name == "legacy" {
                lv.tags = vec!["cinderblock.backend=lvm".into()];
            }
        }
        let inv = inventory(
            &r,
            &Config {
                backend: "lvm",
                vg: "labvg",
                thin_pool: None,
            },
        )
        .unwrap();
        assert_eq!(inv.problems.len(), 2, "{:?}", inv.problems);
        assert!(inv.problems[0].contains("legacy: carries cinderblock.backend=lvm but no"));
        assert!(inv.problems[1].contains("carry the same identity 9b8e7d6c"));
        assert_eq!(
            inv.objects.len(),
            3,
            "the first LV of a duplicated identity stays"
        );
    }

    #[test]
    fn pool_metadata_is_explicit_and_extent_aligned() {
        assert_eq!(pool_metadata_size(GIB, 4 * MIB), 4 * MIB);
        assert_eq!(pool_metadata_size(1 << 40, 4 * MIB), 2 * GIB);
        assert_eq!(pool_metadata_size(1 << 50, 4 * MIB) % (4 * MIB), 0);
        assert!(pool_metadata_size(1 << 50, 4 * MIB) < 16 * GIB);
    }

    fn r_tags(uuid: &str) -> Vec<String> {
        vec![
            format!("cinderblock.uuid={uuid}"),
            "cinderblock.name=dup".into(),
            "cinderblock.kind=volume".into(),
            "cinderblock.backend=lvm".into(),
        ]
    }

    #[test]
    fn foreign_lvs_say_whether_they_can_be_adopted_and_what_they_were() {
        let mut report = marked();
        for lv in &mut report.lvs {
            if lv.name == "legacy" {
                lv.tags = vec![
                    "cinderblock.released=lvm".into(),
                    "cinderblock.uuid=00000000-0000-0000-0000-000000000009".into(),
                    "cinderblock.name=old-db".into(),
                    "cinderblock.kind=volume".into(),
                ];
            }
        }
        let view = |pool| {
            inventory(
                &report,
                &Config {
                    backend: "lvm",
                    vg: "labvg",
                    thin_pool: pool,
                },
            )
            .unwrap()
            .foreign
            .into_iter()
            .map(|f| {
                (
                    f.name,
                    f.unfit,
                    f.released.map(|r| (r.uuid, r.kind, r.name)),
                )
            })
            .collect::<Vec<_>>()
        };
        let old_db = Some((
            uuid::Uuid::from_u128(9),
            ObjKind::Volume,
            "old-db".to_owned(),
        ));
        let thin_lv = Some("a thin LV (of pool pool0), and this back end is thick".to_owned());
        assert_eq!(
            view(None),
            [
                ("legacy".to_owned(), None, old_db.clone()),
                (
                    "pool0".to_owned(),
                    Some("a thin pool or a part of one".to_owned()),
                    None
                ),
                ("vol-big".to_owned(), thin_lv.clone(), None),
                (
                    "vol-thick-snap".to_owned(),
                    Some("a thick snapshot of vol-thick".to_owned()),
                    None
                ),
                ("vol-thin-snap2".to_owned(), thin_lv, None),
            ],
            "a thick back end adopts plain LVs; the released one keeps its identity"
        );
        assert_eq!(
            view(Some("pool0")),
            [
                (
                    "legacy".to_owned(),
                    Some(
                        "a thick LV, and this back end's volumes are thin LVs of pool pool0"
                            .to_owned()
                    ),
                    old_db
                ),
                ("vol-big".to_owned(), None, None),
                (
                    "vol-thick-snap".to_owned(),
                    Some("a thick snapshot of vol-thick".to_owned()),
                    None
                ),
                ("vol-thin-snap2".to_owned(), None, None),
            ],
            "a thin back end adopts thin LVs of its pool, snapshots included"
        );
    }
}
