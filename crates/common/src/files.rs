//! Files only their owner may read: the admin key, the internal key and the master key that
//! Postern writes into its data directory.

use std::io::Write;
use std::path::Path;

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
