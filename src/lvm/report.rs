//! lvm2 JSON reports (`--reportformat json --units b --nosuffix`) as typed values.
//!
//! lvm2 2.03 gives **every value as a JSON string**, numbers included, and `""` for a
//! field that does not apply (`data_percent` of a thick LV, `origin` of a non-snapshot).
//! Each value is parsed explicitly here: sizes must be plain byte counts (the report
//! must use `--units b --nosuffix`), percentages are decimals, and a field that does not
//! apply becomes `None`.
//!
//! The parsers require exactly the fields the agent asks for, listed in [`LV_FIELDS`],
//! [`VG_FIELDS`], [`PV_FIELDS`] and the `FULLREPORT_*` lists; a missing field is an error
//! naming it, never a silent default. The matching command lines:
//!
//! ```text
//! lvs -a --reportformat json --units b --nosuffix -o <LV_FIELDS>      -> parse_lvs
//! vgs    --reportformat json --units b --nosuffix -o <VG_FIELDS>      -> parse_vgs
//! pvs    --reportformat json --units b --nosuffix -o <PV_FIELDS>      -> parse_pvs
//! lvm fullreport --reportformat json --units b --nosuffix \
//!     --configreport vg -o <VG_FIELDS> --configreport pv -o <PV_FIELDS> \
//!     --configreport lv -o <FULLREPORT_LV_FIELDS> --configreport seg -o <FULLREPORT_SEG_FIELDS> \
//!     --configreport pvseg -o <FULLREPORT_PVSEG_FIELDS>               -> parse_fullreport
//! ```
//!
//! `fullreport` is one consistent snapshot of everything (one command, one metadata
//! read), so it is what discovery should use. Its per-VG sub-reports cannot carry
//! fields of another report type: the LV rows have no `vg_name` (taken from the VG
//! sub-report) and no `thin_id` (a segment field, joined from the `seg` sub-report by
//! `lv_uuid`). `fullreport` lists visible LVs only; `lvs -a` adds the hidden ones
//! (`[pool0_tmeta]`), whose names keep their brackets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// `lvs -o` fields required by [`parse_lvs`].
pub const LV_FIELDS: &[&str] = &[
    "lv_name",
    "vg_name",
    "lv_uuid",
    "lv_size",
    "lv_attr",
    "origin",
    "pool_lv",
    "data_percent",
    "metadata_percent",
    "thin_id",
    "lv_tags",
];
/// `vgs -o` fields required by [`parse_vgs`] (also the fullreport `vg` sub-report).
pub const VG_FIELDS: &[&str] = &[
    "vg_name",
    "vg_uuid",
    "vg_size",
    "vg_free",
    "vg_extent_size",
    "vg_extent_count",
    "vg_free_count",
    "vg_seqno",
    "pv_count",
    "lv_count",
    "snap_count",
    "vg_tags",
];
/// `pvs -o` fields required by [`parse_pvs`] (also the fullreport `pv` sub-report).
pub const PV_FIELDS: &[&str] = &[
    "pv_name", "vg_name", "pv_uuid", "pv_size", "pv_free", "pv_used", "dev_size", "pe_start",
    "pv_tags",
];
/// The fullreport `lv` sub-report: [`LV_FIELDS`] less `vg_name` and `thin_id`.
pub const FULLREPORT_LV_FIELDS: &[&str] = &[
    "lv_name",
    "lv_uuid",
    "lv_size",
    "lv_attr",
    "origin",
    "pool_lv",
    "data_percent",
    "metadata_percent",
    "lv_tags",
];
/// The fullreport `seg` sub-report: where thin ids live.
pub const FULLREPORT_SEG_FIELDS: &[&str] = &["lv_uuid", "segtype", "thin_id", "chunk_size"];
/// The fullreport `pvseg` sub-report: kept small, it is not parsed.
pub const FULLREPORT_PVSEG_FIELDS: &[&str] = &["pvseg_start", "pvseg_size", "lv_uuid"];

