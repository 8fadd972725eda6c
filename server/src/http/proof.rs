//! Photo uploads from handhelds and the images of a receipt's proof.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use handover_shared::{DeliveryId, ErrorCode};

use super::{
    error::ApiError,
    extract::{Auth, Courier},
    AppState,
};
use crate::{domain::photos::Chunk, proof};

type State = web::Data<AppState>;

/// `GET /api/v1/deliveries/{id}/photos/{digest}`: how far the upload came.
pub async fn photo_state(
    state: State,
    caller: Auth<Courier>,
    path: web::Path<(DeliveryId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, digest) = path.into_inner();
    Ok(HttpResponse::Ok().json(proof::upload_state(state.store.as_ref(), &caller, &id, &digest).await?))
}

/// `Content-Range: bytes FIRST-LAST/TOTAL`.
fn content_range(request: &HttpRequest) -> Result<Chunk, ApiError> {
    let refused = || {
        ApiError::refused(
            ErrorCode::InvalidContentRange,
            "send each chunk with Content-Range: bytes FIRST-LAST/TOTAL (LAST inclusive)",
        )
    };
    let value =
        request.headers().get(header::CONTENT_RANGE).and_then(|value| value.to_str().ok()).ok_or_else(refused)?;
    let (range, total) = value.strip_prefix("bytes ").and_then(|rest| rest.split_once('/')).ok_or_else(refused)?;
    let (first, last) = range.split_once('-').ok_or_else(refused)?;
    let number = |text: &str| text.trim().parse::<u64>().map_err(|_| refused());
    Ok(Chunk { first: number(first)?, last: number(last)?, total: number(total)? })
}

/// `PUT /api/v1/deliveries/{id}/photos/{digest}`: one chunk, at the offset
/// its `Content-Range` names.
pub async fn photo_chunk(
    state: State,
    caller: Auth<Courier>,
    request: HttpRequest,
    path: web::Path<(DeliveryId, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (id, digest) = path.into_inner();
    let chunk = content_range(&request)?;
    let progress = proof::upload_chunk(state.store.as_ref(), &caller, &id, &digest, chunk, body.to_vec()).await?;
    Ok(HttpResponse::Ok().json(progress))
}

/// An image with its own content type, never sniffed otherwise, kept private.
pub fn image_response(kind: handover_shared::proof::ImageKind, bytes: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(kind.content_type())
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(bytes)
}
