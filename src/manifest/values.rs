//! Value types of the manifest model that validate on construction.
//!
//! Every string that can reach a path, a command line or a scheduler decision is
//! one of these newtypes: once a `Name` or an `LvmName` exists it is known to be
//! safe (no `/`, `..`, NUL, whitespace or leading `-`). They deserialize through
//! their validating constructors, so a bad value is reported by serde at the
//! exact field, and they carry their own JSON Schema (pattern, bounds) so editors
//! reject the same values the loader does.
//!
//! Must not: do I/O, or accept a value "for now" and check it later.

use std::borrow::Cow;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest string value we accept anywhere in a manifest (descriptions aside).
const MAX_TEXT: usize = 4096;

/// Implements `Deserialize` (through `FromStr`), `Serialize` (as the string) and
/// `Display` for a string newtype with an `as_str` accessor.
macro_rules! string_newtype {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = ScalarString::deserialize(d)?;
                s.0.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A scalar read as text: YAML strings, numbers and booleans are all accepted
/// (`thin_provisioning: true` and `thin_provisioning: "true"` mean the same in
/// Cinder's extra specs). Mappings and sequences are refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarString, E> {
                if v.len() > MAX_TEXT {
                    return Err(E::custom(format!(
                        "value is {} bytes long; at most {MAX_TEXT} are allowed",
                        v.len()
                    )));
                }
                Ok(ScalarString(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ScalarString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl JsonSchema for ScalarString {
    fn schema_name() -> Cow<'static, str> {
        "ScalarString".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A string; numbers and booleans are read as their text.",
            "type": ["string", "number", "boolean"]
        })
    }
}

// ---------------------------------------------------------------------------
// Names

/// A DNS-1123 label: lowercase letters, digits and `-`, starting and ending
/// with a letter or digit, at most 63 characters. Every `metadata.name` and
/// every reference to another manifest is one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Ord and Hash come from the inner String, so lookups by &str agree.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_dns1123(s).map(|()| Name(s.to_owned()))
    }
}

fn check_dns1123(s: &str) -> Result<(), String> {
    let shown = shown(s);
    if s.is_empty() {
        return Err("a name must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "name is {} characters long; a name has at most 63 (DNS-1123 label)",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let hint = if c.is_ascii_uppercase() {
            format!(" (did you mean {:?}?)", s.to_ascii_lowercase())
        } else {
            String::new()
        };
        return Err(format!(
            "invalid name {shown}: {} is not allowed; use lowercase letters, digits and '-' (DNS-1123 label){hint}",
            describe_char(c)
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "invalid name {shown}: a name must start and end with a letter or digit (DNS-1123 label)"
        ));
    }
    Ok(())
}

impl JsonSchema for Name {
    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters.",
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        })
    }
}
string_newtype!(Name);

/// An LVM volume group or logical volume name: letters, digits and `+_.-`, not
/// starting with `-`, not `.` or `..`, at most 127 characters, and none of the
/// names lvm2 reserves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LvmName(String);

impl LvmName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LvmName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        if s.is_empty() {
            return Err("an LVM name must not be empty".into());
        }
        if s.len() > 127 {
            return Err(format!(
                "LVM name is {} characters long; lvm2 allows at most 127",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "+_.-".contains(*c)))
        {
            return Err(format!(
                "invalid LVM name {shown}: {} is not allowed; lvm2 names use letters, digits and '+_.-'",
                describe_char(c)
            ));
        }
        if s.starts_with('-') {
            return Err(format!(
                "invalid LVM name {shown}: it must not start with '-'"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("invalid LVM name {shown}"));
        }
        for reserved in ["snapshot", "pvmove"] {
            if s.starts_with(reserved) {
                return Err(format!(
                    "invalid LVM name {shown}: names starting with {reserved:?} are reserved by lvm2"
                ));
            }
        }
        for reserved in [
            "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
            "_tdata", "_tmeta", "_vorigin", "_vdata",
        ] {
            if s.contains(reserved) {
                return Err(format!(
                    "invalid LVM name {shown}: the part {reserved:?} is reserved by lvm2"
                ));
            }
        }
        Ok(LvmName(s.to_owned()))
    }
}

