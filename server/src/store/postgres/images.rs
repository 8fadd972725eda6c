//! Proof images on PostgreSQL: every instance sees every image, and an
//! upload may continue on another instance than the one it began on.

use async_trait::async_trait;

use super::{
    sql::{execute, query, Failed},
    PgStore, ATTEMPTS,
};
use crate::store::{
    images::{ImageStore, Misplaced, UploadState},
    StoreError,
};

fn length(row: &tokio_postgres::Row, index: usize) -> Result<u64, Failed> {
    let value: i64 = row.try_get(index)?;
    u64::try_from(value).map_err(|_| Failed::Store(StoreError::Backend(format!("a negative length {value}"))))
}

fn signed(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Backend(format!("{value} bytes is beyond any image")))
}

#[async_trait]
impl ImageStore for PgStore {
    async fn put(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        reading!(self, client => async {
            execute(
                client,
                "INSERT INTO images (digest, content_type, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&digest, &handover_shared::proof::ImageKind::sniff(&bytes).map_or("application/octet-stream", |kind| kind.content_type()), &bytes],
            )
            .await
            .map(|_| ())
        })
    }

    async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        reading!(self, client => async {
            let rows = query(client, "SELECT bytes FROM images WHERE digest = $1", &[&digest]).await?;
            rows.first().map(|row| row.try_get::<_, Vec<u8>>(0).map_err(Failed::from)).transpose()
        })
    }

    async fn upload_state(&self, digest: &str) -> Result<UploadState, StoreError> {
        reading!(self, client => async {
            if !query(client, "SELECT 1 FROM images WHERE digest = $1", &[&digest]).await?.is_empty() {
                return Ok(UploadState::Stored);
            }
            let rows =
                query(client, "SELECT length(bytes)::bigint, total FROM image_uploads WHERE digest = $1", &[&digest])
                    .await?;
            Ok(match rows.first() {
                Some(row) => UploadState::Partial { received: length(row, 0)?, total: Some(length(row, 1)?) },
                None => UploadState::Partial { received: 0, total: None },
            })
        })
    }

    async fn append(
        &self,
        digest: &str,
        offset: u64,
        total: u64,
        chunk: Vec<u8>,
    ) -> Result<Result<u64, Misplaced>, StoreError> {
        let (offset, total) = (signed(offset)?, signed(total)?);
        reading!(self, client => async {
            if offset == 0 {
                execute(
                    client,
                    "INSERT INTO image_uploads (digest, total, bytes) VALUES ($1, $2, '') ON CONFLICT DO NOTHING",
                    &[&digest, &total],
                )
                .await?;
            }
            // Appended only where the upload stands, for the total it began
            // with: one statement, so that two instances never both append.
            let rows = query(
                client,
                "UPDATE image_uploads SET bytes = bytes || $4, updated_at = now()
                 WHERE digest = $1 AND length(bytes)::bigint = $2 AND total = $3 RETURNING length(bytes)::bigint",
                &[&digest, &offset, &total, &chunk],
            )
            .await?;
            if let Some(row) = rows.first() {
                return Ok(Ok(length(row, 0)?));
            }
            let rows =
                query(client, "SELECT length(bytes)::bigint, total FROM image_uploads WHERE digest = $1", &[&digest])
                    .await?;
            Ok(Err(match rows.first() {
                Some(row) => Misplaced { received: length(row, 0)?, total: Some(length(row, 1)?) },
                None => Misplaced { received: 0, total: None },
            }))
        })
    }

    async fn upload(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        reading!(self, client => async {
            let rows = query(client, "SELECT bytes FROM image_uploads WHERE digest = $1", &[&digest]).await?;
            Ok(rows.first().map(|row| row.try_get::<_, Vec<u8>>(0)).transpose()?.unwrap_or_default())
        })
    }

    async fn digests(&self) -> Result<Vec<String>, StoreError> {
        reading!(self, client => async {
            let rows = query(client, "SELECT digest FROM images ORDER BY digest", &[]).await?;
            rows.iter().map(|row| row.try_get::<_, String>(0).map_err(Failed::from)).collect()
        })
    }

    async fn discard_upload(&self, digest: &str) -> Result<(), StoreError> {
        reading!(self, client => async {
            execute(client, "DELETE FROM image_uploads WHERE digest = $1", &[&digest]).await.map(|_| ())
        })
    }
}