/// Why a report could not be read. Every variant names the object and field.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Not JSON at all.
    #[error("the LVM report is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// JSON, but not shaped like `{"report":[{"lv":[...]}]}`.
    #[error("the LVM report is not shaped as expected: {0}")]
    Shape(String),
    /// A requested field is absent (the command was run without it in `-o`).
    #[error("{object}: field `{field}` is missing from the report (add it to -o)")]
    MissingField {
        /// e.g. `LV labvg/thin1`.
        object: String,
        /// The lvm2 field name.
        field: &'static str,
    },
    /// A field has a value that does not parse.
    #[error("{object}: field `{field}` = {value:?}: {problem}")]
    BadValue {
        /// e.g. `LV labvg/thin1`.
        object: String,
        /// The lvm2 field name.
        field: &'static str,
        /// The raw value (lvm2 values are not secret).
        value: String,
        /// What was expected.
        problem: &'static str,
    },
}

/// A volume group.
#[derive(Clone, Debug, PartialEq)]
pub struct Vg {
    /// `vg_name`.
    pub name: String,
    /// `vg_uuid`.
    pub uuid: String,
    /// `vg_size`, bytes.
    pub size: u64,
    /// `vg_free`, bytes.
    pub free: u64,
    /// `vg_extent_size`, bytes: every LV and PV allocation is a multiple of it.
    pub extent_size: u64,
    /// `vg_extent_count`.
    pub extent_count: u64,
    /// `vg_free_count`, extents.
    pub free_count: u64,
    /// `vg_seqno`: the metadata generation; it grows with every metadata change.
    pub seqno: u64,
    /// `pv_count`.
    pub pv_count: u32,
    /// `lv_count` (visible LVs).
    pub lv_count: u32,
    /// `snap_count` (thick snapshots only).
    pub snap_count: u32,
    /// `vg_tags`.
    pub tags: Vec<String>,
}

/// A physical volume.
#[derive(Clone, Debug, PartialEq)]
pub struct Pv {
    /// `pv_name`: the device path, e.g. `/dev/vda`.
    pub name: String,
    /// `vg_name`; `None` for a PV in no VG.
    pub vg: Option<String>,
    /// `pv_uuid`.
    pub uuid: String,
    /// `pv_size`, bytes usable for extents.
    pub size: u64,
    /// `pv_free`, bytes.
    pub free: u64,
    /// `pv_used`, bytes.
    pub used: u64,
    /// `dev_size`, bytes of the whole device.
    pub dev_size: u64,
    /// `pe_start`, byte offset of the first extent.
    pub pe_start: u64,
    /// `pv_tags`.
    pub tags: Vec<String>,
}

/// A logical volume.
#[derive(Clone, Debug, PartialEq)]
pub struct Lv {
    /// `vg_name`.
    pub vg: String,
    /// `lv_name`; hidden LVs keep their brackets (`[pool0_tmeta]`).
    pub name: String,
    /// `lv_uuid`.
    pub uuid: String,
    /// `lv_size`, bytes (the virtual size for thin LVs).
    pub size: u64,
    /// `lv_attr`, decoded.
    pub attr: LvAttr,
    /// `origin`: the LV this one is a snapshot of.
    pub origin: Option<String>,
    /// `pool_lv`: the thin pool of a thin LV.
    pub pool: Option<String>,
    /// `data_percent`: thin pool or thin LV fill, or thick snapshot COW use. `None`
    /// when not applicable or the LV is inactive.
    pub data_percent: Option<f64>,
    /// `metadata_percent` (thin pools).
    pub metadata_percent: Option<f64>,
    /// `thin_id`: the device id inside the pool (thin LVs), as `thin_delta` uses it.
    pub thin_id: Option<u32>,
    /// `lv_tags`.
    pub tags: Vec<String>,
}

impl Lv {
    /// Whether `lvs -a` marked this LV hidden (`[name]`).
    pub fn is_hidden(&self) -> bool {
        self.name.starts_with('[')
    }

    /// The value of a `key=value` tag, e.g. `tag_value("cinderblock.uuid")`.
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// The decoded `lv_attr` (10 characters, see lvs(8)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvAttr {
    /// The raw 10 characters.
    pub raw: String,
    /// Character 0: the volume type.
    pub kind: LvKind,
    /// Character 4 is `a`: the device is active.
    pub active: bool,
    /// Character 5 is `o`: the device is open.
    pub open: bool,
    /// Character 9 is `k`: skipped by normal activation (thin snapshots are created so).
    pub skip_activation: bool,
}

