//! NFS shares under `file` back ends: is `path` mounted from `share`, and if
//! not, mount it.
//!
//! Owns the `/proc/mounts` parser (a pure function over bytes, octal escapes
//! such as `\040` decoded), the decision "already mounted / mount it / something
//! else is mounted there", and the `mount -t nfs` argument vector.
//!
//! Invariants: the mount runs through [`crate::exec`] with an argument vector
//! (`--` before the share and path); the share and options are checked before
//! they reach it; a failure is an error for this back end only, carrying
//! mount's stderr. We never mount over a different filesystem already at the
//! path, and never unmount anything.
//!
//! Must not: retry or wait for a server (the agent's next tick retries), or
//! build the path from a manifest name (the path comes from the back end's
//! declared `file.path`).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exec::{Cmd, ExecError, Runner};

/// The mount table we read.
pub const PROC_MOUNTS: &str = "/proc/self/mounts";

/// How long `mount` may take (a hard mount to a dead server would block).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of NFS mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A line of the mount table has fewer than four fields.
    #[error("mount table line {line} is malformed")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// The mount table could not be read.
    #[error("cannot read {path}")]
    ReadTable {
        /// The table.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The share or an option would not be safe on a command line.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// "share" or "mount option".
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// Something other than the share is mounted at the path.
    #[error(
        "{path} already has {source_dev} ({fstype}) mounted, not {share}; refusing to mount over it"
    )]
    OtherMounted {
        /// The back end path.
        path: PathBuf,
        /// The share we wanted.
        share: String,
        /// What is mounted there.
        source_dev: String,
        /// Its filesystem type.
        fstype: String,
    },
    /// The mount point could not be created.
    #[error("cannot create mount point {path}")]
    MountPoint {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `mount` failed.
    #[error("cannot mount {share} at {path}")]
    MountFailed {
        /// The share.
        share: String,
        /// The path.
        path: PathBuf,
        /// The command's failure (argv, status, stderr); boxed to keep this
        /// enum small.
        #[source]
        source: Box<ExecError>,
    },
}

/// One entry of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted (for NFS `server:/export`), escapes decoded.
    pub source: String,
    /// Where, escapes decoded.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Parses `/proc/mounts` content.
pub fn parse_mounts(bytes: &[u8]) -> Result<Vec<MountEntry>, MountError> {
    let mut entries = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let (Some(source), Some(target), Some(fstype), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(MountError::Malformed { line: i + 1 });
        };
        entries.push(MountEntry {
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            target: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(target))),
            fstype: String::from_utf8_lossy(fstype).into_owned(),
            options: String::from_utf8_lossy(&unescape(options))
                .split(',')
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(entries)
}

/// Decodes the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && is_octal_escape(&field[i + 1..i + 4]) {
            let digits = &field[i + 1..i + 4];
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // Three octal digits can reach 511; only bytes are valid escapes.
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

/// What to do about a back end's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCheck {
    /// The share is mounted at the path.
    Mounted,
    /// Nothing is mounted at the path: mount it.
    NotMounted,
}

/// Decides from a parsed table whether `share` is mounted at `path` (both
/// compared after normalising trailing slashes). The last entry for a path is
/// the one visible.
pub fn check_mount(
    table: &[MountEntry],
    share: &str,
    path: &Path,
) -> Result<MountCheck, MountError> {
    let Some(top) = table.iter().rev().find(|e| e.target == path) else {
        return Ok(MountCheck::NotMounted);
    };
    if normalize_share(&top.source) == normalize_share(share) {
        Ok(MountCheck::Mounted)
    } else {
        Err(MountError::OtherMounted {
            path: path.to_owned(),
            share: share.to_owned(),
            source_dev: top.source.clone(),
            fstype: top.fstype.clone(),
        })
    }
}

fn normalize_share(share: &str) -> &str {
    let trimmed = share.trim_end_matches('/');
    if trimmed.ends_with(':') {
        // `server:/` stays `server:/`.
        &share[..=trimmed.len()]
    } else {
        trimmed
    }
}

