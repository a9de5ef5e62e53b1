//! Backup targets: where a `BackupPolicy`'s repository lives, as a plain
//! value the catalogue can keep, and how to open it.
//!
//! [`RepoSpec`] is what a policy's `target` means on this host, resolved
//! (paths against the state directory) but with secrets still as
//! references: the catalogue stores it, so `verify`, `restore` and `export`
//! reopen an S3 repository or remount a share without the manifests.
//! Opening reads the credentials then ([`SecretSource::read`]); they are
//! never stored, printed or logged.
//!
//! Must not: hold a secret's value anywhere but in the store client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::crypto::RepoKey;
use super::format::Codec;
use super::store::{DirStore, S3Config, S3Store, Store};
use super::{BackupError, Repository};
use crate::manifest::kinds::{BackupPolicySpec, SecretRef};

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretSource {
    /// A file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl SecretSource {
    /// From a manifest's `{file|env}` (validation made sure it is one).
    pub fn from_ref(r: &SecretRef) -> Option<Self> {
        match (&r.file, &r.env) {
            (Some(f), _) => Some(Self::File(f.as_path().to_owned())),
            (None, Some(e)) => Some(Self::Env(e.clone())),
            (None, None) => None,
        }
    }

    /// `file /etc/x` or `environment variable X`: where, never what.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("file {}", p.display()),
            Self::Env(v) => format!("environment variable {v}"),
        }
    }

    /// The secret, trimmed of surrounding whitespace.
    pub fn read(&self) -> Result<String, BackupError> {
        let text = match self {
            Self::File(p) => std::fs::read_to_string(p).map_err(|e| BackupError::Secret {
                from: self.describe(),
                reason: e.to_string(),
            })?,
            Self::Env(v) => std::env::var(v).map_err(|_| BackupError::Secret {
                from: self.describe(),
                reason: "not set for this process".into(),
            })?,
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(BackupError::Secret {
                from: self.describe(),
                reason: "empty".into(),
            });
        }
        Ok(t.to_owned())
    }
}

/// An S3 target with its credentials as a reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// `https://host[:port]`; `None`: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// Key prefix (may be empty).
    #[serde(default)]
    pub prefix: String,
    /// The region.
    pub region: String,
    /// Where `ACCESS_KEY_ID:SECRET_ACCESS_KEY` is.
    pub credentials: SecretSource,
    /// Bucket in the path rather than the host name.
    pub path_style: bool,
}

impl S3Spec {
    fn config(&self) -> Result<S3Config, BackupError> {
        let text = self.credentials.read()?;
        let Some((access, secret)) = text.split_once(':') else {
            return Err(BackupError::Secret {
                from: self.credentials.describe(),
                reason: "expected ACCESS_KEY_ID:SECRET_ACCESS_KEY".into(),
            });
        };
        Ok(S3Config {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            region: self.region.clone(),
            access_key: access.trim().to_owned(),
            secret_key: secret.trim().to_owned(),
            path_style: self.path_style,
        })
    }
}

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// A directory (local, or mounted by someone else).
    Dir(PathBuf),
    /// An NFS share cinderblock mounts at `path`.
    Share {
        /// `HOST:/EXPORT`.
        share: String,
        /// The mount point (and repository directory).
        path: PathBuf,
        /// `mount -o` options.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
    },
    /// An S3-compatible bucket.
    S3(S3Spec),
}

/// A policy's repository on this host: its target and how it may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoSpec {
    /// Where.
    pub target: Target,
    /// Never delete or replace there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_only: bool,
    /// Where the key of an encrypted repository is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretSource>,
}

impl RepoSpec {
    /// A plain directory (the CLI's `--scan PATH`, old catalogue entries).
    pub fn dir(path: &Path) -> Self {
        Self {
            target: Target::Dir(path.to_owned()),
            append_only: false,
            key: None,
        }
    }

