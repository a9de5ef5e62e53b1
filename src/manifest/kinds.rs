//! The wire structs of every manifest kind (`apiVersion: cinderblock.dev/v1alpha1`).
//!
//! These are exactly what an admin writes: serde with `deny_unknown_fields`,
//! camelCase field names, a doc comment on every field (it becomes the JSON
//! Schema description, so editors show it on hover) and the default stated in
//! the doc. Field values are the validating newtypes of [`super::values`], so a
//! bad value is refused where it is written. Cross-document rules (references,
//! duplicates, Cinder's consistency-group rules) live in [`super::validate`].
//!
//! Must not: hold derived or observed state; everything here is desired state.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::{
    AbsPath, CronSchedule, IscsiName, LvmName, MountOptions, Name, NfsShare, OverSubscription,
    Percent, Quantity, ScalarString, StorePath, TimeZoneName,
};

/// The one supported `apiVersion`.
pub const API_VERSION: &str = "cinderblock.dev/v1alpha1";

/// The annotation that takes an existing LV or file into management
/// (Terraform's import): its value is the LV or file name.
pub const ADOPT: &str = "cinderblock.dev/adopt";
/// The annotation that renames a volume, keeping its identity and data:
/// its value is the old name.
pub const RENAMED_FROM: &str = "cinderblock.dev/renamed-from";

/// `metadata` of every manifest.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The object's name: a DNS-1123 label, unique per kind.
    pub name: Name,
    /// Free key/value labels for people and tools; cinderblock does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, ScalarString>,
    /// Free-text notes; cinderblock does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, ScalarString>,
}

// ---------------------------------------------------------------------------
// Backend

/// One storage pool on one host: an LVM volume group (optionally a thin pool in
/// it) or a directory of volume files (a mounted NFS share or a local path).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendSpec {
    /// The storage host that owns this back end, as given by `--host` or the
    /// machine's hostname. Default: the host that runs cinderblock (fine for a
    /// single host; name the host when one manifest tree serves several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Cinder's `volume_backend_name`: volume types select back ends by it, and
    /// several back ends may share one (the scheduler then picks among them).
    /// Default: the back end's `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_name: Option<String>,
    /// The availability zone this back end serves. Default: `nova` (Cinder's
    /// `storage_availability_zone` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// An LVM back end: a volume group, thick unless `thinPool` is given.
    /// Exactly one of `lvm` and `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmBackend>,
    /// A file back end: one file per volume in a directory (a local path, or an
    /// NFS share mounted there). Exactly one of `lvm` and `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    /// How far thin provisioning may oversubscribe the pool: a number ≥ 1.0, or
    /// `auto` (derived from current usage as Cinder does). Default: 20.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_over_subscription_ratio: Option<OverSubscription>,
    /// Percentage of the pool's capacity kept free of new volumes. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_percentage: Option<Percent>,
    /// Free key/values matched by volume types' extra specs (Cinder's
    /// `CapabilitiesFilter`), e.g. `disk_type: ssd`. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, ScalarString>,
    /// How thick LVs are wiped when deleted: `zero` (discard-zero or
    /// BLKZEROOUT) or `none`. Thin LVs and files need no wipe. Default: `zero`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_clear: Option<VolumeClear>,
    /// Bandwidth limit for migrations and copies out of this back end, in bytes
    /// per second (a quantity such as `200Mi`). Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_bandwidth: Option<Quantity>,
    /// iSCSI settings of the host this back end lives on (LIO). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<BackendIscsi>,
}

/// `spec.iscsi` of a `Backend`: settings of the host's iSCSI target (LIO).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendIscsi {
    /// CHAP for `SendTargets` discovery. LIO has one such setting per host, for
    /// every target on it (others' included): every back end of a host that
    /// declares it must declare the same. Removing it leaves the host's
    /// setting as it is (cinderblock does not turn off what others may rely
    /// on). Default: none (discovery as the host has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_auth: Option<DiscoveryAuth>,
}

