//! What the fleet stores in etcd, as versioned wire structs (never the
//! domain types themselves), their conversions from and to the observed
//! world, and their encoding with a size bound.
//!
//! Values are JSON; a value over [`COMPRESS_OVER`] bytes is stored
//! zstd-compressed behind a 4-byte magic, and a value that is still over
//! [`super::keys::MAX_VALUE`] is not written: a back end's object list is
//! then cut and the record says how many objects it left out (`truncated`),
//! which makes every reader treat that back end as unknown rather than
//! empty.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::iscsi::chap::{Classes, CredentialPrint};
use crate::iscsi::configfs::{BackstoreKind, ChapPresence, DiscoveryAuth};
use crate::manifest::Name;
use crate::manifest::kinds::SecretRef;
use crate::manifest::values::OverSubscription;
use crate::model::{Capabilities, InUse, PoolDecl, SnapshotSpace, Space};
use crate::observe::{
    BackendView, Capacity, Discovery, Exports, Health, ImageFile, Inventory, ObjKind, Observed,
    PoolFill, PoolSizes, SharedSpace, World,
};
use crate::state::record::RecordedObject;

/// The layout version of every record (`v`).
pub const VERSION: u32 = 1;

/// Values larger than this are stored compressed.
pub const COMPRESS_OVER: usize = 64 * 1024;

const ZSTD_MAGIC: &[u8; 4] = b"CBZ1";

/// Errors of encoding and decoding records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not a record we understand.
    #[error("{key}: not a cinderblock record")]
    Decode {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A compressed value is damaged.
    #[error("{key}: damaged compressed value")]
    Decompress {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record of a newer layout.
    #[error("{key}: record version {found}, this cinderblock reads version {VERSION}; upgrade it")]
    Version {
        /// The key.
        key: String,
        /// The version found.
        found: u32,
    },
    /// Too large for etcd even compressed.
    #[error("{key}: {size} bytes after compression, more than the {max} bytes a value may hold")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
}

/// Encodes a record: JSON, compressed when large; refused over the bound.
pub fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, RecordError> {
    let json = serde_json::to_vec(value).map_err(|source| RecordError::Decode {
        key: key.to_owned(),
        source,
    })?;
    let bytes = if json.len() > COMPRESS_OVER {
        let mut out = ZSTD_MAGIC.to_vec();
        let z = zstd::bulk::compress(&json, 3).map_err(|source| RecordError::Decompress {
            key: key.to_owned(),
            source,
        })?;
        out.extend_from_slice(&z);
        out
    } else {
        json
    };
    if bytes.len() > super::keys::MAX_VALUE {
        return Err(RecordError::TooLarge {
            key: key.to_owned(),
            size: bytes.len(),
            max: super::keys::MAX_VALUE,
        });
    }
    Ok(bytes)
}

/// Decodes a record written by [`encode`], checking its version.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, RecordError> {
    let json;
    let bytes = if let Some(z) = bytes.strip_prefix(ZSTD_MAGIC.as_slice()) {
        json = zstd::stream::decode_all(z).map_err(|source| RecordError::Decompress {
            key: key.to_owned(),
            source,
        })?;
        json.as_slice()
    } else {
        bytes
    };
    let v: T = serde_json::from_slice(bytes).map_err(|source| RecordError::Decode {
        key: key.to_owned(),
        source,
    })?;
    if v.version() > VERSION {
        return Err(RecordError::Version {
            key: key.to_owned(),
            found: v.version(),
        });
    }
    Ok(v)
}

/// A record with a layout version.
pub trait Versioned {
    /// Its `v`.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u32 {
                self.v
            }
        }
    )*};
}
versioned!(HostRecord, HostView, BackendRecord, PlacementRecord);

/// A live host (`hosts/HOST`, under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    /// Layout version.
    pub v: u32,
    /// The host.
    pub host: String,
    /// The agent's process.
    pub pid: u32,
    /// cinderblock's version.
    pub version: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
    /// Its HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Its iSCSI initiator name (`/etc/iscsi/initiatorname.iscsi`), for
    /// cross-host migrations: the source host's export lets it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi_initiator: Option<String>,
}

/// What a host last published (`views/HOST`), without its back ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    /// Layout version.
    pub v: u32,
    /// The host.
    pub host: String,
    /// When.
    pub published_at: DateTime<Utc>,
    /// The manifest revision in force there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision it last applied completely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// Its back ends (each in its own key).
    pub backends: Vec<String>,
    /// Back ends whose discovery crashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Its iSCSI exports.
    pub exports: WireExports,
    /// Its iSCSI discovery authentication, when the iSCSI fabric is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_auth: Option<WireDiscoveryAuth>,
    /// The CHAP secrets its manifests name, as it read them (classes shared
    /// with `exports` and `discoveryAuth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<WireSecret>,
    /// The raw image files its `Image`s are made from: size, or why not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_files: BTreeMap<PathBuf, Result<u64, String>>,
    /// Catalogued backups that volumes may be restored from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<crate::observe::BackupSource>,
    /// Each backup policy's repository.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backup_repos: BTreeMap<String, String>,
    /// Its last plan, in short.
    pub plan: PlanSummary,
}

