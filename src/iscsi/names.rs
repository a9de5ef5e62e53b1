//! iSCSI names: the default target name of a volume, the one earlier versions
//! used, and whether targetcli can read a name.
//!
//! The default target is `iqn.2026-11.dev.cinderblock:volume-<uuid>`: Cinder's
//! `volume-<uuid>` pattern under cinderblock's own naming authority. An IQN's
//! naming authority is a reversed domain with the year and month its owner
//! held it (RFC 7143 section 4.2.7.1); `cinderblock.dev` is the project's (the
//! API group of every manifest), held since the project began in November
//! 2026. Cinder's `iqn.2010-10.org.openstack` belongs to `OpenStack`: a tool that
//! is not `OpenStack` must not mint names under it. Versions before this one used
//! `iqn.2010-10.dev.cinderblock`, a date before the `.dev` domain existed; their
//! exports keep that name (see [`is_default`]) so no initiator is cut off by a
//! rename.
//!
//! targetcli (rtslib-fb) refuses to read names the kernel accepts: an `iqn.`
//! name needs a `.` after its date part (`iqn.2026-12.test:client` is refused),
//! `naa.` names are 16 hex digits starting with 1, 2, 5 or c-f, and so on.
//! [`targetcli_problem`] says why one would be refused, so validation can warn.
//!
//! Pure; no I/O.

use uuid::Uuid;

/// The naming authority of the default target names.
pub const IQN_PREFIX: &str = "iqn.2026-11.dev.cinderblock:";
/// The naming authority of the default target names before November 2026
/// (earlier versions); exports made then keep it.
pub const LEGACY_IQN_PREFIX: &str = "iqn.2010-10.dev.cinderblock:";

/// The default target name of volume `uuid`.
pub fn default_iqn(uuid: Uuid) -> String {
    format!("{IQN_PREFIX}volume-{uuid}")
}

/// The target name of a cross-host migration's export of volume `uuid`
/// (`crate::xhost`): apart from the volume's own export, so the planner
/// never takes it for one.
pub fn migration_iqn(uuid: Uuid) -> String {
    format!("{IQN_PREFIX}migrate-{uuid}")
}

/// Whether `iqn` is the target name of a migration's export.
pub fn is_migration_iqn(iqn: &str) -> bool {
    iqn.strip_prefix(IQN_PREFIX)
        .and_then(|r| r.strip_prefix("migrate-"))
        .is_some_and(|u| u.parse::<Uuid>().is_ok())
}

/// Whether `iqn` is a default target name of volume `uuid`: today's, or the
/// one earlier versions gave it.
pub fn is_default(iqn: &str, uuid: Uuid) -> bool {
    let tail = format!("volume-{uuid}");
    [IQN_PREFIX, LEGACY_IQN_PREFIX]
        .iter()
        .any(|p| iqn.strip_prefix(p) == Some(tail.as_str()))
}

/// Why targetcli-fb (rtslib-fb) cannot read the iSCSI name `name`, if it
/// cannot. rtslib checks names with its own patterns (`normalize_wwn` in
/// `rtslib/utils.py`), stricter than RFC 7143 and the kernel; a name it
/// refuses makes `targetcli` fail on the whole configuration.
pub fn targetcli_problem(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = name.strip_prefix("iqn.") {
        // iqn\.[0-9]{4}-[0-1][0-9]\..*\..*
        let b = rest.as_bytes();
        let date = b.len() >= 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && matches!(b[5], b'0' | b'1')
            && b[6].is_ascii_digit()
            && b[7] == b'.';
        if !date {
            return Some("it wants iqn.YYYY-MM. at the start");
        }
        if !rest[8..].contains('.') {
            return Some(
                "it wants a '.' in the name after the date (e.g. iqn.2026-12.com.example:client, not iqn.2026-12.example:client)",
            );
        }
        if name.contains('_') || name.contains(' ') {
            return Some("it refuses '_' in names");
        }
        return None;
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        let ok = rest.len() == 16
            && hex(rest)
            && matches!(rest.as_bytes()[0], b'1' | b'2' | b'5' | b'c'..=b'f');
        return (!ok).then_some("it reads only 16-digit naa. names starting with 1, 2, 5 or c-f");
    }
    if let Some(rest) = name.strip_prefix("eui.") {
        return (!(rest.len() == 16 && hex(rest))).then_some("it wants eui. and 16 hex digits");
    }
    Some("it reads only iqn., naa. and eui. names")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_old_and_new() {
        let u = Uuid::from_u128(7);
        let iqn = default_iqn(u);
        assert_eq!(
            iqn,
            "iqn.2026-11.dev.cinderblock:volume-00000000-0000-0000-0000-000000000007"
        );
        assert!(is_default(&iqn, u));
        assert!(is_default(
            "iqn.2010-10.dev.cinderblock:volume-00000000-0000-0000-0000-000000000007",
            u
        ));
        assert!(!is_default(&iqn, Uuid::from_u128(8)));
        assert!(!is_default(
            "iqn.2010-10.org.openstack:volume-00000000-0000-0000-0000-000000000007",
            u
        ));
        // The default is readable by targetcli (and a valid `targetName`:
        // `manifest::values` tests it, iscsi does not depend on manifest).
        assert_eq!(targetcli_problem(&iqn), None);
    }

    #[test]
    fn what_targetcli_refuses() {
        for ok in [
            "iqn.1994-05.com.example:client1",
            "iqn.2026-12.test:client.a",
            "eui.02004567a425678d",
            "naa.5001405000000001",
        ] {
            assert_eq!(targetcli_problem(ok), None, "{ok}");
        }
        for bad in [
            "iqn.2026-12.test:client",
            "iqn.2026-12.test",
            "naa.60014050000000010000000000000001",
            "naa.3001405000000001",
        ] {
            assert!(targetcli_problem(bad).is_some(), "{bad}");
        }
    }
}