impl JsonSchema for LvmName {
    fn schema_name() -> Cow<'static, str> {
        "LvmName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An LVM name: letters, digits and '+_.-', not starting with '-', at most 127 characters.",
            "type": "string",
            "minLength": 1,
            "maxLength": 127,
            "pattern": "^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$"
        })
    }
}
string_newtype!(LvmName);

// ---------------------------------------------------------------------------
// Quantities

const UNITS: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

/// A size in bytes, written as a binary quantity (`512Mi`, `10Gi`, `1Ti`; the
/// suffixes `Ki Mi Gi Ti Pi Ei`) or as plain bytes (`1073741824`). Fractions
/// (`1.5Gi`) and decimal suffixes (`10G`) are refused with the exact value to
/// write instead, because a storage tool must never guess which gigabyte was
/// meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u64);

impl Quantity {
    /// A quantity of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Quantity(bytes)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Quantity {
    /// The shortest exact binary form: `10Gi`, `1536Mi`, or plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes_exact(self.0))
    }
}

/// Formats a byte count in the largest binary unit that divides it exactly.
pub fn format_bytes_exact(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, shift) in UNITS.iter().rev() {
        if bytes.trailing_zeros() >= *shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl FromStr for Quantity {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let shown = shown(raw);
        if s.is_empty() {
            return Err("a size must not be empty; write e.g. 10Gi".into());
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let shift = match suffix {
            "" => 0,
            _ => match UNITS.iter().find(|(u, _)| *u == suffix) {
                Some((_, shift)) => *shift,
                None => return Err(suffix_error(&shown, number, suffix)),
            },
        };
        if number.is_empty() {
            return Err(format!(
                "invalid size {shown}: it must start with a number, e.g. 10Gi"
            ));
        }
        if let Some((whole, frac)) = number.split_once('.') {
            return Err(fraction_error(&shown, whole, frac, shift));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid size {shown}: the number is too large for a size"))?;
        n.checked_mul(1u64 << shift)
            .map(Quantity)
            .ok_or_else(|| format!("invalid size {shown}: larger than 16Ei, the largest size"))
    }
}

fn suffix_error(shown: &str, number: &str, suffix: &str) -> String {
    let decimal = ["k", "K", "M", "G", "T", "P", "E"];
    let lower = [
        "ki", "mi", "gi", "ti", "pi", "ei", "KI", "MI", "GI", "TI", "PI", "EI",
    ];
    let b_forms = [
        "KB", "MB", "GB", "TB", "PB", "EB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
    ];
    let base = suffix.chars().next().map(|c| c.to_ascii_uppercase());
    let binary = base.and_then(|c| {
        UNITS
            .iter()
            .find(|(u, _)| u.starts_with(c))
            .map(|(u, _)| *u)
    });
    match binary {
        Some(u)
            if decimal.contains(&suffix)
                || lower.contains(&suffix)
                || b_forms.contains(&suffix) =>
        {
            format!(
                "invalid size {shown}: unknown suffix {suffix:?}; sizes use binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei): did you mean {number}{u}?"
            )
        }
        _ => format!(
            "invalid size {shown}: unknown suffix {suffix:?}; write a binary quantity such as 512Mi, 10Gi or 1Ti, or plain bytes"
        ),
    }
}

fn fraction_error(shown: &str, whole: &str, frac: &str, shift: u32) -> String {
    // Offer the exact value in a smaller unit when there is one.
    let exact = (|| {
        let w: u64 = whole.parse().ok()?;
        let digits = u32::try_from(frac.len()).ok()?;
        if digits == 0 || digits > 18 {
            return None;
        }
        let f: u64 = frac.parse().ok()?;
        let scale = 10u64.checked_pow(digits)?;
        let total = u128::from(w) * u128::from(scale) + u128::from(f);
        let bytes = total.checked_mul(1u128 << shift)?;
        if bytes % u128::from(scale) != 0 {
            return None;
        }
        u64::try_from(bytes / u128::from(scale)).ok()
    })();
    match exact {
        Some(bytes) => format!(
            "invalid size {shown}: fractions are not accepted; write {}",
            format_bytes_exact(bytes)
        ),
        None => format!(
            "invalid size {shown}: fractions are not accepted and this one is not a whole number of bytes"
        ),
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 10Gi, 512Mi or plain bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                u64::try_from(v)
                    .map(Quantity)
                    .map_err(|_| E::custom(format!("invalid size {v}: a size cannot be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Err(E::custom(format!(
                    "invalid size {v}: fractions are not accepted; write a whole number of bytes or a quantity such as 1536Mi"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a binary quantity (512Mi, 10Gi, 1Ti; suffixes Ki Mi Gi Ti Pi Ei) or plain bytes.",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei)?$"}
            ]
        })
    }
}

// ---------------------------------------------------------------------------
// Cron

/// A cron schedule: five fields (minute hour day-of-month month day-of-week),
/// or one of `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule(String);

impl CronSchedule {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CronSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        let trimmed = s.trim();
        let nicknames = [
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
        ];
        if trimmed.starts_with('@') {
            return if nicknames.contains(&trimmed) {
                Ok(CronSchedule(trimmed.to_owned()))
            } else {
                Err(format!(
                    "invalid schedule {shown}: unknown shorthand; use one of {}",
                    nicknames.join(", ")
                ))
            };
        }
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "invalid schedule {shown}: a cron expression has 5 fields (minute hour day-of-month month day-of-week), this one has {fields}"
            ));
        }
        croner::Cron::from_str(trimmed).map_err(|e| format!("invalid schedule {shown}: {e}"))?;
        Ok(CronSchedule(trimmed.to_owned()))
    }
}

