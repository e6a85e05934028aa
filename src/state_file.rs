//! `once --state-file PATH`: what the sinks remember between runs of a cron
//! job or a Kubernetes CronJob, so `once` behaves like a long-running
//! reporter that was never restarted: series that ended since the last run
//! get stale markers, and cycles a receiver missed are replayed first.
//!
//! The file is JSON with a format name and version, one entry per sink
//! (keyed by [`crate::sink::Sink::state_key`]). It is written atomically:
//! a temporary file beside it, `fsync`, `rename` over the old one, `fsync`
//! of the directory. Two runs racing on one file each write a whole file;
//! the last rename wins, and no reader ever sees a torn one. A missing file
//! is a first run. A file that is not ours, is damaged, or is too large is
//! reported in one line and set aside (renamed to `PATH.corrupt-<time>`),
//! and the run goes on without it: the current cycle is never lost to a
//! bad file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The `format` field of every state file.
pub const FORMAT: &str = "vsphere-ci-session-metrics/state";
/// The `version` this build reads and writes.
pub const VERSION: u32 = 1;
/// A larger file is not read: the sinks' own bounds (64 MiB of queue per
/// remote-write target by default) keep real ones far below.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    version: u32,
    /// Written at, Unix seconds (for people reading the file).
    written_at: u64,
    sinks: BTreeMap<String, Box<RawValue>>,
}

/// The sinks' states, by key, as JSON text: each sink writes and reads its
/// own, and no tree of the whole document is ever built.
pub type States = BTreeMap<String, Box<RawValue>>;

/// Why a state file could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// Unreadable (permissions, I/O): left where it is.
    Unreadable(String),
    /// Not ours, damaged or too large: set aside.
    Invalid(String),
}

/// Read the state file. `Ok(None)` when there is none yet (a first run).
pub fn load(path: &Path) -> Result<Option<States>, LoadError> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Unreadable(e.to_string())),
    };
    if size > MAX_FILE_BYTES {
        return Err(LoadError::Invalid(format!(
            "{size} bytes, more than the {MAX_FILE_BYTES} a state file may have"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| LoadError::Unreadable(e.to_string()))?;
    let file: StateFile = serde_json::from_slice(&bytes)
        .map_err(|e| LoadError::Invalid(crate::kube_client::json_error_position(&e)))?;
    if file.format != FORMAT {
        return Err(LoadError::Invalid(
            "not a state file of this reporter".into(),
        ));
    }
    if file.version != VERSION {
        return Err(LoadError::Invalid(format!(
            "version {} (this build reads version {VERSION})",
            file.version
        )));
    }
    Ok(Some(file.sinks))
}

/// Rename a file that could not be used out of the way; returns its new
/// path.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", unix_secs()));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Write the states atomically (see the module docs).
pub fn save(path: &Path, sinks: States) -> std::io::Result<()> {
    let file = StateFile {
        format: FORMAT.to_string(),
        version: VERSION,
        written_at: unix_secs(),
        sinks,
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path names no file"))?;
    // Unique per process and call, so racing runs never share one.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must reach the disk too.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_loads_back_and_a_missing_one_is_a_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(matches!(load(&path), Ok(None)));
        let raw = RawValue::from_string("{\"x\":1}".to_string()).unwrap();
        let states = States::from([("remote_write/a".to_string(), raw)]);
        save(&path, states).unwrap();
        let back = load(&path).unwrap().expect("a state");
        assert_eq!(back["remote_write/a"].get(), "{\"x\":1}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn foreign_damaged_and_future_files_are_invalid_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for (text, want) in [
            (
                "{\"format\": \"x\", \"version\": 1, \"written_at\": 0, \"sinks\": {}}",
                "not a state file",
            ),
            (
                "{\"format\": \"vsphere-ci-session-metrics/state\", \"version\": 9, \"written_at\": 0, \"sinks\": {}}",
                "version 9",
            ),
            ("{\"format\": \"vsphere-ci-session-metrics/st", "line 1"),
            ("", "line 1"),
        ] {
            std::fs::write(&path, text).unwrap();
            match load(&path) {
                Err(LoadError::Invalid(message)) => assert!(message.contains(want), "{message}"),
                Err(other) => panic!("{text:?}: {other:?}"),
                Ok(_) => panic!("{text:?} loaded"),
            }
        }
        let aside = set_aside(&path).unwrap();
        assert!(!path.exists() && aside.exists());
        assert!(aside.to_string_lossy().contains("state.json.corrupt-"));
    }
}
