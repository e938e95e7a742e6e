//! Pagination and conditional GETs for list endpoints.

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
pub struct PageQuery {
    /// 1-based page number.
    pub page: Option<u32>,
    /// Items per page (1–500, default 50).
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

/// Serialises `body` as JSON with a strong ETag; answers 304 when the
/// request's `If-None-Match` already names it.
pub fn conditional_json<T: Serialize>(request_headers: &HeaderMap, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..32]);
    let matches = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
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
}