impl JsonSchema for CronSchedule {
    fn schema_name() -> Cow<'static, str> {
        "CronSchedule".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A cron schedule: five fields (minute hour day-of-month month day-of-week), or @hourly, @daily, @weekly, @monthly, @yearly.",
            "type": "string",
            "pattern": "^(@(hourly|daily|midnight|weekly|monthly|yearly|annually)|\\s*\\S+(\\s+\\S+){4}\\s*)$"
        })
    }
}
string_newtype!(CronSchedule);

// ---------------------------------------------------------------------------
// iSCSI names

/// An iSCSI name (RFC 3720/3721): `iqn.YYYY-MM.reversed.domain[:identifier]`,
/// `eui.` followed by 16 hex digits, or `naa.` followed by 16 or 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IscsiName(String);

impl IscsiName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IscsiName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        if s.len() > 223 {
            return Err(format!(
                "invalid iSCSI name: {} bytes long; RFC 3720 allows at most 223",
                s.len()
            ));
        }
        let hex = |t: &str| t.chars().all(|c| c.is_ascii_hexdigit());
        if let Some(rest) = s.strip_prefix("eui.") {
            return if rest.len() == 16 && hex(rest) {
                Ok(IscsiName(s.to_owned()))
            } else {
                Err(format!(
                    "invalid iSCSI name {shown}: an eui. name has exactly 16 hex digits"
                ))
            };
        }
        if let Some(rest) = s.strip_prefix("naa.") {
            return if (rest.len() == 16 || rest.len() == 32) && hex(rest) {
                Ok(IscsiName(s.to_owned()))
            } else {
                Err(format!(
                    "invalid iSCSI name {shown}: a naa. name has 16 or 32 hex digits"
                ))
            };
        }
        let Some(rest) = s.strip_prefix("iqn.") else {
            return Err(format!(
                "invalid iSCSI name {shown}: it must start with iqn., eui. or naa. (e.g. iqn.1994-05.com.example:host1)"
            ));
        };
        let date_ok = rest.len() >= 8 && {
            let b = rest.as_bytes();
            b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit)
                && matches!(
                    &rest[5..7],
                    "01" | "02"
                        | "03"
                        | "04"
                        | "05"
                        | "06"
                        | "07"
                        | "08"
                        | "09"
                        | "10"
                        | "11"
                        | "12"
                )
                && b.get(7) == Some(&b'.')
        };
        if !date_ok {
            return Err(format!(
                "invalid iSCSI name {shown}: an iqn. name continues with the year and month the naming authority owned its domain, then '.', e.g. iqn.1994-05.com.example:host1"
            ));
        }
        let authority = rest[8..].split(':').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!(
                "invalid iSCSI name {shown}: the reversed domain name after the date is missing"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:".contains(*c)))
        {
            let hint = if c.is_ascii_uppercase() {
                " (iSCSI names are case-insensitive and written in lowercase)"
            } else {
                ""
            };
            return Err(format!(
                "invalid iSCSI name {shown}: {} is not allowed{hint}",
                describe_char(c)
            ));
        }
        Ok(IscsiName(s.to_owned()))
    }
}

