//! Placement of new volumes, as Cinder's filter scheduler does it, made
//! deterministic and batch-aware.
//!
//! Filters (`AvailabilityZoneFilter`, `CapacityFilter`, `CapabilitiesFilter`)
//! drop back ends that cannot take the volume, each with the reason; weighers
//! (`CapacityWeigher`, `AllocatedCapacityWeigher`, `VolumeNumberWeigher`)
//! score the rest: each weigher's raw values are min-max normalised over the
//! candidates to 0..1 (all equal → 0), multiplied and summed; the highest
//! score wins and ties go to the first name. Unlike Cinder, every placement is
//! counted at once ([`Scheduler::commit`]), so the next volume of the same plan
//! sees it (Cinder's stale stats over-place a batch).
//!
//! Must not: do I/O. It works on the observed capacities it was given.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::manifest::Name;
use crate::manifest::kinds::{FilterName, SchedulerPolicySpec, WeigherName};
use crate::manifest::values::ScalarString;
use crate::observe::{BackendView, ObjKind, World};

use super::capacity::{Pool, human};

/// What a volume asks of a back end.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Size in bytes.
    pub size: u64,
    /// Required availability zone.
    pub zone: Option<&'a str>,
    /// The volume type's extra specs.
    pub extra_specs: Option<&'a BTreeMap<String, ScalarString>>,
}

/// One back end's running state during planning.
#[derive(Debug, Clone)]
struct Slot {
    pool: Pool,
    volumes: u64,
}

/// The scheduler for one plan.
#[derive(Debug, Clone)]
pub struct Scheduler<'w> {
    filters: Vec<FilterName>,
    weighers: Vec<(WeigherName, f64)>,
    world: &'w World,
    slots: BTreeMap<Name, Slot>,
}

/// Why no back end could take a volume: each back end and what rejected it.
pub type Rejections = Vec<(Name, String)>;

impl<'w> Scheduler<'w> {
    /// A scheduler over the back ends of `world` that were discovered.
    pub fn new(policy: &SchedulerPolicySpec, world: &'w World) -> Self {
        let filters = policy.filters.clone().unwrap_or_else(|| {
            vec![
                FilterName::AvailabilityZoneFilter,
                FilterName::CapacityFilter,
                FilterName::CapabilitiesFilter,
            ]
        });
        let weighers = policy.weighers.as_ref().map_or_else(
            || vec![(WeigherName::CapacityWeigher, 1.0)],
            |ws| {
                ws.iter()
                    .map(|w| {
                        (
                            w.name,
                            w.multiplier.unwrap_or_else(|| w.name.default_multiplier()),
                        )
                    })
                    .collect()
            },
        );
        let slots = world
            .backends
            .iter()
            .filter_map(|(name, b)| {
                let inv = b.inventory()?;
                let volumes = inv
                    .objects
                    .iter()
                    .filter(|o| o.kind == ObjKind::Volume)
                    .count();
                Some((
                    name.clone(),
                    Slot {
                        pool: pool_of(b),
                        volumes: volumes as u64,
                    },
                ))
            })
            .collect();
        Scheduler {
            filters,
            weighers,
            world,
            slots,
        }
    }

    /// The running capacity state of a back end (after the placements so far).
    pub fn pool(&self, backend: &Name) -> Option<Pool> {
        self.slots.get(backend).map(|s| s.pool)
    }

    /// Checks one back end against every filter.
    pub fn check(&self, backend: &Name, req: &Request<'_>) -> Result<(), String> {
        self.filter(backend, req, true)
    }

    /// Checks one back end against every filter but capacity: whether a
    /// volume already there may stay (a retype in place).
    pub fn fits(&self, backend: &Name, req: &Request<'_>) -> Result<(), String> {
        self.filter(backend, req, false)
    }

