//! How long the sender's audit trail (`mesh/sent/`) and crash leftovers are kept.
//!
//! Acked copies are evidence, not state: nothing reads them to deliver. They
//! are pruned after a week, a bounded number per pass, so one pass never
//! stalls the sender and a burst of deletions is spread out.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Acked envelopes are kept this long in `mesh/sent/`.
pub const SENT_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most this many files are removed per pass.
pub const PRUNE_PER_PASS: usize = 1000;

/// Removes regular `*.json` files in `dir` last modified more than `age`
/// ago, at most `max` of them; returns how many went. Never follows links.
pub fn prune_older_than(dir: &Path, age: Duration, max: usize) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in rd.flatten() {
        if removed >= max {
            break;
        }
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        // DirEntry::metadata does not follow symlinks.
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|a| a > age);
        if old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_files_go_and_no_more_than_asked() {
        let d = tempfile::tempdir().unwrap();
        let week_ago = SystemTime::now() - SENT_KEPT - Duration::from_secs(60);
        for i in 0..5 {
            let f = std::fs::File::create(d.path().join(format!("old{i}.json"))).unwrap();
            f.set_modified(week_ago).unwrap();
        }
        std::fs::write(d.path().join("new.json"), b"x").unwrap();
        let f = std::fs::File::create(d.path().join("old.reason")).unwrap();
        f.set_modified(week_ago).unwrap();
        assert_eq!(prune_older_than(d.path(), SENT_KEPT, 3), 3);
        assert_eq!(prune_older_than(d.path(), SENT_KEPT, 100), 2);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["new.json", "old.reason"]);
    }
}