/// The `mount` command for `share` at `path` with `options` (validated).
pub fn mount_command(share: &str, path: &Path, options: &[String]) -> Result<Cmd, MountError> {
    validate("share", share)?;
    if !share.contains(":/") {
        return Err(MountError::Invalid {
            what: "share",
            value: share.to_owned(),
            reason: "expected server:/export",
        });
    }
    for option in options {
        validate("mount option", option)?;
    }
    let mut cmd = Cmd::new("mount").args(["-t", "nfs"]).timeout(MOUNT_TIMEOUT);
    if !options.is_empty() {
        cmd = cmd.arg("-o").arg(options.join(","));
    }
    Ok(cmd.arg("--").arg(share).arg(path))
}

fn validate(what: &'static str, value: &str) -> Result<(), MountError> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.starts_with('-') {
        "starts with '-'"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(MountError::Invalid {
        what,
        value: value.to_owned(),
        reason,
    })
}

/// What [`ensure_mounted`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// It was mounted already.
    AlreadyMounted,
    /// We mounted it.
    Mounted,
}

/// Mounts `share` at `path` unless it is mounted there already.
pub fn ensure_mounted(
    exec: &dyn Runner,
    share: &str,
    path: &Path,
    options: &[String],
) -> Result<MountOutcome, MountError> {
    let cmd = mount_command(share, path, options)?;
    let table = std::fs::read(PROC_MOUNTS).map_err(|source| MountError::ReadTable {
        path: PathBuf::from(PROC_MOUNTS),
        source,
    })?;
    // The table shows resolved paths; compare with ours resolved too.
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if check_mount(&parse_mounts(&table)?, share, &resolved)? == MountCheck::Mounted {
        return Ok(MountOutcome::AlreadyMounted);
    }
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
        path: path.to_owned(),
        source,
    })?;
    exec.run(&cmd).map_err(|source| MountError::MountFailed {
        share: share.to_owned(),
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    tracing::info!(share, path = %path.display(), "mounted");
    Ok(MountOutcome::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Exec;
    use std::os::unix::fs::PermissionsExt;

    // Captured from a Debian 13 host (Linux 6.12) with an NFS 4.2 mount and a
    // mount point containing a space; shortened.
    const TABLE: &[u8] = b"\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda1 / ext4 rw,relatime,errors=remount-ro 0 0
nfs.example:/export/vol /srv/cinder/nfs-a nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=192.0.2.10,local_lock=none,addr=192.0.2.20 0 0
nas:/my\\040share /mnt/with\\040space\\011tab nfs rw,vers=3 0 0
tmpfs /srv/cinder/nfs-b tmpfs rw 0 0
";

    /// The lab's capture: a real loopback NFSv4.2 mount inside the VM
    /// (`tests/fixtures/README.md` has the command and versions).
    const LAB_TABLE: &[u8] = include_bytes!("../../tests/fixtures/nfs/proc-mounts.txt");

    #[test]
    fn parses_the_lab_capture_and_finds_the_nfs_mount() {
        let entries = parse_mounts(LAB_TABLE).unwrap();
        let nfs = entries.iter().find(|e| e.fstype == "nfs4").unwrap();
        assert_eq!(nfs.source, "127.0.0.1:/srv/nfs/share1");
        assert_eq!(nfs.target, Path::new("/mnt/nfs4"));
        assert!(nfs.options.iter().any(|o| o == "vers=4.2"));
        assert_eq!(
            check_mount(
                &entries,
                "127.0.0.1:/srv/nfs/share1/",
                Path::new("/mnt/nfs4")
            )
            .unwrap(),
            MountCheck::Mounted
        );
        assert_eq!(
            check_mount(
                &entries,
                "127.0.0.1:/srv/nfs/share1",
                Path::new("/mnt/other")
            )
            .unwrap(),
            MountCheck::NotMounted
        );
        // The ext4 LV behind the export is something else mounted there.
        assert!(check_mount(&entries, "nfs1:/x", Path::new("/srv/nfs/share1")).is_err());
    }

    #[test]
    fn parses_proc_mounts_with_escapes() {
        let entries = parse_mounts(TABLE).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[2].source, "nfs.example:/export/vol");
        assert_eq!(entries[2].target, Path::new("/srv/cinder/nfs-a"));
        assert_eq!(entries[2].fstype, "nfs4");
        assert!(entries[2].options.contains(&"vers=4.2".to_owned()));
        assert_eq!(entries[3].source, "nas:/my share");
        assert_eq!(entries[3].target, Path::new("/mnt/with space\ttab"));
    }

    #[test]
    fn unescape_leaves_non_escapes_alone() {
        assert_eq!(unescape(br"a\134b"), b"a\\b");
        assert_eq!(unescape(br"a\9zz"), br"a\9zz");
        assert_eq!(unescape(br"end\04"), br"end\04");
        assert_eq!(unescape(br"\777"), br"\777");
    }

    #[test]
    fn malformed_line_is_an_error() {
        let err = parse_mounts(b"a b c d 0 0\nbroken line\n").unwrap_err();
        assert_eq!(err.to_string(), "mount table line 2 is malformed");
    }

    #[test]
    fn check_mount_decisions() {
        let table = parse_mounts(TABLE).unwrap();
        let a = Path::new("/srv/cinder/nfs-a");
        assert_eq!(
            check_mount(&table, "nfs.example:/export/vol/", a).unwrap(),
            MountCheck::Mounted
        );
        assert_eq!(
            check_mount(&table, "nfs.example:/export/vol", Path::new("/srv/other")).unwrap(),
            MountCheck::NotMounted
        );
        let err =
            check_mount(&table, "nfs.example:/b", Path::new("/srv/cinder/nfs-b")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/srv/cinder/nfs-b already has tmpfs (tmpfs) mounted, not nfs.example:/b; \
             refusing to mount over it"
        );
        assert_eq!(normalize_share("srv:/"), "srv:/");
    }

    #[test]
    fn mount_argv_is_built_and_validated() {
        let cmd = mount_command(
            "nfs.example:/export/vol",
            Path::new("/srv/a"),
            &["vers=4.2".into(), "hard".into()],
        )
        .unwrap();
        assert_eq!(cmd.tool(), "mount");
        let args: Vec<_> = cmd
            .arguments()
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-t",
                "nfs",
                "-o",
                "vers=4.2,hard",
                "--",
                "nfs.example:/export/vol",
                "/srv/a"
            ]
        );
        let no_opts = mount_command("s:/e", Path::new("/p"), &[]).unwrap();
        assert_eq!(no_opts.arguments().len(), 5);
        for (share, opts) in [
            ("-oremount:/x", vec![]),
            ("server", vec![]),
            ("s:/e", vec!["a b".to_owned()]),
            ("s:/e", vec![String::new()]),
        ] {
            assert!(
                matches!(
                    mount_command(share, Path::new("/p"), &opts),
                    Err(MountError::Invalid { .. })
                ),
                "{share} {opts:?}"
            );
        }
    }

    /// A fake `mount` that records its argv and fails like mount.nfs does
    /// when the server refuses.
    #[test]
    fn mount_failure_is_a_clear_error_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("argv");
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n\
             echo 'mount.nfs: Connection refused' >&2\nexit 32\n",
            log.display()
        );
        let fake = bin.join("mount");
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = Exec::with_search_dirs([bin]);
        let mount_point = dir.path().join("mnt");

        let err =
            ensure_mounted(&exec, "127.0.0.1:/vol", &mount_point, &["soft".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot mount 127.0.0.1:/vol at {}", mount_point.display())
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.ends_with("failed with exit status 32: mount.nfs: Connection refused"),
            "{source}"
        );
        let argv = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            argv,
            format!(
                "-t\nnfs\n-o\nsoft\n--\n127.0.0.1:/vol\n{}\n",
                mount_point.display()
            )
        );
        assert!(mount_point.is_dir(), "mount point created");
    }
}