/// A plan in short.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// Actions planned.
    pub actions: usize,
    /// Objects waiting.
    pub waiting: usize,
    /// The first errors (at most [`PlanSummary::MAX_ERRORS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl PlanSummary {
    /// Errors kept.
    pub const MAX_ERRORS: usize = 10;

    /// The summary of `p`.
    pub fn of(p: &crate::plan::Plan) -> Self {
        PlanSummary {
            actions: p.actions.len(),
            waiting: p.waiting.len(),
            errors: p
                .errors
                .iter()
                .take(Self::MAX_ERRORS)
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// A host's iSCSI exports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum WireExports {
    /// LIO is not loaded.
    #[default]
    Absent,
    /// Our exports.
    Found {
        /// Each export.
        exports: Vec<WireExport>,
    },
    /// Reading LIO failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// One export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireExport {
    /// The volume.
    pub uuid: Uuid,
    /// Its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    /// The device behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The backstore's HBA folder (`iblock_3`).
    pub hba: String,
    /// Its kind, as the HBA prefix (`iblock`, `fileio`, ...).
    pub backstore: String,
    /// The other storage objects in that folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<String>,
    /// The LUN's size as LIO has it (`fileio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Initiators with an ACL.
    pub initiators: Vec<String>,
    /// Those logged in.
    pub logged_in: Vec<String>,
    /// Portals.
    pub portals: Vec<String>,
    /// CHAP required.
    pub chap: bool,
    /// Portal group enabled.
    pub enabled: bool,
    /// Each ACL's credentials, by initiator, as the view's equality classes
    /// (never a value or a hash of one: [`crate::iscsi::chap::Classes`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, WireChap>,
}

/// CHAP credentials as equality classes of one published view: `[user,
/// password]`, equal numbers for equal values within that view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireChap {
    /// What the initiator must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_way: Option<[u32; 2]>,
    /// What the target answers with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual: Option<[u32; 2]>,
}

impl WireChap {
    fn of(c: &ChapPresence, classes: &mut Classes) -> Self {
        WireChap {
            one_way: c.one_way.as_ref().map(|p| classes.of_print(p)),
            mutual: c.mutual.as_ref().map(|p| classes.of_print(p)),
        }
    }

    fn to_presence(&self, scope: &str) -> ChapPresence {
        ChapPresence {
            one_way: self.one_way.map(|c| CredentialPrint::of_classes(scope, c)),
            mutual: self.mutual.map(|c| CredentialPrint::of_classes(scope, c)),
        }
    }
}

/// A CHAP secret the host's manifests name, as it read it: equality
/// classes, or why it could not be read (the error names the source only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSecret {
    /// Where it is read from.
    #[serde(rename = "ref")]
    pub from: SecretRef,
    /// Its classes, or the error.
    pub read: Result<[u32; 2], String>,
}

/// The host's iSCSI discovery authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireDiscoveryAuth {
    /// Enforced.
    pub enforced: bool,
    /// Its credentials.
    pub chap: WireChap,
}

/// One back end of a host's view (`views/HOST/backends/NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRecord {
    /// Layout version.
    pub v: u32,
    /// The host.
    pub host: String,
    /// The back end.
    pub name: String,
    /// `volume_backend_name`.
    pub backend_name: String,
    /// Availability zone.
    pub zone: String,
    /// What its driver can do (the planner's capabilities).
    pub caps: WireCaps,
    /// Thin.
    pub thin: bool,
    /// Extent.
    pub extent: u64,
    /// Over-subscription ratio (`None`: auto).
    pub ratio: Option<f64>,
    /// Reserved percentage.
    pub reserved_percentage: u8,
    /// Declared capabilities.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, String>,
    /// What discovery found, or why it failed.
    pub discovery: WireDiscovery,
    /// The host's records of objects on this back end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded: Vec<(Uuid, RecordedObject)>,
    /// Objects left out to stay under the size bound (the view is then
    /// partial: no reader takes it as complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<usize>,
}

/// A back end's capabilities (`model::Capabilities` on the wire).
#[allow(clippy::struct_excessive_bools)] // independent facts, each read alone
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireCaps {
    /// `storage_protocol`.
    pub protocol: String,
    /// Thin-provisioned.
    pub thin: bool,
    /// New volumes read as zeros.
    pub new_reads_zero: bool,
    /// Discovery reports allocated bytes.
    pub knows_allocation: bool,
    /// Extends while it has snapshots.
    pub extends_with_snapshots: bool,
    /// `copy`, `shared` or `copyOnWrite`.
    pub snapshots: String,
    /// The shared space (kind, name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<(String, String)>,
    /// Objects move within the space by a new owner mark (older records
    /// lack it: false, a copy).
    #[serde(default)]
    pub relabel: bool,
    /// The declared pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<WirePool>,
    /// What a delete does besides removing the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_note: Option<String>,
    /// What stays of a released object.
    pub retained: String,
    /// Group snapshots: `none`, `idle` or `freeze` (older records lack it:
    /// none).
    #[serde(default)]
    pub group_snapshots: String,
}

