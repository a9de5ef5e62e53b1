//! The fleet's keys in etcd: one prefix (`--etcd-prefix`, default
//! `/cinderblock`), a layout version, then one directory per kind of record.
//!
//! ```text
//! PREFIX/v1/hosts/HOST                 HostRecord, under the host's lease (liveness)
//! PREFIX/v1/views/HOST                 HostView: what the host last published (no lease:
//!                                       a down host's last view stays readable)
//! PREFIX/v1/views/HOST/backends/NAME   BackendRecord: one back end's capacity, objects, records
//! PREFIX/v1/placements/VOLUME          PlacementRecord: written once by the elected placer
//! PREFIX/v1/election/placer            etcd's election (keys NAME/LEASE made by etcd)
//! PREFIX/v1/jobs/VOLUME                reserved: cross-host migration jobs (issue 15)
//! ```
//!
//! Invariants: every key is built here from validated parts (host names,
//! DNS-1123 back-end and volume names), never from raw user text; a key
//! parses back into its parts ([`Keys::parse`]) or is ignored. Values are
//! bounded by [`MAX_VALUE`] (etcd refuses requests over 1.5 MiB by default).

use std::fmt;

/// Largest value we write (etcd's default request limit is 1.5 MiB; a
/// transaction carries several values, each of which must stay well below).
pub const MAX_VALUE: usize = 1024 * 1024;

/// The key prefix, validated: starts with `/`, no trailing `/`, printable
/// ASCII without spaces, no `..` segment, at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid --etcd-prefix {s:?}: {why}"));
        if !s.starts_with('/') {
            return bad("it must start with /");
        }
        if s.len() > 1 && s.ends_with('/') {
            return bad("it must not end with /");
        }
        if s.len() > 128 {
            return bad("longer than 128 bytes");
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("only printable ASCII without spaces is allowed");
        }
        if s.split('/').any(|seg| seg == ".." || seg == ".") {
            return bad("no . or .. segments");
        }
        Ok(Prefix(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "/" } else { &self.0 })
    }
}

/// Checks a host name before it becomes part of a key: 1–253 bytes of
/// letters, digits, `-`, `.` and `_`, not starting with `-` or `.`.
pub fn check_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && !h.starts_with(['-', '.'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host name {h:?} cannot be used in the fleet: use letters, digits, '-', '.' and '_' (set --host)"
        ))
    }
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A host's liveness record.
    Host(String),
    /// A host's published view.
    View(String),
    /// One back end of a host's view: (host, back end).
    Backend(String, String),
    /// A volume's placement.
    Placement(String),
    /// The placer election's keys.
    Election,
    /// A cross-host job (issue 15).
    Job(String),
}

/// Builds and parses keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &Prefix) -> Self {
        Keys {
            root: format!("{}/v1/", prefix.0),
        }
    }
    /// Everything of this fleet.
    pub fn all(&self) -> String {
        self.root.clone()
    }
    /// `hosts/`.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }
    /// `hosts/HOST`.
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.root)
    }
    /// `views/`.
    pub fn views(&self) -> String {
        format!("{}views/", self.root)
    }
    /// `views/HOST`.
    pub fn view(&self, host: &str) -> String {
        format!("{}views/{host}", self.root)
    }
    /// `views/HOST/backends/` (the back ends of one view).
    pub fn view_backends(&self, host: &str) -> String {
        format!("{}views/{host}/backends/", self.root)
    }
    /// `views/HOST/backends/NAME`.
    pub fn view_backend(&self, host: &str, backend: &str) -> String {
        format!("{}views/{host}/backends/{backend}", self.root)
    }
    /// `placements/`.
    pub fn placements(&self) -> String {
        format!("{}placements/", self.root)
    }
    /// `placements/VOLUME`.
    pub fn placement(&self, volume: &str) -> String {
        format!("{}placements/{volume}", self.root)
    }
    /// The placer election's name.
    pub fn election(&self) -> String {
        format!("{}election/placer", self.root)
    }
    /// `jobs/VOLUME` (reserved for cross-host migrations).
    pub fn job(&self, volume: &str) -> String {
        format!("{}jobs/{volume}", self.root)
    }

    /// What `key` names, or `None` for a key that is not ours.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.root)?;
        let (dir, rest) = rest.split_once('/')?;
        let one = |s: &str| (!s.is_empty() && !s.contains('/')).then(|| s.to_owned());
        match dir {
            "hosts" => one(rest).map(Key::Host),
            "placements" => one(rest).map(Key::Placement),
            "jobs" => one(rest).map(Key::Job),
            "election" => Some(Key::Election),
            "views" => match rest.split_once('/') {
                None => one(rest).map(Key::View),
                Some((host, b)) => {
                    let name = b.strip_prefix("backends/")?;
                    Some(Key::Backend(one(host)?, one(name)?))
                }
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let k = Keys::new(&"/cinderblock".parse().unwrap());
        assert_eq!(k.placement("db"), "/cinderblock/v1/placements/db");
        assert_eq!(
            k.parse(k.view_backend("stor-a", "fa").as_bytes()),
            Some(Key::Backend("stor-a".into(), "fa".into()))
        );
        assert_eq!(
            k.parse(k.view("stor-a").as_bytes()),
            Some(Key::View("stor-a".into()))
        );
        assert_eq!(k.parse(k.host("b").as_bytes()), Some(Key::Host("b".into())));
        assert_eq!(k.parse(b"/cinderblock/v2/hosts/b"), None);
        assert_eq!(k.parse(b"/other/v1/hosts/b"), None);
        assert_eq!(k.parse(b"/cinderblock/v1/views/a/junk/x"), None);
        assert_eq!(k.parse(b"/cinderblock/v1/placements/a/b"), None);
    }

    #[test]
    fn prefixes_and_host_names_are_checked() {
        assert_eq!(
            "/x/".parse::<Prefix>().unwrap_err(),
            "invalid --etcd-prefix \"/x/\": it must not end with /"
        );
        assert!("x".parse::<Prefix>().is_err());
        assert!("/a/../b".parse::<Prefix>().is_err());
        assert!("/a b".parse::<Prefix>().is_err());
        assert_eq!("/".parse::<Prefix>().unwrap().to_string(), "/");
        assert_eq!(Keys::new(&"/".parse().unwrap()).host("h"), "/v1/hosts/h");
        assert!(check_host("stor-a.example.org").is_ok());
        for bad in ["", "a/b", "-a", "a b", ".."] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
