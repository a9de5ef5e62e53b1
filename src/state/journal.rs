//! The step journal: an append-only record of what apply meant to do and what
//! happened.
//!
//! Owns `DIR/journal.jsonl` (and its one rotated predecessor
//! `DIR/journal.1.jsonl`). Each line is one JSON [`Record`]: an `intent` written
//! and fsynced *before* a step runs, and an `outcome` (`unchanged`, `changed` or
//! `failed` with the error text) after. An intent without an outcome is a step
//! that was interrupted; the next run re-discovers and re-plans anyway, so the
//! journal explains a crash rather than driving recovery.
//!
//! Invariants:
//! - One `write` of a whole line plus `fdatasync` per record: once `append`
//!   returns, the record survives a crash.
//! - Readable after a crash mid-write: a torn or garbled *last* line (a partial
//!   write, or the NUL bytes ext4 can leave after a power cut) is ignored with a
//!   warning, and trimmed when the journal is next opened for writing so a new
//!   record never glues onto it. Garbage *before* the last line is real
//!   corruption and an error naming the line ([`read`] checks every line;
//!   opening for writing checks only the last 64 KiB, so its cost does not
//!   grow with the journal).
//! - Rotation by size, only when the journal is opened (at the start of a run):
//!   past [`DEFAULT_MAX_BYTES`] the file becomes `journal.1.jsonl` (replacing the
//!   older one) and a fresh one starts, so one run's records are never split
//!   across files and the journal's footprint stays under about twice the limit.
//!   Chosen over "keep the last N runs", which would rewrite the file.
//!
//! Must not: be written without the state lock held, or carry secrets (action
//! text comes from the plan, which never holds CHAP secrets).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::atomic::{AtomicError, fsync_dir};

