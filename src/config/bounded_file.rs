//! Files the configuration names (the config file itself, a Redis CA
//! file), read only when they are regular files of a bounded size: a path
//! to `/dev/zero` or a named pipe must not take the gateway's memory or
//! hang a reload.

use std::io::Read;
use std::path::Path;

/// The largest config file read (a large key table is well under it).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest certificate file read.
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// `path`'s bytes, when it is a regular file (a symbolic link to one is)
/// of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    // Looked at before it is opened: opening a named pipe waits for a writer.
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let too_large = || std::io::Error::other(format!("larger than {} KiB", limit >> 10));
    if metadata.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // A file that grows as it is read (or reports no size) is cut off too.
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "x".repeat(2048)).unwrap();
        assert_eq!(read(&file, 2048).unwrap().len(), 2048);
        let err = read(&file, 1024).unwrap_err();
        assert_eq!(err.to_string(), "larger than 1 KiB");
        let err = read(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        assert_eq!(
            read(dir.path(), 1024).unwrap_err().to_string(),
            "not a regular file"
        );
        let pipe = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&pipe).status();
        assert!(made.unwrap().success());
        assert_eq!(
            read(&pipe, 1024).unwrap_err().to_string(),
            "not a regular file"
        );
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_text(&file, 1024).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }
}
