//! Driver tests against a fake lvm2: a small model of one VG that answers the
//! commands the driver sends (`lvs`, `lvcreate`, `lvextend`, `lvchange`,
//! `lvremove`) the way lvm2 2.03 does, with device nodes as files in a temp
//! dir. The real lvm2 is exercised in the VM lab (`tests/lab/lvm_backend.rs`).

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

use super::cmd::Runner;
use super::driver::{Change, LvmBackend, LvmError, NewLv, Source, Wipe};
use crate::exec::{Cmd, ExecError, Output, Termination};
use crate::model::{Mark, ObjKind};

const MIB: u64 = 1 << 20;
const K64: u64 = 64 << 10;
const VG: &str = "vg0";

#[derive(Debug, Clone)]
struct FakeLv {
    name: String,
    size: u64,
    kind: char,
    pool: Option<String>,
    origin: Option<String>,
    tags: Vec<String>,
    active: bool,
    open: bool,
}

struct Fake {
    dev: PathBuf,
    lvs: Mutex<Vec<FakeLv>>,
    log: Mutex<Vec<String>>,
    /// A command line containing this text fails (once).
    fail: Mutex<Option<String>>,
    /// Thin ids handed out, by LV name, in order of first sight.
    thin_ids: Mutex<Vec<String>>,
    /// Whether the pool's metadata snapshot is held (dmsetup message).
    meta_held: Mutex<bool>,
    /// What `thin_dump`/`thin_delta` print.
    thin_xml: Mutex<Vec<u8>>,
    /// Device-mapper devices made with `dmsetup create`: name → (LV
    /// below, suspended).
    dm: Mutex<std::collections::BTreeMap<String, (String, bool)>>,
    /// After this many more commands every command fails, resumes too: a
    /// killed run (`None`: alive).
    dies_after: Mutex<Option<usize>>,
}

impl Fake {
    fn new(dev: &Path) -> Fake {
        fs::create_dir_all(dev.join(VG)).unwrap();
        fs::create_dir_all(dev.join("mapper")).unwrap();
        Fake {
            dev: dev.to_owned(),
            lvs: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
            thin_ids: Mutex::new(Vec::new()),
            meta_held: Mutex::new(false),
            thin_xml: Mutex::new(Vec::new()),
            dm: Mutex::new(std::collections::BTreeMap::new()),
            dies_after: Mutex::new(None),
        }
    }

    /// `dmsetup` other than pool messages: a model of linear devices over
    /// LVs (the group snapshots' I/O layers), each node a symlink to its LV.
    fn dmsetup(&self, args: &[String]) -> Result<Vec<u8>, String> {
        let mut dm = self.dm.lock().unwrap();
        let name = args.get(1).cloned().unwrap_or_default();
        match args.first().map(String::as_str) {
            Some("info") => {
                let mut out = String::new();
                for (n, (_, susp)) in dm.iter() {
                    let _ = writeln!(out, "{n}:0:{}", if *susp { "Suspended" } else { "Active" });
                }
                for l in self.lvs.lock().unwrap().iter() {
                    let held = dm.values().filter(|(lv, _)| *lv == l.name).count();
                    let open = held + usize::from(l.open);
                    let _ = writeln!(out, "{}:{open}:Active", super::cmd::dm_name(VG, &l.name));
                }
                Ok(out.into_bytes())
            }
            Some("create") => {
                let table = args.get(3).ok_or("no table")?;
                let dev = table.split_whitespace().nth(3).ok_or("bad table")?;
                let lv = Path::new(dev)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if dm.contains_key(&name) {
                    return Err(format!(
                        "device-mapper: create ioctl on {name} failed: Device or resource busy"
                    ));
                }
                std::os::unix::fs::symlink(dev, self.dev.join("mapper").join(&name)).unwrap();
                dm.insert(name, (lv, false));
                Ok(Vec::new())
            }
            Some("mknodes") => Ok(Vec::new()),
            Some("suspend" | "resume") => {
                let d = dm.get_mut(&name).ok_or("no such device")?;
                d.1 = args[0] == "suspend";
                Ok(Vec::new())
            }
            Some("reload") => dm
                .get(&name)
                .map(|_| Vec::new())
                .ok_or_else(|| "no such device".into()),
            Some("remove") => {
                dm.remove(&name).ok_or("no such device")?;
                fs::remove_file(self.dev.join("mapper").join(&name)).unwrap();
                Ok(Vec::new())
            }
            _ => Err(format!("fake: unexpected dmsetup {args:?}")),
        }
    }