impl JsonSchema for IscsiName {
    fn schema_name() -> Cow<'static, str> {
        "IscsiName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An iSCSI name: iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex>, or naa.<16 or 32 hex>.",
            "type": "string",
            "maxLength": 223,
            "pattern": "^(iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9.:-]+|eui\\.[0-9A-Fa-f]{16}|naa\\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))$"
        })
    }
}
string_newtype!(IscsiName);

// ---------------------------------------------------------------------------
// Paths

/// An absolute, normalised filesystem path: starts with `/`, no `.` or `..`
/// components, no NUL or control characters, not `/` itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
    fn as_str(&self) -> &str {
        // Constructed from a &str, so always valid UTF-8.
        self.0.to_str().unwrap_or_default()
    }
    /// True when `self` equals `other` or lies below it.
    pub fn is_within(&self, other: &AbsPath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        if !s.starts_with('/') {
            return Err(format!(
                "invalid path {shown}: it must be absolute (start with '/')"
            ));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(format!(
                "invalid path {shown}: {} is not allowed",
                describe_char(c)
            ));
        }
        if s.len() > 1024 {
            return Err(format!(
                "invalid path: {} bytes long; at most 1024",
                s.len()
            ));
        }
        let path = Path::new(s);
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || s.split('/').any(|part| part == "." || part == "..")
        {
            return Err(format!(
                "invalid path {shown}: '.' and '..' components are not allowed; write the path in full"
            ));
        }
        let normalised: PathBuf = path.components().collect();
        if normalised == Path::new("/") {
            return Err(format!(
                "invalid path {shown}: the root directory cannot be used"
            ));
        }
        Ok(AbsPath(normalised))
    }
}

impl JsonSchema for AbsPath {
    fn schema_name() -> Cow<'static, str> {
        "AbsPath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An absolute path without '.' or '..' components.",
            "type": "string",
            "maxLength": 1024,
            "pattern": "^/[^\\x00-\\x1f]+$"
        })
    }
}
string_newtype!(AbsPath);

/// A directory cinderblock manages (a `file` back end's path, a backup
/// repository): absolute, or relative, which means below the state directory
/// (`--state`), so a first run needs no system path. Neither form may contain
/// `.` or `..` components, so a relative path cannot leave the state directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StorePath {
    /// An absolute path.
    Absolute(AbsPath),
    /// A path below the state directory.
    InState(PathBuf),
}