/// CHAP credentials for discovery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoveryAuth {
    /// Where the credentials an initiator must present to discover come from
    /// (`USER:PASSWORD`); never printed.
    pub chap_secret_ref: SecretRef,
    /// Where the credentials the target answers with come from, when an
    /// initiator asks it to authenticate itself (mutual CHAP); they must
    /// differ from `chapSecretRef`'s. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_secret_ref: Option<SecretRef>,
}

/// `spec.lvm` of a `Backend`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LvmBackend {
    /// The LVM volume group that holds the volumes.
    pub volume_group: LvmName,
    /// A thin pool LV in that group: volumes become thin LVs in it. Default: none
    /// (thick LVs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool: Option<LvmName>,
    /// Size of the thin pool to create when it does not exist. The pool is
    /// never created, nor sized, unless this is given. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool_size: Option<Quantity>,
}

/// `spec.file` of a `Backend`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileBackend {
    /// Directory that holds the volume files (the mount point when `share` is
    /// given): absolute, or relative to the state directory.
    pub path: StorePath,
    /// An NFS share (`HOST:/EXPORT`) mounted at `path` when not mounted yet.
    /// Default: none (a local directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<NfsShare>,
    /// Options for mounting `share`, comma-separated (`vers=4.2,noatime`).
    /// Default: the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<MountOptions>,
    /// `sparse` (allocate on write, like Cinder's `nfs_sparsed_volumes`) or
    /// `preallocated` (`fallocate` the whole size at create). Default: `sparse`.
    #[serde(default)]
    pub allocation: Allocation,
}

/// How volume files are allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Blocks are allocated on first write.
    #[default]
    Sparse,
    /// All blocks are reserved at create.
    Preallocated,
}

/// How thick LVs are wiped on delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeClear {
    /// Zero the LV before removing it.
    #[default]
    Zero,
    /// Remove the LV without wiping.
    None,
}

// ---------------------------------------------------------------------------
// VolumeType

/// A class of volumes, bound to back ends by its extra specs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeTypeSpec {
    /// Cinder extra specs matched against back ends: `volume_backend_name`,
    /// `thin_provisioning`, `capabilities:KEY` or unscoped keys, with Cinder's
    /// operators (`= N`, `== N`, `!= N`, `>= N`, `<= N`, `s== TEXT`, `s!= TEXT`,
    /// `s< s<= s> s>=`, `<in> TEXT`, `<is> True|False`, `<or> A <or> B`). Keys
    /// with another scope (`qos:…`) are ignored by placement. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_specs: BTreeMap<String, ScalarString>,
    /// What this type is for. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------------------------------------------------------------------------
// SchedulerPolicy

/// How volumes without a pinned back end are placed. Only one may exist, named
/// `default`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulerPolicySpec {
    /// Filters every candidate back end must pass, in order. Default:
    /// `[AvailabilityZoneFilter, CapacityFilter, CapabilitiesFilter]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<FilterName>>,
    /// Weighers that rank the back ends that passed; each weigher's raw values
    /// are normalised to 0..1 over the candidates and multiplied. Default:
    /// `[{name: CapacityWeigher, multiplier: 1.0}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighers: Option<Vec<Weigher>>,
}

/// A scheduler filter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
pub enum FilterName {
    /// The back end serves the volume's availability zone.
    AvailabilityZoneFilter,
    /// The back end has room for the volume (Cinder's thin/thick formulas).
    CapacityFilter,
    /// The back end's capabilities satisfy the volume type's extra specs.
    CapabilitiesFilter,
}

/// A weigher with its multiplier.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Weigher {
    /// Which weigher.
    pub name: WeigherName,
    /// Multiplier applied to the normalised weight; negative values spread
    /// instead of stack. Default: Cinder's (`CapacityWeigher` 1.0,
    /// `AllocatedCapacityWeigher` -1.0, `VolumeNumberWeigher` -1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// A scheduler weigher.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
pub enum WeigherName {
    /// Raw weight: virtual free capacity (prefers emptier back ends).
    CapacityWeigher,
    /// Raw weight: capacity already provisioned.
    AllocatedCapacityWeigher,
    /// Raw weight: number of volumes on the back end.
    VolumeNumberWeigher,
}