/// A declared pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePool {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Declared size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The manifest field that declares it.
    pub field: String,
}

impl WireCaps {
    fn of(c: &Capabilities) -> Self {
        Self {
            protocol: c.protocol.clone(),
            thin: c.thin,
            new_reads_zero: c.new_reads_zero,
            knows_allocation: c.knows_allocation,
            extends_with_snapshots: c.extends_with_snapshots,
            snapshots: match c.snapshots {
                SnapshotSpace::Copy => "copy",
                SnapshotSpace::Shared => "shared",
                SnapshotSpace::CopyOnWrite => "copyOnWrite",
            }
            .to_owned(),
            space: c.space.as_ref().map(|s| (s.kind.clone(), s.name.clone())),
            relabel: c.relabel,
            pool: c.pool.as_ref().map(|p| WirePool {
                kind: p.kind.clone(),
                name: p.name.clone(),
                size: p.size,
                field: p.field.clone(),
            }),
            delete_note: c.delete_note.clone(),
            retained: c.retained.clone(),
            group_snapshots: c.group_snapshots.as_str().to_owned(),
        }
    }

    fn to_model(&self) -> Result<Capabilities, String> {
        Ok(Capabilities {
            protocol: self.protocol.clone(),
            thin: self.thin,
            new_reads_zero: self.new_reads_zero,
            knows_allocation: self.knows_allocation,
            extends_with_snapshots: self.extends_with_snapshots,
            snapshots: match self.snapshots.as_str() {
                "copy" => SnapshotSpace::Copy,
                "shared" => SnapshotSpace::Shared,
                "copyOnWrite" => SnapshotSpace::CopyOnWrite,
                other => return Err(format!("unknown snapshot space {other:?}")),
            },
            space: self.space.as_ref().map(|(kind, name)| Space {
                kind: kind.clone(),
                name: name.clone(),
            }),
            relabel: self.relabel,
            pool: self.pool.as_ref().map(|p| PoolDecl {
                kind: p.kind.clone(),
                name: p.name.clone(),
                size: p.size,
                field: p.field.clone(),
            }),
            delete_note: self.delete_note.clone(),
            retained: self.retained.clone(),
            group_snapshots: crate::model::GroupSnapshots::parse(&self.group_snapshots),
        })
    }
}

/// Discovery's outcome.
#[allow(clippy::large_enum_variant)] // one per back end: boxing would buy nothing
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum WireDiscovery {
    /// Discovered.
    #[serde(rename_all = "camelCase")]
    Ok {
        /// Capacity.
        capacity: WireCapacity,
        /// Our objects.
        objects: Vec<WireObject>,
        /// Entries not ours, by name (at most [`MAX_FOREIGN`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        foreign: Vec<String>,
        /// Problems.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        problems: Vec<String>,
        /// Metadata generation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// Failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// What another host's view says of a foreign entry it published: only
/// its name travels, so it is never offered for adoption from there.
const PUBLISHED_FOREIGN: &str = "known here only by its name (published by its host)";
/// Foreign entries kept per back end.
pub const MAX_FOREIGN: usize = 100;

/// Capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireCapacity {
    /// Total.
    pub total: u64,
    /// Free.
    pub free: u64,
    /// Provisioned.
    pub provisioned: u64,
    /// The fill of its pool: (kind, name, data, metadata in hundredths of
    /// a percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<WireFill>,
    /// The space it shares with other back ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<WireShared>,
    /// Pool to create: (data, metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_pool: Option<(u64, u64)>,
}

/// A pool's fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireFill {
    /// `thin pool`.
    pub kind: String,
    /// `vg/pool`.
    pub name: String,
    /// Data use × 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_centi: Option<u32>,
    /// Metadata use × 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_centi: Option<u32>,
}

/// Shared space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireShared {
    /// `volume group`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Free bytes.
    pub free: u64,
    /// Whether all provisioned bytes come out of it.
    pub draws_provisioned: bool,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireObject {
    /// Identity.
    pub uuid: Uuid,
    /// Manifest name.
    pub name: String,
    /// `volume`, `snapshot`, `image`.
    pub kind: String,
    /// Size.
    pub size: u64,
    /// Allocated bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
    /// Parent (snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// `ready`, `creating`, `deleting`, `dataMissing`, `migrating`,
    /// `sizeMismatch`.
    pub state: String,
    /// For `sizeMismatch`: (recorded, actual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<(u64, u64)>,
    /// What a volume was made from and may share data with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<Uuid>,
    /// What holds it open, when something does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<WireInUse>,
}

/// What holds an object open (`model::InUse` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "by")]
pub enum WireInUse {
    /// A holder the host named.
    Named {
        /// Who.
        holder: String,
    },
    /// An open LV with no holder visible from the host.
    Unnamed {
        /// The LV's device.
        device: String,
    },
}