/// `lv_attr` character 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LvKind {
    /// `-`: a plain (linear or striped) LV.
    Plain,
    /// `o`: a thick LV with thick (dm-snapshot) snapshots.
    ThickOrigin,
    /// `s`: a thick (COW) snapshot.
    ThickSnapshot,
    /// `S`: an invalid (overflowed) thick snapshot.
    InvalidSnapshot,
    /// `t`: a thin pool.
    ThinPool,
    /// `V`: a thin LV (thin snapshots and thin origins included).
    Thin,
    /// `T`: a thin pool's data LV.
    PoolData,
    /// `e`: a pool metadata LV or the pool metadata spare.
    PoolMetadata,
    /// Any other type (mirror, RAID, cache, VDO, ...), not managed by us.
    Other(char),
}

/// Everything in one `lvm fullreport`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FullReport {
    /// All VGs.
    pub vgs: Vec<Vg>,
    /// All PVs, orphans included.
    pub pvs: Vec<Pv>,
    /// All visible LVs, with `vg` and `thin_id` filled in.
    pub lvs: Vec<Lv>,
}

/// Parses `lvs --reportformat json` output made with `-o` [`LV_FIELDS`].
///
/// `thin_id` is a segment field, so lvm2 prints such a report per *segment*: an
/// LV extended onto a second range of extents comes as two rows (checked in
/// the lab). Rows with the same `lv_uuid` are one LV; the first row is kept.
pub fn parse_lvs(json: &[u8]) -> Result<Vec<Lv>, ReportError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, r) in rows(&parse_json(json)?, "lv")?.iter().enumerate() {
        let vg = r.get("vg_name").and_then(Json::as_str);
        let r = Row::new(r, "LV", i, "lv_name", vg)?;
        let vg = r.str("vg_name")?.to_owned();
        let thin_id = r.opt_u32("thin_id")?;
        let lv = lv_from(&r, vg, thin_id)?;
        if seen.insert(lv.uuid.clone()) {
            out.push(lv);
        }
    }
    Ok(out)
}

/// Parses `vgs --reportformat json` output made with `-o` [`VG_FIELDS`].
pub fn parse_vgs(json: &[u8]) -> Result<Vec<Vg>, ReportError> {
    rows(&parse_json(json)?, "vg")?
        .iter()
        .enumerate()
        .map(|(i, r)| vg_from(&Row::new(r, "VG", i, "vg_name", None)?))
        .collect()
}

/// Parses `pvs --reportformat json` output made with `-o` [`PV_FIELDS`].
pub fn parse_pvs(json: &[u8]) -> Result<Vec<Pv>, ReportError> {
    rows(&parse_json(json)?, "pv")?
        .iter()
        .enumerate()
        .map(|(i, r)| pv_from(&Row::new(r, "PV", i, "pv_name", None)?))
        .collect()
}

/// Parses `lvm fullreport --reportformat json` output made with the field lists in
/// the module docs. LVs get their VG from the enclosing VG sub-report and their thin
/// id from the `seg` sub-report.
pub fn parse_fullreport(json: &[u8]) -> Result<FullReport, ReportError> {
    let value = parse_json(json)?;
    let mut out = FullReport::default();
    for part in report_parts(&value)? {
        let vgs = sub_rows(part, "vg")?;
        let mut this_vg = None;
        for (i, r) in vgs.iter().enumerate() {
            let vg = vg_from(&Row::new(r, "VG", i, "vg_name", None)?)?;
            this_vg = Some(vg.name.clone());
            out.vgs.push(vg);
        }
        for (i, r) in sub_rows(part, "pv")?.iter().enumerate() {
            out.pvs
                .push(pv_from(&Row::new(r, "PV", i, "pv_name", None)?)?);
        }
        let lvs = sub_rows(part, "lv")?;
        if lvs.is_empty() {
            continue;
        }
        let vg = this_vg.ok_or_else(|| {
            ReportError::Shape("a fullreport part lists LVs but no VG".to_owned())
        })?;
        // thin ids: one per thin segment, keyed by the LV's uuid (a map: a VG
        // of 10,000 thin LVs must not cost 10^8 comparisons)
        let mut thin_ids: HashMap<&str, u32> = HashMap::new();
        for (i, r) in sub_rows(part, "seg")?.iter().enumerate() {
            let r = Row::new(r, "segment of LV uuid", i, "lv_uuid", None)?;
            if let Some(id) = r.opt_u32("thin_id")? {
                thin_ids.insert(r.str("lv_uuid")?, id);
            }
        }
        for (i, r) in lvs.iter().enumerate() {
            let r = Row::new(r, "LV", i, "lv_name", Some(&vg))?;
            let uuid = r.str("lv_uuid")?;
            let thin_id = thin_ids.get(uuid).copied();
            out.lvs.push(lv_from(&r, vg.clone(), thin_id)?);
        }
    }
    Ok(out)
}