impl StorePath {
    /// The path on this host, given the state directory.
    pub fn resolve(&self, state_dir: &Path) -> PathBuf {
        match self {
            StorePath::Absolute(a) => a.as_path().to_path_buf(),
            StorePath::InState(r) => state_dir.join(r),
        }
    }
    /// True for a path below the state directory.
    pub fn is_in_state(&self) -> bool {
        matches!(self, StorePath::InState(_))
    }
    /// True when `self` equals `other` or lies below it (same form only).
    pub fn is_within(&self, other: &StorePath) -> bool {
        match (self, other) {
            (StorePath::Absolute(a), StorePath::Absolute(b)) => a.is_within(b),
            (StorePath::InState(a), StorePath::InState(b)) => a.starts_with(b),
            _ => false,
        }
    }
    fn as_str(&self) -> &str {
        match self {
            StorePath::Absolute(a) => a.as_str(),
            StorePath::InState(r) => r.to_str().unwrap_or_default(),
        }
    }
}

impl FromStr for StorePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(m) = url_or_share(s) {
            return Err(m);
        }
        if s.starts_with('/') {
            return s.parse().map(StorePath::Absolute);
        }
        let quoted = shown(s);
        if s.is_empty() || s.starts_with('-') {
            return Err(format!(
                "invalid path {quoted}: write an absolute path, or a path relative to the state directory"
            ));
        }
        // Checked as if absolute: same rules for components and characters.
        let abs: AbsPath = format!("/{s}")
            .parse()
            .map_err(|e: String| e.replace(&shown(&format!("/{s}")), &quoted))?;
        let rel = abs
            .as_path()
            .strip_prefix("/")
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(StorePath::InState(rel))
    }
}

/// A URL or an NFS share written where a directory belongs: said so,
/// with what to write instead (a relative `s3://b/x` would otherwise be the
/// directory `s3:/b/x` below the state directory).
fn url_or_share(s: &str) -> Option<String> {
    let quoted = shown(s);
    if let Some((scheme, _)) = s.split_once("://") {
        let hint = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "http" | "https" => {
                "an S3-compatible store is `target: {s3: {endpoint, bucket, prefix, credentialsRef}}`"
            }
            "nfs" => "an NFS share is `share: HOST:/EXPORT` beside `path` (the mount point)",
            _ => "write a directory",
        };
        return Some(format!(
            "invalid path {quoted}: a URL is not a directory; {hint}"
        ));
    }
    let (head, rest) = s.split_once(':')?;
    let hostlike = !head.is_empty()
        && !head.contains('/')
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]".contains(c));
    (hostlike && rest.starts_with('/')).then(|| {
        format!(
            "invalid path {quoted}: HOST:/EXPORT is an NFS share, not a directory; write it as `share:` beside `path` (the mount point)"
        )
    })
}

impl JsonSchema for StorePath {
    fn schema_name() -> Cow<'static, str> {
        "StorePath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An absolute path, or a path relative to the state directory; no '.' or '..' components.",
            "type": "string",
            "maxLength": 1024,
            "pattern": "^[^-\\x00-\\x1f][^\\x00-\\x1f]*$"
        })
    }
}
string_newtype!(StorePath);

/// An NFS share as `mount -t nfs` takes it: `HOST:/EXPORT` (IPv6 hosts in
/// brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsShare(String);

impl NfsShare {
    /// The share as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NfsShare {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        let bad = || {
            format!(
                "invalid NFS share {shown}: write it as HOST:/EXPORT, e.g. nfs1.example.com:/srv/cinder"
            )
        };
        let (host, export) = if let Some(rest) = s.strip_prefix('[') {
            let (h, e) = rest.split_once("]:").ok_or_else(bad)?;
            (h, e)
        } else {
            s.split_once(':').ok_or_else(bad)?
        };
        let host_ok = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c));
        if !host_ok {
            return Err(bad());
        }
        export
            .parse::<AbsPath>()
            .map_err(|e| format!("invalid NFS share {shown}: export {e}"))?;
        Ok(NfsShare(s.to_owned()))
    }
}