impl WireInUse {
    fn of(u: &InUse) -> Self {
        match u {
            InUse::Named { holder } => WireInUse::Named {
                holder: holder.clone(),
            },
            InUse::Unnamed { device } => WireInUse::Unnamed {
                device: device.clone(),
            },
        }
    }

    fn to_model(&self) -> InUse {
        match self {
            WireInUse::Named { holder } => InUse::Named {
                holder: holder.clone(),
            },
            WireInUse::Unnamed { device } => InUse::Unnamed {
                device: device.clone(),
            },
        }
    }
}

/// A placement (`placements/VOLUME`): written once, in a transaction that
/// requires the key to be absent and the writer to still hold the placer
/// election; its `mod_revision` is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementRecord {
    /// Layout version.
    pub v: u32,
    /// The volume.
    pub volume: String,
    /// The back end.
    pub backend: String,
    /// Its host.
    pub host: String,
    /// Size asked for, bytes.
    pub size: u64,
    /// The host whose agent placed it (the elected placer).
    pub placed_by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Why there, in words.
    pub reason: String,
}

/// The backstore kind whose HBA prefix is `prefix`.
fn backstore_kind(prefix: &str) -> Option<BackstoreKind> {
    [
        BackstoreKind::Block,
        BackstoreKind::File,
        BackstoreKind::Ramdisk,
        BackstoreKind::Pscsi,
        BackstoreKind::User,
    ]
    .into_iter()
    .find(|k| k.hba_prefix() == prefix)
}

fn health_word(h: Health) -> (&'static str, Option<(u64, u64)>) {
    match h {
        Health::Ready => ("ready", None),
        Health::Creating => ("creating", None),
        Health::Deleting => ("deleting", None),
        Health::DataMissing => ("dataMissing", None),
        Health::Migrating => ("migrating", None),
        Health::SizeMismatch { recorded, actual } => ("sizeMismatch", Some((recorded, actual))),
    }
}

fn health_of(word: &str, mismatch: Option<(u64, u64)>) -> Health {
    match (word, mismatch) {
        ("ready", _) => Health::Ready,
        ("creating", _) => Health::Creating,
        ("deleting", _) => Health::Deleting,
        ("migrating", _) => Health::Migrating,
        ("sizeMismatch", Some((recorded, actual))) => Health::SizeMismatch { recorded, actual },
        // Unknown states read as missing data: never as ready.
        _ => Health::DataMissing,
    }
}

impl BackendRecord {
    /// The record of one discovered back end of `host`, with the host's
    /// records of objects on it.
    pub fn of(host: &str, b: &BackendView, recorded: &crate::state::record::Recorded) -> Self {
        let (caps, ratio) = (
            WireCaps::of(&b.caps),
            match b.ratio {
                OverSubscription::Ratio(r) => Some(r),
                OverSubscription::Auto => None,
            },
        );
        let discovery = match &b.discovery {
            Discovery::Failed(e) => WireDiscovery::Failed { error: e.clone() },
            Discovery::Ok(inv) => WireDiscovery::Ok {
                capacity: WireCapacity {
                    total: inv.capacity.total,
                    free: inv.capacity.free,
                    provisioned: inv.capacity.provisioned,
                    fill: inv.capacity.fill.as_ref().map(|f| WireFill {
                        kind: f.kind.clone(),
                        name: f.name.clone(),
                        data_centi: f.data_centi,
                        metadata_centi: f.metadata_centi,
                    }),
                    shared: inv.capacity.shared.as_ref().map(|x| WireShared {
                        kind: x.kind.clone(),
                        name: x.name.clone(),
                        free: x.free,
                        draws_provisioned: x.draws_provisioned,
                    }),
                    create_pool: inv.capacity.create_pool.map(|p| (p.data, p.metadata)),
                },
                objects: inv
                    .objects
                    .iter()
                    .map(|o| {
                        let (state, mismatch) = health_word(o.health);
                        WireObject {
                            uuid: o.uuid,
                            name: o.name.clone(),
                            kind: o.kind.as_str().to_owned(),
                            size: o.size,
                            allocated: o.allocated,
                            parent: o.parent,
                            state: state.to_owned(),
                            mismatch,
                            clone_of: o.clone_of,
                            in_use: o.in_use.as_ref().map(WireInUse::of),
                        }
                    })
                    .collect(),
                foreign: inv
                    .foreign
                    .iter()
                    .take(MAX_FOREIGN)
                    .map(|f| f.name.clone())
                    .collect(),
                problems: inv.problems.clone(),
                generation: inv.generation,
            },
        };
        BackendRecord {
            v: VERSION,
            host: host.to_owned(),
            name: b.name.as_str().to_owned(),
            backend_name: b.backend_name.clone(),
            zone: b.zone.clone(),
            caps,
            thin: b.thin,
            extent: b.extent,
            ratio,
            reserved_percentage: b.reserved_percentage,
            capabilities: b.capabilities.clone(),
            discovery,
            recorded: recorded
                .objects
                .iter()
                .filter(|(_, r)| r.backend == b.name.as_str())
                .map(|(u, r)| (*u, r.clone()))
                .collect(),
            truncated: None,
        }
    }

