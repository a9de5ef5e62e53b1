//! Cross-document validation: references, uniqueness of pools and paths, and
//! the rules DESIGN.md carries over from Cinder that can be checked before
//! anything touches a disk.
//!
//! Every finding names the object and the field, and points at the field's
//! position. Nothing here looks at the host: rules that need observed state
//! (capacity, what exists) belong to the planner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::diag::{Diagnostic, Severity, suggest};
use super::kinds::{
    BackendSpec, ConsistencyGroupSpec, ImageSpec, IscsiExport, SnapshotSpec, VolumeSpec,
    VolumeTypeSpec,
};
use super::position::FieldPath;
use super::values::{Name, StorePath, shown};
use super::{Doc, Kind, ManifestSet};

/// Smallest volume size accepted: below it, `size: 10` (10 bytes) is surely a
/// forgotten unit.
const MIN_VOLUME_BYTES: u64 = 1 << 20;

/// Why `entry` cannot name an LV or a file of a back end's root to adopt,
/// if it cannot: it reaches a path or a command line, so only a plain
/// name is taken (no `/`, no `.`/`..` or hidden name, no leading `-`, no
/// whitespace or control character, at most 255 bytes).
pub fn entry_problem(entry: &str) -> Option<&'static str> {
    if entry.is_empty() {
        Some("the name is empty")
    } else if entry.len() > 255 {
        Some("the name is longer than 255 bytes")
    } else if entry.contains('/') {
        Some("a name with '/' reaches outside the back end")
    } else if entry.starts_with('.') {
        Some("names starting with '.' are hidden or reach outside the back end")
    } else if entry.starts_with('-') {
        Some("a name starting with '-' reads as an option")
    } else if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("the name holds whitespace or a control character")
    } else {
        None
    }
}

/// Why `size` bytes cannot be a volume's `spec.size`, if it cannot: under
/// 1Mi, or not a whole number of 512-byte sectors.
pub fn volume_size_problem(size: u64) -> Option<String> {
    if size < MIN_VOLUME_BYTES {
        Some(format!("{size} bytes, under the smallest volume (1Mi)"))
    } else if size % 512 != 0 {
        Some(format!(
            "{size} bytes, not a multiple of 512 bytes (one sector)"
        ))
    } else {
        None
    }
}

/// Runs every cross-document check, appending findings to `out`.
pub fn validate(set: &ManifestSet, out: &mut Vec<Diagnostic>) {
    let mut v = Checker { set, out };
    v.scheduler_policies();
    v.backends();
    v.volume_types();
    v.backup_policies();
    v.consistency_groups();
    v.images();
    v.volumes();
    v.snapshots();
    v.renamed_from(Kind::Volume, &set.volumes);
    v.renamed_from(Kind::Snapshot, &set.snapshots);
    v.renamed_from(Kind::Image, &set.images);
}

