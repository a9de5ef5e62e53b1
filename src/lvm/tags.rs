//! Ownership of LVs: the tags cinderblock writes, the LV names it derives, and
//! reading both back.
//!
//! # Naming
//! LV names come from the object's kind and uuid only, as Cinder's driver names
//! them: `volume-<uuid>`, `_snapshot-<uuid>` (lvm2 reserves names *starting*
//! with `snapshot`), `image-<uuid>`. Manifest text never reaches an LV name, so a
//! rename in the manifests is a change of one tag, never an `lvrename`. A
//! migration between two back ends of one volume group makes its target while
//! the source holds that name: the target is `<name>-m` ([`second_lv_name`]),
//! and a later move back takes the first name again. Nothing finds an LV by
//! its name, only by its identity tag.
//!
//! # Tags
//! Every LV we create carries, set in the same `lvcreate` call that creates it
//! (one metadata commit, so an LV of ours never exists untagged):
//!
//! | tag | meaning |
//! | --- | --- |
//! | `cinderblock.uuid=<uuid>` | identity; every operation finds its LV by it |
//! | `cinderblock.name=<name>` | the manifest name |
//! | `cinderblock.kind=volume\|snapshot\|image` | kind |
//! | `cinderblock.backend=<backend>` | the owner mark: the back end's manifest name |
//! | `cinderblock.parent=<uuid>` | snapshots: the volume they were taken of |
//! | `cinderblock.state=creating\|deleting\|migrating` | the [`Mark`], only while a multi-step operation is in flight |
//!
//! An LV is ours exactly when it carries `cinderblock.backend=` with this back
//! end's name; everything else (no tags, another back end's mark, or
//! `cinderblock.released=<backend>` after a `Retain`) is foreign: listed, never
//! changed. A `cinderblock.backend` mark with a missing or unreadable identity is
//! a *problem* (the view is partial, so the run makes no deletes) rather than a
//! guess.
//!
//! lvm2 accepts tag characters `[A-Za-z0-9_+.-]` and `/=!:&#` (checked in the
//! lab: `,`, `@`, `%` and spaces are refused with "Invalid argument for
//! --addtag"). Values are encoded so any text fits: bytes outside that set, and
//! `#` itself, become `#XX` (two lowercase hex digits). Today's values (uuids,
//! DNS-1123 names) need no escaping; the encoding keeps that true for whatever
//! a later field carries.
//!
//! Pure: no I/O.

use std::fmt::Write as _;

use uuid::Uuid;

use super::report::Lv;
use crate::model::{Mark, ObjKind};

/// Prefix of every tag key we write.
pub const PREFIX: &str = "cinderblock.";
/// Identity tag key.
pub const UUID: &str = "cinderblock.uuid";
/// Manifest-name tag key.
pub const NAME: &str = "cinderblock.name";
/// Kind tag key.
pub const KIND: &str = "cinderblock.kind";
/// Owner-mark tag key (value: the back end's manifest name).
pub const BACKEND: &str = "cinderblock.backend";
/// Snapshot parent tag key.
pub const PARENT: &str = "cinderblock.parent";
/// In-flight operation tag key.
pub const STATE: &str = "cinderblock.state";
/// Written in place of the owner mark when an object is let go (`Retain`).
pub const RELEASED: &str = "cinderblock.released";
/// A migration target's migration identity (with `state=migrating`).
pub const MIGRATION: &str = "cinderblock.migration";
/// A migration target's source back end.
pub const MIGRATING_FROM: &str = "cinderblock.from";

/// The LV name of an object of kind `kind` (Cinder's naming).
pub fn lv_name(kind: ObjKind, uuid: Uuid) -> String {
    match kind {
        ObjKind::Volume => format!("volume-{uuid}"),
        // lvm2 refuses names starting with "snapshot" ("reserved"); Cinder's
        // `_snapshot-` works and is what admins of Cinder hosts know.
        ObjKind::Snapshot => format!("_snapshot-{uuid}"),
        ObjKind::Image => format!("image-{uuid}"),
    }
}

/// The second name of an object of kind `kind`: a migration's target
/// inside the volume group its source is in, while the source holds
/// [`lv_name`] (the names alternate with each such move).
pub fn second_lv_name(kind: ObjKind, uuid: Uuid) -> String {
    format!("{}-m", lv_name(kind, uuid))
}