impl JsonSchema for NfsShare {
    fn schema_name() -> Cow<'static, str> {
        "NfsShare".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An NFS share: HOST:/EXPORT.",
            "type": "string",
            "pattern": "^([A-Za-z0-9._-]+|\\[[0-9A-Fa-f:.]+\\]):/.+$"
        })
    }
}
string_newtype!(NfsShare);

/// Mount options as `mount -o` takes them: comma-separated, no whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions(String);

impl MountOptions {
    /// The options as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MountOptions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        if s.is_empty()
            || s.starts_with('-')
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "invalid mount options {shown}: write them comma-separated without spaces, e.g. vers=4.2,noatime"
            ));
        }
        if s.split(',').any(str::is_empty) {
            return Err(format!(
                "invalid mount options {shown}: empty option between commas"
            ));
        }
        Ok(MountOptions(s.to_owned()))
    }
}

impl JsonSchema for MountOptions {
    fn schema_name() -> Cow<'static, str> {
        "MountOptions".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Mount options, comma-separated, e.g. vers=4.2,noatime.",
            "type": "string",
            "pattern": "^[^-\\s,][^\\s,]*(,[^\\s,]+)*$"
        })
    }
}
string_newtype!(MountOptions);

// ---------------------------------------------------------------------------
// Numbers

/// `maxOverSubscriptionRatio`: a number ≥ 1.0, or `auto` (Cinder's formula
/// `1 + provisioned / (total − free + 1)`, 20 when nothing is provisioned).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverSubscription {
    /// A fixed ratio, at least 1.0.
    Ratio(f64),
    /// Derived from current usage.
    Auto,
}

impl Default for OverSubscription {
    /// Cinder's default, 20.0.
    fn default() -> Self {
        OverSubscription::Ratio(20.0)
    }
}

impl OverSubscription {
    fn from_number(v: f64) -> Result<Self, String> {
        if v.is_finite() && v >= 1.0 {
            Ok(OverSubscription::Ratio(v))
        } else {
            Err(format!(
                "invalid maxOverSubscriptionRatio {v}: it must be a number of at least 1.0, or \"auto\""
            ))
        }
    }
}

impl fmt::Display for OverSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverSubscription::Ratio(r) => write!(f, "{r}"),
            OverSubscription::Auto => f.write_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for OverSubscription {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OverSubscription;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of at least 1.0, or \"auto\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OverSubscription, E> {
                OverSubscription::from_number(v).map_err(E::custom)
            }
            #[allow(clippy::cast_precision_loss)] // ratios are small numbers
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OverSubscription, E> {
                self.visit_f64(v as f64)
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OverSubscription, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OverSubscription, E> {
                if v == "auto" {
                    return Ok(OverSubscription::Auto);
                }
                match v.parse::<f64>() {
                    Ok(n) => OverSubscription::from_number(n).map_err(E::custom),
                    Err(_) => Err(E::custom(format!(
                        "invalid maxOverSubscriptionRatio {}: it must be a number of at least 1.0, or \"auto\"",
                        shown(v)
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for OverSubscription {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OverSubscription::Ratio(r) => s.serialize_f64(*r),
            OverSubscription::Auto => s.serialize_str("auto"),
        }
    }
}

impl JsonSchema for OverSubscription {
    fn schema_name() -> Cow<'static, str> {
        "OverSubscription".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of at least 1.0, or \"auto\".",
            "anyOf": [{"type": "number", "minimum": 1.0}, {"const": "auto"}]
        })
    }
}

/// A whole percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Percent(u8);

impl Percent {
    /// `p` percent, at most 100.
    pub const fn new(p: u8) -> Self {
        Self(if p > 100 { 100 } else { p })
    }

    /// The percentage.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        u8::try_from(v)
            .ok()
            .filter(|p| *p <= 100)
            .map(Percent)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid percentage {v}: it must be between 0 and 100"
                ))
            })
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "maximum": 100})
    }
}

