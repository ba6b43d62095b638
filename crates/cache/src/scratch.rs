//! A directory of its own for one test, removed when the test ends, failed or not.

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// An empty `outpost-NAME-PID` under the system's temporary directory (what an earlier,
    /// interrupted run left there is removed first). Declare it before the tier or cache that
    /// uses it, so that it is dropped, and the directory removed, after them.
    pub(crate) fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("outpost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