    /// Layers left suspended.
    fn suspended(&self) -> Vec<String> {
        self.dm
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, s))| *s)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The thin id of a thin LV: 1, 2, ... in order of first sight.
    fn thin_id(&self, name: &str) -> usize {
        let mut ids = self.thin_ids.lock().unwrap();
        if let Some(i) = ids.iter().position(|n| n == name) {
            return i + 1;
        }
        ids.push(name.to_owned());
        ids.len()
    }

    /// dmsetup and the thin tools, over one pool's metadata snapshot.
    fn thin_tool(&self, tool: &str, args: &[String]) -> Result<Vec<u8>, String> {
        let mut held = self.meta_held.lock().unwrap();
        match (tool, args.last().map(String::as_str)) {
            ("dmsetup", Some("reserve_metadata_snap")) => {
                if *held {
                    return Err("device-mapper: message ioctl on vg0-pool0-tpool failed: Device or resource busy".into());
                }
                *held = true;
            }
            ("dmsetup", Some("release_metadata_snap")) => {
                if !*held {
                    return Err(
                        "device-mapper: message ioctl on vg0-pool0-tpool failed: Invalid argument"
                            .into(),
                    );
                }
                *held = false;
            }
            ("thin_dump" | "thin_delta", _) => {
                if !*held {
                    return Err("no metadata snapshot".into());
                }
                return Ok(self.thin_xml.lock().unwrap().clone());
            }
            _ => return Err(format!("fake: unexpected {tool} {args:?}")),
        }
        Ok(Vec::new())
    }

    fn add(&self, lv: FakeLv) {
        if lv.kind != 't' {
            self.make_dev(
                &lv.name,
                if lv.kind == 's' {
                    self.size_of(lv.origin.as_deref().unwrap())
                } else {
                    lv.size
                },
            );
        }
        self.lvs.lock().unwrap().push(lv);
    }

    fn size_of(&self, name: &str) -> u64 {
        self.lvs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.name == name)
            .unwrap()
            .size
    }

    fn path(&self, lv: &str) -> PathBuf {
        self.dev.join(VG).join(lv)
    }

    fn make_dev(&self, lv: &str, size: u64) {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(lv))
            .unwrap();
        f.set_len(size).unwrap();
    }

    fn get(&self, name: &str) -> Option<FakeLv> {
        self.lvs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.name == name)
            .cloned()
    }

    fn by_uuid(&self, uuid: Uuid) -> Option<FakeLv> {
        let tag = format!("cinderblock.uuid={uuid}");
        self.lvs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.tags.contains(&tag))
            .cloned()
    }

    /// Mutating commands sent so far (lvs excluded).
    fn changes(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.starts_with("lvs "))
            .cloned()
            .collect()
    }

    fn lvs_json(&self) -> Vec<u8> {
        let rows: Vec<serde_json::Value> = self
            .lvs
            .lock().unwrap()
            .iter()
            .map(|l| {
                let attr = format!(
                    "{}wi-{}{}{}--{}",
                    l.kind,
                    if l.active { 'a' } else { '-' },
                    if l.open { 'o' } else { '-' },
                    match l.kind {
                        'V' | 't' => 't',
                        's' | 'o' => 's',
                        _ => '-',
                    },
                    '-'
                );
                serde_json::json!({
                    "lv_name": l.name, "vg_name": VG, "lv_uuid": format!("uuid-{}", l.name),
                    "lv_size": l.size.to_string(), "lv_attr": attr,
                    "origin": l.origin.clone().unwrap_or_default(),
                    "pool_lv": l.pool.clone().unwrap_or_default(),
                    "data_percent": if l.kind == 'V' || l.kind == 't' { "0.00" } else { "" },
                    "metadata_percent": if l.kind == 't' { "1.00" } else { "" },
                    "thin_id": if l.kind == 'V' { self.thin_id(&l.name).to_string() } else { String::new() },
                    "lv_tags": l.tags.join(","),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"report": [{"lv": rows}]})).unwrap()
    }

    fn apply(&self, tool: &str, args: &[String]) -> Result<(), String> {
        let mut it = args.iter();
        let (mut size, mut vsize, mut thinpool, mut name, mut snap, mut pooltype) =
            (None, None, None, None, false, false);
        let (mut add, mut del, mut target) = (Vec::new(), Vec::new(), None);
        let bytes = |s: &String| s.trim_end_matches('b').parse::<u64>().unwrap();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-L" => size = Some(bytes(it.next().unwrap())),
                "-V" => vsize = Some(bytes(it.next().unwrap())),
                "--thinpool" => thinpool = it.next().cloned(),
                "-n" => name = it.next().cloned(),
                "-s" => snap = true,
                "--type" => pooltype = it.next().unwrap() == "thin-pool",
                "--poolmetadatasize" => {
                    it.next();
                }
                "--addtag" => add.push(it.next().unwrap().clone()),
                "--deltag" => del.push(it.next().unwrap().clone()),
                "--" => target = it.next().cloned(),
                _ => {}
            }
        }
        let lv_of = |t: &Option<String>| {
            t.as_ref()
                .and_then(|t| t.split_once('/'))
                .map(|(_, l)| l.to_owned())
        };
        match tool {
            "lvcreate" => {
                let name = name.unwrap();
                if self.get(&name).is_some() {
                    return Err(format!(
                        "Logical Volume \"{name}\" already exists in volume group \"{VG}\""
                    ));
                }
                let lv = if pooltype {
                    FakeLv {
                        name,
                        size: size.unwrap(),
                        kind: 't',
                        pool: None,
                        origin: None,
                        tags: add,
                        active: true,
                        open: false,
                    }
                } else if snap {
                    let origin = self.get(&lv_of(&target).unwrap()).ok_or("no origin")?;
                    if origin.kind == 'V' {
                        let lv = FakeLv {
                            name,
                            size: origin.size,
                            kind: 'V',
                            pool: origin.pool.clone(),
                            origin: Some(origin.name.clone()),
                            tags: add,
                            active: true,
                            open: false,
                        };
                        fs::copy(self.path(&origin.name), self.path(&lv.name)).unwrap();
                        lv
                    } else {
                        // thick: the snapshot device reads as the origin did
                        let lv = FakeLv {
                            name,
                            size: size.unwrap(),
                            kind: 's',
                            pool: None,
                            origin: Some(origin.name.clone()),
                            tags: add,
                            active: true,
                            open: false,
                        };
                        fs::copy(self.path(&origin.name), self.path(&lv.name)).unwrap();
                        let cow = self
                            .dev
                            .join("mapper")
                            .join(format!("{VG}-{}-cow", lv.name.replace('-', "--")));
                        fs::write(&cow, vec![0xc0; usize::try_from(lv.size).unwrap()]).unwrap();
                        for l in self.lvs.lock().unwrap().iter_mut() {
                            if l.name == origin.name {
                                l.kind = 'o';
                            }
                        }
                        lv
                    }
                } else if let Some(v) = vsize {
                    let pool = lv_of(&thinpool).unwrap();
                    self.make_dev(&name, v);
                    FakeLv {
                        name,
                        size: v,
                        kind: 'V',
                        pool: Some(pool),
                        origin: None,
                        tags: add,
                        active: true,
                        open: false,
                    }
                } else {
                    let s = size.unwrap();
                    self.make_dev(&name, s);
                    // stale bytes of an earlier LV on these extents
                    let f = OpenOptions::new()
                        .write(true)
                        .open(self.path(&name))
                        .unwrap();
                    f.write_all_at(&vec![0xee; usize::try_from(s).unwrap()], 0)
                        .unwrap();
                    FakeLv {
                        name,
                        size: s,
                        kind: '-',
                        pool: None,
                        origin: None,
                        tags: add,
                        active: true,
                        open: false,
                    }
                };
                self.lvs.lock().unwrap().push(lv);
            }
            "lvextend" => {
                let lv = lv_of(&target).unwrap();
                let mut lvs = self.lvs.lock().unwrap();
                if lvs
                    .iter()
                    .any(|l| l.kind == 's' && l.origin.as_deref() == Some(&lv))
                {
                    return Err("Snapshot origin volumes can be resized only while inactive: try lvchange -an.".into());
                }
                let l = lvs.iter_mut().find(|l| l.name == lv).ok_or("no such LV")?;
                l.size = size.unwrap();
                let f = OpenOptions::new()
                    .write(true)
                    .open(self.dev.join(VG).join(&lv))
                    .unwrap();
                f.set_len(l.size).unwrap();
            }
            "lvchange" => {
                let lv = lv_of(&target).unwrap();
                let mut lvs = self.lvs.lock().unwrap();
                let l = lvs.iter_mut().find(|l| l.name == lv).ok_or("no such LV")?;
                if args.iter().any(|a| a == "-ay") {
                    l.active = true;
                }
                l.tags.retain(|t| !del.contains(t));
                l.tags.extend(add);
                l.tags.sort();
            }
            "lvremove" => {
                let lv = lv_of(&target).unwrap();
                let mut lvs = self.lvs.lock().unwrap();
                // like lvm2: removing a thick origin removes its snapshots
                lvs.retain(|l| {
                    l.name != lv && !(l.kind == 's' && l.origin.as_deref() == Some(&lv))
                });
                let p = self.dev.join(VG).join(&lv);
                if p.exists() {
                    fs::rename(&p, self.dev.join(format!("removed-{lv}"))).unwrap();
                }
            }
            other => return Err(format!("fake lvm: unexpected tool {other}")),
        }
        Ok(())
    }
}

impl Runner for Fake {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let args: Vec<String> = cmd
            .arguments()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = format!("{} {}", cmd.tool(), args.join(" "));
        self.log.lock().unwrap().push(line.clone());
        let fail = |stderr: String| ExecError::Failed {
            argv: args.clone(),
            command: line.clone(),
            termination: Termination::Exit(5),
            stderr,
            stdout: Vec::new(),
        };
        {
            let mut dies = self.dies_after.lock().unwrap();
            if let Some(n) = dies.as_mut() {
                if *n == 0 {
                    return Err(fail("killed".into()));
                }
                *n -= 1;
            }
        }
        let armed = self.fail.lock().unwrap().clone();
        if let Some(f) = armed
            && line.contains(&f)
        {
            *self.fail.lock().unwrap() = None;
            return Err(fail("injected failure".into()));
        }
        let stdout = if cmd.tool() == "lvs" {
            self.lvs_json()
        } else if cmd.tool() == "dmsetup" && args.first().is_some_and(|a| a != "message") {
            self.dmsetup(&args).map_err(fail)?
        } else if matches!(cmd.tool(), "dmsetup" | "thin_dump" | "thin_delta") {
            self.thin_tool(cmd.tool(), &args).map_err(fail)?
        } else {
            self.apply(cmd.tool(), &args).map_err(fail)?;
            Vec::new()
        };
        Ok(Output {
            argv: args,
            termination: Termination::Exit(0),
            stdout,
            stderr: Vec::new(),
            elapsed: std::time::Duration::ZERO,
        })
    }
}