/// The current journal's file name.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The previous journal's file name, after a rotation.
pub const ROTATED_FILE: &str = "journal.1.jsonl";
/// Rotate when the journal is larger than this at open (16 MiB: some 50,000
/// records).
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// Version of the record format, written into every line as `v`.
pub const RECORD_VERSION: u32 = 1;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line before the last one does not parse.
    #[error("{path}:{line}: corrupt journal record")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The directory could not be synced after a rotation.
    #[error("cannot rotate the journal")]
    Rotate(#[source] AtomicError),
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing needed doing.
    Unchanged,
    /// The step changed the world.
    Changed,
    /// The step failed (see the record's `error`).
    Failed,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Event {
    /// About to run the step.
    Intent,
    /// The step finished.
    Outcome {
        /// How.
        outcome: Outcome,
        /// The error chain, for `failed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// When the step started (its intent's time).
        started_at: DateTime<Utc>,
    },
    /// About to hold a volume's I/O inside the step (a group snapshot's
    /// freeze): a run that finds this with no outcome after it releases
    /// every hold of that back end first.
    Hold {
        /// The back end.
        backend: String,
        /// The volume whose I/O is held.
        volume: Uuid,
    },
    /// A long copy's progress inside the step (a migration): the target's
    /// data is durable up to `offset`, so a later run may resume there.
    Checkpoint {
        /// The migration's identity (also marked on its target).
        migration: Uuid,
        /// Bytes of the volume done.
        offset: u64,
        /// Bytes read by this run so far.
        read: u64,
    },
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record format version ([`RECORD_VERSION`]).
    pub v: u32,
    /// The plan this step belongs to.
    pub plan_id: Uuid,
    /// The step's index in that plan.
    pub step: u32,
    /// The action, as the plan prints it.
    pub action: String,
    /// When this record was written (UTC).
    pub at: DateTime<Utc>,
    /// Intent or outcome.
    #[serde(flatten)]
    pub event: Event,
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens (creating) the journal in `state_dir`, rotating past
    /// [`DEFAULT_MAX_BYTES`].
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Self::open_with_limit(state_dir, DEFAULT_MAX_BYTES)
    }

    /// Opens the journal, rotating when it holds more than `max_bytes`.
    pub fn open_with_limit(state_dir: &Path, max_bytes: u64) -> Result<Self, JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        let io_err = |op, p: &Path| {
            let p = p.to_owned();
            move |source| JournalError::Io {
                op,
                path: p,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let valid_len = valid_len(&file, &path, len).map_err(|e| match e {
            TailError::Io(source) => JournalError::Io {
                op: "read",
                path: path.clone(),
                source,
            },
            TailError::Journal(e) => e,
        })?;
        if valid_len < len {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - valid_len,
                "journal ends in a torn record (crash mid-write); trimming it"
            );
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(io_err("trim", &path))?;
        }
        if valid_len > max_bytes {
            let rotated = state_dir.join(ROTATED_FILE);
            drop(file);
            fs::rename(&path, &rotated).map_err(io_err("rotate", &path))?;
            fsync_dir(state_dir).map_err(JournalError::Rotate)?;
            tracing::info!(path = %rotated.display(), "journal rotated");
            return Self::open_with_limit(state_dir, max_bytes);
        }
        Ok(Self { file, path })
    }

    /// Appends one record durably.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(record).map_err(|e| JournalError::Io {
            op: "serialise a record for",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io {
                op: "append to",
                path: self.path.clone(),
                source,
            })
    }

    /// Appends a record of `event` for `step` of `plan_id`, now.
    fn event(
        &mut self,
        plan_id: Uuid,
        step: u32,
        action: &str,
        event: Event,
    ) -> Result<Record, JournalError> {
        let record = Record {
            v: RECORD_VERSION,
            plan_id,
            step,
            action: action.to_owned(),
            at: Utc::now(),
            event,
        };
        self.append(&record)?;
        Ok(record)
    }

    /// Journals the intent to run `step` of `plan_id`, now. Returns the record
    /// to pass to [`Journal::outcome`].
    pub fn intent(
        &mut self,
        plan_id: Uuid,
        step: u32,
        action: &str,
    ) -> Result<Record, JournalError> {
        self.event(plan_id, step, action, Event::Intent)
    }

    /// Journals how the step of `intent` ended, now.
    pub fn outcome(
        &mut self,
        intent: &Record,
        outcome: Outcome,
        error: Option<String>,
    ) -> Result<Record, JournalError> {
        self.event(
            intent.plan_id,
            intent.step,
            &intent.action,
            Event::Outcome {
                outcome,
                error,
                started_at: intent.at,
            },
        )
    }

    /// Journals a copy checkpoint inside the step of `intent`.
    pub fn checkpoint(
        &mut self,
        intent: &Record,
        migration: Uuid,
        offset: u64,
        read: u64,
    ) -> Result<(), JournalError> {
        self.event(
            intent.plan_id,
            intent.step,
            &intent.action,
            Event::Checkpoint {
                migration,
                offset,
                read,
            },
        )
        .map(drop)
    }

    /// Journals a hold on `volume`'s I/O of back end `backend` inside the
    /// step of `intent`, before it is placed.
    pub fn hold(
        &mut self,
        intent: &Record,
        backend: &str,
        volume: Uuid,
    ) -> Result<(), JournalError> {
        self.event(
            intent.plan_id,
            intent.step,
            &intent.action,
            Event::Hold {
                backend: backend.to_owned(),
                volume,
            },
        )
        .map(drop)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Journals each hold of a group snapshot before it is placed (the
/// executor's group snapshots and group backups), so the next run releases
/// what a crash left held ([`JournalContents::interrupted_holds`]).
pub struct JournalHolds<'a> {
    /// The journal.
    pub journal: &'a mut Journal,
    /// The step's intent.
    pub intent: &'a Record,
}

impl crate::driver::Holds for JournalHolds<'_> {
    fn before_hold(&mut self, backend: &str, volume: Uuid) -> Result<(), String> {
        self.journal
            .hold(self.intent, backend, volume)
            .map_err(|e| crate::error_chain(&e))
    }
}

/// What [`read`] found.
#[derive(Debug, Clone, Default)]
pub struct JournalContents {
    /// Records, oldest first (rotated file first).
    pub records: Vec<Record>,
    /// Whether a torn last record was ignored.
    pub torn_tail: bool,
}

impl JournalContents {
    /// Intents with no outcome after them: steps a crash interrupted.
    pub fn unfinished(&self) -> Vec<&Record> {
        let mut open: Vec<&Record> = Vec::new();
        for record in &self.records {
            match record.event {
                Event::Intent => open.push(record),
                Event::Outcome { .. } => {
                    open.retain(|i| (i.plan_id, i.step) != (record.plan_id, record.step));
                }
                Event::Checkpoint { .. } | Event::Hold { .. } => {}
            }
        }
        open
    }