/// The identity an LV of ours carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// Identity.
    pub uuid: Uuid,
    /// Manifest name.
    pub name: String,
    /// Kind.
    pub kind: ObjKind,
    /// For snapshots: the volume.
    pub parent: Option<Uuid>,
    /// Its mark: [`Mark::Ready`] without a state tag, else the operation in
    /// flight.
    pub mark: Mark,
}

/// How an LV relates to a back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Ours, with its identity.
    Ours(Owned),
    /// Marked as this back end's, but the identity tags are missing or
    /// unreadable: the message says which.
    Damaged(String),
    /// Not ours (no mark, another back end's, or released).
    Foreign,
}

/// Encodes `value` for a tag (see the module docs).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b != b'#' && allowed(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "#{b:02x}");
        }
    }
    out
}

/// Decodes a tag value written by [`encode`]; `None` when an escape is malformed
/// or the bytes are not UTF-8.
pub fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'#' {
            let hex = value.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether lvm2 accepts `b` in a tag.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_+.-/=!:&#".contains(&b)
}

/// `key=encoded value`.
pub fn tag(key: &str, value: &str) -> String {
    format!("{key}={}", encode(value))
}

/// The tags of a new object of ours (for `lvcreate --addtag`).
pub fn new_tags(backend: &str, owned: &Owned) -> Vec<String> {
    let mut tags = vec![
        tag(UUID, &owned.uuid.to_string()),
        tag(NAME, &owned.name),
        tag(KIND, owned.kind.as_str()),
        tag(BACKEND, backend),
    ];
    if let Some(p) = owned.parent {
        tags.push(tag(PARENT, &p.to_string()));
    }
    if owned.mark != Mark::Ready {
        tags.push(tag(STATE, owned.mark.as_str()));
    }
    tags
}

/// A migration target's migration identity and source back end, from its
/// [`MIGRATION`] and [`MIGRATING_FROM`] tags.
pub fn migration_of(lv: &Lv) -> Option<(Uuid, String)> {
    let id = lv.tag_value(MIGRATION).and_then(decode)?;
    let from = lv.tag_value(MIGRATING_FROM).and_then(decode)?;
    Some((Uuid::parse_str(&id).ok()?, from))
}