fn u(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn backend<'a>(fake: &'a Fake, pool: Option<&str>, wipe: Wipe) -> LvmBackend<'a> {
    LvmBackend::new(fake, "lvm-a", VG, pool.map(str::to_owned), wipe).with_dev_root(&fake.dev)
}

fn vol(uuid: Uuid, name: &str, size: u64) -> NewLv<'_> {
    NewLv {
        uuid,
        name,
        kind: ObjKind::Volume,
        size,
        source: None,
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

fn thin_fake(dir: &Path) -> Fake {
    let f = Fake::new(dir);
    f.add(FakeLv {
        name: "pool0".into(),
        size: 64 * MIB,
        kind: 't',
        pool: None,
        origin: None,
        tags: vec![],
        active: true,
        open: false,
    });
    f
}

#[test]
fn thin_create_is_one_tagged_lvcreate_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    assert_eq!(
        b.create(&vol(u(1), "db", 8 * MIB)).unwrap(),
        Change::Changed
    );
    assert_eq!(
        fake.changes(),
        ["lvcreate -y -V 8388608b --thinpool vg0/pool0 -n volume-00000000-0000-0000-0000-000000000001 \
          --addtag cinderblock.uuid=00000000-0000-0000-0000-000000000001 --addtag cinderblock.name=db \
          --addtag cinderblock.kind=volume --addtag cinderblock.backend=lvm-a --"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")]
    );
    assert_eq!(
        b.create(&vol(u(1), "db", 8 * MIB)).unwrap(),
        Change::Unchanged
    );
    assert_eq!(fake.changes().len(), 1, "nothing more was run");
}

#[test]
fn thin_snapshot_and_clone_are_o1_and_tagged_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    b.create(&vol(u(1), "db", 8 * MIB)).unwrap();
    assert_eq!(
        b.snapshot(u(1), u(2), "db-snap", 0).unwrap(),
        Change::Changed
    );
    let snap = fake.by_uuid(u(2)).unwrap();
    assert_eq!(snap.name, "_snapshot-00000000-0000-0000-0000-000000000002");
    assert!(
        snap.tags
            .contains(&"cinderblock.parent=00000000-0000-0000-0000-000000000001".to_owned())
    );
    assert!(
        fake.changes()[1].starts_with("lvcreate -y -s -kn -n _snapshot-"),
        "{:?}",
        fake.changes()
    );
    assert_eq!(
        b.snapshot(u(1), u(2), "db-snap", 0).unwrap(),
        Change::Unchanged
    );
    // a clone larger than its source: thin snapshot, then lvextend
    let clone = NewLv {
        source: Some(Source {
            kind: ObjKind::Snapshot,
            uuid: u(2),
        }),
        ..vol(u(3), "copy", 16 * MIB)
    };
    assert_eq!(b.create(&clone).unwrap(), Change::Changed);
    let c = fake.changes();
    assert!(
        c[2].starts_with("lvcreate -y -s -kn -n volume-00000000-0000-0000-0000-000000000003"),
        "{c:?}"
    );
    assert!(c[2].ends_with("-- vg0/_snapshot-00000000-0000-0000-0000-000000000002"));
    assert_eq!(
        c[3],
        "lvextend -L 16777216b -- vg0/volume-00000000-0000-0000-0000-000000000003"
    );
    assert_eq!(fake.by_uuid(u(3)).unwrap().size, 16 * MIB);
    // smaller than the source: refused before anything is created
    let small = NewLv {
        uuid: u(4),
        size: 4 * MIB,
        ..clone
    };
    let e = b.create(&small).unwrap_err();
    assert!(e.to_string().contains("less than its source"), "{e}");
    assert!(fake.by_uuid(u(4)).is_none());
}

#[test]
fn thick_extend_shrink_and_thick_snapshot_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    assert!(fake.changes()[0].starts_with("lvcreate -y -L 4194304b -n volume-"));
    assert_eq!(b.extend(u(1), 8 * MIB).unwrap(), Change::Changed);
    assert_eq!(b.extend(u(1), 8 * MIB).unwrap(), Change::Unchanged);
    let e = b.extend(u(1), 4 * MIB).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("refusing to shrink from 8388608 to 4194304 bytes"),
        "{e}"
    );
    b.snapshot(u(1), u(2), "snap", 2 * MIB).unwrap();
    assert!(
        fake.changes()
            .last()
            .unwrap()
            .starts_with("lvcreate -y -s -L 2097152b -n _snapshot-")
    );
    let e = b.extend(u(1), 12 * MIB).unwrap_err();
    assert!(
        e.to_string()
            .contains("is the origin of thick snapshot(s) _snapshot-"),
        "{e}"
    );
    let e = b.delete(u(1)).unwrap_err();
    assert!(
        e.to_string()
            .contains("which lvremove would remove with it"),
        "{e}"
    );
    assert!(
        fake.get(&fake.by_uuid(u(2)).unwrap().name).is_some(),
        "the snapshot is still there"
    );
}

#[test]
fn delete_marks_zeroes_and_removes_thick_lvs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    b.snapshot(u(1), u(2), "snap", 2 * MIB).unwrap();
    let snap = fake.by_uuid(u(2)).unwrap().name;
    // snapshot first: its exception store is zeroed, not the snapshot device
    assert_eq!(b.delete(u(2)).unwrap(), Change::Changed);
    let cow = b.cow_device(&snap);
    assert_eq!(
        cow,
        dir.path()
            .join("mapper/vg0-_snapshot--00000000--0000--0000--0000--000000000002-cow")
    );
    assert!(read(&cow).iter().all(|x| *x == 0), "COW store zeroed");
    let vol_name = fake.by_uuid(u(1)).unwrap().name;
    assert_eq!(b.delete(u(1)).unwrap(), Change::Changed);
    assert!(
        read(&dir.path().join(format!("removed-{vol_name}")))
            .iter()
            .all(|x| *x == 0),
        "zeroed before lvremove"
    );
    let c = fake.changes();
    let n = c.len();
    assert!(
        c[n - 2].starts_with("lvchange --addtag cinderblock.state=deleting -- vg0/volume-"),
        "{c:?}"
    );
    assert!(c[n - 1].starts_with("lvremove -y -- vg0/volume-"));
    assert_eq!(b.delete(u(1)).unwrap(), Change::Unchanged, "gone is done");
}

#[test]
fn volume_clear_none_and_thin_lvs_are_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::None);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    let name = fake.by_uuid(u(1)).unwrap().name;
    b.delete(u(1)).unwrap();
    assert!(
        read(&dir.path().join(format!("removed-{name}")))
            .iter()
            .all(|x| *x == 0xee),
        "left as it was"
    );
}

#[test]
fn an_interrupted_delete_is_finished_and_open_lvs_stay() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    *fake.fail.lock().unwrap() = Some("lvremove".into());
    assert!(b.delete(u(1)).is_err(), "crash stand-in after the mark");
    assert!(
        fake.by_uuid(u(1))
            .unwrap()
            .tags
            .contains(&"cinderblock.state=deleting".to_owned())
    );
    assert_eq!(b.delete(u(1)).unwrap(), Change::Changed);
    assert!(fake.by_uuid(u(1)).is_none());
    b.create(&vol(u(2), "busy", 4 * MIB)).unwrap();
    let name = fake.by_uuid(u(2)).unwrap().name;
    fake.lvs
        .lock()
        .unwrap()
        .iter_mut()
        .find(|l| l.name == name)
        .unwrap()
        .open = true;
    let e = b.delete(u(2)).unwrap_err();
    assert!(
        e.to_string().ends_with("is open (in use); not removing it"),
        "{e}"
    );
    assert!(fake.by_uuid(u(2)).is_some());
}