    /// The repository `spec.target` names, paths resolved against
    /// `state_dir`. `None` when the target names none of `path` and `s3`
    /// (validation refuses that).
    pub fn from_policy(spec: &BackupPolicySpec, state_dir: &Path) -> Option<Self> {
        let t = &spec.target;
        let target = if let Some(s3) = &t.s3 {
            Target::S3(S3Spec {
                endpoint: s3.endpoint.clone(),
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone().unwrap_or_default(),
                region: s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
                credentials: SecretSource::from_ref(&s3.credentials_ref)?,
                path_style: s3.path_style.unwrap_or(true),
            })
        } else {
            let path = t.path.as_ref()?.resolve(state_dir);
            match &t.share {
                Some(share) => Target::Share {
                    share: share.as_str().to_owned(),
                    path,
                    options: t
                        .mount_options
                        .as_ref()
                        .map(|o| o.as_str().split(',').map(str::to_owned).collect())
                        .unwrap_or_default(),
                },
                None => Target::Dir(path),
            }
        };
        Some(Self {
            target,
            append_only: t.append_only,
            key: match &spec.encryption {
                Some(e) => Some(SecretSource::from_ref(&e.key_ref)?),
                None => None,
            },
        })
    }

    /// Where it is, as [`Repository::location`] says once open: a
    /// directory's absolute path (symbolic links resolved when it exists),
    /// or `s3://bucket/prefix at ENDPOINT`.
    pub fn location(&self) -> String {
        match &self.target {
            Target::Dir(p) | Target::Share { path: p, .. } => std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            Target::S3(s) => S3Config {
                endpoint: s.endpoint.clone(),
                bucket: s.bucket.clone(),
                prefix: s.prefix.clone(),
                region: s.region.clone(),
                access_key: String::new(),
                secret_key: String::new(),
                path_style: s.path_style,
            }
            .location(),
        }
    }

    /// The store (mounting a share first; reading S3 credentials).
    pub fn store(&self) -> Result<Arc<dyn Store>, BackupError> {
        match &self.target {
            Target::Dir(p) => Ok(Arc::new(DirStore::new(p))),
            Target::Share {
                share,
                path,
                options,
            } => {
                crate::file::mount::ensure_mounted(crate::exec::Exec::host(), share, path, options)
                    .map_err(|source| BackupError::Mount {
                        share: share.clone(),
                        source,
                    })?;
                Ok(Arc::new(DirStore::new(path)))
            }
            Target::S3(s) => Ok(Arc::new(S3Store::new(&s.config()?)?)),
        }
    }

    /// Uses `credentials` instead of the target's own (the sweep of an
    /// append-only S3 target runs with a key that may delete).
    #[must_use]
    pub fn with_credentials(mut self, credentials: SecretSource) -> Self {
        if let Target::S3(s) = &mut self.target {
            s.credentials = credentials;
        }
        self
    }

    /// The repository key, read from its reference.
    pub fn repo_key(&self) -> Result<Option<RepoKey>, BackupError> {
        self.key.as_ref().map(read_key).transpose()
    }

    /// Opens the repository.
    pub fn open(&self) -> Result<Repository, BackupError> {
        let key = self.repo_key()?;
        let key = key.as_ref();
        let repo = match &self.target {
            Target::Dir(p) => Repository::open_keyed(p, key)?,
            Target::Share { path, .. } => {
                self.store()?;
                Repository::open_keyed(path, key)?
            }
            Target::S3(_) => Repository::open_store(self.store()?, key)?,
        };
        Ok(repo.append_only(self.append_only))
    }

    /// Opens the repository, creating it when there is none.
    pub fn open_or_init(&self, codec: Codec) -> Result<Repository, BackupError> {
        let key = self.repo_key()?;
        let key = key.as_ref();
        let repo = match &self.target {
            Target::Dir(p) => Repository::open_or_init_keyed(p, codec, key)?,
            Target::Share { path, .. } => {
                self.store()?;
                Repository::open_or_init_keyed(path, codec, key)?
            }
            Target::S3(_) => Repository::open_or_init_store(self.store()?, codec, key)?,
        };
        Ok(repo.append_only(self.append_only))
    }
}

/// Keys shorter than this are refused: a key file holds a passphrase or,
/// better, random bytes (`head -c 32 /dev/urandom | base64`).
pub const MIN_KEY_LEN: usize = 16;

/// Reads a repository key from `src`.
pub fn read_key(src: &SecretSource) -> Result<RepoKey, BackupError> {
    let secret = src.read()?;
    if secret.len() < MIN_KEY_LEN {
        return Err(BackupError::Secret {
            from: src.describe(),
            reason: format!("a key needs at least {MIN_KEY_LEN} bytes"),
        });
    }
    Ok(RepoKey {
        secret,
        from: src.describe(),
    })
}