fn parse_json(json: &[u8]) -> Result<Json<'_>, ReportError> {
    serde_json::from_slice(json).map_err(ReportError::Json)
}

/// A JSON value whose strings borrow from the report's bytes where they have
/// no escapes (every lvm2 string). A fullreport of 10,000 LVs is some 200,000
/// strings: reading them as `serde_json::Value` allocated and freed each one,
/// a third of discovery's time.
#[derive(Debug)]
enum Json<'a> {
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    /// Members in the report's order; a repeated key's last value counts.
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
    /// A number, `true`, `false` or `null`, as its JSON text (for errors).
    Scalar(String),
}

impl<'a> Json<'a> {
    fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Obj(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The value as JSON text, as an error shows it.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |f: &mut fmt::Formatter<'_>, s: &str| match serde_json::to_string(s) {
            Ok(q) => f.write_str(&q),
            Err(_) => Err(fmt::Error),
        };
        match self {
            Json::Str(s) => quoted(f, s),
            Json::Scalar(s) => f.write_str(s),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Json::Obj(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    quoted(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Json::Scalar(b.to_string()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Json::Scalar(n.to_string()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Json::Scalar(n.to_string()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(Json::Scalar(
            serde_json::Number::from_f64(n).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        ))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Scalar("null".to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            members.push((k.0, map.next_value()?));
        }
        Ok(Json::Obj(members))
    }
}

/// An object member's name, borrowed where it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor)? {
            Json::Str(s) => Ok(Key(s)),
            other => Err(de::Error::custom(format_args!("an object key is {other}"))),
        }
    }
}

/// The `report` array: one part per VG in a fullreport, one part for `lvs`/`vgs`/`pvs`.
fn report_parts<'v, 'a>(value: &'v Json<'a>) -> Result<&'v [Json<'a>], ReportError> {
    match value.get("report") {
        Some(Json::Arr(parts)) => Ok(parts),
        _ => Err(ReportError::Shape(
            "no top-level \"report\" array".to_owned(),
        )),
    }
}

/// The rows of sub-report `kind` in one report part; absent means none.
fn sub_rows<'v, 'a>(part: &'v Json<'a>, kind: &str) -> Result<&'v [Json<'a>], ReportError> {
    match part.get(kind) {
        None => Ok(&[]),
        Some(Json::Arr(rows)) => Ok(rows),
        Some(_) => Err(ReportError::Shape(format!("\"{kind}\" is not an array"))),
    }
}

/// All rows of sub-report `kind` over every part (`lvs` output has one part).
fn rows<'v, 'a>(value: &'v Json<'a>, kind: &str) -> Result<Vec<&'v Json<'a>>, ReportError> {
    let mut all = Vec::new();
    for part in report_parts(value)? {
        all.extend(sub_rows(part, kind)?);
    }
    Ok(all)
}

/// One report row, and what it describes for errors (put into words only
/// when there is an error: 10,000 rows need no names otherwise).
struct Row<'v, 'a> {
    value: &'v Json<'a>,
    kind: &'v str,
    index: usize,
    name_field: &'static str,
    vg: Option<&'v str>,
}

impl<'v, 'a> Row<'v, 'a> {
    /// A row described as `<kind> <name>`, or `<kind> <vg>/<name>` when `vg` is known,
    /// with the name read from `name_field`; `<kind> row <index>` if it has none.
    fn new(
        row: &'v Json<'a>,
        kind: &'v str,
        index: usize,
        name_field: &'static str,
        vg: Option<&'v str>,
    ) -> Result<Self, ReportError> {
        if !matches!(row, Json::Obj(_)) {
            return Err(ReportError::Shape(format!(
                "{kind} row {index} is not a JSON object"
            )));
        }
        Ok(Row {
            value: row,
            kind,
            index,
            name_field,
            vg,
        })
    }

    fn object(&self) -> String {
        let (kind, index) = (self.kind, self.index);
        match (
            self.value.get(self.name_field).and_then(Json::as_str),
            self.vg,
        ) {
            (Some(name), None) => format!("{kind} {name}"),
            (Some(name), Some(vg)) => format!("{kind} {vg}/{name}"),
            (None, _) => format!("{kind} row {index}"),
        }
    }