#[test]
fn thick_clone_copies_zeroes_stale_bytes_and_resumes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    let src = fake.path(&fake.by_uuid(u(1)).unwrap().name);
    let f = OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[7u8; 4096], MIB).unwrap();
    f.write_all_at(&vec![0u8; usize::try_from(MIB).unwrap()], 0)
        .unwrap();
    b.snapshot(u(1), u(2), "snap", 2 * MIB).unwrap();
    let clone = NewLv {
        source: Some(Source {
            kind: ObjKind::Snapshot,
            uuid: u(2),
        }),
        ..vol(u(3), "copy", 6 * MIB)
    };
    // the tag update after the copy fails: the LV stays `creating`
    *fake.fail.lock().unwrap() = Some("--deltag cinderblock.state=creating".into());
    assert!(b.create(&clone).is_err());
    let lv = fake.by_uuid(u(3)).unwrap();
    assert!(lv.tags.contains(&"cinderblock.state=creating".to_owned()));
    // scribble on it, as a torn copy would leave it; the re-run copies again
    let dst = fake.path(&lv.name);
    OpenOptions::new()
        .write(true)
        .open(&dst)
        .unwrap()
        .write_all_at(&[9u8; 100], 0)
        .unwrap();
    assert_eq!(b.create(&clone).unwrap(), Change::Changed);
    let lv = fake.by_uuid(u(3)).unwrap();
    assert!(
        !lv.tags.iter().any(|t| t.starts_with("cinderblock.state")),
        "{:?}",
        lv.tags
    );
    let mut want = read(&fake.path(&fake.by_uuid(u(2)).unwrap().name));
    want.resize(usize::try_from(6 * MIB).unwrap(), 0);
    assert!(
        read(&dst) == want,
        "snapshot data, then zeros over the stale 0xee"
    );
    assert_eq!(b.create(&clone).unwrap(), Change::Unchanged);
}

#[test]
fn thick_clone_of_an_open_volume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    let name = fake.by_uuid(u(1)).unwrap().name;
    fake.lvs
        .lock()
        .unwrap()
        .iter_mut()
        .find(|l| l.name == name)
        .unwrap()
        .open = true;
    let clone = NewLv {
        source: Some(Source {
            kind: ObjKind::Volume,
            uuid: u(1),
        }),
        ..vol(u(3), "copy", 4 * MIB)
    };
    let e = b.create(&clone).unwrap_err();
    assert!(
        e.to_string().contains("snapshot it and clone the snapshot"),
        "{e}"
    );
}

#[test]
fn foreign_lvs_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    // an untagged LV that has the very name we would give uuid 1, and another
    // back end's LV with a uuid of ours
    fake.add(FakeLv {
        name: "volume-00000000-0000-0000-0000-000000000001".into(),
        size: 4 * MIB,
        kind: '-',
        pool: None,
        origin: None,
        tags: vec![],
        active: true,
        open: false,
    });
    fake.add(FakeLv {
        name: "theirs".into(),
        size: 4 * MIB,
        kind: '-',
        pool: None,
        origin: None,
        active: true,
        open: false,
        tags: vec![
            "cinderblock.uuid=00000000-0000-0000-0000-000000000002".into(),
            "cinderblock.kind=volume".into(),
            "cinderblock.name=x".into(),
            "cinderblock.backend=lvm-b".into(),
        ],
    });
    let b = backend(&fake, None, Wipe::Zero);
    let e = b.create(&vol(u(1), "db", 4 * MIB)).unwrap_err();
    assert!(matches!(e, LvmError::Foreign { .. }), "{e}");
    assert_eq!(b.delete(u(1)).unwrap(), Change::Unchanged);
    assert_eq!(
        b.delete(u(2)).unwrap(),
        Change::Unchanged,
        "another back end's"
    );
    assert_eq!(b.release(u(2)).unwrap(), Change::Unchanged);
    assert!(matches!(
        b.extend(u(2), 8 * MIB),
        Err(LvmError::NotFound { .. })
    ));
    assert!(fake.changes().is_empty(), "{:?}", fake.changes());
}

#[test]
fn release_swaps_the_owner_mark_and_the_lv_becomes_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    assert_eq!(b.release(u(1)).unwrap(), Change::Changed);
    let lv = fake.by_uuid(u(1)).unwrap();
    assert!(lv.tags.contains(&"cinderblock.released=lvm-a".to_owned()));
    assert!(!lv.tags.contains(&"cinderblock.backend=lvm-a".to_owned()));
    assert_eq!(b.release(u(1)).unwrap(), Change::Unchanged);
    assert_eq!(
        b.delete(u(1)).unwrap(),
        Change::Unchanged,
        "released data is never deleted"
    );
    assert!(fake.get(&lv.name).is_some());
}

#[test]
fn a_declared_pool_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    assert_eq!(b.create_pool(64 * MIB, 4 * MIB).unwrap(), Change::Changed);
    assert_eq!(
        fake.changes(),
        [
            "lvcreate -y --type thin-pool -L 67108864b --poolmetadatasize 4194304b -n pool0 --addtag cinderblock.pool=lvm-a -- vg0"
        ]
    );
    assert_eq!(b.create_pool(64 * MIB, 4 * MIB).unwrap(), Change::Unchanged);
}

/// A thin LV `vol` (thin id 1) and its snapshot `snap` (thin id 2) in pool0.
fn thin_pair(fake: &Fake, b: &LvmBackend<'_>) -> (String, String) {
    b.create(&vol(u(1), "db", 8 * MIB)).unwrap();
    b.snapshot(u(1), u(2), "s", 0).unwrap();
    let v = fake.by_uuid(u(1)).unwrap().name;
    let s = fake.by_uuid(u(2)).unwrap().name;
    // first sight in the order the test's XML expects
    assert_eq!(fake.thin_id(&v), 1);
    assert_eq!(fake.thin_id(&s), 2);
    (v, s)
}

const DUMP: &str = r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="0">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="40" time="1"/>
    <range_mapping origin_begin="16" data_begin="20" length="2" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="1" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="7" data_block="3" time="1"/>
  </device>
</superblock>
"#;

#[test]
fn thin_mapped_ranges_reads_a_held_metadata_snapshot_and_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    let (v, s) = thin_pair(&fake, &b);
    *fake.thin_xml.lock().unwrap() = DUMP.as_bytes().to_vec();
    let before = fake.log.lock().unwrap().len();
    assert_eq!(
        b.thin_mapped_ranges(&v).unwrap(),
        vec![0..3 * K64, 16 * K64..18 * K64],
        "blocks 0-2 merged, 16-17"
    );
    assert_eq!(b.thin_mapped_ranges(&s).unwrap(), vec![7 * K64..8 * K64]);
    let log: Vec<String> = fake.log.lock().unwrap()[before..]
        .iter()
        .filter(|l| !l.starts_with("lvs "))
        .cloned()
        .collect();
    assert_eq!(
        log[..3],
        [
            "dmsetup message vg0-pool0-tpool 0 reserve_metadata_snap".to_owned(),
            format!(
                "thin_dump -m {}",
                dir.path().join("mapper/vg0-pool0_tmeta").display()
            ),
            "dmsetup message vg0-pool0-tpool 0 release_metadata_snap".to_owned(),
        ]
    );
    assert!(!*fake.meta_held.lock().unwrap(), "released");
}