/// An IANA time zone name such as `UTC`, `Europe/Berlin` or
/// `America/Argentina/Buenos_Aires` (checked for form here; the agent resolves
/// it against the system's zone database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    /// The zone name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TimeZoneName {
    fn default() -> Self {
        TimeZoneName("UTC".into())
    }
}

impl FromStr for TimeZoneName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.starts_with('-')
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
            });
        if ok {
            Ok(TimeZoneName(s.to_owned()))
        } else {
            Err(format!(
                "invalid time zone {}: write an IANA zone name such as UTC or Europe/Berlin",
                shown(s)
            ))
        }
    }
}

impl JsonSchema for TimeZoneName {
    fn schema_name() -> Cow<'static, str> {
        "TimeZoneName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An IANA time zone name such as UTC or Europe/Berlin.",
            "type": "string",
            "pattern": "^[A-Za-z0-9_+][A-Za-z0-9_+-]*(/[A-Za-z0-9_+][A-Za-z0-9_+-]*)*$"
        })
    }
}
string_newtype!(TimeZoneName);

// ---------------------------------------------------------------------------
// helpers

/// Quotes a user value for an error message, shortened and with control
/// characters escaped, so hostile input cannot garble the terminal.
pub fn shown(s: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("{out:?}").replace("\\\"", "\"")
}

