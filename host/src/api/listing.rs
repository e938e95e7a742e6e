//! Pagination, and the conditional requests of lists and single
//! resources: a strong `ETag` on every GET with `If-None-Match` → 304, and
//! `If-Match` → 412 on writes.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;

/// Largest page size a client may ask for.
pub const MAX_PER_PAGE: u32 = 500;

/// `?page=&per_page=` (1-based page, default 50 per page).
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub per_page: Option<u32>,
}

impl PageQuery {
    /// Validated (page, per_page).
    pub fn resolve(self) -> Result<(u32, u32), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(50);
        if page == 0 {
            return Err(ApiError::bad_request("page starts at 1"));
        }
        if per_page == 0 || per_page > MAX_PER_PAGE {
            return Err(ApiError::bad_request(format!(
                "per_page must be between 1 and {MAX_PER_PAGE}"
            )));
        }
        Ok((page, per_page))
    }
}

/// Rows to skip for a resolved (1-based) `page` of `per_page` rows, for
/// lists paged in SQL.
pub fn offset(page: u32, per_page: u32) -> u64 {
    u64::from(page.saturating_sub(1)) * u64::from(per_page)
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// This page's number.
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// Items in the whole list.
    pub total: u64,
}

impl<T: Clone> Page<T> {
    /// Cuts one page out of a complete, ordered list.
    pub fn of(all: &[T], query: PageQuery) -> Result<Page<T>, ApiError> {
        let (page, per_page) = query.resolve()?;
        let start = (page as usize - 1).saturating_mul(per_page as usize);
        let items = all
            .iter()
            .skip(start)
            .take(per_page as usize)
            .cloned()
            .collect();
        Ok(Page {
            items,
            page,
            per_page,
            total: all.len() as u64,
        })
    }
}

/// `body` serialised as JSON, and its strong ETag (a quoted digest of
/// those bytes): what [`conditional_json`] sends and [`check_if_match`]
/// compares against.
pub fn etag_of<T: Serialize>(body: &T) -> Result<(String, Vec<u8>), ApiError> {
    let bytes = serde_json::to_vec(body).map_err(ApiError::internal)?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..32]);
    Ok((etag, bytes))
}

/// The entity tags a conditional header lists (`*` included as is).
fn listed_tags(
    request_headers: &HeaderMap,
    name: header::HeaderName,
) -> impl Iterator<Item = &str> {
    request_headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Honours `If-Match` on a write: without the header anything goes;
/// otherwise `*` or one of its tags must be `current` (the ETag a GET of
/// the resource gives now), compared strongly (a weak `W/` tag never
/// matches), else 412 `precondition_failed`.
pub fn check_if_match(request_headers: &HeaderMap, current: &str) -> Result<(), ApiError> {
    let mut tags = listed_tags(request_headers, header::IF_MATCH).peekable();
    if tags.peek().is_none() {
        return Ok(());
    }
    if tags.any(|t| t == "*" || t == current) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        format!("If-Match does not name the current version ({current}); GET it again and retry"),
    ))
}

/// Whether an `If-Match` header was sent (the write must then also be
/// guarded against a change between the check and the write).
pub fn has_if_match(request_headers: &HeaderMap) -> bool {
    request_headers.contains_key(header::IF_MATCH)
}

/// Serialises `body` as JSON with a strong ETag; answers 304 when the
/// request's `If-None-Match` already names it.
pub fn conditional_json<T: Serialize>(request_headers: &HeaderMap, body: &T) -> Response {
    let (etag, bytes) = match etag_of(body) {
        Ok(tagged) => tagged,
        Err(e) => return e.into_response(),
    };
    let matches = listed_tags(request_headers, header::IF_NONE_MATCH)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag);
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// Plain JSON response, for symmetry with [`conditional_json`].
pub fn json<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_cut_and_bounds_checked() {
        let all: Vec<u32> = (1..=120).collect();
        let p = Page::of(
            &all,
            PageQuery {
                page: Some(3),
                per_page: Some(50),
            },
        )
        .unwrap();
        assert_eq!(p.items, (101..=120).collect::<Vec<_>>());
        assert_eq!(p.total, 120);
        assert!(
            Page::of(
                &all,
                PageQuery {
                    page: Some(0),
                    per_page: None
                }
            )
            .is_err()
        );
        assert!(
            Page::of(
                &all,
                PageQuery {
                    page: None,
                    per_page: Some(501)
                }
            )
            .is_err()
        );
        let past = Page::of(
            &all,
            PageQuery {
                page: Some(9),
                per_page: None,
            },
        )
        .unwrap();
        assert!(past.items.is_empty());
    }

    #[test]
    fn etag_round_trip_gives_304() {
        let body = serde_json::json!({"a": 1});
        let first = conditional_json(&HeaderMap::new(), &body);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            conditional_json(&h, &body).status(),
            StatusCode::NOT_MODIFIED
        );
        let changed = serde_json::json!({"a": 2});
        assert_eq!(conditional_json(&h, &changed).status(), StatusCode::OK);
    }

    #[test]
    fn if_match_is_strong_and_lists_are_read() {
        let (tag, _) = etag_of(&serde_json::json!({"a": 1})).unwrap();
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(check_if_match(&HeaderMap::new(), &tag).is_ok());
        assert!(check_if_match(&with(&tag), &tag).is_ok());
        assert!(check_if_match(&with("*"), &tag).is_ok());
        assert!(check_if_match(&with(&format!("\"x\", {tag}")), &tag).is_ok());
        let stale = check_if_match(&with("\"x\""), &tag).unwrap_err();
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(stale.code, "precondition_failed");
        assert!(check_if_match(&with(&format!("W/{tag}")), &tag).is_err());
    }
}