#[test]
fn the_metadata_snapshot_is_released_when_the_reader_fails_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    let (v, _) = thin_pair(&fake, &b);
    *fake.thin_xml.lock().unwrap() = b"<superblock".to_vec();
    let err = b.thin_mapped_ranges(&v).unwrap_err();
    assert!(matches!(err, LvmError::ThinXml { .. }), "{err}");
    assert!(!*fake.meta_held.lock().unwrap(), "released after bad XML");

    *fake.fail.lock().unwrap() = Some("thin_dump".into());
    assert!(matches!(
        b.thin_mapped_ranges(&v).unwrap_err(),
        LvmError::Command { .. }
    ));
    assert!(
        !*fake.meta_held.lock().unwrap(),
        "released after a failed thin_dump"
    );

    // a crashed run left one held
    *fake.meta_held.lock().unwrap() = true;
    *fake.thin_xml.lock().unwrap() = DUMP.as_bytes().to_vec();
    assert_eq!(b.thin_mapped_ranges(&v).unwrap().len(), 2);
    assert!(!*fake.meta_held.lock().unwrap());
    let log = fake.log.lock().unwrap();
    let dm: Vec<&str> = log
        .iter()
        .filter(|l| l.starts_with("dmsetup"))
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        dm[dm.len() - 4..],
        [
            "reserve_metadata_snap",
            "release_metadata_snap",
            "reserve_metadata_snap",
            "release_metadata_snap"
        ]
    );
}

#[test]
fn thin_changed_ranges_come_from_thin_delta_between_the_two_thin_ids() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    let (v, s) = thin_pair(&fake, &b);
    *fake.thin_xml.lock().unwrap() = fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/thin/thin_delta.xml"
    ))
    .unwrap();
    // different 0..16, same 16..256 (left out), right_only 1024..1088
    assert_eq!(
        b.thin_changed_ranges(&s, &v).unwrap(),
        vec![0..16 * K64, 1024 * K64..1088 * K64]
    );
    assert!(
        fake.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("thin_delta -m --snap1 2 --snap2 1 ")),
        "base first"
    );
    assert!(!*fake.meta_held.lock().unwrap());
    // thick LVs and unknown names are refused before any dmsetup
    let before = fake.log.lock().unwrap().len();
    assert!(matches!(
        b.thin_changed_ranges("nope", &v).unwrap_err(),
        LvmError::Refused { .. }
    ));
    assert!(matches!(
        b.thin_mapped_ranges("pool0").unwrap_err(),
        LvmError::Refused { .. }
    ));
    assert!(
        fake.log.lock().unwrap()[before..]
            .iter()
            .all(|l| l.starts_with("lvs ")),
        "nothing but lvs ran"
    );
}

#[test]
fn ranges_merge_sorted() {
    use super::thinmap::merge;
    assert_eq!(merge([5..6, 0..2, 2..3, 1..2, 9..9]), vec![0..3, 5..6]);
}

#[test]
fn backup_snapshots_are_tagged_listed_removed_and_not_objects() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    b.create(&vol(u(1), "db", 8 * MIB)).unwrap();
    let snap = b.backup_snapshot(u(1), u(50), 0).unwrap();
    assert_eq!(snap.name, "_backup-00000000-0000-0000-0000-000000000032");
    assert!(
        fake.changes().last().unwrap().starts_with(
            "lvcreate -y -s -kn -n _backup-00000000-0000-0000-0000-000000000032 \
             --addtag cinderblock.backup-of=lvm-a --addtag cinderblock.backup=00000000-0000-0000-0000-000000000032 \
             --addtag cinderblock.parent=00000000-0000-0000-0000-000000000001 -- vg0/volume-"
        ),
        "{:?}",
        fake.changes()
    );
    let listed = b.backup_snapshots(u(1)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].backup, u(50));
    assert!(b.backup_snapshots(u(2)).unwrap().is_empty());
    // discovery neither adopts nor lists it as foreign
    let report = crate::lvm::report::FullReport {
        vgs: vec![crate::lvm::report::Vg {
            name: VG.into(),
            uuid: String::new(),
            size: 1 << 30,
            free: 1 << 29,
            extent_size: 4 * MIB,
            extent_count: 256,
            free_count: 128,
            seqno: 1,
            pv_count: 1,
            lv_count: 3,
            snap_count: 0,
            tags: vec![],
        }],
        pvs: vec![],
        lvs: b.lvs().unwrap(),
    };
    let inv = crate::lvm::inventory::inventory(
        &report,
        &crate::lvm::inventory::Config {
            backend: "lvm-a",
            vg: VG,
            thin_pool: Some("pool0"),
        },
    )
    .unwrap();
    assert_eq!(inv.objects.len(), 1, "only the volume");
    assert_eq!(
        inv.pool.as_ref().map(|p| p.provisioned),
        Some(8 * MIB),
        "the backup base does not count as provisioned"
    );
    assert!(inv.foreign.is_empty(), "{:?}", inv.foreign);
    // an LV without the mark is refused, ours goes
    assert!(matches!(
        b.remove_backup_snapshot("pool0").unwrap_err(),
        LvmError::Refused { .. }
    ));
    b.remove_backup_snapshot(&snap.name).unwrap();
    assert!(b.backup_snapshots(u(1)).unwrap().is_empty());
    b.remove_backup_snapshot(&snap.name).unwrap();
}

#[test]
fn a_thick_backup_snapshot_is_cow_and_its_store_is_zeroed_on_removal() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 8 * MIB)).unwrap();
    let snap = b.backup_snapshot(u(1), u(51), 4 * MIB).unwrap();
    assert!(
        fake.changes()
            .last()
            .unwrap()
            .starts_with("lvcreate -y -s -L 4194304b -n _backup-"),
        "{:?}",
        fake.changes()
    );
    let cow = b.cow_device(&snap.name);
    assert!(read(&cow).iter().any(|&x| x != 0));
    b.remove_backup_snapshot(&snap.name).unwrap();
    assert!(read(&cow).iter().all(|&x| x == 0), "exception store zeroed");
    assert!(b.backup_snapshot_state(&snap.name).unwrap().is_none());
}

/// Marks the LV of `uuid` `creating`, as a fill (restore, copy) that stopped
/// leaves it.
fn mark_creating(fake: &Fake, uuid: Uuid) {
    let name = fake.by_uuid(uuid).unwrap().name;
    fake.lvs
        .lock()
        .unwrap()
        .iter_mut()
        .find(|l| l.name == name)
        .unwrap()
        .tags
        .push("cinderblock.state=creating".into());
}

#[test]
fn an_interrupted_fill_of_a_volume_declared_empty_is_emptied_not_handed_out() {
    // Thick: zeroed in place, then ready.
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = backend(&fake, None, Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    mark_creating(&fake, u(1));
    let dev = fake.path(&fake.by_uuid(u(1)).unwrap().name);
    OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .write_all_at(&[9u8; 4096], MIB)
        .unwrap();
    assert_eq!(
        b.create(&vol(u(1), "db", 4 * MIB)).unwrap(),
        Change::Changed
    );
    assert!(
        read(&dev).iter().all(|&b| b == 0),
        "the partial fill is gone"
    );
    let lv = fake.by_uuid(u(1)).unwrap();
    assert!(
        !lv.tags.iter().any(|t| t.starts_with("cinderblock.state")),
        "{:?}",
        lv.tags
    );
    assert_eq!(
        b.create(&vol(u(1), "db", 4 * MIB)).unwrap(),
        Change::Unchanged
    );

    // Thin: removed and created again with its identity, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    b.create(&vol(u(2), "web", 8 * MIB)).unwrap();
    mark_creating(&fake, u(2));
    let before = fake.changes().len();
    assert_eq!(
        b.create(&vol(u(2), "web", 8 * MIB)).unwrap(),
        Change::Changed
    );
    let ran = fake.changes()[before..].to_vec();
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran[0].starts_with("lvremove"), "{ran:?}");
    assert!(ran[1].starts_with("lvcreate -y -V 8388608b --thinpool vg0/pool0 -n volume-00000000-0000-0000-0000-000000000002"), "{ran:?}");
    let lv = fake.by_uuid(u(2)).unwrap();
    let mut tags = lv.tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        [
            "cinderblock.backend=lvm-a",
            "cinderblock.kind=volume",
            "cinderblock.name=web",
            "cinderblock.uuid=00000000-0000-0000-0000-000000000002"
        ]
    );
}

