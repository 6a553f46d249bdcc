//! Atomic, durable file replacement: the one way this crate writes a file that something
//! else may read (checkpoints, the resolved config, rewritten metrics).
//!
//! The bytes go to a temporary file in the target's folder (named [`TEMP_PREFIX`]...), which
//! is fsynced, renamed over the target, and the folder fsynced. A crash at any point leaves
//! either the old file or the new one under the target's name, never a torn one; at worst a
//! stray temporary file, which readers ignore and the next run removes.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Prefix of in-flight files.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Replaces `target` with what `write` puts into the file it is handed.
pub fn write_atomic<T>(target: &Path, write: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
    write_atomic_with(target, write)
}

/// [`write_atomic`] for a `write` whose error is its own (an encoder's, say), so that the
/// caller tells it from the file system's; the target is left as it was when `write` fails.
pub fn write_atomic_with<T, E: From<io::Error>>(
    target: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let (dir, mut tmp) = temporary(target)?;
    let out = write(tmp.as_file_mut())?;
    finish(tmp, target, dir)?;
    Ok(out)
}

/// Mode of files we write: `rw-r--r--` before the umask, as a plain `File::create` gives
/// (temporary files would otherwise keep their private `rw-------`).
/// [`write_atomic_with`] for writers that open the file by its path themselves (as
/// safetensors' `serialize_to_file` does): `write` gets the temporary's path, in `target`'s
/// folder; the temporary is then synced and renamed onto `target`, as above.
pub fn write_atomic_path<T, E: From<io::Error>>(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let (dir, tmp) = temporary(target)?;
    let out = write(tmp.path())?;
    finish(tmp, target, dir)?;
    Ok(out)
}

/// A new temporary file for `target`, in its folder, and that folder.
fn temporary(target: &Path) -> io::Result<(&Path, tempfile::NamedTempFile)> {
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).permissions(file_mode()).tempfile_in(dir)?;
    Ok((dir, tmp))
}

/// Syncs the written temporary, renames it onto `target` and syncs the folder.
fn finish(tmp: tempfile::NamedTempFile, target: &Path, dir: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

fn file_mode() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o644)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn replaces_the_target_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, "old").unwrap();
        write_atomic(&target, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, "old").unwrap();
        let err = write_atomic(&target, |f| {
            f.write_all(b"partial")?;
            Err::<(), _>(io::Error::other("disk on fire"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
