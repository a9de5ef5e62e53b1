//! CHAP credentials: reading them from where a manifest points, and comparing
//! them with what LIO holds without either value ever being printed.
//!
//! A `chapSecretRef` names a file or an environment variable holding
//! `USER:PASSWORD`. [`read`] reads one; its errors name the source, never the
//! content. LIO keeps the credentials it was given readable in configfs
//! (`auth/userid`, `auth/password`, and their `_mutual` twins), so a rotated
//! secret is found by comparing the two.
//!
//! The comparison goes through [`Fingerprint`]s: a BLAKE3 keyed hash under a key
//! drawn at random once per process. Observation turns both sides into
//! fingerprints as soon as it reads them; the model, the world and the planner
//! only ever hold and compare fingerprints. They are equality tokens inside one
//! process and nothing more: never serialized, never printed (their `Debug`
//! says `<fingerprint>`), never persisted, and useless to anyone who sees one
//! (without the key, a guessed password cannot be checked against it).
//!
//! A host's view published to the fleet (`plan --fleet` plans every host from
//! what it published) carries [`Classes`] instead: each distinct fingerprint of
//! that view numbered 1, 2, ... in the order the view lists them. The numbers
//! say which of the view's secrets are equal and nothing else: no hash of a
//! value leaves the process. [`Fingerprint::of_class`] turns them back into
//! fingerprints that compare equal exactly where the host's did.
//!
//! Must not: log, print, journal or keep a secret beyond the call that uses it.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// CHAP credentials (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    /// User name.
    pub user: String,
    /// Secret.
    pub password: String,
}

impl fmt::Debug for Chap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The user name is part of the secret behind a `chapSecretRef` too.
        f.write_str("Chap(<redacted>)")
    }
}

impl Chap {
    /// Parses `USER:PASSWORD` (surrounding whitespace and a trailing newline
    /// ignored).
    pub fn parse(text: &str) -> Result<Chap, String> {
        let (user, password) = text
            .trim()
            .split_once(':')
            .ok_or("the CHAP secret must be USER:PASSWORD")?;
        if user.is_empty() || password.is_empty() {
            return Err("the CHAP secret must be USER:PASSWORD, both non-empty".into());
        }
        if user
            .chars()
            .chain(password.chars())
            .any(char::is_whitespace)
        {
            return Err("the CHAP user and password must not contain white space".into());
        }
        // LIO stores "NULL" to mean "not set" (rtslib writes it to clear).
        if user == NULL || password == NULL {
            return Err(
                "the CHAP user and password must not be NULL (LIO reads it as \"not set\")".into(),
            );
        }
        // LIO's `auth/*` attributes hold at most 255 bytes.
        if user.len() > MAX_LEN || password.len() > MAX_LEN {
            return Err(format!(
                "the CHAP user and password are at most {MAX_LEN} bytes each (LIO's limit)"
            ));
        }
        Ok(Chap {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The fingerprints of the user name and the password.
    pub fn print(&self) -> CredentialPrint {
        CredentialPrint {
            user: Fingerprint::of(self.user.as_bytes()),
            password: Fingerprint::of(self.password.as_bytes()),
        }
    }
}

/// What LIO writes into an `auth/*` attribute that is not set.
pub const NULL: &str = "NULL";
/// The longest value LIO keeps in an `auth/*` attribute.
const MAX_LEN: usize = 255;

/// Reads CHAP credentials (`USER:PASSWORD`) from a file or an environment
/// variable. Errors name the source, never the content.
pub fn read(file: Option<&Path>, env: Option<&str>) -> Result<Chap, String> {
    let (text, from) = match (file, env) {
        (Some(f), _) => (
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the CHAP secret file {}: {e}", f.display()))?,
            format!("file {}", f.display()),
        ),
        (None, Some(v)) => (
            std::env::var(v).map_err(|_| {
                format!("the CHAP secret's environment variable {v} is not set for this process")
            })?,
            format!("environment variable {v}"),
        ),
        (None, None) => return Err("chapSecretRef names neither a file nor a variable".into()),
    };
    Chap::parse(&text).map_err(|e| format!("{e} (in {from})"))
}

/// An equality token for a secret value (see the module docs): equal values
/// give equal fingerprints within one process, and nothing else can be told
/// from one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<fingerprint>")
    }
}

/// The process's fingerprint key: random, drawn once. Should the system give
/// no randomness, a key from the clock and pid is still unknown outside this
/// process, which is all the fingerprints need.
fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        if getrandom::fill(&mut k).is_err() {
            let seed = format!("{:?}|{}", std::time::SystemTime::now(), std::process::id());
            k = *blake3::hash(seed.as_bytes()).as_bytes();
        }
        k
    })
}