/// Reads an LV's tags against back end `backend`.
pub fn ownership(lv: &Lv, backend: &str) -> Ownership {
    let value = |key: &str| lv.tag_value(key).and_then(decode);
    if value(BACKEND).as_deref() != Some(backend) {
        return Ownership::Foreign;
    }
    let damaged = |what: String| Ownership::Damaged(format!("LV {}/{}: {what}", lv.vg, lv.name));
    let Some(uuid) = value(UUID) else {
        return damaged(format!("carries {BACKEND}={backend} but no {UUID} tag"));
    };
    let Ok(uuid) = Uuid::parse_str(&uuid) else {
        return damaged(format!("{UUID}={uuid} is not a uuid"));
    };
    let Some(kind) = value(KIND) else {
        return damaged(format!("no {KIND} tag"));
    };
    let Some(kind) = ObjKind::parse(&kind) else {
        return damaged(format!("{KIND}={kind} is not volume, snapshot or image"));
    };
    let Some(name) = value(NAME) else {
        return damaged(format!("no {NAME} tag"));
    };
    let parent = match value(PARENT) {
        None => None,
        Some(p) => match Uuid::parse_str(&p) {
            Ok(u) => Some(u),
            Err(_) => return damaged(format!("{PARENT}={p} is not a uuid")),
        },
    };
    let mark = match value(STATE) {
        None => Mark::Ready,
        // `ready` is never written: a ready LV has no state tag.
        Some(s) if Mark::parse(&s).is_some_and(|m| m != Mark::Ready) => {
            Mark::parse(&s).unwrap_or(Mark::Ready)
        }
        Some(other) => {
            return damaged(format!(
                "{STATE}={other} is not creating, deleting or migrating"
            ));
        }
    };
    Ownership::Ours(Owned {
        uuid,
        name,
        kind,
        parent,
        mark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::report::parse_fullreport;

    const FULLREPORT: &[u8] = include_bytes!("../../tests/fixtures/lvm/fullreport.json");

    #[test]
    fn encoding_round_trips_and_stays_in_lvm2_charset() {
        for v in [
            "vol-1",
            "9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f",
            "a b,c@d%e#f",
            "ünï",
            "",
        ] {
            let e = encode(v);
            assert!(e.bytes().all(allowed), "{e}");
            assert_eq!(decode(&e).as_deref(), Some(v));
        }
        assert_eq!(encode("vol-1"), "vol-1", "names need no escaping");
        assert_eq!(encode("a b#"), "a#20b#23");
        assert_eq!(decode("#zz"), None);
        assert_eq!(decode("#4"), None);
        assert_eq!(
            decode("#C3"),
            None,
            "lowercase hex only: one spelling per value"
        );
    }

    #[test]
    fn names_come_from_kind_and_uuid() {
        let u = Uuid::parse_str("9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f").unwrap();
        assert_eq!(
            lv_name(ObjKind::Volume, u),
            "volume-9b8e7d6c-5a4b-4c3d-8e2f-1a0b9c8d7e6f"
        );
        assert!(lv_name(ObjKind::Snapshot, u).starts_with("_snapshot-"));
        let name = lv_name(ObjKind::Image, u);
        assert!(
            name.parse::<crate::manifest::values::LvmName>().is_ok(),
            "{name}"
        );
    }

    #[test]
    fn new_tags_read_back_as_ours() {
        let owned = Owned {
            uuid: Uuid::from_u128(7),
            name: "db".into(),
            kind: ObjKind::Snapshot,
            parent: Some(Uuid::from_u128(3)),
            mark: Mark::Creating,
        };
        let tags = new_tags("lvm-a", &owned);
        assert_eq!(
            tags,
            [
                "cinderblock.uuid=00000000-0000-0000-0000-000000000007",
                "cinderblock.name=db",
                "cinderblock.kind=snapshot",
                "cinderblock.backend=lvm-a",
                "cinderblock.parent=00000000-0000-0000-0000-000000000003",
                "cinderblock.state=creating",
            ]
        );
        let mut lv = parse_fullreport(FULLREPORT).unwrap().lvs.remove(0);
        lv.tags = tags;
        assert_eq!(ownership(&lv, "lvm-a"), Ownership::Ours(owned));
        assert_eq!(
            ownership(&lv, "lvm-b"),
            Ownership::Foreign,
            "another back end's"
        );
    }

    #[test]
    fn fixture_lvs_without_our_mark_are_foreign() {
        // The fixture's tags predate the owner mark: without it nothing is ours,
        // neither the untagged `legacy` LV nor the thin snapshots (which do not
        // inherit their origin's tags).
        let r = parse_fullreport(FULLREPORT).unwrap();
        for lv in &r.lvs {
            assert_eq!(ownership(lv, "lvm"), Ownership::Foreign, "{}", lv.name);
        }
    }

    #[test]
    fn a_mark_without_identity_is_damaged_not_guessed() {
        let mut lv = parse_fullreport(FULLREPORT).unwrap().lvs.remove(0);
        lv.tags = vec!["cinderblock.backend=lvm".into()];
        let Ownership::Damaged(why) = ownership(&lv, "lvm") else {
            panic!()
        };
        assert_eq!(
            why,
            "LV labvg/legacy: carries cinderblock.backend=lvm but no cinderblock.uuid tag"
        );
        lv.tags = vec![
            "cinderblock.backend=lvm".into(),
            "cinderblock.uuid=nope".into(),
        ];
        assert!(
            matches!(ownership(&lv, "lvm"), Ownership::Damaged(w) if w.contains("is not a uuid"))
        );
        lv.tags = vec![
            "cinderblock.backend=lvm".into(),
            "cinderblock.uuid=00000000-0000-0000-0000-000000000007".into(),
            "cinderblock.kind=volume".into(),
            "cinderblock.name=x".into(),
            "cinderblock.state=half".into(),
        ];
        assert!(matches!(ownership(&lv, "lvm"), Ownership::Damaged(w) if w.contains("state=half")));
    }

    #[test]
    fn released_lvs_are_foreign() {
        let mut lv = parse_fullreport(FULLREPORT).unwrap().lvs.remove(0);
        lv.tags = vec![
            "cinderblock.uuid=00000000-0000-0000-0000-000000000007".into(),
            "cinderblock.kind=volume".into(),
            "cinderblock.name=x".into(),
            "cinderblock.released=lvm".into(),
        ];
        assert_eq!(ownership(&lv, "lvm"), Ownership::Foreign);
    }
}