fn adoption<'a>(
    entry: &'a str,
    uuid: Uuid,
    name: &'a str,
    size: u64,
) -> crate::driver::Adoption<'a> {
    crate::driver::Adoption {
        entry,
        uuid,
        name,
        kind: ObjKind::Volume,
        parent: None,
        size,
    }
}

#[test]
fn adopt_tags_a_foreign_lv_in_one_lvchange_and_takes_a_released_one_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.add(FakeLv {
        name: "volume-0b5e7a52-7e0c-4a8e-9d39-2f6f1f4a6a11".into(),
        size: 8 * MIB,
        kind: '-',
        pool: None,
        origin: None,
        tags: vec![],
        active: true,
        open: true,
    });
    let b = backend(&fake, None, Wipe::Zero);
    let cinder = "volume-0b5e7a52-7e0c-4a8e-9d39-2f6f1f4a6a11";
    // The wrong size is refused: it changed since the plan.
    let e = b.adopt(&adoption(cinder, u(7), "db", 4 * MIB)).unwrap_err();
    assert!(
        matches!(&e, LvmError::Refused { reason, .. } if reason == "it is 8388608 bytes, not the 4194304 bytes planned (it changed since the plan)"),
        "{e:?}"
    );
    assert!(fake.changes().is_empty());
    // In use is no obstacle: it is only marked, in one metadata commit.
    assert_eq!(
        b.adopt(&adoption(cinder, u(7), "db", 8 * MIB)).unwrap(),
        Change::Changed
    );
    assert_eq!(
        fake.changes(),
        [format!(
            "lvchange --addtag cinderblock.uuid=00000000-0000-0000-0000-000000000007 --addtag cinderblock.name=db \
             --addtag cinderblock.kind=volume --addtag cinderblock.backend=lvm-a -- vg0/{cinder}"
        )]
    );
    assert_eq!(
        b.adopt(&adoption(cinder, u(7), "db", 8 * MIB)).unwrap(),
        Change::Unchanged,
        "adopted once"
    );
    let lv = fake.get(cinder).unwrap();
    assert_eq!(lv.name, cinder, "never renamed");
    // Released, then taken back under a new name: the same identity, the
    // released mark and the old name gone in the same lvchange.
    assert_eq!(b.release(u(7)).unwrap(), Change::Changed);
    assert_eq!(
        b.adopt(&adoption(cinder, u(7), "db2", 8 * MIB)).unwrap(),
        Change::Changed
    );
    let tags = fake.get(cinder).unwrap().tags;
    assert!(
        tags.contains(&"cinderblock.backend=lvm-a".to_owned()),
        "{tags:?}"
    );
    assert!(
        tags.contains(&"cinderblock.name=db2".to_owned()),
        "{tags:?}"
    );
    assert!(
        !tags.iter().any(|t| t.starts_with("cinderblock.released")),
        "{tags:?}"
    );
    assert!(
        !tags.contains(&"cinderblock.name=db".to_owned()),
        "{tags:?}"
    );
    // Marked ours under another identity: refused.
    let e = b.adopt(&adoption(cinder, u(8), "x", 8 * MIB)).unwrap_err();
    assert!(
        matches!(&e, LvmError::Refused { reason, .. } if reason == "it is marked as back end lvm-a's (cinderblock.backend=lvm-a)"),
        "{e:?}"
    );
}

#[test]
fn rename_replaces_the_name_tag_in_one_lvchange_and_keeps_the_lv_and_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    b.create(&vol(u(1), "db", 8 * MIB)).unwrap();
    b.snapshot(u(1), u(2), "db-snap", 0).unwrap();
    let lv_name = fake.by_uuid(u(1)).unwrap().name;
    let before = fake.changes().len();
    assert_eq!(b.rename(u(1), "orders").unwrap(), Change::Changed);
    assert_eq!(
        fake.changes()[before..],
        [format!(
            "lvchange --deltag cinderblock.name=db --addtag cinderblock.name=orders -- vg0/{lv_name}"
        )]
    );
    assert_eq!(b.rename(u(1), "orders").unwrap(), Change::Unchanged);
    assert_eq!(fake.changes().len(), before + 1, "renamed once");
    let lv = fake.by_uuid(u(1)).unwrap();
    assert_eq!(lv.name, lv_name, "the LV keeps its name");
    assert!(lv.tags.contains(&"cinderblock.name=orders".to_owned()));
    assert!(!lv.tags.contains(&"cinderblock.name=db".to_owned()));
    let snap = fake.by_uuid(u(2)).unwrap();
    assert!(
        snap.tags.contains(&format!("cinderblock.parent={}", u(1))),
        "{:?}",
        snap.tags
    );
    let e = b.rename(u(9), "x").unwrap_err();
    assert!(
        matches!(&e, LvmError::Refused { reason, .. } if reason == "no LV of this back end carries this identity"),
        "{e:?}"
    );
}

/// Two back ends of `fake`'s VG as drivers: `a` thick, `b` thin in pool0
/// when `thin`, else thick too.
fn same_vg(fake: &Fake, thin: bool) -> (super::LvmDriver<'_>, super::LvmDriver<'_>) {
    let a = LvmBackend::new(fake, "thick-a", VG, None, Wipe::Zero).with_dev_root(&fake.dev);
    let b = LvmBackend::new(
        fake,
        "other-b",
        VG,
        thin.then(|| "pool0".to_owned()),
        Wipe::Zero,
    )
    .with_dev_root(&fake.dev);
    (
        super::LvmDriver::new(a, None),
        super::LvmDriver::new(b, None),
    )
}

/// A thick volume of 8 MiB on `d`, zeroed but for a pattern at 1 MiB and
/// 5 MiB; its content.
fn patterned(fake: &Fake, d: &super::LvmDriver<'_>, uuid: Uuid) -> Vec<u8> {
    d.backend().create(&vol(uuid, "db", 8 * MIB)).unwrap();
    let mut data = vec![0u8; usize::try_from(8 * MIB).unwrap()];
    data[usize::try_from(MIB).unwrap()..usize::try_from(MIB + 4096).unwrap()].fill(0x5a);
    data[usize::try_from(5 * MIB + 7).unwrap()] = 1;
    fs::write(
        fake.path(&super::tags::lv_name(ObjKind::Volume, uuid)),
        &data,
    )
    .unwrap();
    data
}

fn move_of(uuid: Uuid, size: u64) -> crate::migrate::Move<'static> {
    crate::migrate::Move {
        uuid,
        name: "db",
        size,
        bandwidth: None,
        snapshots: &[],
    }
}

/// The LVs carrying identity `uuid`: (name, owner mark).
fn carriers(fake: &Fake, uuid: Uuid) -> Vec<(String, String)> {
    let tag = format!("cinderblock.uuid={uuid}");
    fake.lvs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.tags.contains(&tag))
        .map(|l| {
            let owner = l
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("cinderblock.backend="))
                .unwrap_or("")
                .to_owned();
            (l.name.clone(), owner)
        })
        .collect()
}

