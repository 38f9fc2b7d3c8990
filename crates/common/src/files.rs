//! The data directory and its files, private to the account that runs Postern whatever the
//! umask: the directory 0700, every file 0600. The SQLite files hold password hashes, hashed
//! keys and sealed secrets, and the key files hold the keys themselves; no other account on
//! the host has any business reading them (PostgreSQL keeps its data the same way).
//!
//! Files are created with their final mode instead of being fixed afterwards, so none is ever
//! readable by others, not even for a moment. SQLite gives its `-wal` and `-shm` files the
//! mode of the database file, so a database file created here keeps its companions private
//! too. What an older version left with wider modes is tightened when opened. The key files
//! (admin, internal, master) are written whole with [`write_private`].

use std::io;
use std::io::Write;
use std::path::Path;

/// The mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing `dir` to 0700
/// when others may read or enter it.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    tighten(dir, DIR_MODE)
}

/// Options that create a file with mode 0600 (unaffected by the umask, which only removes
/// bits); the caller adds read, write, create, truncate as it needs.
pub fn private_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// Makes sure the file at `path` exists with mode 0600: creates it empty when missing,
/// tightens it when it exists with wider permissions.
pub fn private_file(path: &Path) -> io::Result<()> {
    private_options().create(true).truncate(false).append(true).open(path)?;
    tighten(path, FILE_MODE)
}

/// Tightens the file or directory at `path` to `mode` when it grants anything more; a
/// missing path is left alone.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let current = meta.permissions().mode() & 0o777;
        if current & !mode != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))?;
            tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{:o}", current & mode),
                "tightened the permissions of a data file");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// What [`write_private`] does when the file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Leave it alone and fail with [`std::io::ErrorKind::AlreadyExists`], so that of two
    /// processes racing to create a shared key, the second reads the first one's.
    Keep,
    /// Replace its contents.
    Replace,
}

/// Writes `contents` to `path`, readable and writable by its owner only (mode 0600 on Unix,
/// whatever the umask, and also when an existing file had looser permissions), and syncs it
/// to disk before returning.
pub fn write_private(path: &Path, contents: &[u8], existing: Existing) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    match existing {
        Existing::Keep => options.create_new(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // `mode` applies only to a file this call creates, and under the umask.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn keeps_or_replaces_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        write_private(&path, b"one", Existing::Keep).expect("create");
        assert_eq!(std::fs::read(&path).expect("read"), b"one");
        let again = write_private(&path, b"two", Existing::Keep).expect_err("exists");
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).expect("read"), b"one", "Keep leaves the first writer's key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode(&path), 0o600);
            // A file left readable by others is tightened when replaced.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        write_private(&path, b"three", Existing::Replace).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"three");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }
}

#[cfg(all(test, unix))]
mod private_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_tightened_when_wider() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&temp.path().join("a")), 0o700);
        let file = dir.join("f");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_dir(&dir).unwrap();
        private_file(&file).unwrap();
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        // Narrower stays narrower.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        tighten(&file, FILE_MODE).unwrap();
        assert_eq!(mode(&file), 0o400);
    }
}
