//! Cinder's capacity formulas: the one admission function for everything that
//! takes space on a back end (create, clone, extend; later restore and
//! migrate-in).
//!
//! ```text
//! reserved        = floor(total × reservedPercentage / 100)
//! avail           = total − reserved
//! thin:  ratio           = maxOverSubscriptionRatio, or for `auto`
//!                          1 + provisioned / (total − free + 1)  (20 when nothing provisioned)
//!        total_available = avail × ratio
//!        virtual_free    = total_available − provisioned
//!        admit iff (provisioned + requested) / total_available ≤ ratio
//!              and virtual_free ≥ requested
//! thick: virtual_free    = min(free, avail − provisioned)
//!        admit iff virtual_free ≥ requested
//! ```
//! (`cinder/scheduler/sched_utils.py` and `filters/capacity_filter.py`.) The
//! numbers behind a refusal are returned so the plan can print them.
//!
//! What Cinder leaves out, added here: for thin pools, physical use is never
//! consulted by the formula (a pool with full data or full *metadata* looks
//! healthy until writes fail and filesystems corrupt). A thin back end whose
//! pool's `data_percent` or `metadata_percent` is above the high-water mark
//! ([`HIGH_WATER_CENTI`], 90 %) admits nothing more, whatever the formula says.

use crate::manifest::values::{OverSubscription, format_bytes_exact};

/// A back end's capacity state, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool {
    /// Total size.
    pub total: u64,
    /// Physically free.
    pub free: u64,
    /// Sum of provisioned (logical) sizes.
    pub provisioned: u64,
    /// Thin provisioning (over-subscription applies).
    pub thin: bool,
    /// Over-subscription ratio.
    pub ratio: OverSubscription,
    /// Reserved percentage.
    pub reserved_percentage: u8,
    /// Thin pool data use in hundredths of a percent, when known.
    pub data_centi: Option<u32>,
    /// Thin pool metadata use in hundredths of a percent, when known.
    pub metadata_centi: Option<u32>,
}

/// The thin pool high-water mark, in hundredths of a percent: above it a thin
/// back end admits no new space (90 %).
pub const HIGH_WATER_CENTI: u32 = 9_000;

/// `1234` → `"12.34%"`, `9000` → `"90%"`.
pub fn percent(centi: u32) -> String {
    let frac = format!("{:02}", centi % 100);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}%", centi / 100)
    } else {
        format!("{}.{frac}%", centi / 100)
    }
}

/// The outcome of an admission check.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Whether the request fits.
    pub admitted: bool,
    /// Virtual free capacity before the request (the `CapacityWeigher`'s raw
    /// weight).
    pub virtual_free: f64,
    /// Why not, with the formula's numbers, when refused.
    pub reason: Option<String>,
}

impl Pool {
    /// Reserved bytes.
    pub fn reserved(&self) -> u64 {
        self.total * u64::from(self.reserved_percentage) / 100
    }

    /// The effective over-subscription ratio.
    #[allow(clippy::cast_precision_loss)] // capacities far below 2^52 bytes matter
    pub fn effective_ratio(&self) -> f64 {
        match self.ratio {
            OverSubscription::Ratio(r) => r,
            OverSubscription::Auto => {
                if self.provisioned == 0 {
                    20.0
                } else {
                    let used = self.total.saturating_sub(self.free) + 1;
                    1.0 + self.provisioned as f64 / used as f64
                }
            }
        }
    }

    /// Virtual free capacity (what the scheduler weighs).
    #[allow(clippy::cast_precision_loss)]
    pub fn virtual_free(&self) -> f64 {
        let avail = self.total.saturating_sub(self.reserved());
        if self.thin {
            avail as f64 * self.effective_ratio() - self.provisioned as f64
        } else {
            self.free.min(avail.saturating_sub(self.provisioned)) as f64
        }
    }

    /// Whether `requested` more bytes fit (Cinder's `CapacityFilter`).
    #[allow(clippy::cast_precision_loss)]
    pub fn admit(&self, requested: u64) -> Admission {
        let avail = self.total.saturating_sub(self.reserved());
        let virtual_free = self.virtual_free();
        let req = requested as f64;
        let reason = if self.thin {
            let ratio = self.effective_ratio();
            let total_available = avail as f64 * ratio;
            let projected = if total_available > 0.0 {
                (self.provisioned as f64 + req) / total_available
            } else {
                f64::INFINITY
            };
            if total_available <= 0.0 || projected > ratio || virtual_free < req {
                Some(format!(
                    "needs {}, virtual free {} (thin: ({} total − {} reserved) × ratio {} − {} provisioned)",
                    format_bytes_exact(requested),
                    human(virtual_free),
                    human(self.total as f64),
                    human(self.reserved() as f64),
                    trim_float(ratio),
                    human(self.provisioned as f64),
                ))
            } else {
                None
            }
        } else if virtual_free < req {
            Some(format!(
                "needs {}, virtual free {} (thick: min({} free, {} total − {} reserved − {} provisioned))",
                format_bytes_exact(requested),
                human(virtual_free),
                human(self.free as f64),
                human(self.total as f64),
                human(self.reserved() as f64),
                human(self.provisioned as f64),
            ))
        } else {
            None
        };
        let reason = reason.or_else(|| self.high_water(virtual_free));
        Admission {
            admitted: reason.is_none(),
            virtual_free,
            reason,
        }
    }