    fn filter(&self, backend: &Name, req: &Request<'_>, capacity: bool) -> Result<(), String> {
        let Some(view) = self.world.backends.get(backend) else {
            return Err("not a back end of this host".into());
        };
        let Some(slot) = self.slots.get(backend) else {
            return Err(match &view.discovery {
                crate::observe::Discovery::Failed(e) if !e.is_empty() => {
                    format!("not discovered: {e}")
                }
                _ => "discovery failed".into(),
            });
        };
        for f in &self.filters {
            match f {
                FilterName::AvailabilityZoneFilter => zone(view, req)?,
                FilterName::CapacityFilter if capacity => {
                    let a = slot.pool.admit(req.size);
                    if let Some(r) = a.reason {
                        return Err(format!("CapacityFilter: {r}"));
                    }
                }
                FilterName::CapacityFilter => {}
                FilterName::CapabilitiesFilter => {
                    if let Some(specs) = req.extra_specs {
                        capabilities(view, Some(slot), specs)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a back end could take a volume, judged only by what its
    /// configuration says (availability zone, declared and derived
    /// capabilities): figures only discovery knows (capacity, volume
    /// counts) are taken to pass. Used for other hosts' back ends, which
    /// this host cannot discover, so the answer means "could take it".
    pub fn could_take(&self, view: &BackendView, req: &Request<'_>) -> Result<(), String> {
        for f in &self.filters {
            match f {
                FilterName::AvailabilityZoneFilter => zone(view, req)?,
                FilterName::CapacityFilter => {}
                FilterName::CapabilitiesFilter => {
                    if let Some(specs) = req.extra_specs {
                        capabilities(view, None, specs)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Picks a back end for a volume among `candidates` (all discovered back
    /// ends when `None`) and counts the placement.
    pub fn place(
        &mut self,
        req: &Request<'_>,
        candidates: Option<&[Name]>,
    ) -> Result<Name, Rejections> {
        let chosen = self.pick(req, candidates)?;
        self.commit(&chosen, req.size);
        Ok(chosen)
    }

    /// Picks a back end for a volume among `candidates` (all discovered back
    /// ends when `None`) without counting it.
    pub fn pick(&self, req: &Request<'_>, candidates: Option<&[Name]>) -> Result<Name, Rejections> {
        let mut passed = Vec::new();
        let mut rejected = Vec::new();
        let names: Vec<Name> = match candidates {
            Some(c) => c.to_vec(),
            None => self.world.backends.keys().cloned().collect(),
        };
        for name in names {
            match self.check(&name, req) {
                Ok(()) => passed.push(name),
                Err(why) => rejected.push((name, why)),
            }
        }
        if passed.is_empty() {
            return Err(rejected);
        }
        Ok(self.weigh(&passed))
    }

    /// Counts `size` more bytes and one more volume on `backend`.
    pub fn commit(&mut self, backend: &Name, size: u64) {
        if let Some(slot) = self.slots.get_mut(backend) {
            slot.pool = slot.pool.with(size);
            slot.volumes += 1;
        }
    }

    /// Counts `size` more bytes on `backend` without another volume (extends,
    /// snapshots).
    pub fn grow(&mut self, backend: &Name, size: u64) {
        if let Some(slot) = self.slots.get_mut(backend) {
            slot.pool = slot.pool.with(size);
        }
    }

    /// Counts a removed volume of `size` bytes.
    pub fn release(&mut self, backend: &Name, size: u64, volume: bool) {
        if let Some(slot) = self.slots.get_mut(backend) {
            slot.pool.provisioned = slot.pool.provisioned.saturating_sub(size);
            if !slot.pool.thin {
                slot.pool.free = slot.pool.free.saturating_add(size);
            }
            if volume {
                slot.volumes = slot.volumes.saturating_sub(1);
            }
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn weigh(&self, passed: &[Name]) -> Name {
        let mut scores = vec![0.0f64; passed.len()];
        for (weigher, multiplier) in &self.weighers {
            let raw: Vec<f64> = passed
                .iter()
                .map(|n| {
                    let s = &self.slots[n];
                    match weigher {
                        WeigherName::CapacityWeigher => s.pool.virtual_free(),
                        WeigherName::AllocatedCapacityWeigher => s.pool.provisioned as f64,
                        WeigherName::VolumeNumberWeigher => s.volumes as f64,
                    }
                })
                .collect();
            let (lo, hi) = raw
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                });
            for (score, v) in scores.iter_mut().zip(&raw) {
                let norm = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
                *score += multiplier * norm;
            }
        }
        // Highest score; ties to the first name (passed is sorted by name).
        let mut best = 0;
        for i in 1..passed.len() {
            if scores[i] > scores[best] + 1e-12 {
                best = i;
            }
        }
        passed[best].clone()
    }
}

/// A back end's capacity state as the admission function reads it (for LVM
/// thin back ends with the pool's data and metadata use).
pub fn pool_of(b: &BackendView) -> Pool {
    let Some(cap) = b.inventory().map(|i| &i.capacity) else {
        return Pool {
            total: 0,
            free: 0,
            provisioned: 0,
            thin: b.thin,
            ratio: b.ratio,
            reserved_percentage: b.reserved_percentage,
            data_centi: None,
            metadata_centi: None,
        };
    };
    Pool {
        total: cap.total,
        free: cap.free,
        provisioned: cap.provisioned,
        thin: b.thin,
        ratio: b.ratio,
        reserved_percentage: b.reserved_percentage,
        data_centi: cap.fill.as_ref().and_then(|f| f.data_centi),
        metadata_centi: cap.fill.as_ref().and_then(|f| f.metadata_centi),
    }
}

/// Cinder's `AvailabilityZoneFilter`.
fn zone(view: &BackendView, req: &Request<'_>) -> Result<(), String> {
    match req.zone {
        Some(z) if z != view.zone => Err(format!(
            "AvailabilityZoneFilter: zone {:?}, the volume needs {z:?}",
            view.zone
        )),
        _ => Ok(()),
    }
}

/// Standard capabilities whose values only discovery knows.
const DISCOVERED_CAPABILITIES: [&str; 4] = [
    "total_volumes",
    "total_capacity_gb",
    "free_capacity_gb",
    "provisioned_capacity_gb",
];

/// The capability `key` a back end reports: a declared one first, else
/// the discovered figures (only with a `slot`), else Cinder's standard
/// ones. One key at a time: the filter runs for every volume and back end,
/// and only the keys a type asks for are worth making.
#[allow(clippy::cast_precision_loss)] // GiB with two decimals, as Cinder reports them
fn reported(view: &BackendView, slot: Option<&Slot>, key: &str) -> Option<String> {
    if let Some(v) = view.capabilities.get(key) {
        return Some(v.clone());
    }
    let gib = |b: u64| format!("{:.2}", b as f64 / f64::from(1u32 << 30));
    if let Some(slot) = slot {
        match key {
            "total_volumes" => return Some(slot.volumes.to_string()),
            "total_capacity_gb" => return Some(gib(slot.pool.total)),
            "free_capacity_gb" => return Some(gib(slot.pool.free)),
            "provisioned_capacity_gb" => return Some(gib(slot.pool.provisioned)),
            _ => {}
        }
    }
    Some(match key {
        "volume_backend_name" => view.backend_name.clone(),
        "thin_provisioning_support" => title(view.thin),
        "thick_provisioning_support" => title(!view.thin),
        "max_over_subscription_ratio" => view.ratio.to_string(),
        "reserved_percentage" => view.reserved_percentage.to_string(),
        "availability_zone" => view.zone.clone(),
        "storage_protocol" => view.caps.protocol.clone(),
        _ => return None,
    })
}

fn title(b: bool) -> String {
    if b { "True".into() } else { "False".into() }
}

/// Cinder's `CapabilitiesFilter`: `capabilities:`-scoped and unscoped keys are
/// matched; other scopes are ignored. `thin_provisioning` maps to
/// `thin_provisioning_support`.
fn capabilities(
    view: &BackendView,
    slot: Option<&Slot>,
    specs: &BTreeMap<String, ScalarString>,
) -> Result<(), String> {
    for (key, want) in specs {
        let key = match key.split_once(':') {
            Some(("capabilities", k)) => k,
            Some(_) => continue,
            None => key.as_str(),
        };
        let cap_key = if key == "thin_provisioning" {
            "thin_provisioning_support"
        } else {
            key
        };
        let Some(have) = reported(view, slot, cap_key) else {
            if slot.is_none() && DISCOVERED_CAPABILITIES.contains(&cap_key) {
                // Unknown without discovery: could pass.
                continue;
            }
            return Err(format!(
                "CapabilitiesFilter: the type wants {key} {:?}, the back end does not report {cap_key}",
                want.0
            ));
        };
        if !matches_spec(&have, &want.0) {
            return Err(format!(
                "CapabilitiesFilter: {cap_key} is {have:?}, the type wants {:?}",
                want.0
            ));
        }
    }
    Ok(())
}

/// Cinder's `extra_specs_ops.match(value, req)`.
pub fn matches_spec(value: &str, req: &str) -> bool {
    let words: Vec<&str> = req.split_whitespace().collect();
    let num = |s: &str| s.parse::<f64>().ok();
    let bool_of = |s: &str| matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes");
    match words.as_slice() {
        // Cinder's "=" means "at least", like ">=".
        ["=" | ">=", x] => matches!((num(value), num(x)), (Some(a), Some(b)) if a >= b),
        ["==", x] => {
            matches!((num(value), num(x)), (Some(a), Some(b)) if (a - b).abs() < f64::EPSILON)
        }
        ["!=", x] => {
            matches!((num(value), num(x)), (Some(a), Some(b)) if (a - b).abs() >= f64::EPSILON)
        }
        ["<=", x] => matches!((num(value), num(x)), (Some(a), Some(b)) if a <= b),
        ["s==", rest @ ..] => value == rest.join(" "),
        ["s!=", rest @ ..] => value != rest.join(" "),
        ["s<", rest @ ..] => value < rest.join(" ").as_str(),
        ["s<=", rest @ ..] => value <= rest.join(" ").as_str(),
        ["s>", rest @ ..] => value > rest.join(" ").as_str(),
        ["s>=", rest @ ..] => value >= rest.join(" ").as_str(),
        ["<in>", rest @ ..] => value.contains(&rest.join(" ")),
        ["<all-in>", rest @ ..] => rest.iter().all(|w| value.contains(w)),
        ["<is>", x] => bool_of(value) == bool_of(x),
        ["<or>", rest @ ..] => rest.iter().step_by(2).any(|alt| *alt == value),
        _ => {
            // Plain text: exact, but booleans compare as booleans
            // (`thin_provisioning: true` against "True").
            let lower = req.to_ascii_lowercase();
            if lower == "true" || lower == "false" {
                bool_of(value) == (lower == "true")
            } else {
                value == req.trim()
            }
        }
    }
}

/// Renders rejections: one back end per line.
pub fn explain(rejections: &Rejections) -> String {
    let mut s = String::new();
    for (name, why) in rejections {
        let _ = write!(s, "\n      - {name}: {why}");
    }
    if rejections.is_empty() {
        s.push_str("\n      (no back end of this host was discovered)");
    }
    s
}

/// Human size re-exported for callers.
pub fn size(b: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    human(b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cinder_operators() {
        assert!(matches_spec("10", "= 5"));
        assert!(!matches_spec("4", ">= 5"));
        assert!(matches_spec("ssd", "s== ssd"));
        assert!(matches_spec("nvme", "<or> ssd <or> nvme"));
        assert!(!matches_spec("hdd", "<or> ssd <or> nvme"));
        assert!(matches_spec("True", "<is> True"));
        assert!(matches_spec("True", "true"));
        assert!(matches_spec("a b c", "<in> b"));
        assert!(matches_spec("LVM", "LVM"));
        assert!(!matches_spec("LVM", "NFS"));
    }
}
