//! Proof of delivery as the API and the pages use it: photo uploads from
//! handhelds, the images a receipt's readers may see, and the signed records
//! an auditor checks offline. Access is checked here, on loaded objects; the
//! rules are in `domain::photos` and `domain::chain`.

use handover_shared::{
    api::{DeliveryProof, PhotoUpload},
    proof::{ImageKind, SignedProof},
    DeliveryId,
};

use crate::{
    domain::{
        access::Principal,
        orders::Receipt,
        photos::{self, Chunk, PhotoRefusal},
        shipments::Delivery,
    },
    store::{images::UploadState, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ProofFailure {
    /// No such delivery or image, or not the caller's to see or send.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] PhotoRefusal),
    /// The chunk does not start where the upload stands.
    #[error("this upload stands at byte {received}; send the chunk that starts there")]
    Misplaced { received: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether the proof's photo has reached the server.
pub async fn photo_received(store: &dyn Store, proof: &DeliveryProof) -> Result<bool, StoreError> {
    match &proof.photo_digest {
        Some(digest) => Ok(store.images().upload_state(digest).await? == UploadState::Stored),
        None => Ok(false),
    }
}

/// The receipt's deliveries, as stored.
async fn deliveries(store: &dyn Store, receipt: &Receipt) -> Result<Vec<Delivery>, StoreError> {
    let mut deliveries = Vec::with_capacity(receipt.deliveries.len());
    for id in &receipt.deliveries {
        deliveries.extend(store.delivery(id).await?);
    }
    Ok(deliveries)
}

/// Every signed confirmation of the receipt's deliveries, oldest first, with
/// its device's registered key.
pub async fn signed_records(store: &dyn Store, receipt: &Receipt) -> Result<Vec<SignedProof>, StoreError> {
    let mut records = Vec::new();
    for delivery in deliveries(store, receipt).await? {
        for attempt in delivery.attempts {
            let Some(signed) = attempt.signed else { continue };
            let Some(chain) = store.device_chain(&attempt.device_id).await? else { continue };
            records.push(SignedProof {
                record: signed.record,
                signature: signed.signature,
                device_id: attempt.device_id,
                public_key: chain.public_key,
            });
        }
    }
    Ok(records)
}

/// An image of the receipt's proof, with its format; `NotFound` for any
/// other digest, or one not uploaded yet.
pub async fn image(store: &dyn Store, receipt: &Receipt, digest: &str) -> Result<(ImageKind, Vec<u8>), ProofFailure> {
    let missing = || ProofFailure::NotFound(format!("no image {digest} in the proof of {}", receipt.receipt_id));
    if !handover_shared::proof::is_sha256_hex(digest)
        || !photos::shown_with(receipt, &deliveries(store, receipt).await?, digest)
    {
        return Err(missing());
    }
    let bytes = store.images().get(digest).await?.ok_or_else(missing)?;
    let kind = ImageKind::sniff(&bytes).ok_or_else(missing)?;
    Ok((kind, bytes))
}

/// The delivery, when the caller may upload `digest` for it.
async fn uploadable(
    store: &dyn Store,
    caller: &Principal,
    id: &DeliveryId,
    digest: &str,
) -> Result<Delivery, ProofFailure> {
    let not_held = || ProofFailure::NotFound(format!("{} holds no delivery {id} to send a photo for", caller.username));
    if !handover_shared::proof::is_sha256_hex(digest) {
        return Err(ProofFailure::NotFound(format!("{digest:?} is not a photo digest (SHA-256, lowercase hex)")));
    }
    let delivery = store.delivery(id).await?.ok_or_else(not_held)?;
    if !photos::may_upload(&delivery, &caller.username, digest) {
        return Err(not_held());
    }
    Ok(delivery)
}

fn progress(digest: &str, state: UploadState) -> PhotoUpload {
    match state {
        UploadState::Stored => PhotoUpload { digest: digest.to_owned(), received: 0, complete: true },
        UploadState::Partial { received, .. } => PhotoUpload { digest: digest.to_owned(), received, complete: false },
    }
}

/// Where an upload stands, for the courier to resume from. An upload found
/// whole but not stored (its last chunk arrived, then the server stopped
/// before it stored the photo) is finished here.
pub async fn upload_state(
    store: &dyn Store,
    caller: &Principal,
    id: &DeliveryId,
    digest: &str,
) -> Result<PhotoUpload, ProofFailure> {
    uploadable(store, caller, id, digest).await?;
    match store.images().upload_state(digest).await? {
        UploadState::Partial { received, total: Some(total) } if received >= total => {
            finish(store, caller, id, digest).await
        }
        state => Ok(progress(digest, state)),
    }
}

/// Checks a whole upload against its digest and stores it, durably, before
/// anyone is told it is complete; an upload that is not the photo it claims
/// is discarded whole.
async fn finish(
    store: &dyn Store,
    caller: &Principal,
    id: &DeliveryId,
    digest: &str,
) -> Result<PhotoUpload, ProofFailure> {
    let images = store.images();
    let whole = images.upload(digest).await?;
    let received = whole.len() as u64;
    if let Err(refusal) = photos::check_upload(digest, &whole) {
        images.discard_upload(digest).await?;
        return Err(refusal.into());
    }
    images.put(digest, whole).await?;
    images.discard_upload(digest).await?;
    tracing::info!(delivery_id = %id, digest, username = %caller.username, "photo stored");
    Ok(PhotoUpload { digest: digest.to_owned(), received, complete: true })
}

/// Takes one chunk of a photo. The last one completes the upload: the photo
/// is checked against its digest and stored (durably) before the answer
/// says `complete`; a photo that does not match is discarded whole.
pub async fn upload_chunk(
    store: &dyn Store,
    caller: &Principal,
    id: &DeliveryId,
    digest: &str,
    chunk: Chunk,
    bytes: Vec<u8>,
) -> Result<PhotoUpload, ProofFailure> {
    uploadable(store, caller, id, digest).await?;
    photos::judge_chunk(chunk, bytes.len())?;
    let images = store.images();
    if images.upload_state(digest).await? == UploadState::Stored {
        return Ok(progress(digest, UploadState::Stored));
    }
    let received = match images.append(digest, chunk.first, chunk.total, bytes).await? {
        Ok(received) => received,
        Err(misplaced) => return Err(ProofFailure::Misplaced { received: misplaced.received }),
    };
    if received < chunk.total {
        return Ok(PhotoUpload { digest: digest.to_owned(), received, complete: false });
    }
    finish(store, caller, id, digest).await
}
