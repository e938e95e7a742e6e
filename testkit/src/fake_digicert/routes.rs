//! The fake's HTTP side: the key check and one handler per endpoint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::checks::parse_order;
use super::{
    DigicertOrder, FIRST_ORDER_ID, FakeState, OrderRecord, PRODUCTS, Revocation, Shared,
    request_status,
};

pub(super) fn errors(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into()}]});
    (status, Json(body)).into_response()
}

fn bad(code: &str, message: impl Into<String>) -> Response {
    errors(StatusCode::BAD_REQUEST, code, message)
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/user/me", get(user_me))
        .route("/order/certificate/{id}", get(get_order).post(create_order))
        .route("/certificate/{id}/download/format/{format}", get(download))
        .route("/certificate/{id}/revoke", put(revoke))
        .fallback(|| async { errors(StatusCode::NOT_FOUND, "not_found", "No such endpoint") })
        .layer(middleware::from_fn_with_state(shared.clone(), check_key))
        .with_state(shared);
    Router::new().nest("/services/v2", api)
}

async fn check_key(State(dc): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let ok = request
        .headers()
        .get("x-dc-devkey")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == dc.api_key);
    if !ok {
        dc.state().refused_keys += 1;
        return errors(
            StatusCode::FORBIDDEN,
            "access_denied|invalid_key",
            "The X-DC-DEVKEY header is missing or holds an unknown API key",
        );
    }
    next.run(request).await
}

async fn user_me() -> Response {
    Json(json!({
        "id": 4242,
        "username": "certplane-test",
        "account_id": 9090,
        "container": {"id": 1},
        "access_roles": [{"id": 1, "name": "Administrator"}],
    }))
    .into_response()
}

async fn create_order(
    State(dc): State<Arc<Shared>>,
    Path(product): Path<String>,
    body: Bytes,
) -> Response {
    let mut state = dc.state();
    state.submits += 1;
    if let Some(fault) = FakeState::take_fault(&mut state.submit_faults) {
        return fault.response();
    }
    if !PRODUCTS.contains(&product.as_str()) {
        return errors(
            StatusCode::NOT_FOUND,
            "not_found|product",
            format!("Product {product:?} was not found"),
        );
    }
    let new = match parse_order(&product, &body) {
        Ok(n) => n,
        Err((code, message)) => return bad(code, message),
    };
    let id = FIRST_ORDER_ID + state.orders.len() as u64;
    let request_id = state.next_request_id;
    state.next_request_id += 1;
    state.orders.push(OrderRecord {
        info: DigicertOrder {
            id,
            product,
            common_name: new.common_name,
            dns_names: new.dns_names,
            signature_hash: new.signature_hash,
            server_platform_id: new.server_platform_id,
            organization_id: new.organization_id,
            order_validity: new.order_validity,
            payment_method: new.payment_method,
            comments: new.comments,
            skip_approval: new.skip_approval,
            status: if new.skip_approval {
                "pending"
            } else {
                "needs_approval"
            }
            .into(),
            polls: 0,
            certificate_id: None,
            certificate_pem: None,
            serial_hex: None,
        },
        csr_pem: new.csr,
        validity_days: new.validity_days,
        pending_answers: 0,
        request_id,
    });
    let index = state.orders.len() - 1;
    if state.pending_polls == 0
        && let Err(e) = dc.resolve(&mut state, index)
    {
        state.orders.pop();
        return bad("invalid_csr", e);
    }
    let order = &state.orders[index];
    let mut body = json!({
        "id": id,
        "requests": [{"id": request_id, "status": request_status(&order.info)}],
    });
    if let (Some(cid), Some(leaf)) = (order.info.certificate_id, &order.info.certificate_pem) {
        let cn = &order.info.common_name;
        body["certificate_id"] = json!(cid);
        // Deliberately not leaf-first.
        body["certificate_chain"] = json!([
            {"subject_common_name": "certplane fake DigiCert intermediate", "pem": dc.intermediate_pem},
            {"subject_common_name": "certplane fake DigiCert root", "pem": dc.root_pem},
            {"subject_common_name": cn, "pem": leaf},
        ]);
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_order(State(dc): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut state = dc.state();
    state.polls += 1;
    let fault = FakeState::take_fault(&mut state.poll_faults);
    let not_found = || errors(StatusCode::NOT_FOUND, "not_found|order", "Order not found");
    let Ok(order_id) = id.parse::<u64>() else {
        return not_found();
    };
    let Some(index) = state.orders.iter().position(|o| o.info.id == order_id) else {
        return not_found();
    };
    state.orders[index].info.polls += 1;
    if let Some(fault) = fault {
        return fault.response();
    }
    let pending_polls = state.pending_polls;
    let order = &mut state.orders[index];
    let waiting = matches!(
        order.info.status.as_str(),
        "pending" | "processing" | "needs_approval"
    );
    if waiting && order.pending_answers < pending_polls {
        if order.pending_answers > 0 && order.info.skip_approval {
            order.info.status = "processing".into();
        }
        order.pending_answers += 1;
    } else if waiting && let Err(e) = dc.resolve(&mut state, index) {
        return errors(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e);
    }
    Json(dc.details(&state.orders[index])).into_response()
}

async fn download(
    State(dc): State<Arc<Shared>>,
    Path((id, format)): Path<(String, String)>,
) -> Response {
    let mut state = dc.state();
    let leaf = id.parse::<u64>().ok().and_then(|cid| {
        state
            .orders
            .iter()
            .find(|o| o.info.certificate_id == Some(cid))
            .and_then(|o| o.info.certificate_pem.clone())
    });
    let Some(leaf) = leaf else {
        return errors(
            StatusCode::NOT_FOUND,
            "not_found|certificate",
            "Certificate not found",
        );
    };
    let text = match format.as_str() {
        "pem_all" => dc.pem_all(&leaf),
        "pem_nointermediate" => leaf,
        _ => {
            return errors(
                StatusCode::NOT_FOUND,
                "not_found|format",
                format!("Format {format:?} is not available"),
            );
        }
    };
    state.downloads += 1;
    ([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response()
}

async fn revoke(State(dc): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let mut state = dc.state();
    if let Some(fault) = FakeState::take_fault(&mut state.revoke_faults) {
        return fault.response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return bad(
                "bad_request_format",
                "The request body is not a JSON object",
            );
        }
    };
    let not_found = || {
        errors(
            StatusCode::NOT_FOUND,
            "not_found|certificate",
            "Certificate not found",
        )
    };
    let Ok(certificate_id) = id.parse::<u64>() else {
        return not_found();
    };
    let Some(order) = state
        .orders
        .iter_mut()
        .find(|o| o.info.certificate_id == Some(certificate_id))
    else {
        return not_found();
    };
    let skip_approval = v
        .get("skip_approval")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let comments = v
        .get("comments")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if skip_approval {
        order.info.status = "revoked".into();
    }
    state.revocations.push(Revocation {
        certificate_id,
        comments: comments.clone(),
        skip_approval,
    });
    if skip_approval {
        return StatusCode::NO_CONTENT.into_response();
    }
    let request_id = state.next_request_id;
    state.next_request_id += 1;
    (
        StatusCode::CREATED,
        Json(json!({
            "id": request_id,
            "date": "2025-01-01T00:00:00+00:00",
            "type": "revoke",
            "status": "pending",
            "requester": {"id": 4242, "first_name": "certplane", "last_name": "test"},
            "comments": comments,
        })),
    )
        .into_response()
}
