//! The state directory (`--state DIR`): the lock, atomically replaced state
//! files, and the step journal.
//!
//! Owns the on-disk mechanics only; what the state *means* (placements,
//! identities, the last applied revision) belongs to the executor, which stores
//! its own versioned payloads through [`atomic`].
//!
//! Layout:
//! ```text
//! DIR/lock              flock target; holder details as one JSON line
//! DIR/journal.jsonl     current journal (JSON lines, append-only)
//! DIR/journal.1.jsonl   previous journal, after a size rotation
//! DIR/<name>.json       state files in the versioned envelope
//! ```
//!
//! Invariants: every write under `DIR` happens while the [`lock::StateLock`] is
//! held (callers take it first, for the whole plan/apply); state files are only
//! ever replaced whole (temp, fsync, rename, fsync dir), never edited in place.
//!
//! Must not: interpret manifests, touch storage, or spawn processes.

pub mod atomic;
pub mod journal;
pub mod lock;
pub mod record;
