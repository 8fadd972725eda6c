//! Proof images: who may upload a photo for a delivery, what a chunk of an
//! upload must say, when a whole upload is the photo it claims to be, and
//! which images a receipt's readers may see.

use handover_shared::{
    proof::{check_photo, sha256_hex, ImageKind, MAX_PHOTO_BYTES},
    Username,
};

use super::{orders::Receipt, shipments::Delivery};

/// Why a photo upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhotoRefusal {
    #[error("{0}")]
    InvalidRange(String),
    #[error("the bytes received hash to {computed}, not to {claimed}; the upload starts again from 0")]
    DigestMismatch { claimed: String, computed: String },
    #[error("{0}")]
    InvalidPhoto(String),
}

/// A courier may upload the photo that one of its own accepted attempts of
/// the delivery names, and no other: a photo follows its confirmation, and
/// a courier's token cannot fill the server's disk with anything else.
pub fn may_upload(delivery: &Delivery, uploader: &Username, digest: &str) -> bool {
    delivery.attempts.iter().any(|attempt| &attempt.by == uploader && attempt.photo_digest.as_deref() == Some(digest))
}

/// A chunk as its `Content-Range` places it: `first..=last` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

/// Checks a chunk's place against its own length and the size limit.
pub fn judge_chunk(chunk: Chunk, body_len: usize) -> Result<(), PhotoRefusal> {
    let Chunk { first, last, total } = chunk;
    if total == 0 || total > MAX_PHOTO_BYTES {
        return Err(PhotoRefusal::InvalidPhoto(format!(
            "a photo is 1 byte to {} MiB; this one says {total} bytes",
            MAX_PHOTO_BYTES / 1024 / 1024
        )));
    }
    if first > last || last >= total {
        return Err(PhotoRefusal::InvalidRange(format!(
            "bytes {first}-{last}/{total} is not a range within the photo"
        )));
    }
    if last - first + 1 != body_len as u64 {
        return Err(PhotoRefusal::InvalidRange(format!(
            "Content-Range says {} bytes, the body has {body_len}",
            last - first + 1
        )));
    }
    Ok(())
}

/// A whole upload is the photo its digest names, in a format a photo may have.
pub fn check_upload(digest: &str, bytes: &[u8]) -> Result<ImageKind, PhotoRefusal> {
    let computed = sha256_hex(bytes);
    if computed != digest {
        return Err(PhotoRefusal::DigestMismatch { claimed: digest.to_owned(), computed });
    }
    check_photo(bytes).map_err(PhotoRefusal::InvalidPhoto)
}

/// Whether an image belongs to the proof of a receipt: the photo or
/// signature of its latest hand-over, or the photo of any attempt of its
/// deliveries.
pub fn shown_with(receipt: &Receipt, deliveries: &[Delivery], digest: &str) -> bool {
    let proof = receipt.proof.as_ref();
    proof.is_some_and(|proof| {
        proof.photo_digest.as_deref() == Some(digest) || proof.signature_digest.as_deref() == Some(digest)
    }) || deliveries
        .iter()
        .filter(|delivery| delivery.receipt_id == receipt.receipt_id)
        .flat_map(|delivery| &delivery.attempts)
        .any(|attempt| attempt.photo_digest.as_deref() == Some(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_must_lie_within_its_photo_and_match_its_body() {
        assert_eq!(judge_chunk(Chunk { first: 0, last: 9, total: 20 }, 10), Ok(()));
        assert!(judge_chunk(Chunk { first: 0, last: 9, total: 20 }, 9).is_err(), "the body is shorter");
        assert!(judge_chunk(Chunk { first: 10, last: 20, total: 20 }, 11).is_err(), "past the end");
        assert!(judge_chunk(Chunk { first: 0, last: 0, total: MAX_PHOTO_BYTES + 1 }, 1).is_err(), "too large");
    }

    #[test]
    fn a_whole_upload_must_hash_to_its_digest_and_be_an_image() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        assert_eq!(check_upload(&sha256_hex(&jpeg), &jpeg), Ok(ImageKind::Jpeg));
        assert!(matches!(check_upload(&sha256_hex(b"other"), &jpeg), Err(PhotoRefusal::DigestMismatch { .. })));
        assert!(matches!(check_upload(&sha256_hex(b"text"), b"text"), Err(PhotoRefusal::InvalidPhoto(_))));
    }
}
