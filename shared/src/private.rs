//! Data that is nobody else's business stays readable by its owner only: the
//! server's store holds password hashes and sessions, the handheld's holds its
//! tokens. Both binaries start with a umask that keeps what they create
//! private, and tighten a data dir they open, whatever made it looser.

use std::{io, path::Path, path::PathBuf};

/// Makes what this process creates from now on owner-only (umask 077).
pub fn owner_only_from_now_on() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Takes group and world access away from each path that exists (a data dir,
/// a key file: not what is under a directory) and from everything under each
/// of `trees` (a store's own directory): directories 0700, files 0600 where
/// they were looser. Returns what it changed, for the caller to say so.
/// Symbolic links are left alone.
pub fn tighten(paths: &[&Path], trees: &[&Path]) -> io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    #[cfg(unix)]
    {
        for path in paths.iter().filter(|path| path.exists()) {
            tighten_path(path, false, &mut changed)?;
        }
        for tree in trees.iter().filter(|tree| tree.exists()) {
            tighten_path(tree, true, &mut changed)?;
        }
    }
    Ok(changed)
}

#[cfg(unix)]
fn tighten_path(path: &Path, recursive: bool, changed: &mut Vec<PathBuf>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let private = if metadata.is_dir() { 0o700 } else { mode & 0o700 | 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))?;
        changed.push(path.to_owned());
    }
    if recursive && metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten_path(&entry?.path(), true, changed)?;
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn a_readable_tree_is_made_owner_only_and_a_private_one_is_left_alone() {
        let root = tempfile::tempdir().expect("a temporary dir");
        let dir = root.path().join("store");
        std::fs::create_dir_all(dir.join("inner")).expect("made");
        std::fs::write(dir.join("db"), b"hashes").expect("written");
        std::fs::write(dir.join("inner").join("conf"), b"x").expect("written");
        for (path, loose) in [(dir.clone(), 0o755), (dir.join("inner"), 0o775), (dir.join("db"), 0o644)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).expect("loosened");
        }
        std::fs::set_permissions(dir.join("inner").join("conf"), std::fs::Permissions::from_mode(0o600)).expect("set");
        std::fs::write(root.path().join("unrelated"), b"x").expect("written");
        std::fs::set_permissions(root.path().join("unrelated"), std::fs::Permissions::from_mode(0o644)).expect("set");
        let mut changed = tighten(&[root.path()], &[&dir]).expect("tightened");
        changed.retain(|path| path != root.path());
        changed.sort();
        assert_eq!(changed, [dir.clone(), dir.join("db"), dir.join("inner")], "the loose ones, not conf");
        assert_eq!((mode(&dir), mode(&dir.join("inner")), mode(&dir.join("db"))), (0o700, 0o700, 0o600));
        assert_eq!(mode(&root.path().join("unrelated")), 0o644, "only the store's own tree is walked");
        assert!(tighten(&[root.path()], &[&dir]).expect("tightened").is_empty(), "nothing left to change");
    }
}