impl Fingerprint {
    /// The fingerprint of `value`.
    pub fn of(value: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::keyed_hash(key(), value).as_bytes())
    }

    /// The fingerprint standing for class `class` of the view `scope`
    /// published (see [`Classes`]): equal for equal `(scope, class)`, and
    /// under a key of its own, so never equal to a secret's fingerprint.
    pub fn of_class(scope: &str, class: u32) -> Fingerprint {
        static CLASS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let k =
            CLASS_KEY.get_or_init(|| *blake3::keyed_hash(key(), b"equality classes").as_bytes());
        let mut h = blake3::Hasher::new_keyed(k);
        h.update(&(scope.len() as u64).to_le_bytes());
        h.update(scope.as_bytes());
        h.update(&class.to_le_bytes());
        Fingerprint(*h.finalize().as_bytes())
    }
}

/// Numbers the distinct fingerprints of one published view, 1, 2, ... in
/// the order they are first met: equal fingerprints get equal numbers.
#[derive(Debug, Default)]
pub struct Classes {
    seen: Vec<Fingerprint>,
}

impl Classes {
    /// The class of `f`.
    pub fn of(&mut self, f: Fingerprint) -> u32 {
        let at = self.seen.iter().position(|s| *s == f).unwrap_or_else(|| {
            self.seen.push(f);
            self.seen.len() - 1
        });
        u32::try_from(at + 1).unwrap_or(u32::MAX)
    }

    /// The classes of a user name and a password.
    pub fn of_print(&mut self, p: &CredentialPrint) -> [u32; 2] {
        [self.of(p.user), self.of(p.password)]
    }
}

impl CredentialPrint {
    /// The print standing for the classes `c` of the view `scope` published.
    pub fn of_classes(scope: &str, c: [u32; 2]) -> CredentialPrint {
        CredentialPrint {
            user: Fingerprint::of_class(scope, c[0]),
            password: Fingerprint::of_class(scope, c[1]),
        }
    }
}

/// A user name and password, as fingerprints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialPrint {
    /// The user name's.
    pub user: Fingerprint,
    /// The password's.
    pub password: Fingerprint,
}

impl CredentialPrint {
    /// What differs from `other`, in words that reveal neither value:
    /// `None` when equal.
    pub fn difference(&self, other: &CredentialPrint) -> Option<&'static str> {
        match (self.user == other.user, self.password == other.password) {
            (true, true) => None,
            (false, true) => Some("user name"),
            (true, false) => Some("password"),
            (false, false) => Some("user name and password"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_equality_and_nothing_else() {
        let a = Chap::parse("web:secret-1").unwrap().print();
        let b = Chap::parse("web:secret-2").unwrap().print();
        let mut c = Classes::default();
        let (ca, cb, ca2) = (c.of_print(&a), c.of_print(&b), c.of_print(&a));
        assert_eq!((ca, cb, ca2), ([1, 2], [1, 3], [1, 2]));
        let back = |x| CredentialPrint::of_classes("stor-b", x);
        assert_eq!(back(ca), back(ca2));
        assert_eq!(back(ca).difference(&back(cb)), Some("password"));
        // Another host's classes are other fingerprints, and none is a
        // secret's.
        assert_ne!(back(ca), CredentialPrint::of_classes("stor-c", ca));
        assert_ne!(back(ca).user, Fingerprint::of(b"1"));
    }

    #[test]
    fn chap_secrets_parse_and_never_print() {
        let c = Chap::parse("alice:s3cret-pass\n").unwrap();
        assert_eq!(c.user, "alice");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("alice"));
        assert!(Chap::parse("nopassword").is_err());
        assert!(Chap::parse(":x").is_err());
        assert!(Chap::parse("a b:c").is_err());
        assert!(Chap::parse("NULL:abc").is_err());
        assert!(Chap::parse(&format!("u:{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn fingerprints_compare_and_say_nothing() {
        let a = Chap::parse("alice:one-secret").unwrap().print();
        let b = Chap::parse("alice:two-secret").unwrap().print();
        let c = Chap::parse("bob:two-secret").unwrap().print();
        assert_eq!(a, Chap::parse("alice:one-secret").unwrap().print());
        assert_eq!(a.difference(&b), Some("password"));
        assert_eq!(b.difference(&c), Some("user name"));
        assert_eq!(a.difference(&c), Some("user name and password"));
        assert_eq!(a.difference(&a), None);
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("secret"),
            "{shown}"
        );
        // Not a plain hash of the value: the key is the process's own.
        assert_ne!(
            Fingerprint::of(b"alice").0,
            *blake3::hash(b"alice").as_bytes()
        );
    }

    #[test]
    fn read_names_the_source_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("chap");
        std::fs::write(&f, "only-one-part\n").unwrap();
        let e = read(Some(&f), None).unwrap_err();
        assert!(e.contains(&f.display().to_string()), "{e}");
        assert!(!e.contains("only-one-part"), "{e}");
        let e = read(None, Some("CINDERBLOCK_TEST_SURELY_UNSET_VAR")).unwrap_err();
        assert!(
            e.contains("CINDERBLOCK_TEST_SURELY_UNSET_VAR is not set"),
            "{e}"
        );
    }
}