#[test]
fn same_vg_thick_to_thick_is_one_hand_over_and_nothing_is_copied() {
    use crate::driver::Driver;
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let (a, b) = same_vg(&fake, false);
    assert!(a.capabilities().relabels_to(&b.capabilities()));
    let data = patterned(&fake, &a, u(1));
    let before = fake.changes().len();
    let r = crate::migrate::run(&move_of(u(1), 8 * MIB), &a, &b, &mut crate::copy::Quiet).unwrap();
    assert!(r.changed && r.copy.is_none() && r.hash.is_none(), "{r:?}");
    let name = super::tags::lv_name(ObjKind::Volume, u(1));
    assert_eq!(
        fake.changes()[before..],
        [format!(
            "lvchange --deltag cinderblock.backend=thick-a --addtag cinderblock.backend=other-b -- vg0/{name}"
        )],
        "one metadata update, no lvcreate, no copy"
    );
    assert_eq!(
        carriers(&fake, u(1)),
        [(name.clone(), "other-b".to_owned())]
    );
    assert_eq!(
        read(&fake.path(&name)),
        data,
        "the data stayed where it was"
    );
    assert!(a.object(u(1)).unwrap().is_none());
    assert_eq!(b.object(u(1)).unwrap().unwrap().mark, Mark::Ready);
    // A re-run finds it done.
    let again =
        crate::migrate::run(&move_of(u(1), 8 * MIB), &a, &b, &mut crate::copy::Quiet).unwrap();
    assert!(!again.changed);
    // A larger size is grown on the way, and a crash between the hand-over
    // and the extend is finished by the re-run.
    patterned(&fake, &a, u(2));
    fake.fail.lock().unwrap().replace("lvextend".into());
    let err =
        crate::migrate::run(&move_of(u(2), 12 * MIB), &a, &b, &mut crate::copy::Quiet).unwrap_err();
    assert!(
        crate::error_chain(&err).contains("injected failure"),
        "{err}"
    );
    assert_eq!(b.object(u(2)).unwrap().unwrap().size, 8 * MIB);
    let r = crate::migrate::run(&move_of(u(2), 12 * MIB), &a, &b, &mut crate::copy::Quiet).unwrap();
    assert!(r.changed);
    assert_eq!(b.object(u(2)).unwrap().unwrap().size, 12 * MIB);
    // Refusals: a thin LV, an open one.
    fake.lvs.lock().unwrap().iter_mut().for_each(|l| {
        if l.name == name {
            l.open = true;
        }
    });
    let err = b.hand_over(u(1), "thick-a").unwrap_err();
    let text = crate::error_chain(&err);
    assert!(text.contains("is open (in use)"), "{text}");
    assert!(!err.is_retryable());
}

#[test]
fn same_vg_thick_to_thin_pool_copies_under_a_second_name_and_back() {
    use crate::driver::Driver;
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let (a, t) = same_vg(&fake, true);
    assert!(!a.capabilities().relabels_to(&t.capabilities()));
    let data = patterned(&fake, &a, u(1));
    let first = super::tags::lv_name(ObjKind::Volume, u(1));
    let second = super::tags::second_lv_name(ObjKind::Volume, u(1));
    let r = crate::migrate::run(&move_of(u(1), 8 * MIB), &a, &t, &mut crate::copy::Quiet).unwrap();
    assert!(r.changed && r.hash.is_some(), "{r:?}");
    assert_eq!(
        carriers(&fake, u(1)),
        [(second.clone(), "other-b".to_owned())],
        "the source is gone; the target took the second name while the source held the first"
    );
    assert_eq!(read(&fake.path(&second)), data);
    let lv = fake.get(&second).unwrap();
    assert_eq!(
        (lv.kind, lv.pool.as_deref()),
        ('V', Some("pool0")),
        "a thin LV in the pool"
    );
    assert!(
        !lv.tags.iter().any(|t| t.starts_with("cinderblock.state=")),
        "{:?}",
        lv.tags
    );
    // Back to thick: the first name is free again.
    let r = crate::migrate::run(&move_of(u(1), 8 * MIB), &t, &a, &mut crate::copy::Quiet).unwrap();
    assert!(r.changed && r.copy.is_some());
    assert_eq!(
        carriers(&fake, u(1)),
        [(first.clone(), "thick-a".to_owned())]
    );
    assert_eq!(read(&fake.path(&first)), data);
    // A thin LV is bound to its pool: never handed over, even when asked.
    t.backend().create(&vol(u(3), "thin", 8 * MIB)).unwrap();
    let err = t.hand_over(u(3), "thick-a").unwrap_err();
    let text = crate::error_chain(&err);
    assert!(text.contains("a thin LV belongs to its pool"), "{text}");
    assert_eq!(carriers(&fake, u(3))[0].1, "other-b");
}

/// Records the holds the executor would journal.
struct Holds(Vec<Uuid>);

impl crate::driver::Holds for Holds {
    fn before_hold(&mut self, _backend: &str, volume: Uuid) -> Result<(), String> {
        self.0.push(volume);
        Ok(())
    }
}

/// Three volumes 11, 12, 13 with a pattern each; the cut's members with
/// snapshots 21, 22, 23.
fn group_of_three(b: &LvmBackend<'_>, fake: &Fake) -> Vec<(Uuid, Uuid, String)> {
    (1..=3u8)
        .map(|i| {
            let v = u(10 + u128::from(i));
            b.create(&vol(v, "m", 4 * MIB)).unwrap();
            let lv = super::tags::lv_name(ObjKind::Volume, v);
            fs::write(fake.path(&lv), vec![i; usize::try_from(4 * MIB).unwrap()]).unwrap();
            (v, u(20 + u128::from(i)), format!("nightly.m{i}"))
        })
        .collect()
}

fn cut_of(
    members: &[(Uuid, Uuid, String)],
    limit_ms: u64,
) -> (Vec<crate::driver::CutMember<'_>>, std::time::Duration) {
    (
        members
            .iter()
            .map(|(v, s, n)| crate::driver::CutMember {
                volume: *v,
                snapshot: *s,
                name: n,
                space: 4 * MIB,
            })
            .collect(),
        std::time::Duration::from_millis(limit_ms),
    )
}

