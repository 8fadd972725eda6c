//! Paging of lists: `limit` (1 to 500, default 50) and `after` (the last id of
//! the previous page), the same for every list endpoint.

use std::fmt::Display;

use handover_shared::ErrorCode;

use super::error::ApiError;

/// The largest page a list endpoint returns.
pub const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 50;

/// The page size asked for, checked.
pub fn limit(asked: Option<usize>) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::refused(ErrorCode::InvalidQuery, format!("limit must be from 1 to {MAX_PAGE}")))
    }
}

/// The position after which the page starts; `seq` reads it from the id, and
/// `example` names a well-formed one for the error ("a receipt id like R-000123").
pub fn after<Id: Display>(
    asked: Option<&Id>,
    seq: impl Fn(&Id) -> Option<u64>,
    example: &str,
) -> Result<Option<u64>, ApiError> {
    asked
        .map(|id| {
            seq(id)
                .ok_or_else(|| ApiError::refused(ErrorCode::InvalidQuery, format!("after must be {example}, not {id}")))
        })
        .transpose()
}

/// The id to ask for the next page with, when this page is full.
pub fn next_after<T, Id>(page: &[T], limit: usize, id: impl Fn(&T) -> Id) -> Option<Id> {
    page.last().filter(|_| page.len() == limit).map(id)
}
