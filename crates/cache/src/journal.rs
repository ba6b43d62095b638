//! The disk tier's purge journal: every purge appended as a JSON line to `purges.jsonl` in the
//! cache directory, so that a purge outlives the process.
//!
//! Purge rules live in memory, and the sweeper removes what they condemn from disk within a
//! second. A PoP that stopped in between (a crash, a kill, a restart right after the purge
//! call returned) would find the purged files at its next start, index them again and serve
//! them: the purge would not have been effective "for every request that starts after it
//! returns". So the scan at start applies the journal to the files it finds, deleting what it
//! condemns, and then keeps only the lines of the new run; during a run, the lines of rules
//! that retire are dropped (their sweeps deleted every file they condemn first).
//!
//! Lines are written, not synced: a purge survives the process, not a power loss.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::purge::{strip_scheme, Target};

const FILE: &str = "purges.jsonl";

/// One recorded purge. `epoch` is the run that recorded it (`DiskTier`'s epoch), `seq` its
/// sequence number in that run: it condemns objects stored by earlier runs, and objects of its
/// own run whose fetch started before it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Line {
    pub epoch: u64,
    pub seq: u64,
    pub target: Target,
}

pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens the journal in `dir` for appending, with the lines earlier runs left in it. Lines
    /// that do not parse (a line cut short by a crash) are skipped.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<Line>)> {
        let path = dir.join(FILE);
        let bytes = fs::read(&path).unwrap_or_default();
        let found = parse(&bytes).collect();
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            // End the cut line, so that the next one is not appended to it.
            file.write_all(b"\n")?;
        }
        Ok((
            Self {
                path,
                file: Mutex::new(file),
            },
            found,
        ))
    }

    pub fn append(&self, line: &Line) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&text) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record a purge in the disk cache's journal");
        }
    }

    /// Rewrites the journal with the lines `keep` selects (atomically: a crash leaves the old
    /// journal or the new one).
    pub fn retain(&self, keep: impl Fn(&Line) -> bool) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(bytes) = fs::read(&self.path) else { return };
        let kept: Vec<Line> = parse(&bytes).filter(|l| keep(l)).collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        // The new file's handle, positioned at its end, is the one later lines go to: nothing
        // to reopen after the rename.
        let rewrite = || -> std::io::Result<File> {
            let mut out = File::create(&tmp)?;
            for line in &kept {
                let mut text = serde_json::to_vec(line)?;
                text.push(b'\n');
                out.write_all(&text)?;
            }
            out.sync_data()?;
            fs::rename(&tmp, &self.path)?;
            Ok(out)
        };
        match rewrite() {
            Ok(f) => *file = f,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot compact the disk cache's purge journal")
            }
        }
    }
}

/// The lines of a journal's bytes that parse (a line cut by a crash does not, even inside a
/// multi-byte character).
fn parse(bytes: &[u8]) -> impl Iterator<Item = Line> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
}

/// A journal's purges, for the scan at start: the latest purge of each target, looked up by
/// hash for URLs, tags and sites (a scan checks every file against them).
#[derive(Debug, Default)]
pub(crate) struct Condemned {
    urls: HashMap<String, (u64, u64)>,
    prefixes: Vec<(String, (u64, u64))>,
    tags: HashMap<String, (u64, u64)>,
    sites: HashMap<String, (u64, u64)>,
}

impl Condemned {
    pub fn new(lines: &[Line]) -> Self {
        let mut c = Self::default();
        let latest = |slot: &mut (u64, u64), at: (u64, u64)| *slot = (*slot).max(at);
        for l in lines {
            let at = (l.epoch, l.seq);
            match &l.target {
                Target::Url(u) => latest(c.urls.entry(u.clone()).or_default(), at),
                Target::Tag(t) => latest(c.tags.entry(t.clone()).or_default(), at),
                Target::Site(s) => latest(c.sites.entry(s.clone()).or_default(), at),
                Target::Prefix(p) => match c.prefixes.iter_mut().find(|(q, _)| q == p) {
                    Some((_, slot)) => latest(slot, at),
                    None => c.prefixes.push((p.clone(), at)),
                },
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.prefixes.is_empty() && self.tags.is_empty() && self.sites.is_empty()
    }

    /// Does a purge condemn an object stored by run `epoch` at sequence `stored_seq`?
    pub fn condemns(&self, url: &str, site: &str, tags: &[String], epoch: u64, stored_seq: u64) -> bool {
        let before = |&(purge_epoch, purge_seq): &(u64, u64)| {
            epoch < purge_epoch || (epoch == purge_epoch && stored_seq < purge_seq)
        };
        let url = strip_scheme(url);
        self.urls.get(url).is_some_and(before)
            || self.sites.get(site).is_some_and(before)
            || tags.iter().any(|t| self.tags.get(t).is_some_and(before))
            || self
                .prefixes
                .iter()
                .any(|(p, at)| url.starts_with(p.as_str()) && before(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_condemns_what_was_stored_before_it_in_its_run_and_in_earlier_runs() {
        let line = |epoch, seq, target| Line { epoch, seq, target };
        let c = Condemned::new(&[
            line(10, 5, Target::Prefix("a.test/img/".into())),
            line(10, 7, Target::Url("a.test/x".into())),
            line(10, 2, Target::Url("a.test/x".into())),
            line(10, 3, Target::Tag("t".into())),
            line(11, 1, Target::Site("shop".into())),
        ]);
        assert!(c.condemns("http://a.test/img/1.png", "s", &[], 10, 4));
        assert!(
            !c.condemns("http://a.test/img/1.png", "s", &[], 10, 5),
            "fetched after the purge"
        );
        assert!(
            c.condemns("https://a.test/img/1.png", "s", &[], 9, 99),
            "an earlier run's"
        );
        assert!(
            !c.condemns("http://a.test/img/1.png", "s", &[], 11, 0),
            "a later run's"
        );
        assert!(
            c.condemns("http://a.test/x", "s", &[], 10, 6),
            "the latest purge of a URL counts"
        );
        assert!(!c.condemns("http://a.test/xy", "s", &[], 10, 0));
        assert!(c.condemns("http://b.test/", "s", &["u".into(), "t".into()], 10, 2));
        assert!(c.condemns("http://b.test/", "shop", &[], 10, 1_000));
        assert!(!c.condemns("http://b.test/", "other", &[], 10, 0));
    }

    #[test]
    fn the_journal_keeps_lines_across_opens_and_retain_rewrites_it() {
        let dir = crate::scratch::ScratchDir::new("journal");
        fs::create_dir_all(&*dir).unwrap();
        let line = |seq| Line {
            epoch: 1,
            seq,
            target: Target::Tag(format!("t{seq}")),
        };
        {
            let (journal, found) = Journal::open(&dir).unwrap();
            assert!(found.is_empty());
            for seq in 1..=3 {
                journal.append(&line(seq));
            }
        }
        // A line cut short by a crash is skipped, not fatal.
        OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .unwrap()
            .write_all(b"{\"epoch\":1,\"se")
            .unwrap();
        let (journal, found) = Journal::open(&dir).unwrap();
        assert_eq!(found, vec![line(1), line(2), line(3)]);
        journal.append(&line(4));
        let (journal, found) = Journal::open(&dir).unwrap();
        assert_eq!(found, vec![line(1), line(2), line(3), line(4)]);
        journal.retain(|l| l.seq >= 2);
        journal.append(&line(5));
        let (_, found) = Journal::open(&dir).unwrap();
        assert_eq!(found, vec![line(2), line(3), line(4), line(5)]);
    }
}