impl WeigherName {
    /// Cinder's default multiplier for this weigher.
    pub fn default_multiplier(self) -> f64 {
        match self {
            WeigherName::CapacityWeigher => 1.0,
            WeigherName::AllocatedCapacityWeigher | WeigherName::VolumeNumberWeigher => -1.0,
        }
    }
}

// ---------------------------------------------------------------------------
// Volume

/// A block volume.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSpec {
    /// The volume's size (`10Gi`). Rounded up to the back end's extent, and the
    /// plan says so. Growing it extends the volume; shrinking is refused.
    pub size: Quantity,
    /// The `VolumeType` that decides where the volume may live. Default: none
    /// (any back end the scheduler accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<Name>,
    /// Pin the volume to this `Backend`. Changing it later means a migration.
    /// Default: none (placed by the scheduler, then kept where it was placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Name>,
    /// The availability zone the volume must live in. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// What the volume's first content comes from; read only at create.
    /// Default: none (an empty volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
    /// The `ConsistencyGroup` this volume belongs to. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_group: Option<Name>,
    /// The `BackupPolicy` that backs this volume up. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<Name>,
    /// How the volume is exported to initiators. Default: not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<Export>,
    /// What happens when the manifest is removed: `Retain` forgets the volume
    /// and keeps its data; `Delete` destroys it. Default: `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What a `volumeType` change does when the current back end no longer
    /// satisfies the new type: `never` refuses it, `on-demand` migrates.
    /// Default: `never` (as Cinder).
    #[serde(default)]
    pub migration_policy: MigrationPolicy,
    /// Move the volume's snapshots with it when it migrates, as a chain.
    /// Default: false (a volume with snapshots is not migrated).
    #[serde(default)]
    pub migrate_snapshots: bool,
}

/// Where a new volume's content comes from. Exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSource {
    /// Create from this `Snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Name>,
    /// Create as a clone of this `Volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Name>,
    /// Create as a clone of this `Image`'s image-volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Name>,
    /// Restore from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRef>,
    /// Create from one member of this group `Snapshot` (one with
    /// `consistencyGroup`); `member` names which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot: Option<Name>,
    /// With `groupSnapshot`: the member `Volume` whose snapshot to create
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
}

impl VolumeSource {
    /// The snapshot object this source reads: `snapshot`, or the member
    /// snapshot `<groupSnapshot>.<member>` of a group snapshot.
    pub fn snapshot_object(&self) -> Option<String> {
        if let Some(s) = &self.snapshot {
            return Some(s.as_str().to_owned());
        }
        Some(format!(
            "{}.{}",
            self.group_snapshot.as_ref()?,
            self.member.as_ref()?
        ))
    }
}

/// A backup to restore a new volume from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupRef {
    /// The `BackupPolicy` whose repository holds the backup.
    pub policy: Name,
    /// Whose backups: the volume that was backed up. Default: this volume's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Name>,
    /// A backup id as `backup list` prints it, or `latest`. Default: `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How a volume is exported.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Export {
    /// An LIO iSCSI target with one LUN.
    pub iscsi: IscsiExport,
}

/// An LIO iSCSI export.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IscsiExport {
    /// Initiator IQNs allowed to log in (one ACL each, LUN 0 mapped).
    pub initiators: Vec<IscsiName>,
    /// Where the CHAP credentials every initiator must present come from
    /// (`USER:PASSWORD`); they are never printed. Changing the secret rotates
    /// it: logged-in initiators keep their sessions and need the new one at
    /// their next login. Default: no CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret_ref: Option<SecretRef>,
    /// Where the credentials the target answers with come from when an
    /// initiator asks it to authenticate itself (mutual CHAP,
    /// `USER:PASSWORD`, different from `chapSecretRef`'s); only with
    /// `chapSecretRef`. LIO leaves it to each initiator whether to ask.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_secret_ref: Option<SecretRef>,
    /// The target's IQN. Default: `iqn.2026-11.dev.cinderblock:volume-<uuid>`,
    /// from the volume's identity (exports made by earlier versions keep
    /// their `iqn.2010-10.dev.cinderblock:volume-<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<IscsiName>,
    /// Portals (`ADDRESS:PORT`) the target listens on. Default: `0.0.0.0:3260`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portals: Vec<String>,
}