    /// The back ends with a hold on I/O journalled inside a step a crash
    /// interrupted (see [`Event::Hold`]).
    pub fn interrupted_holds(&self) -> std::collections::BTreeSet<&str> {
        let open: Vec<(Uuid, u32)> = self
            .unfinished()
            .iter()
            .map(|r| (r.plan_id, r.step))
            .collect();
        self.records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Hold { backend, .. } if open.contains(&(r.plan_id, r.step)) => {
                    Some(backend.as_str())
                }
                _ => None,
            })
            .collect()
    }

    /// The offset of the last checkpoint of `migration` (0: none, or it was
    /// reset after a failed verification).
    pub fn checkpoint(&self, migration: Uuid) -> u64 {
        self.records
            .iter()
            .rev()
            .find_map(|r| match r.event {
                Event::Checkpoint {
                    migration: m,
                    offset,
                    ..
                } if m == migration => Some(offset),
                _ => None,
            })
            .unwrap_or(0)
    }
}

/// Reads the journal of `state_dir` (both files; missing files are empty).
pub fn read(state_dir: &Path) -> Result<JournalContents, JournalError> {
    let mut contents = JournalContents::default();
    for name in [ROTATED_FILE, JOURNAL_FILE] {
        let path = state_dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(JournalError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let parsed = parse(&path, &bytes)?;
        if parsed.valid_len < bytes.len() {
            tracing::warn!(path = %path.display(), "ignoring a torn last journal record");
            contents.torn_tail = true;
        }
        contents.records.extend(parsed.records);
    }
    Ok(contents)
}

/// Bytes read from the end of the journal when opening it.
const TAIL_BYTES: u64 = 64 << 10;

enum TailError {
    Io(io::Error),
    Journal(JournalError),
}

/// Length of the journal's prefix of whole, valid lines, reading only its
/// tail: one process appends whole lines under the state lock, so a crash can
/// tear only the end. Opening thus costs the same however long the journal
/// is (the agent opens it for every apply; reading all of it made each apply
/// slower and the process bigger as the journal grew towards its rotation
/// size). A tail that does not parse is read whole, so an error names the
/// right line; [`read`] checks every line.
fn valid_len(file: &File, path: &Path, len: u64) -> Result<u64, TailError> {
    use std::os::unix::fs::FileExt;
    let full = || -> Result<u64, TailError> {
        let bytes = fs::read(path).map_err(TailError::Io)?;
        let parsed = parse(path, &bytes).map_err(TailError::Journal)?;
        Ok(parsed.valid_len as u64)
    };
    let start = len.saturating_sub(TAIL_BYTES);
    if start == 0 {
        return full();
    }
    let mut tail = vec![0; usize::try_from(len - start).unwrap_or(0)];
    file.read_exact_at(&mut tail, start)
        .map_err(TailError::Io)?;
    // The window starts inside a line: skip to the next whole one.
    let Some(skip) = tail.iter().position(|&b| b == b'\n').map(|i| i + 1) else {
        return full();
    };
    match parse(path, &tail[skip..]) {
        Ok(parsed) => Ok(start + (skip + parsed.valid_len) as u64),
        Err(_) => full(),
    }
}

/// What [`parse`] found in one journal file's bytes.
#[derive(Debug)]
pub struct Parsed {
    /// The records of the whole, valid lines.
    pub records: Vec<Record>,
    /// Length of the prefix made of whole, valid lines.
    pub valid_len: usize,
}

/// Parses the bytes of journal file `path` (named in errors): every line
/// before the last must be a record; a torn or garbled last line is left
/// out of `valid_len`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, JournalError> {
    let mut records = Vec::new();
    let mut offset = 0;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let (line, next, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], offset + i + 1, true),
            None => (rest, bytes.len(), false),
        };
        let is_last = next == bytes.len();
        match serde_json::from_slice::<Record>(line) {
            Ok(record) if terminated => records.push(record),
            // A valid-looking line without its newline was cut short; don't
            // trust it.
            Ok(_) => break,
            Err(_) if is_last => break,
            Err(source) => {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    source,
                });
            }
        }
        offset = next;
    }
    Ok(Parsed {
        records,
        valid_len: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Uuid {
        Uuid::from_u128(0x1234)
    }

    #[test]
    fn intent_then_outcome_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        let intent = journal.intent(plan(), 0, "+ volume.db").unwrap();
        journal.outcome(&intent, Outcome::Changed, None).unwrap();
        let second = journal.intent(plan(), 1, "~ volume.web").unwrap();
        journal
            .outcome(&second, Outcome::Failed, Some("disk full".into()))
            .unwrap();
        journal.intent(plan(), 2, "- volume.old").unwrap();

        let contents = read(dir.path()).unwrap();
        assert!(!contents.torn_tail);
        assert_eq!(contents.records.len(), 5);
        assert_eq!(contents.records[0], intent);
        let Event::Outcome { outcome, error, .. } = &contents.records[3].event else {
            panic!("expected an outcome");
        };
        assert_eq!(
            (*outcome, error.as_deref()),
            (Outcome::Failed, Some("disk full"))
        );
        let unfinished: Vec<u32> = contents.unfinished().iter().map(|r| r.step).collect();
        assert_eq!(unfinished, [2]);
    }

    #[test]
    fn line_format_is_pinned() {
        let record = Record {
            v: 1,
            plan_id: plan(),
            step: 3,
            action: "+ volume.db".into(),
            at: "2026-01-02T03:04:05Z".parse().unwrap(),
            event: Event::Outcome {
                outcome: Outcome::Unchanged,
                error: None,
                started_at: "2026-01-02T03:04:00Z".parse().unwrap(),
            },
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"v":1,"plan_id":"00000000-0000-0000-0000-000000001234","step":3,"action":"+ volume.db","at":"2026-01-02T03:04:05Z","record":"outcome","outcome":"unchanged","started_at":"2026-01-02T03:04:00Z"}"#
        );
    }

    #[test]
    fn torn_tail_is_ignored_then_trimmed_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.intent(plan(), 0, "+ volume.db").unwrap();
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let whole = fs::read(&path).unwrap();
        // A crash mid-write: half a record, no newline.
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 2]);
        fs::write(&path, &torn).unwrap();

        let contents = read(dir.path()).unwrap();
        assert!(contents.torn_tail);
        assert_eq!(contents.records.len(), 1);

        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), whole, "torn tail trimmed");
        journal.intent(plan(), 1, "+ volume.web").unwrap();
        let contents = read(dir.path()).unwrap();
        assert!(!contents.torn_tail);
        assert_eq!(contents.records.len(), 2);
    }

    #[test]
    fn nul_filled_tail_after_power_cut_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.intent(plan(), 0, "+ volume.db").unwrap();
        let path = journal.path().to_owned();
        drop(journal);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 100]);
        bytes.push(b'\n');
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().records.len(), 1);
    }

    #[test]
    fn corruption_before_the_last_line_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.intent(plan(), 0, "a").unwrap();
        let path = journal.path().to_owned();
        drop(journal);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"garbage\n");
        bytes.extend_from_slice(&fs::read(&path).unwrap());
        fs::write(&path, &bytes).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:2: corrupt journal record", path.display())
        );
    }

    #[test]
    fn rotates_by_size_at_open_and_reads_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open_with_limit(dir.path(), 300).unwrap();
        for step in 0..3 {
            journal.intent(plan(), step, "+ volume.x").unwrap();
        }
        drop(journal);
        // Over the limit: the next run starts a fresh file.
        let mut journal = Journal::open_with_limit(dir.path(), 300).unwrap();
        assert_eq!(fs::metadata(journal.path()).unwrap().len(), 0);
        journal.intent(plan(), 3, "+ volume.y").unwrap();
        let steps: Vec<u32> = read(dir.path())
            .unwrap()
            .records
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, [0, 1, 2, 3]);
        assert!(dir.path().join(ROTATED_FILE).exists());
    }

    #[test]
    fn opening_a_long_journal_reads_only_its_tail_and_still_trims_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        let path = journal.path().to_owned();
        for step in 0..2000 {
            journal
                .intent(plan(), step, "+ volume.a-rather-long-description")
                .unwrap();
        }
        drop(journal);
        let whole = fs::read(&path).unwrap();
        assert!(whole.len() as u64 > 2 * TAIL_BYTES);
        // Early garbage is outside the window: opening does not look at it
        // (reading does, and names the line).
        let mut bytes = b"garbage\n".to_vec();
        bytes.extend_from_slice(&whole);
        bytes.extend_from_slice(b"{\"torn");
        fs::write(&path, &bytes).unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            bytes.len() as u64 - 6,
            "torn end trimmed"
        );
        journal.intent(plan(), 2000, "+ volume.b").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(
            err.to_string().ends_with(":1: corrupt journal record"),
            "{err}"
        );
        // Garbage inside the window is found at open, with its line number.
        let mut bytes = whole.clone();
        bytes.extend_from_slice(b"garbage\n");
        bytes.extend_from_slice(&whole[..=whole.iter().position(|&b| b == b'\n').unwrap()]);
        fs::write(&path, &bytes).unwrap();
        let err = Journal::open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:2001: corrupt journal record", path.display())
        );
    }
}
