//! Proof images (photos a handheld uploads, signatures drawn at the door),
//! kept by the SHA-256 of their bytes: the same image sent twice is stored
//! once. Photos arrive in chunks, each at the offset it names, so that an
//! upload cut short resumes where it stopped; a whole upload is checked
//! (`domain::photos`) before it is stored.
//!
//! The embedded store keeps them as files under the data dir
//! (`images/ab/abcd...`, uploads under `images/uploads/`); PostgreSQL keeps
//! them in its `images` and `image_uploads` tables, so that every instance
//! sees them (`postgres::images`).

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;

use super::StoreError;

/// How an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// The image is stored: nothing more to send.
    Stored,
    /// `received` bytes of `total` arrived (0 of an unknown total when none).
    Partial { received: u64, total: Option<u64> },
}

/// A chunk that does not start where the upload stands, or that names
/// another total than the upload's first chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misplaced {
    pub received: u64,
    pub total: Option<u64>,
}

#[async_trait]
pub trait ImageStore: Send + Sync + std::fmt::Debug {
    /// Stores an image whole; durable when it returns. Storing it again
    /// changes nothing.
    async fn put(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError>;
    async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn upload_state(&self, digest: &str) -> Result<UploadState, StoreError>;
    /// Appends `chunk` at `offset` of an upload of `total` bytes, durably;
    /// returns the bytes received so far. Only a chunk that starts where the
    /// upload stands, for the total it began with, is taken.
    async fn append(
        &self,
        digest: &str,
        offset: u64,
        total: u64,
        chunk: Vec<u8>,
    ) -> Result<Result<u64, Misplaced>, StoreError>;
    /// The bytes an upload received so far.
    async fn upload(&self, digest: &str) -> Result<Vec<u8>, StoreError>;
    /// Forgets an upload (stored, or found wrong).
    async fn discard_upload(&self, digest: &str) -> Result<(), StoreError>;
    /// Every stored image's digest, sorted (for `migrate-store`).
    async fn digests(&self) -> Result<Vec<String>, StoreError>;
}

/// Images as files under a directory.
#[derive(Debug, Clone)]
pub struct FileImages {
    root: PathBuf,
    /// One writer at a time: chunks of one upload must not interleave.
    writing: Arc<Mutex<()>>,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let (what, path) = (what.to_owned(), path.display().to_string());
    move |err| StoreError::Backend(format!("{what} {path}: {err}"))
}

/// Digests name files: only lowercase hex of the right length may.
fn checked(digest: &str) -> Result<&str, StoreError> {
    match handover_shared::proof::is_sha256_hex(digest) {
        true => Ok(digest),
        false => Err(StoreError::Backend(format!("{digest:?} is not an image digest"))),
    }
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|dir| dir.sync_all()).map_err(io("cannot sync", path))
}

impl FileImages {
    pub fn open(root: &Path) -> Result<FileImages, StoreError> {
        fs::create_dir_all(root.join("uploads")).map_err(io("cannot create", root))?;
        Ok(FileImages { root: root.to_owned(), writing: Arc::default() })
    }

    fn path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let digest = checked(digest)?;
        Ok(self.root.join(&digest[..2]).join(digest))
    }

    fn part(&self, digest: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        let digest = checked(digest)?;
        let uploads = self.root.join("uploads");
        Ok((uploads.join(format!("{digest}.part")), uploads.join(format!("{digest}.total"))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self, digest: &str) -> Result<UploadState, StoreError> {
        if self.path(digest)?.exists() {
            return Ok(UploadState::Stored);
        }
        let (part, total_file) = self.part(digest)?;
        let received = match fs::metadata(&part) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == ErrorKind::NotFound => 0,
            Err(err) => return Err(io("cannot read", &part)(err)),
        };
        let total = match fs::read_to_string(&total_file) {
            Ok(text) => text.trim().parse().ok(),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => return Err(io("cannot read", &total_file)(err)),
        };
        Ok(UploadState::Partial { received, total })
    }

    fn write_image(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(digest)?;
        // One writer at a time: the same image stored twice at once (a
        // push retried while the first is still storing its signature)
        // is written once, and found whole by the second.
        let _writing = self.lock();
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        // Written aside, made durable, then renamed into place: a reader
        // finds the image whole or not at all.
        let aside = dir.join(format!("{digest}.{}.new", uuid::Uuid::new_v4().simple()));
        let mut file = File::create(&aside).map_err(io("cannot create", &aside))?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io("cannot write", &aside))?;
        fs::rename(&aside, &path).map_err(io("cannot store", &path))?;
        sync_dir(&dir)
    }

    fn append_chunk(
        &self,
        digest: &str,
        offset: u64,
        total: u64,
        chunk: &[u8],
    ) -> Result<Result<u64, Misplaced>, StoreError> {
        let _writing = self.lock();
        let UploadState::Partial { received, total: began } = self.state(digest)? else {
            return Ok(Ok(total));
        };
        if offset != received || began.is_some_and(|began| began != total) {
            return Ok(Err(Misplaced { received, total: began }));
        }
        let (part, total_file) = self.part(digest)?;
        if received == 0 {
            fs::write(&total_file, total.to_string()).map_err(io("cannot write", &total_file))?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&part).map_err(io("cannot open", &part))?;
        file.write_all(chunk).and_then(|()| file.sync_data()).map_err(io("cannot write", &part))?;
        if received == 0 {
            sync_dir(&self.root.join("uploads"))?;
        }
        Ok(Ok(received + chunk.len() as u64))
    }
}