    /// The thin pool guard Cinder lacks: `Some(reason)` when the pool's data or
    /// metadata use is above [`HIGH_WATER_CENTI`].
    fn high_water(&self, virtual_free: f64) -> Option<String> {
        if !self.thin {
            return None;
        }
        for (what, used) in [("data", self.data_centi), ("metadata", self.metadata_centi)] {
            if let Some(used) = used
                && used > HIGH_WATER_CENTI
            {
                return Some(format!(
                    "thin pool {what} use is {}, above the high-water mark of {} (Cinder's formula alone would admit it: virtual free {}); free space in the pool or extend it first",
                    percent(used),
                    percent(HIGH_WATER_CENTI),
                    human(virtual_free)
                ));
            }
        }
        None
    }

    /// The pool after `bytes` more are provisioned (thick volumes also take
    /// physical space at once).
    #[must_use]
    pub fn with(&self, bytes: u64) -> Pool {
        Pool {
            provisioned: self.provisioned + bytes,
            free: if self.thin {
                self.free
            } else {
                self.free.saturating_sub(bytes)
            },
            ..*self
        }
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A byte count for people: `1.5 GiB`, `512 MiB`, `0 B`.
#[allow(clippy::cast_precision_loss)]
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let neg = bytes < 0.0;
    let mut v = bytes.abs();
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let n = if i == 0 || (v.fract() == 0.0) {
        format!("{v:.0}")
    } else {
        trim_float(v)
    };
    format!("{}{n} {}", if neg { "-" } else { "" }, units[i])
}

#[cfg(test)]
#[allow(clippy::cast_precision_loss)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn pool(thin: bool, total: u64, free: u64, prov: u64, ratio: f64) -> Pool {
        Pool {
            total,
            free,
            provisioned: prov,
            thin,
            ratio: OverSubscription::Ratio(ratio),
            reserved_percentage: 0,
            data_centi: None,
            metadata_centi: None,
        }
    }

    #[test]
    fn thin_pool_of_1gib_with_ratio_2_takes_2gib_then_refuses() {
        let p = pool(true, GIB, GIB, 0, 2.0);
        assert!(p.admit(GIB).admitted);
        let p = p.with(GIB);
        assert!(p.admit(GIB).admitted);
        let p = p.with(GIB);
        let a = p.admit(GIB);
        assert!(!a.admitted);
        assert_eq!(
            a.reason.unwrap(),
            "needs 1Gi, virtual free 0 B (thin: (1 GiB total − 0 B reserved) × ratio 2 − 2 GiB provisioned)"
        );
    }

    #[test]
    fn thick_uses_the_smaller_of_free_and_unprovisioned() {
        let p = pool(false, 10 * GIB, 3 * GIB, 5 * GIB, 20.0);
        assert!((p.virtual_free() - (3 * GIB) as f64).abs() < 1.0);
        assert!(!p.admit(4 * GIB).admitted);
        let p = Pool {
            reserved_percentage: 50,
            ..pool(false, 10 * GIB, 10 * GIB, 4 * GIB, 1.0)
        };
        assert!((p.virtual_free() - GIB as f64).abs() < 1.0);
    }

    #[test]
    fn auto_ratio_follows_cinder() {
        let mut p = pool(true, 100, 100, 0, 1.0);
        p.ratio = OverSubscription::Auto;
        assert!((p.effective_ratio() - 20.0).abs() < f64::EPSILON);
        p.provisioned = 50;
        p.free = 90;
        assert!((p.effective_ratio() - (1.0 + 50.0 / 11.0)).abs() < 1e-9);
    }

    #[test]
    fn thin_pools_above_the_high_water_mark_admit_nothing() {
        let p = Pool {
            data_centi: Some(9_000),
            metadata_centi: Some(1_079),
            ..pool(true, GIB, GIB / 10, GIB, 2.0)
        };
        assert!(p.admit(GIB / 2).admitted, "at the mark is not above it");
        let full = Pool {
            data_centi: Some(9_345),
            ..p
        };
        let a = full.admit(GIB / 2);
        assert!(!a.admitted);
        assert_eq!(
            a.reason.unwrap(),
            "thin pool data use is 93.45%, above the high-water mark of 90% (Cinder's formula alone would admit it: virtual free 1 GiB); free space in the pool or extend it first"
        );
        let meta = Pool {
            metadata_centi: Some(9_510),
            ..p
        };
        assert!(
            meta.admit(1)
                .reason
                .unwrap()
                .starts_with("thin pool metadata use is 95.1%")
        );
        let thick = Pool {
            thin: false,
            provisioned: 0,
            ..full
        };
        assert!(thick.admit(1).admitted, "the guard is for thin pools");
    }

    #[test]
    fn percents() {
        assert_eq!(percent(9000), "90%");
        assert_eq!(percent(645), "6.45%");
        assert_eq!(percent(9510), "95.1%");
        assert_eq!(percent(1001), "10.01%");
        assert_eq!(percent(0), "0%");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
        assert_eq!(human(512.0 * 1024.0 * 1024.0), "512 MiB");
    }
}