/// A secret read from a file or the environment. Exactly one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// Absolute path of a file holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AbsPath>,
    /// Name of an environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// What happens to storage whose manifest is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Forget the object; its data stays on the back end.
    #[default]
    Retain,
    /// Destroy the object and its data.
    Delete,
}

/// Whether a retype may migrate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPolicy {
    /// Refuse a retype that needs a migration.
    #[default]
    Never,
    /// Migrate when the new type needs another back end.
    OnDemand,
}

// ---------------------------------------------------------------------------
// Snapshot

/// A point-in-time copy of one volume, or of every member of a consistency
/// group at one instant.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The `Volume` to snapshot. Exactly one of `volume` and `consistencyGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Name>,
    /// The `ConsistencyGroup` to snapshot, crash-consistently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_group: Option<Name>,
    /// Space reserved for a thick (copy-on-write) snapshot. Default: the
    /// origin's size, as Cinder. Ignored for thin and file snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// What happens when the manifest is removed: `Retain` forgets the snapshot
    /// and keeps it; `Delete` removes it. Default: `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

// ---------------------------------------------------------------------------
// BackupPolicy

/// Scheduled backups of the volumes (and groups) that name this policy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// When backups run: a 5-field cron expression, or `@daily` and friends.
    pub schedule: CronSchedule,
    /// The time zone `schedule` is read in. Default: `UTC`.
    #[serde(default)]
    pub timezone: TimeZoneName,
    /// Where the backup repository lives.
    pub target: BackupTarget,
    /// Back up only what changed since the previous backup (each backup still
    /// restores on its own). Default: true.
    #[serde(default = "default_true")]
    pub incremental: bool,
    /// Make every Nth backup a full one (re-read everything). 0 means only the
    /// first. Default: 7.
    #[serde(default = "default_full_every")]
    pub full_every: u32,
    /// Chunk compression: `zstd`, `zlib` or `none`. Default: `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Which backups to keep (restic's rules, `ORed`). Default: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Back up in-use volumes from a snapshot. Default: true.
    #[serde(default = "default_true")]
    pub force: bool,
    /// Encrypt and authenticate everything written to the target
    /// (XChaCha20-Poly1305; chunk ids keyed, so the target learns no content
    /// hashes). Set when the repository is created. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BackupEncryption>,
    /// Re-read and check a share of the repository's chunks on a schedule
    /// (the agent runs it), so the whole repository is checked over time.
    /// Default: none (`backup verify` by hand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<BackupVerify>,
    /// Restore drills on a schedule (the agent runs them): the latest
    /// backup of each volume of this policy restored into scratch space in
    /// the state directory, its content compared chunk by chunk with the
    /// backup's record, the scratch removed. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<BackupDrill>,
}

/// `spec.verify` of a `BackupPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupVerify {
    /// When: a 5-field cron expression or `@daily` and friends, in the
    /// policy's `timezone`.
    pub schedule: CronSchedule,
    /// The share of the repository's chunks each run checks, in percent
    /// (1 to 100); successive runs check successive shares, so every chunk
    /// is checked once every `100 / sample` runs. Default: 10.
    #[serde(default = "default_sample")]
    pub sample: Percent,
}

/// `spec.drill` of a `BackupPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupDrill {
    /// When: a 5-field cron expression or `@daily` and friends, in the
    /// policy's `timezone`.
    pub schedule: CronSchedule,
}

fn default_sample() -> Percent {
    Percent::new(10)
}

fn default_true() -> bool {
    true
}

fn default_full_every() -> u32 {
    7
}