#[async_trait]
impl ImageStore for FileImages {
    async fn put(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (images, digest) = (self.clone(), digest.to_owned());
        blocking(move || images.write_image(&digest, &bytes)).await
    }

    async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(digest)?;
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io("cannot read", &path)(err)),
        })
        .await
    }

    async fn upload_state(&self, digest: &str) -> Result<UploadState, StoreError> {
        let (images, digest) = (self.clone(), digest.to_owned());
        blocking(move || images.state(&digest)).await
    }

    async fn append(
        &self,
        digest: &str,
        offset: u64,
        total: u64,
        chunk: Vec<u8>,
    ) -> Result<Result<u64, Misplaced>, StoreError> {
        let (images, digest) = (self.clone(), digest.to_owned());
        blocking(move || images.append_chunk(&digest, offset, total, &chunk)).await
    }

    async fn upload(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let (part, _) = self.part(digest)?;
        blocking(move || match fs::read(&part) {
            Ok(bytes) => Ok(bytes),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(io("cannot read", &part)(err)),
        })
        .await
    }

    async fn digests(&self) -> Result<Vec<String>, StoreError> {
        let images = self.clone();
        blocking(move || images.list()).await
    }

    async fn discard_upload(&self, digest: &str) -> Result<(), StoreError> {
        let images = self.clone();
        let (part, total) = self.part(digest)?;
        blocking(move || {
            let _writing = images.lock();
            for path in [part, total] {
                match fs::remove_file(&path) {
                    Err(err) if err.kind() != ErrorKind::NotFound => return Err(io("cannot remove", &path)(err)),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }
}

impl FileImages {
    fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut digests = Vec::new();
        for shard in fs::read_dir(&self.root).map_err(io("cannot list", &self.root))? {
            let shard = shard.map_err(io("cannot list", &self.root))?.path();
            if !shard.is_dir() || shard.ends_with("uploads") {
                continue;
            }
            for file in fs::read_dir(&shard).map_err(io("cannot list", &shard))? {
                let name = file.map_err(io("cannot list", &shard))?.file_name();
                digests.extend(
                    name.to_str().filter(|name| handover_shared::proof::is_sha256_hex(name)).map(str::to_owned),
                );
            }
        }
        digests.sort_unstable();
        Ok(digests)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| StoreError::Task(err.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[tokio::test]
    async fn an_upload_takes_only_the_chunk_that_continues_it_and_an_image_is_stored_once() {
        let dir = tempfile::tempdir().expect("a dir");
        let images = FileImages::open(dir.path()).expect("opened");
        assert_eq!(images.upload_state(DIGEST).await.expect("read"), UploadState::Partial { received: 0, total: None });
        assert_eq!(images.append(DIGEST, 0, 4, b"te".to_vec()).await.expect("written"), Ok(2));
        let replayed = images.append(DIGEST, 0, 4, b"te".to_vec()).await.expect("read");
        assert_eq!(
            replayed,
            Err(Misplaced { received: 2, total: Some(4) }),
            "a chunk sent twice is not appended twice"
        );
        assert!(images.append(DIGEST, 2, 5, b"st".to_vec()).await.expect("read").is_err(), "another total");
        assert_eq!(images.append(DIGEST, 2, 4, b"st".to_vec()).await.expect("written"), Ok(4));
        assert_eq!(images.upload(DIGEST).await.expect("read"), b"test");
        images.put(DIGEST, b"test".to_vec()).await.expect("stored");
        images.put(DIGEST, b"test".to_vec()).await.expect("stored again");
        images.discard_upload(DIGEST).await.expect("discarded");
        assert_eq!(images.upload_state(DIGEST).await.expect("read"), UploadState::Stored);
        assert_eq!(images.get(DIGEST).await.expect("read").as_deref(), Some(b"test".as_slice()));
        assert!(images.get("../../etc/passwd").await.is_err(), "only digests name files");
        assert_eq!(images.digests().await.expect("listed"), [DIGEST]);
    }
}