    /// Cuts the object list (and records) so the encoded record fits,
    /// saying how many objects were left out.
    pub fn encode_bounded(mut self, key: &str) -> Result<Vec<u8>, RecordError> {
        loop {
            match encode(key, &self) {
                Err(RecordError::TooLarge { .. }) => {
                    let WireDiscovery::Ok { objects, .. } = &mut self.discovery else {
                        return encode(key, &self);
                    };
                    if objects.is_empty() {
                        return encode(key, &self);
                    }
                    let keep = objects.len() / 2;
                    let cut = objects.len() - keep;
                    objects.truncate(keep);
                    self.recorded.clear();
                    self.truncated = Some(self.truncated.unwrap_or(0) + cut);
                }
                other => return other,
            }
        }
    }

    /// The back end as the planner sees it (a truncated record, or one
    /// with an object of an unknown kind, is a partial view: no deletes,
    /// nothing taken as absent).
    pub fn to_view(&self) -> Result<BackendView, String> {
        let name: Name = self
            .name
            .parse()
            .map_err(|e| format!("back end name {:?}: {e}", self.name))?;
        let caps = self
            .caps
            .to_model()
            .map_err(|e| format!("back end {name}: {e}"))?;
        let discovery = match &self.discovery {
            WireDiscovery::Failed { error } => Discovery::Failed(error.clone()),
            WireDiscovery::Ok {
                capacity,
                objects,
                foreign,
                problems,
                generation,
            } => {
                let mut problems = problems.clone();
                if let Some(n) = self.truncated {
                    problems.push(format!(
                        "{n} object(s) left out of the published view (too many for one etcd value)"
                    ));
                }
                let mut list = Vec::with_capacity(objects.len());
                for o in objects {
                    let Some(kind) = ObjKind::parse(&o.kind) else {
                        problems.push(format!("object {} of unknown kind {:?}", o.uuid, o.kind));
                        continue;
                    };
                    list.push(Observed {
                        group: None,
                        uuid: o.uuid,
                        name: o.name.clone(),
                        kind,
                        size: o.size,
                        allocated: o.allocated,
                        parent: o.parent,
                        clone_of: o.clone_of,
                        health: health_of(&o.state, o.mismatch),
                        in_use: o.in_use.as_ref().map(WireInUse::to_model),
                    });
                }
                Discovery::Ok(Inventory {
                    capacity: Capacity {
                        total: capacity.total,
                        free: capacity.free,
                        provisioned: capacity.provisioned,
                        fill: capacity.fill.as_ref().map(|f| PoolFill {
                            kind: f.kind.clone(),
                            name: f.name.clone(),
                            data_centi: f.data_centi,
                            metadata_centi: f.metadata_centi,
                        }),
                        shared: capacity.shared.as_ref().map(|x| SharedSpace {
                            kind: x.kind.clone(),
                            name: x.name.clone(),
                            free: x.free,
                            draws_provisioned: x.draws_provisioned,
                        }),
                        create_pool: capacity
                            .create_pool
                            .map(|(data, metadata)| PoolSizes { data, metadata }),
                    },
                    objects: list,
                    foreign: foreign
                        .iter()
                        .map(|n| crate::model::Foreign::named(n.clone(), PUBLISHED_FOREIGN))
                        .collect(),
                    problems,
                    generation: *generation,
                })
            }
        };
        Ok(BackendView {
            name,
            backend_name: self.backend_name.clone(),
            zone: self.zone.clone(),
            caps,
            thin: self.thin,
            extent: self.extent.max(1),
            ratio: self
                .ratio
                .map_or(OverSubscription::Auto, OverSubscription::Ratio),
            reserved_percentage: self.reserved_percentage,
            capabilities: self.capabilities.clone(),
            discovery,
        })
    }
}