/// `spec.target` of a `BackupPolicy`: a directory (`path`), an NFS share
/// that cinderblock mounts at `path` (`share`, Cinder's `backup_share`), or
/// an S3-compatible object store (`s3`). The repository format is the same
/// on each.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupTarget {
    /// The repository directory (local, or the mount point of `share`):
    /// absolute, or relative to the state directory (for trying things out
    /// only: a repository belongs outside the state directory it protects).
    /// Required unless `s3` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StorePath>,
    /// An NFS share (`HOST:/EXPORT`) mounted at `path` when not mounted yet,
    /// as a `file` back end's share is. Default: none (`path` is a local
    /// directory or mounted by someone else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<NfsShare>,
    /// Options for mounting `share`, comma-separated (`vers=4.2,noatime`).
    /// Default: the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<MountOptions>,
    /// An S3-compatible object store (AWS, Ceph RGW, `MinIO`, Garage, …)
    /// instead of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Target>,
    /// Never delete or overwrite anything on this target: retention only
    /// forgets backups in the catalogue, and `backup prune --sweep`, run
    /// with credentials that may delete, removes them and frees the space.
    /// Give cinderblock credentials (or permissions) that cannot delete, and
    /// a compromised host cannot destroy its backups. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_only: bool,
}

/// `spec.target.s3` of a `BackupPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Target {
    /// The store's URL, `https://host[:port]` (`http://` only for a store on
    /// this machine or a trusted network). Default: AWS's endpoint for
    /// `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket (it must exist).
    pub bucket: String,
    /// Key prefix of the repository inside the bucket, e.g. `cinderblock/site-a`
    /// (no leading or trailing `/`). Default: the bucket's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The region. Default: `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where the access key is: a file or environment variable holding
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY`. Never printed or logged.
    pub credentials_ref: SecretRef,
    /// Address the bucket in the path (`https://host/bucket/key`, what
    /// `MinIO`, Ceph RGW and Garage expect) rather than in the host name
    /// (`https://bucket.host/key`, AWS's preference). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

/// `spec.encryption` of a `BackupPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupEncryption {
    /// Where the key is: a file or environment variable holding a passphrase
    /// or key (at least 16 bytes). It unwraps the repository's data key;
    /// `backup key rotate` re-wraps that under a new one. Never printed or
    /// logged.
    pub key_ref: SecretRef,
}

/// Chunk compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (fast, good ratio).
    #[default]
    Zstd,
    /// zlib, as Cinder's default.
    Zlib,
    /// Stored as is.
    None,
}

/// Retention rules (restic's `forget` semantics: a backup is kept if any rule
/// keeps it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retention {
    /// Keep the N most recent backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the most recent backup of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Keep the most recent backup of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the most recent backup of each of the last N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the most recent backup of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the most recent backup of each of the last N years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// True when at least one rule keeps at least one backup.
    pub fn keeps_something(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(|k| k.is_some_and(|n| n > 0))
    }
}

// ---------------------------------------------------------------------------
// ConsistencyGroup

/// Volumes snapshotted and backed up together, crash-consistently.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistencyGroupSpec {
    /// The volume types a member may have (at least one).
    pub volume_types: Vec<Name>,
    /// The availability zone of the group. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Back up all members together under this `BackupPolicy`; a member
    /// may only name the same policy. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<Name>,
    /// Pin the whole group to this `Backend`. Default: none (the group is
    /// placed as one unit on a back end that can take every member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Name>,
    /// What the group is for. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------------------------------------------------------------------------
// Image

/// A volume-backed image (raw/bare only): an image-volume on a back end that new
/// volumes are cloned from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageSpec {
    /// The disk format; only `raw` (Cinder's image store takes nothing else).
    pub disk_format: String,
    /// The container format; only `bare`.
    pub container_format: String,
    /// Where the image's content comes from.
    pub source: ImageSource,
    /// The `Backend` that holds the image-volume.
    pub backend: Name,
    /// What happens when the manifest is removed: `Retain` forgets the
    /// image-volume and keeps its data; `Delete` destroys it, refused while
    /// volumes made from it may still share its data (file clones, thin LV
    /// clones; thick LV copies own theirs). Default: `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Where an image's content comes from. Exactly one field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageSource {
    /// A raw image file on the storage host (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<AbsPath>,
    /// A `Volume` whose content becomes the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Name>,
}