struct Checker<'a> {
    set: &'a ManifestSet,
    out: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push<S>(
        &mut self,
        sev: Severity,
        kind: Kind,
        doc: &Doc<S>,
        field: &str,
        at_key: bool,
        msg: String,
    ) {
        self.push_path(sev, kind, doc, FieldPath::parse(field), at_key, msg);
    }

    fn push_path<S>(
        &mut self,
        sev: Severity,
        kind: Kind,
        doc: &Doc<S>,
        path: FieldPath,
        at_key: bool,
        msg: String,
    ) {
        let pos = if at_key {
            doc.origin.key_pos(&path)
        } else {
            doc.origin.value_pos(&path)
        };
        self.out.push(Diagnostic {
            severity: sev,
            file: Arc::clone(&doc.origin.file),
            pos: Some(pos),
            object: Some(format!("{kind}/{}", doc.name())),
            field: Some(path),
            message: msg,
        });
    }

    fn error<S>(&mut self, kind: Kind, doc: &Doc<S>, field: &str, msg: impl Into<String>) {
        self.push(Severity::Error, kind, doc, field, false, msg.into());
    }

    fn error_at_key<S>(&mut self, kind: Kind, doc: &Doc<S>, field: &str, msg: impl Into<String>) {
        self.push(Severity::Error, kind, doc, field, true, msg.into());
    }

    fn warn<S>(&mut self, kind: Kind, doc: &Doc<S>, field: &str, msg: impl Into<String>) {
        self.push(Severity::Warning, kind, doc, field, false, msg.into());
    }

    /// Checks that `target` names an existing object of `target_kind`.
    fn reference<S>(
        &mut self,
        kind: Kind,
        doc: &Doc<S>,
        field: &str,
        target_kind: Kind,
        target: &Name,
    ) -> bool {
        let names = self.set.names(target_kind);
        if names.contains(&target) {
            return true;
        }
        let hint = suggest(target.as_str(), names.iter().map(|n| n.as_str()))
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        self.error(
            kind,
            doc,
            field,
            format!("{target_kind} {:?} is not defined{hint}", target.as_str()),
        );
        false
    }

    fn scheduler_policies(&mut self) {
        for doc in self.set.scheduler_policies.values() {
            if doc.name().as_str() != "default" {
                self.error(
                    Kind::SchedulerPolicy,
                    doc,
                    "metadata.name",
                    "the scheduler policy must be named \"default\" (there is one per site)",
                );
            }
            let mut seen = BTreeSet::new();
            for (i, w) in doc.spec.weighers.iter().flatten().enumerate() {
                if !seen.insert(w.name) {
                    self.error(
                        Kind::SchedulerPolicy,
                        doc,
                        &format!("spec.weighers[{i}].name"),
                        format!("weigher {:?} is listed twice", w.name),
                    );
                }
                if w.multiplier.is_some_and(|m| !m.is_finite()) {
                    self.error(
                        Kind::SchedulerPolicy,
                        doc,
                        &format!("spec.weighers[{i}].multiplier"),
                        "the multiplier must be a finite number",
                    );
                }
            }
        }
    }

    fn backends(&mut self) {
        let k = Kind::Backend;
        for doc in self.set.backends.values() {
            let s = &doc.spec;
            match (&s.lvm, &s.file) {
                (None, None) => self.error_at_key(
                    k,
                    doc,
                    "spec",
                    "a back end needs exactly one of `lvm` and `file`",
                ),
                (Some(_), Some(_)) => self.error_at_key(
                    k,
                    doc,
                    "spec.file",
                    "a back end has exactly one of `lvm` and `file`, not both",
                ),
                _ => {}
            }
            if let Some(lvm) = &s.lvm {
                if lvm.thin_pool_size.is_some() && lvm.thin_pool.is_none() {
                    self.error_at_key(
                        k,
                        doc,
                        "spec.lvm.thinPoolSize",
                        "`thinPoolSize` sizes the pool named by `thinPool`; name the pool too",
                    );
                }
                if lvm.thin_pool_size.is_some_and(|q| q.bytes() < 4 << 20) {
                    self.error(
                        k,
                        doc,
                        "spec.lvm.thinPoolSize",
                        "a thin pool needs at least 4Mi",
                    );
                }
            }
            if let Some(file) = &s.file
                && file.mount_options.is_some()
                && file.share.is_none()
            {
                self.error_at_key(
                    k,
                    doc,
                    "spec.file.mountOptions",
                    "`mountOptions` applies to an NFS `share`; none is given",
                );
            }
            if let Some(h) = &s.host {
                if let Some(m) = check_word(h, "host name", ".-") {
                    self.error(k, doc, "spec.host", m);
                }
            }
            if let Some(b) = &s.backend_name {
                if let Some(m) = check_word(b, "backendName", "._-") {
                    self.error(k, doc, "spec.backendName", m);
                }
            }
            if let Some(az) = &s.availability_zone {
                if let Some(m) = check_word(az, "availability zone", "._-:") {
                    self.error(k, doc, "spec.availabilityZone", m);
                }
            }
            if s.migration_bandwidth.is_some_and(|q| q.bytes() < 1 << 20) {
                self.error(
                    k,
                    doc,
                    "spec.migrationBandwidth",
                    "a bandwidth limit below 1Mi (bytes per second) would stall migrations",
                );
            }
            if let Some(d) = s.iscsi.as_ref().and_then(|i| i.discovery_auth.as_ref()) {
                let f = "spec.iscsi.discoveryAuth";
                self.secret_ref(k, doc, &format!("{f}.chapSecretRef"), &d.chap_secret_ref);
                if let Some(m) = &d.mutual_chap_secret_ref {
                    self.secret_ref(k, doc, &format!("{f}.mutualChapSecretRef"), m);
                    if *m == d.chap_secret_ref {
                        self.error(k, doc, &format!("{f}.mutualChapSecretRef"), SAME_SECRET);
                    }
                }
            }
        }
        self.backend_overlaps();
    }

    /// Two back ends on one host must not manage the same pool or directory.
    fn backend_overlaps(&mut self) {
        let all: Vec<_> = self.set.backends.values().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[..i] {
                if a.spec.host != b.spec.host {
                    continue;
                }
                if let (Some(fa), Some(fb)) = (&a.spec.file, &b.spec.file) {
                    let msg = if fa.path == fb.path {
                        Some(format!(
                            "path {} is already the path of Backend/{}",
                            fa.path,
                            b.name()
                        ))
                    } else if fa.path.is_within(&fb.path) {
                        Some(format!(
                            "path {} lies inside {}, the path of Backend/{}; their volume files would mix",
                            fa.path,
                            fb.path,
                            b.name()
                        ))
                    } else if fb.path.is_within(&fa.path) {
                        Some(format!(
                            "path {} contains {}, the path of Backend/{}; their volume files would mix",
                            fa.path,
                            fb.path,
                            b.name()
                        ))
                    } else {
                        None
                    };
                    if let Some(m) = msg {
                        self.error(Kind::Backend, a, "spec.file.path", m);
                    }
                }
                if let (Some(la), Some(lb)) = (&a.spec.lvm, &b.spec.lvm)
                    && la.volume_group == lb.volume_group
                    && la.thin_pool == lb.thin_pool
                {
                    let what = la.thin_pool.as_ref().map_or_else(
                        || format!("volume group {} (thick)", la.volume_group),
                        |p| format!("thin pool {}/{p}", la.volume_group),
                    );
                    self.error(
                        Kind::Backend,
                        a,
                        "spec.lvm.volumeGroup",
                        format!("{what} is already managed by Backend/{}", b.name()),
                    );
                }
            }
        }
    }

    fn volume_types(&mut self) {
        let names: BTreeSet<String> = self.set.backends.values().map(backend_name).collect();
        for doc in self.set.volume_types.values() {
            for (key, value) in &doc.spec.extra_specs {
                let field = FieldPath::parse("spec.extraSpecs").key(key);
                let k = Kind::VolumeType;
                if key.is_empty() || key.chars().any(char::is_whitespace) {
                    let m = format!("invalid extra spec key {}", shown(key));
                    self.push_path(Severity::Error, k, doc, field, true, m);
                    continue;
                }
                if let Err(m) = check_extra_spec(key, &value.0) {
                    self.push_path(Severity::Error, k, doc, field, false, m);
                }
            }
            if let Some(vbn) = doc.spec.extra_specs.get("volume_backend_name") {
                let wanted = vbn.0.trim();
                if !names.contains(wanted) {
                    let known = names
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.warn(
                        Kind::VolumeType,
                        doc,
                        "spec.extraSpecs.volume_backend_name",
                        format!("no Backend has backendName {wanted:?}; volumes of this type cannot be placed (back end names: {})", if known.is_empty() { "none" } else { &known }),
                    );
                }
            }
        }
    }

    fn backup_policies(&mut self) {
        for doc in self.set.backup_policies.values() {
            if let Some(r) = &doc.spec.retention
                && !r.keeps_something()
            {
                self.error_at_key(Kind::BackupPolicy, doc, "spec.retention", "these retention rules keep no backup at all; give at least one keep rule above 0, or drop `retention` to keep everything");
            }
            self.backup_target(doc);
            if let Some(e) = &doc.spec.encryption {
                self.secret_ref(
                    Kind::BackupPolicy,
                    doc,
                    "spec.encryption.keyRef",
                    &e.key_ref,
                );
            }
            if doc
                .spec
                .verify
                .as_ref()
                .is_some_and(|v| v.sample.get() == 0)
            {
                self.error_at_key(
                    Kind::BackupPolicy,
                    doc,
                    "spec.verify.sample",
                    "a sample of 0 % checks nothing; give 1 to 100, or drop `verify`",
                );
            }
            if !doc.spec.incremental && doc.spec.full_every > 1 {
                self.warn(
                    Kind::BackupPolicy,
                    doc,
                    "spec.fullEvery",
                    "`fullEvery` has no effect when `incremental` is false (every backup is full)",
                );
            }
        }
    }

    /// `spec.target`: a directory, a share mounted at a directory, or an
    /// S3 bucket; each field only where it means something.
    fn backup_target(&mut self, doc: &Doc<crate::manifest::kinds::BackupPolicySpec>) {
        let k = Kind::BackupPolicy;
        let t = &doc.spec.target;
        // A `path` or `s3` that was written but refused when loading (a URL
        // as a path) already has its error: one mistake, one message.
        let written = |f: &str| doc.origin.has(&FieldPath::parse(f));
        match (&t.path, &t.s3) {
            (None, None) if written("spec.target.path") || written("spec.target.s3") => {}
            (None, None) => self.error_at_key(
                k,
                doc,
                "spec.target",
                "a backup target needs `path` (a directory, or the mount point of `share`) or `s3` (an S3-compatible bucket)",
            ),
            (Some(_), Some(_)) => self.error_at_key(
                k,
                doc,
                "spec.target.s3",
                "a backup target is either a directory (`path`) or an S3 bucket (`s3`), not both",
            ),
            _ => {}
        }
        if t.s3.is_some() && t.share.is_some() {
            self.error_at_key(
                k,
                doc,
                "spec.target.share",
                "`share` is an NFS share mounted at `path`; an S3 target has neither",
            );
        }
        if t.mount_options.is_some() && t.share.is_none() {
            self.error_at_key(
                k,
                doc,
                "spec.target.mountOptions",
                "`mountOptions` applies to an NFS `share`; none is given",
            );
        }
        if t.share.is_some() && t.path.as_ref().is_some_and(StorePath::is_in_state) {
            self.error(
                k,
                doc,
                "spec.target.path",
                "the mount point of a share must be an absolute path",
            );
        }
        let Some(s3) = &t.s3 else { return };
        if let Some(m) = check_bucket(&s3.bucket) {
            self.error(k, doc, "spec.target.s3.bucket", m);
        }
        if let Some(e) = &s3.endpoint
            && let Some(m) = check_endpoint(e)
        {
            self.error(k, doc, "spec.target.s3.endpoint", m);
        }
        if let Some(p) = &s3.prefix
            && let Some(m) = check_prefix(p)
        {
            self.error(k, doc, "spec.target.s3.prefix", m);
        }
        if let Some(r) = &s3.region
            && let Some(m) = check_word(r, "region", "-_")
        {
            self.error(k, doc, "spec.target.s3.region", m);
        }
        self.secret_ref(k, doc, "spec.target.s3.credentialsRef", &s3.credentials_ref);
    }

    /// A `{file|env}` secret reference: exactly one, and a valid variable name.
    fn secret_ref<S>(
        &mut self,
        k: Kind,
        doc: &Doc<S>,
        field: &str,
        r: &crate::manifest::kinds::SecretRef,
    ) {
        match (&r.file, &r.env) {
            (None, None) | (Some(_), Some(_)) => {
                self.error_at_key(
                    k,
                    doc,
                    field,
                    "a secret reference has exactly one of `file` and `env`",
                );
            }
            (None, Some(var)) => {
                let ok = !var.is_empty()
                    && !var.starts_with(|c: char| c.is_ascii_digit())
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    self.error(
                        k,
                        doc,
                        &format!("{field}.env"),
                        format!("invalid environment variable name {}", shown(var)),
                    );
                }
            }
            (Some(_), None) => {}
        }
    }

    fn consistency_groups(&mut self) {
        let k = Kind::ConsistencyGroup;
        for doc in self.set.consistency_groups.values() {
            if doc.spec.volume_types.is_empty() {
                self.error(
                    k,
                    doc,
                    "spec.volumeTypes",
                    "a consistency group needs at least one volume type",
                );
            }
            for (i, t) in doc.spec.volume_types.iter().enumerate() {
                self.reference(
                    k,
                    doc,
                    &format!("spec.volumeTypes[{i}]"),
                    Kind::VolumeType,
                    t,
                );
            }
            if let Some(b) = &doc.spec.backend {
                self.reference(k, doc, "spec.backend", Kind::Backend, b);
            }
            if let Some(p) = &doc.spec.backup_policy {
                self.reference(k, doc, "spec.backupPolicy", Kind::BackupPolicy, p);
            }
        }
    }

    fn images(&mut self) {
        let k = Kind::Image;
        for doc in self.set.images.values() {
            let s: &ImageSpec = &doc.spec;
            if s.disk_format != "raw" {
                self.error(k, doc, "spec.diskFormat", format!("disk format {} is not supported: volume-backed images are raw/bare only (write diskFormat: raw)", shown(&s.disk_format)));
            }
            if s.container_format != "bare" {
                self.error(k, doc, "spec.containerFormat", format!("container format {} is not supported: volume-backed images are raw/bare only (write containerFormat: bare)", shown(&s.container_format)));
            }
            match (&s.source.path, &s.source.volume) {
                (None, None) => self.error_at_key(
                    k,
                    doc,
                    "spec.source",
                    "an image source needs exactly one of `path` and `volume`",
                ),
                (Some(_), Some(_)) => self.error_at_key(
                    k,
                    doc,
                    "spec.source.volume",
                    "an image source has exactly one of `path` and `volume`, not both",
                ),
                (None, Some(v)) => {
                    self.reference(k, doc, "spec.source.volume", Kind::Volume, v);
                }
                (Some(_), None) => {}
            }
            self.reference(k, doc, "spec.backend", Kind::Backend, &s.backend);
        }
    }

    /// `cinderblock.dev/renamed-from` on a volume, snapshot or image: a
    /// manifest name other than its own, that no document of the kind
    /// declares any more, that no other document takes, on an object that
    /// is not being adopted.
    fn renamed_from<S>(&mut self, kind: Kind, docs: &BTreeMap<Name, Doc<S>>) {
        let path = FieldPath::annotation(super::kinds::RENAMED_FROM);
        let mut taken: BTreeMap<&str, &Name> = BTreeMap::new();
        for (name, doc) in docs {
            let Some(old) = doc.meta.annotations.get(super::kinds::RENAMED_FROM) else {
                continue;
            };
            let old = old.0.as_str();
            let mut refuse = |msg: String| {
                self.push_path(Severity::Error, kind, doc, path.clone(), false, msg);
            };
            if let Err(e) = old.parse::<Name>() {
                refuse(format!("{} is not a {kind} name: {e}", shown(old)));
            } else if old == name.as_str() {
                refuse(format!(
                    "{} is this {kind}'s own name; remove the annotation",
                    shown(old)
                ));
            } else if let Some((_, other)) = docs.iter().find(|(n, _)| n.as_str() == old) {
                refuse(format!(
                    "{kind}/{old} is still declared ({}); a rename moves the name: remove that document, or this annotation",
                    other.origin.describe()
                ));
            } else if let Some(first) = taken.insert(old, name) {
                refuse(format!(
                    "{kind}/{first} is renamed from {old} too; one {kind} cannot become two"
                ));
            }
            if doc.meta.annotations.contains_key(super::kinds::ADOPT) {
                refuse(format!(
                    "a {kind} is adopted (cinderblock.dev/adopt) or renamed, not both: remove one of the annotations"
                ));
            }
        }
    }

    /// `cinderblock.dev/adopt` on a volume: a plain LV or file name, on a
    /// volume pinned to its back end and made from nothing.
    fn adopt_annotation(&mut self, doc: &Doc<VolumeSpec>) {
        let Some(entry) = doc.meta.annotations.get(super::kinds::ADOPT) else {
            return;
        };
        let path = FieldPath::annotation(super::kinds::ADOPT);
        let refuse = |me: &mut Self, msg: String| {
            me.push_path(Severity::Error, Kind::Volume, doc, path.clone(), false, msg);
        };
        if let Some(why) = entry_problem(&entry.0) {
            refuse(
                self,
                format!("{} cannot be adopted: {why}", shown(&entry.0)),
            );
        }
        if doc.spec.backend.is_none() {
            refuse(
                self,
                "an adopted volume names the back end that holds it: set spec.backend".into(),
            );
        }
        if doc.spec.source.is_some() {
            refuse(
                self,
                "an adopted volume keeps the data it has: remove spec.source".into(),
            );
        }
    }

    fn volumes(&mut self) {
        let k = Kind::Volume;
        for doc in self.set.volumes.values() {
            self.adopt_annotation(doc);
            let s: &VolumeSpec = &doc.spec;
            let size = s.size.bytes();
            if size < MIN_VOLUME_BYTES {
                self.error(k, doc, "spec.size", format!("size {size} is {size} bytes; the smallest volume is 1Mi (did you mean {size}Gi?)"));
            } else if size % 512 != 0 {
                self.error(
                    k,
                    doc,
                    "spec.size",
                    format!(
                        "size {} is not a multiple of 512 bytes (one sector)",
                        s.size
                    ),
                );
            }
            let vtype = s
                .volume_type
                .as_ref()
                .filter(|t| self.reference(k, doc, "spec.volumeType", Kind::VolumeType, t));
            let backend = s
                .backend
                .as_ref()
                .filter(|b| self.reference(k, doc, "spec.backend", Kind::Backend, b));
            if let (Some(t), Some(b)) = (vtype, backend) {
                self.pinned_backend_matches_type(doc, t, b);
            }
            if let (Some(b), Some(az)) = (backend, &s.availability_zone) {
                let backend_zone = backend_az(&self.set.backends[b].spec);
                if backend_zone != az {
                    self.error(
                        k,
                        doc,
                        "spec.availabilityZone",
                        format!("zone {az:?} differs from zone {backend_zone:?} of the pinned Backend/{b}"),
                    );
                }
            }
            if let Some(cg) = &s.consistency_group {
                self.reference(k, doc, "spec.consistencyGroup", Kind::ConsistencyGroup, cg);
            }
            if let Some(p) = &s.backup_policy {
                self.reference(k, doc, "spec.backupPolicy", Kind::BackupPolicy, p);
            }
            self.volume_source(doc);
            if let Some(e) = &s.export {
                self.iscsi(doc, &e.iscsi);
            }
        }
        self.group_members();
        self.source_cycles();
        self.portal_clashes();
    }

    /// A wildcard portal (`0.0.0.0:P`, `[::]:P`, or the default) and a
    /// specific address on the same port cannot both listen on one host:
    /// LIO binds a socket per portal, and the wildcard one takes the port on
    /// every address (the kernel's `kernel_bind() failed: -98`, configfs'
    /// `EINVAL`). Which host a volume lands on is known only at plan time,
    /// so this is a warning, on the wildcard side, naming the other volume.
    fn portal_clashes(&mut self) {
        // (volume, field, address, port) of every export's portals
        let mut all: Vec<(&Name, String, std::net::IpAddr, u16)> = Vec::new();
        for (name, doc) in &self.set.volumes {
            let Some(e) = &doc.spec.export else { continue };
            if e.iscsi.portals.is_empty()
                && let Some((addr, port)) = parse_portal(crate::iscsi::lio::DEFAULT_PORTAL)
            {
                all.push((name, "spec.export.iscsi".to_owned(), addr, port));
            }
            for (i, p) in e.iscsi.portals.iter().enumerate() {
                if let Some((addr, port)) = parse_portal(p) {
                    all.push((name, format!("spec.export.iscsi.portals[{i}]"), addr, port));
                }
            }
        }
        for (name, field, addr, port) in &all {
            if !addr.is_unspecified() {
                continue;
            }
            // [::] also takes IPv4 addresses (dual-stack sockets, Linux's default)
            let Some((other, _, specific, _)) = all.iter().find(|(_, _, a, p)| {
                p == port && !a.is_unspecified() && (addr.is_ipv6() || a.is_ipv4())
            }) else {
                continue;
            };
            let default = if field == "spec.export.iscsi" {
                " (the default)"
            } else {
                ""
            };
            let theirs = if other == name {
                "its own".to_owned()
            } else {
                format!("Volume/{other}'s")
            };
            let specific = std::net::SocketAddr::new(*specific, *port);
            let msg = format!(
                "portal {}{default} and {theirs} {specific} cannot both listen on one host: the wildcard address takes port {port} on every address, and LIO refuses the second portal; if both volumes are exported from one host, give them the same portals (portals: [\"{specific}\"])",
                std::net::SocketAddr::new(*addr, *port)
            );
            let doc = &self.set.volumes[*name];
            self.warn(Kind::Volume, doc, field, msg);
        }
    }

    fn pinned_backend_matches_type(&mut self, doc: &Doc<VolumeSpec>, t: &Name, b: &Name) {
        let vt: &VolumeTypeSpec = &self.set.volume_types[t].spec;
        let Some(wanted) = vt.extra_specs.get("volume_backend_name") else {
            return;
        };
        let have = backend_name(&self.set.backends[b]);
        if wanted.0.trim() != have {
            self.error(
                Kind::Volume,
                doc,
                "spec.backend",
                format!("Backend/{b} has backendName {have:?} but VolumeType/{t} asks for volume_backend_name {:?}", wanted.0.trim()),
            );
        }
    }

    /// `source: {groupSnapshot, member}`: both, a group `Snapshot`, a member
    /// of its group, and not a member of that group itself.
    fn group_member_source(&mut self, doc: &Doc<VolumeSpec>) {
        let k = Kind::Volume;
        let Some(src) = &doc.spec.source else { return };
        match (&src.group_snapshot, &src.member) {
            (Some(_), None) => {
                self.error_at_key(k, doc, "spec.source.groupSnapshot", "`groupSnapshot` needs `member`: the member volume whose snapshot to create from");
            }
            (None, Some(_)) => {
                self.error_at_key(
                    k,
                    doc,
                    "spec.source.member",
                    "`member` goes with `groupSnapshot`",
                );
            }
            (Some(gs), Some(m)) => {
                if self.reference(k, doc, "spec.source.groupSnapshot", Kind::Snapshot, gs) {
                    match &self.set.snapshots[gs].spec.consistency_group {
                        None => self.error(
                            k,
                            doc,
                            "spec.source.groupSnapshot",
                            format!("Snapshot/{gs} is not a group snapshot (it has no consistencyGroup); use `snapshot: {gs}`"),
                        ),
                        Some(g) if doc.spec.consistency_group.as_ref() == Some(g) => self.error(
                            k,
                            doc,
                            "spec.source.groupSnapshot",
                            format!("Snapshot/{gs} snapshots consistency group {g}, which this volume is a member of: it would have to exist before itself; remove spec.consistencyGroup or use another source"),
                        ),
                        Some(g) => {
                            if self.reference(k, doc, "spec.source.member", Kind::Volume, m)
                                && self.set.volumes[m].spec.consistency_group.as_ref() != Some(g)
                            {
                                self.error(
                                    k,
                                    doc,
                                    "spec.source.member",
                                    format!("Volume/{m} is not a member of consistency group {g}, which Snapshot/{gs} snapshots"),
                                );
                            }
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }

    fn volume_source(&mut self, doc: &Doc<VolumeSpec>) {
        let k = Kind::Volume;
        let Some(src) = &doc.spec.source else { return };
        let given = [
            src.snapshot.is_some(),
            src.volume.is_some(),
            src.image.is_some(),
            src.backup.is_some(),
            src.group_snapshot.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            self.error_at_key(k, doc, "spec.source", format!("a source has exactly one of `snapshot`, `volume`, `image`, `backup` and `groupSnapshot`; {given} are given"));
            return;
        }
        self.group_member_source(doc);
        // The source's size is checked by the planner at create time: a
        // source is read only then, and may have grown since.
        if let Some(snap) = &src.snapshot
            && self.reference(k, doc, "spec.source.snapshot", Kind::Snapshot, snap)
            && self.set.snapshots[snap].spec.consistency_group.is_some()
        {
            self.error(
                k,
                doc,
                "spec.source.snapshot",
                format!("Snapshot/{snap} is a group snapshot; create each volume from the member snapshot of its volume"),
            );
        }
        if let Some(vol) = &src.volume {
            if vol == doc.name() {
                self.error(
                    k,
                    doc,
                    "spec.source.volume",
                    "a volume cannot be its own source",
                );
            } else {
                self.reference(k, doc, "spec.source.volume", Kind::Volume, vol);
            }
        }
        if let Some(img) = &src.image {
            self.reference(k, doc, "spec.source.image", Kind::Image, img);
        }
        if let Some(b) = &src.backup {
            self.reference(
                k,
                doc,
                "spec.source.backup.policy",
                Kind::BackupPolicy,
                &b.policy,
            );
            if let Some(id) = &b.id
                && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                self.error(
                    k,
                    doc,
                    "spec.source.backup.id",
                    format!(
                        "invalid backup id {}: ids are as `backup list` prints them, or `latest`",
                        shown(id)
                    ),
                );
            }
        }
    }

    fn iscsi(&mut self, doc: &Doc<VolumeSpec>, e: &IscsiExport) {
        let k = Kind::Volume;
        if e.initiators.is_empty() {
            self.error(
                k,
                doc,
                "spec.export.iscsi.initiators",
                "list at least one initiator IQN (an export nobody may log in to serves no one)",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, ini) in e.initiators.iter().enumerate() {
            if !seen.insert(ini) {
                self.error(
                    k,
                    doc,
                    &format!("spec.export.iscsi.initiators[{i}]"),
                    format!("initiator {ini} is listed twice"),
                );
            }
        }
        for (i, p) in e.portals.iter().enumerate() {
            if let Err(m) = check_portal(p) {
                self.error(k, doc, &format!("spec.export.iscsi.portals[{i}]"), m);
            }
        }
        if let Some(t) = &e.target_name
            && let Some(why) = crate::iscsi::names::targetcli_problem(t.as_str())
        {
            self.warn(
                k,
                doc,
                "spec.export.iscsi.targetName",
                targetcli_warning(t.as_str(), why),
            );
        }
        for (i, ini) in e.initiators.iter().enumerate() {
            if let Some(why) = crate::iscsi::names::targetcli_problem(ini.as_str()) {
                self.warn(
                    k,
                    doc,
                    &format!("spec.export.iscsi.initiators[{i}]"),
                    targetcli_warning(ini.as_str(), why),
                );
            }
        }
        if let Some(r) = &e.chap_secret_ref {
            self.secret_ref(k, doc, "spec.export.iscsi.chapSecretRef", r);
        }
        if let Some(m) = &e.mutual_chap_secret_ref {
            self.secret_ref(k, doc, "spec.export.iscsi.mutualChapSecretRef", m);
            match &e.chap_secret_ref {
                None => self.error_at_key(
                    k,
                    doc,
                    "spec.export.iscsi.mutualChapSecretRef",
                    "mutual CHAP is the target's answer to an initiator that authenticated with CHAP: give `chapSecretRef` too",
                ),
                Some(c) if c == m => self.error(
                    k,
                    doc,
                    "spec.export.iscsi.mutualChapSecretRef",
                    SAME_SECRET,
                ),
                Some(_) => {}
            }
        }
    }

    /// Cinder's group rules: members use one of the group's types and live on
    /// one back end (the group's pin when it has one); and ours: a member is
    /// backed up with its group, under the group's policy only.
    fn group_members(&mut self) {
        let mut pinned: BTreeMap<&Name, (&Name, &Name)> = BTreeMap::new();
        for doc in self.set.volumes.values() {
            let Some(cg_name) = &doc.spec.consistency_group else {
                continue;
            };
            let Some(cg) = self.set.consistency_groups.get(cg_name) else {
                continue;
            };
            let cg_spec: &ConsistencyGroupSpec = &cg.spec;
            match &doc.spec.volume_type {
                None => self.error_at_key(
                    Kind::Volume,
                    doc,
                    "spec.consistencyGroup",
                    format!(
                        "a member of ConsistencyGroup/{cg_name} needs a volumeType, one of: {}",
                        join(&cg_spec.volume_types)
                    ),
                ),
                Some(t) if !cg_spec.volume_types.contains(t) => self.error(
                    Kind::Volume,
                    doc,
                    "spec.volumeType",
                    format!(
                        "VolumeType/{t} is not one of the types of ConsistencyGroup/{cg_name} ({})",
                        join(&cg_spec.volume_types)
                    ),
                ),
                Some(_) => {}
            }
            if let (Some(az), Some(gaz)) = (&doc.spec.availability_zone, &cg_spec.availability_zone)
                && az != gaz
            {
                self.error(
                    Kind::Volume,
                    doc,
                    "spec.availabilityZone",
                    format!("zone {az:?} differs from zone {gaz:?} of ConsistencyGroup/{cg_name}"),
                );
            }
            match (&doc.spec.backup_policy, &cg_spec.backup_policy) {
                (Some(p), Some(gp)) if p != gp => self.error(
                    Kind::Volume,
                    doc,
                    "spec.backupPolicy",
                    format!("ConsistencyGroup/{cg_name} backs its members up together under BackupPolicy/{gp}; a member cannot have a policy of its own (BackupPolicy/{p}): remove spec.backupPolicy (the member follows its group)"),
                ),
                (Some(p), None) => self.error(
                    Kind::Volume,
                    doc,
                    "spec.backupPolicy",
                    format!("members of ConsistencyGroup/{cg_name} are backed up together, from one group snapshot: set backupPolicy: {p} on the group and remove it here"),
                ),
                _ => {}
            }
            if let (Some(b), Some(gb)) = (&doc.spec.backend, &cg_spec.backend)
                && b != gb
            {
                self.error(
                    Kind::Volume,
                    doc,
                    "spec.backend",
                    format!("ConsistencyGroup/{cg_name} is pinned to Backend/{gb}, and its members live with it: remove spec.backend or set it to {gb}"),
                );
                continue;
            }
            if let Some(b) = &doc.spec.backend {
                match pinned.get(cg_name) {
                    Some((other_b, other_v)) if *other_b != b => self.error(
                        Kind::Volume,
                        doc,
                        "spec.backend",
                        format!("members of ConsistencyGroup/{cg_name} live on one back end, but Volume/{other_v} is pinned to Backend/{other_b}"),
                    ),
                    Some(_) => {}
                    None => {
                        pinned.insert(cg_name, (b, doc.name()));
                    }
                }
            }
        }
    }

    /// A volume created from a volume created from itself can never exist.
    fn source_cycles(&mut self) {
        let next = |v: &Name| -> Option<Name> {
            let src = self.set.volumes.get(v)?.spec.source.as_ref()?;
            if let Some(s) = &src.volume {
                return Some(s.clone());
            }
            if let Some(snap) = &src.snapshot {
                return self.set.snapshots.get(snap)?.spec.volume.clone();
            }
            if let Some(img) = &src.image {
                return self.set.images.get(img)?.spec.source.volume.clone();
            }
            src.member.clone()
        };
        let mut reported = BTreeSet::new();
        let mut findings = Vec::new();
        for start in self.set.volumes.keys() {
            // A volume naming itself as source is reported by volume_source.
            let self_source = self.set.volumes[start]
                .spec
                .source
                .as_ref()
                .and_then(|s| s.volume.as_ref())
                == Some(start);
            if self_source {
                continue;
            }
            let mut seen = vec![start.clone()];
            let mut cur = start.clone();
            while let Some(n) = next(&cur) {
                if n == *start {
                    if seen.iter().all(|s| !reported.contains(s)) {
                        reported.extend(seen.iter().cloned());
                        findings.push((start.clone(), seen.clone()));
                    }
                    break;
                }
                if seen.contains(&n) || seen.len() > self.set.volumes.len() {
                    break;
                }
                seen.push(n.clone());
                cur = n;
            }
        }
        for (start, chain) in findings {
            let doc = &self.set.volumes[&start];
            let path: Vec<String> = chain
                .iter()
                .chain(std::iter::once(&start))
                .map(|n| format!("Volume/{n}"))
                .collect();
            self.error(
                Kind::Volume,
                doc,
                "spec.source",
                format!("sources form a cycle: {}", path.join(" <- ")),
            );
        }
    }

    fn snapshots(&mut self) {
        let k = Kind::Snapshot;
        for doc in self.set.snapshots.values() {
            match (&doc.spec.volume, &doc.spec.consistency_group) {
                (None, None) => self.error_at_key(
                    k,
                    doc,
                    "spec",
                    "a snapshot needs exactly one of `volume` and `consistencyGroup`",
                ),
                (Some(_), Some(_)) => self.error_at_key(
                    k,
                    doc,
                    "spec.consistencyGroup",
                    "a snapshot has exactly one of `volume` and `consistencyGroup`, not both",
                ),
                (Some(v), None) => {
                    self.reference(k, doc, "spec.volume", Kind::Volume, v);
                }
                (None, Some(g)) => {
                    self.reference(k, doc, "spec.consistencyGroup", Kind::ConsistencyGroup, g);
                }
            }
            self.adopted_snapshot(doc);
        }
    }

    /// `cinderblock.dev/adopt` on a snapshot: a plain LV or file name, of a
    /// snapshot of one volume (it lives on that volume's back end).
    fn adopted_snapshot(&mut self, doc: &Doc<SnapshotSpec>) {
        let Some(entry) = doc.meta.annotations.get(super::kinds::ADOPT) else {
            return;
        };
        let path = FieldPath::annotation(super::kinds::ADOPT);
        if let Some(why) = entry_problem(&entry.0) {
            self.push_path(
                Severity::Error,
                Kind::Snapshot,
                doc,
                path.clone(),
                false,
                format!("{} cannot be adopted: {why}", shown(&entry.0)),
            );
        }
        if doc.spec.volume.is_none() {
            self.push_path(
                Severity::Error,
                Kind::Snapshot,
                doc,
                path,
                false,
                "an adopted snapshot names its volume: set spec.volume (a group snapshot is not adopted)".into(),
            );
        }
    }
}

/// A back end's `backendName` (default: its `metadata.name`).
pub fn backend_name(b: &Doc<BackendSpec>) -> String {
    b.spec
        .backend_name
        .clone()
        .unwrap_or_else(|| b.name().as_str().to_owned())
}

/// A back end's availability zone (default `nova`).
pub fn backend_az(b: &BackendSpec) -> &str {
    b.availability_zone.as_deref().unwrap_or("nova")
}

fn join(names: &[Name]) -> String {
    names
        .iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_word(s: &str, what: &str, extra: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    (!ok).then(|| {
        format!(
            "invalid {what} {}: use letters, digits and {extra:?}",
            shown(s)
        )
    })
}

/// RFC 7143, section 12.1.3: a CHAP secret authenticates one direction only.
const SAME_SECRET: &str = "the target's secret is the initiator's one: RFC 7143 (section 12.1.3) forbids using one CHAP secret in both directions; give the target a secret of its own";

/// The warning for an iSCSI name targetcli cannot read.
fn targetcli_warning(name: &str, why: &str) -> String {
    format!(
        "targetcli (rtslib-fb) cannot read {}: {why}; LIO accepts it, but `targetcli ls`, `saveconfig` and `clearconfig` will fail on this host's whole configuration",
        shown(name)
    )
}

/// A portal's address and port (`ADDRESS:PORT`, IPv6 in brackets).
fn parse_portal(p: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = p.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    Some((addr.parse().ok()?, port))
}

fn check_portal(p: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "invalid portal {}: write ADDRESS:PORT, e.g. 0.0.0.0:3260 or [::]:3260",
            shown(p)
        )
    };
    parse_portal(p).map(|_| ()).ok_or_else(bad)
}

/// Checks an extra spec's value against Cinder's operator grammar.
fn check_extra_spec(key: &str, value: &str) -> Result<(), String> {
    let v = value.trim();
    let words: Vec<&str> = v.split_whitespace().collect();
    let numeric = |rest: &[&str], op: &str| -> Result<(), String> {
        match rest {
            [n] if n.parse::<f64>().is_ok() => Ok(()),
            _ => Err(format!(
                "operator {op:?} compares numbers: write e.g. \"{op} 10\""
            )),
        }
    };
    match words.as_slice() {
        [] => Err("an extra spec needs a value".into()),
        [op @ ("=" | "==" | "!=" | ">=" | "<="), rest @ ..] => numeric(rest, op),
        [
            op @ ("s==" | "s!=" | "s<" | "s<=" | "s>" | "s>="),
            rest @ ..,
        ] => {
            if rest.is_empty() {
                Err(format!("operator {op:?} needs a text to compare with"))
            } else {
                Ok(())
            }
        }
        ["<in>" | "<all-in>", rest @ ..] => {
            if rest.is_empty() {
                Err("operator \"<in>\" needs a text to look for".into())
            } else {
                Ok(())
            }
        }
        ["<is>", rest @ ..] => match rest {
            [b] if b.eq_ignore_ascii_case("true") || b.eq_ignore_ascii_case("false") => Ok(()),
            _ => Err("operator \"<is>\" takes True or False".into()),
        },
        ["<or>", rest @ ..] => {
            // Cinder's form: "<or> A <or> B [<or> C ...]".
            let ok = rest.len() % 2 == 1
                && rest
                    .iter()
                    .enumerate()
                    .all(|(i, w)| (i % 2 == 1) == (*w == "<or>"));
            if ok {
                Ok(())
            } else {
                Err("write alternatives as \"<or> A <or> B\"".into())
            }
        }
        [first, ..] if first.starts_with('<') && first.ends_with('>') => Err(format!(
            "unknown operator {first:?}; Cinder's operators are = == != >= <= s== s!= s< s<= s> s>= <in> <all-in> <is> <or>"
        )),
        _ if key == "thin_provisioning" || key == "capabilities:thin_provisioning_support" => {
            if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
                Ok(())
            } else {
                Err(format!("{key} is \"true\" or \"false\" (or \"<is> True\")"))
            }
        }
        _ if v.contains("<or>") => Err(format!(
            "write alternatives as \"<or> A <or> B\" (Cinder's form), not {}",
            shown(v)
        )),
        _ => Ok(()),
    }
}

/// Path of a file back end, for callers that compare back ends.
pub fn file_path(b: &BackendSpec) -> Option<&StorePath> {
    b.file.as_ref().map(|f| &f.path)
}

/// S3's bucket naming rules (3-63 characters: lowercase letters, digits,
/// dots and hyphens, starting and ending with a letter or digit).
fn check_bucket(b: &str) -> Option<String> {
    let ok = (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..");
    (!ok).then(|| {
        format!(
            "invalid bucket name {}: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit",
            shown(b)
        )
    })
}

/// `http(s)://host[:port]` with nothing after it but an optional `/`.
fn check_endpoint(e: &str) -> Option<String> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!(
            "invalid endpoint {}: write the store's URL, e.g. https://s3.example.com or http://127.0.0.1:9000",
            shown(e)
        ));
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
    (!ok).then(|| {
        format!(
            "invalid endpoint {}: only scheme, host and port (the bucket goes in `bucket`, the path in `prefix`)",
            shown(e)
        )
    })
}

/// A key prefix: `a/b`, no empty, `.` or `..` segments, no leading or
/// trailing `/`, printable.
fn check_prefix(p: &str) -> Option<String> {
    let ok = !p.is_empty()
        && p.len() <= 512
        && !p.chars().any(char::is_control)
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    (!ok).then(|| {
        format!(
            "invalid prefix {}: key segments separated by single '/', no '.' or '..', no leading or trailing '/'",
            shown(p)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_spec_grammar() {
        assert!(check_extra_spec("capabilities:disk", ">= 10").is_ok());
        assert!(check_extra_spec("x", ">= ten").is_err());
        assert!(check_extra_spec("x", "<is> True").is_ok());
        assert!(check_extra_spec("x", "<is> maybe").is_err());
        assert!(check_extra_spec("x", "<or> ssd <or> nvme").is_ok());
        assert!(check_extra_spec("x", "ssd <or> nvme").is_err());
        assert!(check_extra_spec("x", "<or> ssd nvme").is_err());
        assert!(check_extra_spec("x", "<foo> 1").is_err());
        assert!(check_extra_spec("thin_provisioning", "yes").is_err());
    }

    #[test]
    fn a_wildcard_portal_and_an_address_on_its_port_are_a_warning() {
        let vol = |name: &str, portal: Option<&str>| {
            let portals = portal.map_or(String::new(), |p| format!("      portals: [\"{p}\"]\n"));
            format!(
                "apiVersion: cinderblock.dev/v1alpha1\nkind: Volume\nmetadata: {{name: {name}}}\nspec:\n  size: 1Gi\n  export:\n    iscsi:\n      initiators: [iqn.1994-05.com.example:a]\n{portals}---\n"
            )
        };
        let findings = |data: Option<&str>, wal: Option<&str>| {
            let yaml = vol("data", data) + &vol("wal", wal);
            crate::manifest::load::load_bytes(std::path::Path::new("t.yaml"), yaml.into_bytes())
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        // the default portal (0.0.0.0:3260) beside 10.0.0.10:3260: one warning
        let f = findings(Some("10.0.0.10:3260"), None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("Volume/wal: spec.export.iscsi: portal 0.0.0.0:3260 (the default) and Volume/data's 10.0.0.10:3260 cannot both listen on one host"),
            "{f:?}"
        );
        // [::] takes IPv4 addresses too
        let f = findings(Some("10.0.0.10:3260"), Some("[::]:3260"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("spec.export.iscsi.portals[0]: portal [::]:3260 and Volume/data's"),
            "{f:?}"
        );
        // the same portals, another port, IPv6 beside 0.0.0.0, all defaults: nothing
        for (data, wal) in [
            (Some("10.0.0.10:3260"), Some("10.0.0.10:3260")),
            (Some("10.0.0.10:3261"), None),
            (Some("[fd00::10]:3260"), None),
            (None, None),
        ] {
            let f = findings(data, wal);
            assert!(f.is_empty(), "{data:?} {wal:?}: {f:?}");
        }
    }

    #[test]
    fn portals() {
        assert!(check_portal("0.0.0.0:3260").is_ok());
        assert!(check_portal("[::]:3260").is_ok());
        assert!(check_portal("host:3260").is_err());
        assert!(check_portal("1.2.3.4").is_err());
    }
}