impl HostView {
    /// What `host` publishes of its `world` after a reconcile.
    pub fn of(
        host: &str,
        world: &World,
        revision: Option<String>,
        applied_revision: Option<String>,
        plan: PlanSummary,
        now: DateTime<Utc>,
    ) -> Self {
        // One numbering for every secret of the view, in a fixed order, so
        // that an unchanged host publishes unchanged bytes.
        let mut classes = Classes::default();
        let secrets = world
            .secrets
            .iter()
            .map(|(r, p)| WireSecret {
                from: r.clone(),
                read: p
                    .as_ref()
                    .map(|p| classes.of_print(p))
                    .map_err(Clone::clone),
            })
            .collect();
        HostView {
            v: VERSION,
            host: host.to_owned(),
            published_at: now,
            revision,
            applied_revision,
            backends: world
                .backends
                .keys()
                .map(|n| n.as_str().to_owned())
                .collect(),
            missing: world
                .missing
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            exports: match &world.exports {
                Exports::Absent => WireExports::Absent,
                Exports::Failed(e) => WireExports::Failed { error: e.clone() },
                Exports::Found(m) => WireExports::Found {
                    exports: m
                        .values()
                        .map(|e| WireExport {
                            uuid: e.uuid,
                            iqn: e.iqn.clone(),
                            device: e.device.clone(),
                            hba: e.backstore.hba.clone(),
                            backstore: e.backstore.kind.hba_prefix().to_owned(),
                            neighbours: e.backstore.neighbours.clone(),
                            size: e.size,
                            initiators: e.initiators.clone(),
                            logged_in: e.logged_in.clone(),
                            portals: e.portals.clone(),
                            chap: e.chap,
                            enabled: e.enabled,
                            credentials: e
                                .credentials
                                .iter()
                                .map(|(i, c)| (i.clone(), WireChap::of(c, &mut classes)))
                                .collect(),
                        })
                        .collect(),
                },
            },
            discovery_auth: world.discovery_auth.as_ref().map(|d| WireDiscoveryAuth {
                enforced: d.enforced,
                chap: WireChap::of(&d.chap, &mut classes),
            }),
            secrets,
            image_files: world
                .image_files
                .iter()
                .map(|(p, f)| (p.clone(), f.as_ref().map(|f| f.size).map_err(Clone::clone)))
                .collect(),
            backups: world.backups.clone(),
            backup_repos: world
                .backup_repos
                .iter()
                .map(|(n, p)| (n.as_str().to_owned(), p.clone()))
                .collect(),
            plan,
        }
    }

