//! `POST /webhooks/github`: the headers and raw body to the API's webhook intake.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::control_plane::{AppState, WebhookDelivery};
use crate::error::Result;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

pub(in crate::control_plane) async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let delivery = WebhookDelivery {
        event: header(&headers, "x-github-event"),
        delivery_id: header(&headers, "x-github-delivery"),
        signature: header(&headers, "x-hub-signature-256"),
        content_type: header(&headers, "content-type"),
        body: &body,
    };
    let answer = state.receive_webhook(&delivery).await?;
    Ok((answer.status, Json(answer.body)).into_response())
}