fn snapshots_of(fake: &Fake) -> Vec<String> {
    let mut v: Vec<String> = fake
        .lvs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.tags.iter().any(|t| t == "cinderblock.kind=snapshot"))
        .map(|l| l.name.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn a_group_snapshot_holds_every_member_above_its_lv_around_the_snapshots() {
    for thin in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let fake = if thin {
            thin_fake(dir.path())
        } else {
            Fake::new(dir.path())
        };
        let b = backend(&fake, thin.then_some("pool0"), Wipe::Zero);
        let members = group_of_three(&b, &fake);
        let (list, limit) = cut_of(&members, 30_000);
        let cut = crate::driver::GroupCut {
            group: "db",
            members: &list,
            limit,
        };
        fake.log.lock().unwrap().clear();
        let mut holds = Holds(Vec::new());
        let r = b.group_snapshot(&cut, &mut holds).unwrap();
        assert_eq!(r.change, Change::Changed);
        assert!(r.freeze.is_some_and(|f| f < limit), "{r:?}");
        assert_eq!(
            holds.0,
            members.iter().map(|m| m.0).collect::<Vec<_>>(),
            "each hold journalled first"
        );
        // The order that makes the cut one instant: every member held,
        // then every snapshot, then every release.
        let steps: Vec<String> = fake
            .changes()
            .into_iter()
            .filter(|l| {
                l.starts_with("dmsetup suspend")
                    || l.starts_with("dmsetup resume")
                    || l.starts_with("lvcreate")
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            steps,
            [
                "dmsetup suspend",
                "dmsetup suspend",
                "dmsetup suspend",
                "lvcreate -y",
                "lvcreate -y",
                "lvcreate -y",
                "dmsetup resume",
                "dmsetup resume",
                "dmsetup resume",
            ],
            "thin={thin}: {:?}",
            fake.changes()
        );
        assert!(fake.suspended().is_empty());
        // Each snapshot holds its own member's data and carries the group.
        for (i, (v, s, n)) in members.iter().enumerate() {
            let lv = fake.by_uuid(*s).unwrap();
            assert!(
                lv.tags.contains(&"cinderblock.group=db".to_owned()),
                "{:?}",
                lv.tags
            );
            assert!(
                lv.tags.contains(&format!("cinderblock.name={n}")),
                "{:?}",
                lv.tags
            );
            assert!(
                lv.tags.contains(&format!("cinderblock.parent={v}")),
                "{:?}",
                lv.tags
            );
            assert_eq!(read(&fake.path(&lv.name))[0], u8::try_from(i + 1).unwrap());
        }
        // The members' data path is their layer now.
        for (v, _, _) in &members {
            let layer = b.layer_path(*v);
            assert!(layer.exists());
            let lvs = b.lvs().unwrap();
            let (lv, _) = b.find(&lvs, *v).unwrap().unwrap();
            assert_eq!(b.data_path_of(lv, *v), layer);
        }
        // Again: the complete set is found, nothing is held.
        fake.log.lock().unwrap().clear();
        let r = b.group_snapshot(&cut, &mut holds).unwrap();
        assert_eq!((r.change, r.freeze), (Change::Unchanged, None));
        assert!(
            !fake
                .changes()
                .iter()
                .any(|l| l.starts_with("dmsetup suspend")),
            "{:?}",
            fake.changes()
        );
        // A member's delete takes its layer first.
        let snap = members[0].1;
        assert_eq!(b.delete(snap).unwrap(), Change::Changed);
        assert_eq!(b.delete(members[0].0).unwrap(), Change::Changed);
        assert!(!b.layer_path(members[0].0).exists());
    }
}

/// A thin back end with three members and the cut of them (limit 30 s):
/// `f` runs on the fake, the back end, the members and the cut.
fn with_cut(
    before: impl FnOnce(&Fake, &[(Uuid, Uuid, String)]),
    f: impl FnOnce(&Fake, &LvmBackend<'_>, &[(Uuid, Uuid, String)], &crate::driver::GroupCut<'_>),
) {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    let members = group_of_three(&b, &fake);
    before(&fake, &members);
    let (list, limit) = cut_of(&members, 30_000);
    let cut = crate::driver::GroupCut {
        group: "db",
        members: &list,
        limit,
    };
    f(&fake, &b, &members, &cut);
}

#[test]
fn a_failed_or_late_group_snapshot_releases_every_hold_and_keeps_no_snapshot() {
    with_cut(
        |_, _| {},
        |fake, b, members, cut| {
            // The second member's lvcreate fails inside the freeze.
            *fake.fail.lock().unwrap() = Some(format!("-n _snapshot-{}", members[1].1));
            let err = b.group_snapshot(cut, &mut Holds(Vec::new())).unwrap_err();
            let text = crate::error_chain(&err);
            assert!(text.contains("injected failure"), "{text}");
            assert!(fake.suspended().is_empty(), "{:?}", fake.suspended());
            assert!(
                snapshots_of(fake).is_empty(),
                "the first member's snapshot is removed: {:?}",
                snapshots_of(fake)
            );
            // Past the freeze limit: nothing is held any more, nothing kept.
            let late = crate::driver::GroupCut {
                limit: std::time::Duration::ZERO,
                ..*cut
            };
            let err = b.group_snapshot(&late, &mut Holds(Vec::new())).unwrap_err();
            let text = crate::error_chain(&err);
            assert!(text.contains("freeze limit passed"), "{text}");
            assert!(fake.suspended().is_empty());
            assert!(snapshots_of(fake).is_empty());
            // And then it works.
            b.group_snapshot(cut, &mut Holds(Vec::new())).unwrap();
            assert_eq!(snapshots_of(fake).len(), 3);
        },
    );
}

#[test]
fn a_group_snapshot_killed_at_any_command_is_finished_by_the_next_run_all_or_nothing() {
    // How many commands one whole cut sends.
    let mut total = 0;
    with_cut(
        |_, _| {},
        |fake, b, _, cut| {
            fake.log.lock().unwrap().clear();
            b.group_snapshot(cut, &mut Holds(Vec::new())).unwrap();
            total = fake.log.lock().unwrap().len();
        },
    );
    assert!(total > 12, "{total}");
    for n in 0..total {
        with_cut(
            |_, _| {},
            |fake, b, members, cut| {
                *fake.dies_after.lock().unwrap() = Some(n);
                assert!(
                    b.group_snapshot(cut, &mut Holds(Vec::new())).is_err(),
                    "killed after {n} commands"
                );
                *fake.dies_after.lock().unwrap() = None;
                // The next run: its executor thaws first (the journal shows a
                // hold), then plans the cut again.
                b.thaw().unwrap();
                assert!(
                    fake.suspended().is_empty(),
                    "after {n}: {:?}",
                    fake.suspended()
                );
                let made = snapshots_of(fake).len();
                assert!(made <= 3, "after {n}: {made}");
                b.group_snapshot(cut, &mut Holds(Vec::new())).unwrap();
                assert!(fake.suspended().is_empty(), "after {n}");
                let snaps = snapshots_of(fake);
                assert_eq!(snaps.len(), 3, "after {n}: {snaps:?}");
                for (_, s, _) in members {
                    assert!(fake.by_uuid(*s).is_some(), "after {n}: {s} missing");
                }
            },
        );
    }
}

#[test]
fn a_member_open_without_its_layer_is_refused_with_the_way_out() {
    let open = |fake: &Fake, members: &[(Uuid, Uuid, String)]| {
        let lv = super::tags::lv_name(ObjKind::Volume, members[2].0);
        for l in fake.lvs.lock().unwrap().iter_mut() {
            if l.name == lv {
                l.open = true;
            }
        }
    };
    with_cut(open, |fake, b, _, cut| {
        let err = b.group_snapshot(cut, &mut Holds(Vec::new())).unwrap_err();
        let text = crate::error_chain(&err);
        assert!(
            text.contains("is in use without an I/O layer") && text.contains("unexport it"),
            "{text}"
        );
        assert!(fake.suspended().is_empty());
        assert!(snapshots_of(fake).is_empty());
    });
}

#[test]
fn a_members_group_is_one_tag_on_its_lv_added_once_and_removed_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let fake = thin_fake(dir.path());
    let b = backend(&fake, Some("pool0"), Wipe::Zero);
    b.create(&vol(u(1), "db", 4 * MIB)).unwrap();
    fake.log.lock().unwrap().clear();
    assert_eq!(b.set_group(u(1), Some("orders")).unwrap(), Change::Changed);
    assert_eq!(
        b.set_group(u(1), Some("orders")).unwrap(),
        Change::Unchanged
    );
    let lv = fake.by_uuid(u(1)).unwrap();
    assert!(
        lv.tags.contains(&"cinderblock.group=orders".to_owned()),
        "{:?}",
        lv.tags
    );
    assert_eq!(b.set_group(u(1), Some("audit")).unwrap(), Change::Changed);
    assert_eq!(b.set_group(u(1), None).unwrap(), Change::Changed);
    let lv = fake.by_uuid(u(1)).unwrap();
    assert!(
        !lv.tags.iter().any(|t| t.starts_with("cinderblock.group=")),
        "{:?}",
        lv.tags
    );
    assert_eq!(
        fake.changes(),
        [
            "lvchange --addtag cinderblock.group=orders -- vg0/volume-00000000-0000-0000-0000-000000000001",
            "lvchange --deltag cinderblock.group=orders --addtag cinderblock.group=audit -- vg0/volume-00000000-0000-0000-0000-000000000001",
            "lvchange --deltag cinderblock.group=audit -- vg0/volume-00000000-0000-0000-0000-000000000001",
        ]
    );
}
