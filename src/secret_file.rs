//! Files that hold a secret (the local master key, the dev admin token and superuser password,
//! a decrypted export): created readable by their owner only, and refused when they are not,
//! so a key left readable by group or others (a copy with the wrong umask, a restored backup)
//! stops the service instead of serving with it.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `path` anew (it must not exist), mode 0600, writes `contents` and syncs it.
pub fn create(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = open_new(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Opens `path` for writing, created or truncated, mode 0600 (also when it existed with other
/// permissions: they are narrowed before anything is written).
pub fn open_new(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Reads `path` if it exists (`None` if not), refusing it when group or others may read or
/// write it.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} holds a secret but its mode is {:o}: group or others may read it \
                 (chmod 600 it, or remove it to have a new one made)",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut &f, &mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_readable_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("tenantd-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        assert_eq!(read(&path).unwrap(), None);
        create(&path, b"s3cret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"s3cret"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.to_string().contains("mode is 640"), "{e}");
        // Writing anew narrows what was there.
        drop(open_new(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