    fn str(&self, field: &'static str) -> Result<&'v str, ReportError> {
        match self.value.get(field) {
            None => Err(ReportError::MissingField {
                object: self.object(),
                field,
            }),
            Some(Json::Str(s)) => Ok(s),
            Some(other) => Err(self.bad(field, &other.to_string(), "expected a JSON string")),
        }
    }

    fn bad(&self, field: &'static str, value: &str, problem: &'static str) -> ReportError {
        ReportError::BadValue {
            object: self.object(),
            field,
            value: value.to_owned(),
            problem,
        }
    }

    fn nonempty(&self, field: &'static str) -> Result<&'v str, ReportError> {
        match self.str(field)? {
            "" => Err(self.bad(field, "", "must not be empty")),
            s => Ok(s),
        }
    }

    fn opt_str(&self, field: &'static str) -> Result<Option<String>, ReportError> {
        Ok(Some(self.str(field)?)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }

    fn bytes(&self, field: &'static str) -> Result<u64, ReportError> {
        let s = self.str(field)?;
        s.parse().map_err(|_| {
            self.bad(
                field,
                s,
                "expected a byte count (run the report with --units b --nosuffix)",
            )
        })
    }

    fn count<T: std::str::FromStr>(&self, field: &'static str) -> Result<T, ReportError> {
        let s = self.str(field)?;
        s.parse()
            .map_err(|_| self.bad(field, s, "expected a non-negative integer"))
    }

    fn opt_u32(&self, field: &'static str) -> Result<Option<u32>, ReportError> {
        match self.str(field)? {
            "" => Ok(None),
            s => s
                .parse()
                .map(Some)
                .map_err(|_| self.bad(field, s, "expected an integer or nothing")),
        }
    }

    fn opt_percent(&self, field: &'static str) -> Result<Option<f64>, ReportError> {
        match self.str(field)? {
            "" => Ok(None),
            s => match s.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(Some(p)),
                _ => Err(self.bad(field, s, "expected a percentage from 0 to 100")),
            },
        }
    }

    fn tags(&self, field: &'static str) -> Result<Vec<String>, ReportError> {
        Ok(self
            .str(field)?
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

fn vg_from(r: &Row<'_, '_>) -> Result<Vg, ReportError> {
    Ok(Vg {
        name: r.nonempty("vg_name")?.to_owned(),
        uuid: r.nonempty("vg_uuid")?.to_owned(),
        size: r.bytes("vg_size")?,
        free: r.bytes("vg_free")?,
        extent_size: r.bytes("vg_extent_size")?,
        extent_count: r.count("vg_extent_count")?,
        free_count: r.count("vg_free_count")?,
        seqno: r.count("vg_seqno")?,
        pv_count: r.count("pv_count")?,
        lv_count: r.count("lv_count")?,
        snap_count: r.count("snap_count")?,
        tags: r.tags("vg_tags")?,
    })
}

fn pv_from(r: &Row<'_, '_>) -> Result<Pv, ReportError> {
    Ok(Pv {
        name: r.nonempty("pv_name")?.to_owned(),
        vg: r.opt_str("vg_name")?,
        uuid: r.nonempty("pv_uuid")?.to_owned(),
        size: r.bytes("pv_size")?,
        free: r.bytes("pv_free")?,
        used: r.bytes("pv_used")?,
        dev_size: r.bytes("dev_size")?,
        pe_start: r.bytes("pe_start")?,
        tags: r.tags("pv_tags")?,
    })
}

fn lv_from(r: &Row<'_, '_>, vg: String, thin_id: Option<u32>) -> Result<Lv, ReportError> {
    let raw = r.str("lv_attr")?;
    let attr = LvAttr::parse(raw)
        .ok_or_else(|| r.bad("lv_attr", raw, "expected 10 attribute characters"))?;
    Ok(Lv {
        vg,
        name: r.nonempty("lv_name")?.to_owned(),
        uuid: r.nonempty("lv_uuid")?.to_owned(),
        size: r.bytes("lv_size")?,
        attr,
        origin: r.opt_str("origin")?,
        pool: r.opt_str("pool_lv")?,
        data_percent: r.opt_percent("data_percent")?,
        metadata_percent: r.opt_percent("metadata_percent")?,
        thin_id,
        tags: r.tags("lv_tags")?,
    })
}

impl LvAttr {
    /// Decodes a 10-character `lv_attr`; `None` if it is not 10 ASCII characters.
    pub fn parse(raw: &str) -> Option<LvAttr> {
        let c: Vec<char> = raw.chars().collect();
        if c.len() != 10 || !raw.is_ascii() {
            return None;
        }
        let kind = match c[0] {
            '-' => LvKind::Plain,
            'o' => LvKind::ThickOrigin,
            's' => LvKind::ThickSnapshot,
            'S' => LvKind::InvalidSnapshot,
            't' => LvKind::ThinPool,
            'V' => LvKind::Thin,
            'T' => LvKind::PoolData,
            'e' => LvKind::PoolMetadata,
            other => LvKind::Other(other),
        };
        Some(LvAttr {
            raw: raw.to_owned(),
            kind,
            active: c[4] == 'a',
            open: c[5] == 'o',
            skip_activation: c[9] == 'k',
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in the VM lab; see tests/fixtures/README.md for the commands.
    const FULLREPORT: &[u8] = include_bytes!("../../tests/fixtures/lvm/fullreport.json");
    const LVS: &[u8] = include_bytes!("../../tests/fixtures/lvm/lvs.json");
    const VGS: &[u8] = include_bytes!("../../tests/fixtures/lvm/vgs.json");
    const PVS: &[u8] = include_bytes!("../../tests/fixtures/lvm/pvs.json");

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn lv<'a>(lvs: &'a [Lv], name: &str) -> &'a Lv {
        lvs.iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no LV {name}"))
    }

    #[test]
    fn fullreport_gives_vg_pvs_and_visible_lvs() {
        let r = parse_fullreport(FULLREPORT).unwrap();
        assert_eq!(
            r.vgs,
            [Vg {
                name: "labvg".into(),
                uuid: "Y2wiQU-n0gX-halr-2mob-9z78-TuDL-zbFANx".into(),
                size: 8_581_545_984,
                free: 7_625_244_672,
                extent_size: 4 * MIB,
                extent_count: 2046,
                free_count: 1818,
                seqno: 16,
                pv_count: 2,
                lv_count: 8,
                snap_count: 1,
                tags: vec![],
            }]
        );
        assert_eq!(r.pvs.len(), 2);
        assert_eq!(r.pvs[1].name, "/dev/vdb");
        assert_eq!(r.pvs[1].used, 64 * MIB, "the foreign LV `legacy`");
        let names: Vec<&str> = r.lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "legacy",
                "pool0",
                "vol-big",
                "vol-thick",
                "vol-thick-snap",
                "vol-thin",
                "vol-thin-snap",
                "vol-thin-snap2"
            ],
            "fullreport has no hidden LVs"
        );
        assert!(
            r.lvs.iter().all(|l| l.vg == "labvg"),
            "VG from the VG sub-report"
        );
    }

    #[test]
    fn fullreport_joins_thin_ids_from_segments() {
        let r = parse_fullreport(FULLREPORT).unwrap();
        let ids: Vec<(&str, Option<u32>)> =
            r.lvs.iter().map(|l| (l.name.as_str(), l.thin_id)).collect();
        assert_eq!(
            ids,
            [
                ("legacy", None),
                ("pool0", None),
                ("vol-big", Some(2)),
                ("vol-thick", None),
                ("vol-thick-snap", None),
                ("vol-thin", Some(1)),
                ("vol-thin-snap", Some(3)),
                ("vol-thin-snap2", Some(4)),
            ]
        );
    }

    #[test]
    fn thick_origin_and_snapshot() {
        let r = parse_fullreport(FULLREPORT).unwrap();
        let thick = lv(&r.lvs, "vol-thick");
        assert_eq!(thick.size, 256 * MIB);
        assert_eq!(thick.attr.kind, LvKind::ThickOrigin);
        assert_eq!(thick.attr.raw, "owi-a-s---");
        assert!(thick.attr.active && !thick.attr.open);
        assert_eq!(thick.data_percent, None, "not applicable to a thick LV");
        let snap = lv(&r.lvs, "vol-thick-snap");
        assert_eq!(snap.attr.kind, LvKind::ThickSnapshot);
        assert_eq!(snap.origin.as_deref(), Some("vol-thick"));
        assert_eq!(snap.size, 64 * MIB);
        assert_eq!(
            snap.data_percent,
            Some(6.29),
            "COW use after 4 MiB of writes"
        );
    }

    #[test]
    fn thin_pool_thin_lvs_and_thin_snapshots() {
        let r = parse_fullreport(FULLREPORT).unwrap();
        let pool = lv(&r.lvs, "pool0");
        assert_eq!(pool.attr.kind, LvKind::ThinPool);
        assert_eq!(
            (pool.size, pool.data_percent, pool.metadata_percent),
            (512 * MIB, Some(6.45), Some(10.79))
        );
        let big = lv(&r.lvs, "vol-big");
        assert_eq!((big.size, big.pool.as_deref()), (8 * GIB, Some("pool0")));
        assert!(big.size > pool.size, "oversubscribed");
        let snap = lv(&r.lvs, "vol-thin-snap");
        assert_eq!(snap.attr.kind, LvKind::Thin);
        assert_eq!(snap.origin.as_deref(), Some("vol-thin"));
        assert!(
            snap.attr.skip_activation && snap.attr.active,
            "activated with -K"
        );
        let inactive = lv(&r.lvs, "vol-thin-snap2");
        assert!(inactive.attr.skip_activation && !inactive.attr.active);
        assert_eq!(inactive.data_percent, None, "empty for an inactive thin LV");
    }

    #[test]
    fn ownership_tags_and_foreign_lvs() {
        let r = parse_fullreport(FULLREPORT).unwrap();
        let thin = lv(&r.lvs, "vol-thin");
        assert_eq!(
            thin.tags,
            [
                "cinderblock.kind=volume",
                "cinderblock.name=vol-thin",
                "cinderblock.uuid=9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f"
            ]
        );
        assert_eq!(
            thin.tag_value("cinderblock.uuid"),
            Some("9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f")
        );
        assert_eq!(thin.tag_value("cinderblock"), None, "whole key only");
        // thin snapshots do not inherit their origin's tags
        assert!(lv(&r.lvs, "vol-thin-snap").tags.is_empty());
        let legacy = lv(&r.lvs, "legacy");
        assert!(legacy.tags.is_empty() && legacy.tag_value("cinderblock.uuid").is_none());
        assert_eq!(legacy.attr.kind, LvKind::Plain);
    }

    #[test]
    fn lvs_all_adds_hidden_lvs_and_agrees_with_fullreport() {
        let lvs = parse_lvs(LVS).unwrap();
        let hidden: Vec<&str> = lvs
            .iter()
            .filter(|l| l.is_hidden())
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            hidden,
            ["[lvol0_pmspare]", "[pool0_tdata]", "[pool0_tmeta]"]
        );
        let tmeta = lv(&lvs, "[pool0_tmeta]");
        assert_eq!(
            (tmeta.size, tmeta.attr.kind),
            (8 * MIB, LvKind::PoolMetadata)
        );
        assert_eq!(lv(&lvs, "[pool0_tdata]").attr.kind, LvKind::PoolData);
        let full = parse_fullreport(FULLREPORT).unwrap();
        for l in &full.lvs {
            assert_eq!(lv(&lvs, &l.name), l, "same LV in lvs -a and fullreport");
        }
    }

    #[test]
    fn vgs_and_pvs_match_fullreport() {
        let full = parse_fullreport(FULLREPORT).unwrap();
        assert_eq!(parse_vgs(VGS).unwrap(), full.vgs);
        let pvs = parse_pvs(PVS).unwrap();
        assert_eq!(pvs, full.pvs);
        assert_eq!(
            pvs[0],
            Pv {
                name: "/dev/vda".into(),
                vg: Some("labvg".into()),
                uuid: "iIgND6-RKpO-8XEU-sDnA-dYOS-qKvH-cVyV7f".into(),
                size: 4_290_772_992,
                free: 3_401_580_544,
                used: 889_192_448,
                dev_size: 4 * GIB,
                pe_start: MIB,
                tags: vec![],
            }
        );
        assert_eq!(full.vgs[0].size, pvs.iter().map(|p| p.size).sum::<u64>());
    }

    fn one_lv(fields: &str) -> String {
        format!(r#"{{"report":[{{"lv":[{{{fields}}}]}}]}}"#)
    }

    const GOOD_LV: &str = r#""lv_name":"a", "vg_name":"vg0", "lv_uuid":"u", "lv_size":"4194304", "lv_attr":"-wi-a-----", "origin":"", "pool_lv":"", "data_percent":"", "metadata_percent":"", "thin_id":"", "lv_tags":"""#;

    #[test]
    fn a_minimal_row_parses() {
        let lvs = parse_lvs(one_lv(GOOD_LV).as_bytes()).unwrap();
        assert_eq!((lvs[0].vg.as_str(), lvs[0].size), ("vg0", 4 * MIB));
    }

    #[test]
    fn missing_field_names_the_field_and_the_lv() {
        let json = one_lv(&GOOD_LV.replace(r#""thin_id":"", "#, ""));
        let err = parse_lvs(json.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LV vg0/a: field `thin_id` is missing from the report (add it to -o)"
        );
    }

    #[test]
    fn sizes_with_units_are_refused_with_a_hint() {
        let json = one_lv(&GOOD_LV.replace(r#""lv_size":"4194304""#, r#""lv_size":"4.00m""#));
        let err = parse_lvs(json.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"LV vg0/a: field `lv_size` = "4.00m": expected a byte count (run the report with --units b --nosuffix)"#
        );
    }

    #[test]
    fn numbers_must_arrive_as_strings() {
        let json = one_lv(&GOOD_LV.replace(r#""lv_size":"4194304""#, r#""lv_size":4194304"#));
        let err = parse_lvs(json.as_bytes()).unwrap_err();
        assert!(
            matches!(err, ReportError::BadValue { field: "lv_size", ref object, .. } if object == "LV vg0/a"),
            "{err}"
        );
    }

    #[test]
    fn escaped_strings_are_read_and_wrong_types_are_shown_as_json() {
        // lvm2 escapes nothing in practice, but JSON may: the borrowed reader
        // must still read an escaped name and key.
        let json = one_lv(&GOOD_LV.replace(r#""lv_name":"a""#, r#""lv_n\u0061me":"\u0061\"b""#));
        assert_eq!(parse_lvs(json.as_bytes()).unwrap()[0].name, "a\"b");
        for (value, shown) in [
            ("4194304", "4194304"),
            ("-1.5", "-1.5"),
            ("null", "null"),
            ("true", "true"),
            (r#"["4",{"k\"":[]}]"#, r#"["4",{"k\"":[]}]"#),
        ] {
            let json = one_lv(
                &GOOD_LV.replace(r#""lv_size":"4194304""#, &format!(r#""lv_size":{value}"#)),
            );
            let err = parse_lvs(json.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ReportError::BadValue { field: "lv_size", value: ref v, problem: "expected a JSON string", .. } if v == shown),
                "{value}: {err}"
            );
        }
        // A repeated member: the last one counts, as serde_json's map had it.
        let json = one_lv(&GOOD_LV.replace(
            r#""lv_size":"4194304""#,
            r#""lv_size":"1","lv_size":"4194304""#,
        ));
        assert_eq!(parse_lvs(json.as_bytes()).unwrap()[0].size, 4_194_304);
    }

    #[test]
    fn bad_percent_attr_and_thin_id_are_refused() {
        for (from, to, field) in [
            (
                r#""data_percent":"""#,
                r#""data_percent":"101.5""#,
                "data_percent",
            ),
            (r#""lv_attr":"-wi-a-----""#, r#""lv_attr":"-wi""#, "lv_attr"),
            (r#""thin_id":"""#, r#""thin_id":"-1""#, "thin_id"),
        ] {
            let err = parse_lvs(one_lv(&GOOD_LV.replace(from, to)).as_bytes()).unwrap_err();
            assert!(
                matches!(err, ReportError::BadValue { field: f, .. } if f == field),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn one_lv_per_uuid_when_lvs_reports_segments() {
        let json = format!(r#"{{"report":[{{"lv":[{{{GOOD_LV}}},{{{GOOD_LV}}}]}}]}}"#);
        assert_eq!(parse_lvs(json.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        assert!(matches!(parse_lvs(b"not json"), Err(ReportError::Json(_))));
        assert!(matches!(
            parse_lvs(br#"{"x":1}"#),
            Err(ReportError::Shape(_))
        ));
        assert!(matches!(
            parse_lvs(br#"{"report":[{"lv":3}]}"#),
            Err(ReportError::Shape(_))
        ));
        assert!(matches!(
            parse_vgs(br#"{"report":[{"vg":[7]}]}"#),
            Err(ReportError::Shape(_))
        ));
        let e = parse_vgs(br#"{"report":[{"vg":[{"vg_name":"v"}]}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VG v: field `vg_uuid` is missing from the report (add it to -o)"
        );
        assert_eq!(parse_lvs(br#"{"report":[{"lv":[]}]}"#).unwrap(), []);
    }
}
