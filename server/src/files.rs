//! Small file helpers for secrets and generated material.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;

/// The generated JWT signing key, in the data dir (when none is configured).
pub const JWT_SECRET_FILE: &str = "jwt-secret";

/// Writes a file readable by its owner only (mode 0600), atomically: a crash
/// leaves either the old file or the new one, never half of it.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o600)
}

/// Writes a world-readable file (mode 0644) atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, contents, 0o644)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    set_mode(temp.as_file(), mode)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(file: &std::fs::File, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_file: &std::fs::File, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}