    /// The world this view describes, with its back ends, and the host's
    /// records: what `plan` on that host would start from.
    pub fn to_world(
        &self,
        backends: &[BackendRecord],
    ) -> Result<(World, crate::state::record::Recorded), String> {
        let mut world = World::default();
        let mut recorded = crate::state::record::Recorded::default();
        for name in &self.backends {
            let Some(b) = backends.iter().find(|b| &b.name == name) else {
                let n: Name = name
                    .parse()
                    .map_err(|e| format!("back end name {name:?}: {e}"))?;
                world.missing.push(n);
                continue;
            };
            let view = b.to_view()?;
            recorded
                .objects
                .extend(b.recorded.iter().map(|(u, r)| (*u, r.clone())));
            world.backends.insert(view.name.clone(), view);
        }
        for m in &self.missing {
            if let Ok(n) = m.parse() {
                world.missing.push(n);
            }
        }
        world.exports = match &self.exports {
            WireExports::Absent => Exports::Absent,
            WireExports::Failed { error } => Exports::Failed(error.clone()),
            WireExports::Found { exports } => Exports::Found(
                exports
                    .iter()
                    .map(|e| {
                        let kind = backstore_kind(&e.backstore).ok_or_else(|| {
                            format!(
                                "export of {}: unknown backstore kind {:?}",
                                e.uuid, e.backstore
                            )
                        })?;
                        Ok((
                            e.uuid,
                            crate::iscsi::lio::ObservedExport {
                                uuid: e.uuid,
                                iqn: e.iqn.clone(),
                                device: e.device.clone(),
                                backstore: crate::iscsi::lio::Placement {
                                    hba: e.hba.clone(),
                                    kind,
                                    neighbours: e.neighbours.clone(),
                                },
                                size: e.size,
                                credentials: e
                                    .credentials
                                    .iter()
                                    .map(|(i, c)| (i.clone(), c.to_presence(&self.host)))
                                    .collect(),
                                initiators: e.initiators.clone(),
                                logged_in: e.logged_in.clone(),
                                portals: e.portals.clone(),
                                chap: e.chap,
                                enabled: e.enabled,
                            },
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            ),
        };
        world.discovery_auth = self.discovery_auth.as_ref().map(|d| DiscoveryAuth {
            enforced: d.enforced,
            chap: d.chap.to_presence(&self.host),
        });
        world.secrets = self
            .secrets
            .iter()
            .map(|s| {
                (
                    s.from.clone(),
                    s.read
                        .as_ref()
                        .map(|c| CredentialPrint::of_classes(&self.host, *c))
                        .map_err(Clone::clone),
                )
            })
            .collect();
        world.image_files = self
            .image_files
            .iter()
            .map(|(p, f)| (p.clone(), f.clone().map(|size| ImageFile { size })))
            .collect();
        world.backups.clone_from(&self.backups);
        world.backup_repos = self
            .backup_repos
            .iter()
            .filter_map(|(n, p)| Some((n.parse().ok()?, p.clone())))
            .collect();
        Ok((world, recorded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> BackendView {
        BackendView {
            name: "fa".parse().unwrap(),
            backend_name: "fa".into(),
            zone: "nova".into(),
            caps: crate::driver::fake::capabilities(true),
            thin: true,
            extent: 1,
            ratio: OverSubscription::Ratio(2.0),
            reserved_percentage: 5,
            capabilities: BTreeMap::from([("tier".into(), "gold".into())]),
            discovery: Discovery::Ok(Inventory {
                capacity: Capacity {
                    total: 100,
                    free: 60,
                    provisioned: 40,
                    ..Capacity::default()
                },
                objects: (0..3u128)
                    .map(|i| Observed {
                        group: None,
                        uuid: Uuid::from_u128(i),
                        name: format!("v{i}"),
                        kind: ObjKind::Volume,
                        size: 10,
                        allocated: Some(1),
                        parent: None,
                        health: if i == 2 {
                            Health::SizeMismatch {
                                recorded: 10,
                                actual: 9,
                            }
                        } else {
                            Health::Ready
                        },
                        clone_of: None,
                        in_use: (i == 1).then(|| InUse::Named {
                            holder: "pid 42 (qemu)".into(),
                        }),
                    })
                    .collect(),
                foreign: vec![crate::model::Foreign::named("junk", PUBLISHED_FOREIGN)],
                problems: vec![],
                generation: None,
            }),
        }
    }

    #[test]
    fn a_back_end_survives_the_round_trip_through_etcd_bytes() {
        let v = view();
        let rec = BackendRecord::of("stor-a", &v, &crate::state::record::Recorded::default());
        let bytes = rec.clone().encode_bounded("k").unwrap();
        let back: BackendRecord = decode("k", &bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.to_view().unwrap(), v);
    }

    #[test]
    fn a_huge_back_end_is_compressed_then_cut_and_then_reads_as_partial() {
        let mut v = view();
        let Discovery::Ok(inv) = &mut v.discovery else {
            unreachable!()
        };
        inv.objects = (0..150_000u128)
            .map(|i| Observed {
                uuid: Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
                name: format!("volume-with-a-long-name-{i}"),
                ..inv.objects[0].clone()
            })
            .collect();
        let rec = BackendRecord::of("stor-a", &v, &crate::state::record::Recorded::default());
        let bytes = rec.encode_bounded("k").unwrap();
        assert!(bytes.len() <= super::super::keys::MAX_VALUE);
        assert!(bytes.starts_with(ZSTD_MAGIC));
        let back: BackendRecord = decode("k", &bytes).unwrap();
        let cut = back.truncated.unwrap();
        assert!(cut > 0 && cut < 150_000, "{cut}");
        let Discovery::Ok(inv) = back.to_view().unwrap().discovery else {
            unreachable!()
        };
        assert!(!inv.complete());
        assert!(
            inv.problems[0].contains("left out of the published view"),
            "{:?}",
            inv.problems
        );
    }

    #[test]
    fn chap_secrets_are_published_as_equality_classes_the_same_bytes_each_time() {
        use crate::iscsi::chap::Chap;
        let mut w = World::default();
        let print = |t: &str| Chap::parse(t).map(|c| c.print());
        let r = |v: &str| SecretRef {
            file: None,
            env: Some(v.into()),
        };
        w.secrets.insert(r("A"), print("web:secret-1"));
        w.secrets.insert(r("B"), print("web:secret-2"));
        w.secrets.insert(r("C"), print("no colon"));
        w.discovery_auth = Some(DiscoveryAuth {
            enforced: true,
            chap: ChapPresence {
                one_way: print("web:secret-2").ok(),
                mutual: None,
            },
        });
        let at = DateTime::from_timestamp(0, 0).unwrap_or_default();
        let json = || {
            let v = HostView::of("h", &w, None, None, PlanSummary::default(), at);
            String::from_utf8(encode("k", &v).unwrap()).unwrap()
        };
        let text = json();
        assert_eq!(text, json());
        assert!(
            text.contains(r#""secrets":[{"ref":{"env":"A"},"read":{"Ok":[1,2]}},{"ref":{"env":"B"},"read":{"Ok":[1,3]}},{"ref":{"env":"C"},"read":{"Err":"the CHAP secret must be USER:PASSWORD"}}]"#),
            "{text}"
        );
        assert!(
            text.contains(r#""discoveryAuth":{"enforced":true,"chap":{"oneWay":[1,3]}}"#),
            "{text}"
        );
        assert!(!text.contains("secret-") && !text.contains("web"), "{text}");
    }

    /// `w` as its host publishes it and `plan --fleet` reads it back
    /// (through the JSON of the etcd records).
    fn published(w: &World, rec: &crate::state::record::Recorded) -> World {
        let at = DateTime::from_timestamp(0, 0).unwrap_or_default();
        let view = HostView::of("stor-b", w, None, None, PlanSummary::default(), at);
        let view: HostView = decode("v", &encode("v", &view).unwrap()).unwrap();
        let backends: Vec<BackendRecord> = w
            .backends
            .values()
            .map(|b| {
                let r = BackendRecord::of("stor-b", b, rec);
                decode("b", &encode("b", &r).unwrap()).unwrap()
            })
            .collect();
        view.to_world(&backends).unwrap().0
    }

    /// The plan of `w`, checked to be the one `plan --fleet` makes from
    /// the view `w`'s host publishes: the same actions, errors and text.
    fn plan_here_and_from_the_fleet(
        set: &crate::manifest::ManifestSet,
        w: &World,
    ) -> crate::plan::Plan {
        use crate::plan::tests::recorded_v;
        use crate::plan::{Options, plan, render};
        let here = plan(set, w, &recorded_v(), Options::default());
        let there = plan(
            set,
            &published(w, &recorded_v()),
            &recorded_v(),
            Options::default(),
        );
        assert_eq!(
            format!("{:?}", there.actions),
            format!("{:?}", here.actions)
        );
        assert_eq!(there.errors, here.errors);
        assert_eq!(render::text(&there), render::text(&here));
        here
    }

    #[test]
    fn plan_fleet_compares_another_hosts_chap_secrets_as_the_host_does() {
        use crate::plan::tests::{
            INI_A, INI_B, backend_yaml, chap_export_yaml, chap_world, env_ref, manifests,
            one_volume_world, print, vol_yaml,
        };
        let changes = |p: &crate::plan::Plan| -> Vec<String> {
            p.actions
                .iter()
                .flat_map(|a| match &a.op {
                    crate::plan::Op::Export { changes, .. }
                    | crate::plan::Op::DiscoveryAuth { changes, .. } => changes.clone(),
                    _ => vec![],
                })
                .collect()
        };
        let one_way = manifests(
            &(backend_yaml("a", "")
                + &vol_yaml("v", "1Gi", &chap_export_yaml(&[INI_A, INI_B], false))),
        );
        let mutual = manifests(
            &(backend_yaml("a", "") + &vol_yaml("v", "1Gi", &chap_export_yaml(&[INI_A], true))),
        );
        let cases: [(&crate::manifest::ManifestSet, _, _, &[&str]); 5] = [
            (&one_way, ("web:s-1", None), ("web:s-1", None), &[]),
            (
                &one_way,
                ("web:s-1", None),
                ("web:s-2", None),
                &["new CHAP password"],
            ),
            (
                &one_way,
                ("web:s-1", None),
                ("www:s-1", None),
                &["new CHAP user name"],
            ),
            (
                &mutual,
                ("web:s-1", None),
                ("web:s-1", Some("tgt:t-9")),
                &["set mutual CHAP credentials"],
            ),
            (
                &mutual,
                ("web:s-1", Some("tgt:t-9")),
                ("web:s-1", Some("tgt:t-8")),
                &["new mutual CHAP password"],
            ),
        ];
        for (set, have, want, expect) in cases {
            let initiators: &[&str] = if want.1.is_some() {
                &[INI_A]
            } else {
                &[INI_A, INI_B]
            };
            let w = chap_world(initiators, &[INI_A], have, want);
            let p = plan_here_and_from_the_fleet(set, &w);
            assert!(p.errors.is_empty(), "{:?}", p.errors);
            assert_eq!(changes(&p), expect, "{have:?} -> {want:?}");
        }
        // A secret the host cannot read: its error, from the fleet too.
        let mut w = chap_world(&[INI_A], &[], ("web:s-1", None), ("web:s-1", None));
        w.secrets
            .insert(env_ref("WEB_CHAP"), Err("the variable is not set".into()));
        let p = plan_here_and_from_the_fleet(&one_way, &w);
        assert_eq!(
            p.errors,
            ["volume.v: spec.export.iscsi.chapSecretRef: the variable is not set"]
        );
        // Discovery authentication: set, in place, rotated.
        let disc = "  iscsi:\n    discoveryAuth:\n      chapSecretRef: {env: DISC_CHAP}\n";
        let set = manifests(&(backend_yaml("a", disc) + &vol_yaml("v", "1Gi", "")));
        let mut w = one_volume_world(crate::observe::Exports::Found(BTreeMap::new()), "v");
        w.discovery_auth = Some(DiscoveryAuth::default());
        w.secrets
            .insert(env_ref("DISC_CHAP"), Ok(print("disc:d-1")));
        let p = plan_here_and_from_the_fleet(&set, &w);
        assert_eq!(
            changes(&p),
            ["enforce discovery authentication", "set CHAP credentials"]
        );
        w.discovery_auth = Some(DiscoveryAuth {
            enforced: true,
            chap: ChapPresence {
                one_way: Some(print("disc:d-1")),
                mutual: None,
            },
        });
        assert!(plan_here_and_from_the_fleet(&set, &w).actions.is_empty());
        w.secrets
            .insert(env_ref("DISC_CHAP"), Ok(print("disc:d-2")));
        let p = plan_here_and_from_the_fleet(&set, &w);
        assert_eq!(changes(&p), ["new CHAP password"]);
    }

    #[test]
    fn a_newer_record_is_refused_with_the_versions() {
        let e = decode::<PlacementRecord>(
            "/cinderblock/v1/placements/db",
            br#"{"v":2,"volume":"db","backend":"fa","host":"a","size":1,"placedBy":"a","at":"2026-01-01T00:00:00Z","reason":""}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/cinderblock/v1/placements/db: record version 2, this cinderblock reads version 1; upgrade it"
        );
    }
}
