//! Checks of the files a command reads and writes, made before any long work starts, with
//! messages that name the argument and the path once.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads the input file `path` (the argument `arg`), naming both on failure.
pub fn read_input(path: &Path, arg: &str) -> Result<Vec<u8>> {
    if path.is_dir() {
        bail!("{arg} {} is a directory, not a file", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {arg} {}", path.display()))
}

/// Fails unless `path` (the argument `arg`) can be written: not a directory, in a folder
/// that exists, writable; so that a long run cannot end in a write error. Leaves an existing
/// file as it is (it may be the input too) and creates no file.
pub fn check_output(path: &Path, arg: &str) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{arg} {} is a directory; give the path of a file to write",
            path.display()
        );
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.is_dir()) {
        bail!(
            "{arg} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let cannot = || format!("cannot write {arg} {}", path.display());
    if path.exists() {
        OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(cannot)?;
    } else {
        File::create_new(path).with_context(cannot)?;
        std::fs::remove_file(path).with_context(cannot)?;
    }
    Ok(())
}

/// Writes `bytes` to the output `path` (the argument `arg`), naming it on failure.
pub fn write_output(path: &Path, arg: &str, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {arg} {}", path.display()))
}