fn describe_char(c: char) -> String {
    match c {
        '\0' => "the NUL character".into(),
        c if c.is_whitespace() => "whitespace".into(),
        c if c.is_control() => format!("the control character {c:?}"),
        c => format!("'{c}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_binary_suffixes_and_bytes() {
        assert_eq!("10Gi".parse::<Quantity>().unwrap().bytes(), 10 << 30);
        assert_eq!("512Mi".parse::<Quantity>().unwrap().bytes(), 512 << 20);
        assert_eq!("1Ti".parse::<Quantity>().unwrap().bytes(), 1 << 40);
        assert_eq!("4096".parse::<Quantity>().unwrap().bytes(), 4096);
        assert_eq!(Quantity::from_bytes(1536 << 20).to_string(), "1536Mi");
        assert_eq!(Quantity::from_bytes(1000).to_string(), "1000");
    }

    #[test]
    fn quantities_refuse_fractions_with_the_exact_alternative() {
        let e = "1.5Gi".parse::<Quantity>().unwrap_err();
        assert_eq!(
            e,
            "invalid size \"1.5Gi\": fractions are not accepted; write 1536Mi"
        );
        let e = "0.3Ki".parse::<Quantity>().unwrap_err();
        assert!(e.contains("not a whole number of bytes"), "{e}");
    }

    #[test]
    fn quantities_refuse_decimal_suffixes_with_a_hint() {
        let e = "10G".parse::<Quantity>().unwrap_err();
        assert!(e.contains("did you mean 10Gi?"), "{e}");
        let e = "10GB".parse::<Quantity>().unwrap_err();
        assert!(e.contains("did you mean 10Gi?"), "{e}");
        assert!(
            "17Ei"
                .parse::<Quantity>()
                .unwrap_err()
                .contains("larger than 16Ei")
        );
        assert!("Gi".parse::<Quantity>().is_err());
        assert!("-1Gi".parse::<Quantity>().is_err());
    }

    #[test]
    fn names_follow_dns1123() {
        assert!("db-01".parse::<Name>().is_ok());
        for bad in ["../x", "a;rm -rf /", "-rf", "a\0b", "Db", "a_b", "", "x-"] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(300);
        assert!(long.parse::<Name>().unwrap_err().contains("at most 63"));
        assert!(
            "Db".parse::<Name>()
                .unwrap_err()
                .contains("did you mean \"db\"?")
        );
    }

    #[test]
    fn lvm_names_reject_what_lvm2_rejects() {
        assert!("cinder-volumes".parse::<LvmName>().is_ok());
        for bad in ["-x", "..", "a/b", "snapshot1", "x_tmeta", "a b"] {
            assert!(bad.parse::<LvmName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cron_needs_five_fields() {
        assert!("0 2 * * *".parse::<CronSchedule>().is_ok());
        assert!("@daily".parse::<CronSchedule>().is_ok());
        assert!(
            "0 0 2 * * *"
                .parse::<CronSchedule>()
                .unwrap_err()
                .contains("has 6")
        );
        assert!("61 2 * * *".parse::<CronSchedule>().is_err());
        assert!("@sometimes".parse::<CronSchedule>().is_err());
    }

    #[test]
    fn iscsi_names() {
        // The default target name is one a manifest could write too.
        let default = crate::iscsi::names::default_iqn(uuid::Uuid::from_u128(7));
        assert!(default.parse::<IscsiName>().is_ok(), "{default}");
        for good in [
            "iqn.1994-05.com.example:host1",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
        ] {
            assert!(good.parse::<IscsiName>().is_ok(), "{good}");
        }
        for bad in [
            "iqn.94-05.com.example",
            "iqn.1994-13.com.x",
            "eui.123",
            "host1",
            "iqn.1994-05.com.Example",
        ] {
            assert!(bad.parse::<IscsiName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_must_be_absolute_and_plain() {
        assert_eq!(
            "/srv/cinder/".parse::<AbsPath>().unwrap().to_string(),
            "/srv/cinder"
        );
        for bad in ["relative", "/a/../b", "/a/./b", "/", "/a\nb"] {
            assert!(bad.parse::<AbsPath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn store_paths_are_absolute_or_inside_the_state_dir() {
        let p: StorePath = "volumes/a".parse().unwrap();
        assert_eq!(
            p.resolve(Path::new("/var/lib/cb")),
            Path::new("/var/lib/cb/volumes/a")
        );
        assert_eq!(
            "/srv/x"
                .parse::<StorePath>()
                .unwrap()
                .resolve(Path::new("/s")),
            Path::new("/srv/x")
        );
        for bad in ["../x", "a/../../b", "-x", ""] {
            assert!(bad.parse::<StorePath>().is_err(), "{bad:?}");
        }
        // A URL or a share where a directory belongs says what to write.
        let err = "s3://bucket/x".parse::<StorePath>().unwrap_err();
        assert!(
            err.contains("a URL is not a directory") && err.contains("target: {s3:"),
            "{err}"
        );
        let err = "nfs1.example:/srv/b".parse::<StorePath>().unwrap_err();
        assert!(err.contains("is an NFS share"), "{err}");
        assert!("https://x/y".parse::<StorePath>().is_err());
        // A colon elsewhere is still a path.
        assert!("/srv/a:b".parse::<StorePath>().is_ok());
        assert!("dir/a:/b".parse::<StorePath>().is_ok());
    }

    #[test]
    fn nfs_shares_and_options() {
        assert!("nfs1:/srv/x".parse::<NfsShare>().is_ok());
        assert!("[fd00::1]:/srv/x".parse::<NfsShare>().is_ok());
        for bad in ["nfs1", "-o:/x", "nfs1:relative", "a;b:/x"] {
            assert!(bad.parse::<NfsShare>().is_err(), "{bad}");
        }
        assert!("vers=4.2,noatime".parse::<MountOptions>().is_ok());
        assert!("vers=4.2, noatime".parse::<MountOptions>().is_err());
        assert!("-oremount".parse::<MountOptions>().is_err());
    }

    #[test]
    fn shown_escapes_and_shortens() {
        assert_eq!(shown("a\0b"), "\"a\\0b\"");
        assert!(shown(&"x".repeat(100)).ends_with("…\""));
    }
}
