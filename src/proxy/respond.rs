//! Answers porteiro writes itself: `respond` routes and its own errors (unknown host, no
//! healthy backend, bad gateway). Errors are short plain text that names the problem, never
//! the tenant's internals; the request id lets an operator find the matching log line.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::headers::REQUEST_ID;

pub async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    request_id: Option<&HeaderValue>,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 3))?;
    for (name, value) in headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    if let Some(id) = request_id {
        resp.insert_header(REQUEST_ID, id.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// A plain-text error answer: `"{status} {reason}: {why}"`, where `why` names the problem
/// (empty: the status says it all).
pub async fn error(
    session: &mut Session,
    status: u16,
    why: &str,
    request_id: Option<&HeaderValue>,
    hsts: Option<&HeaderValue>,
) -> pingora::Result<()> {
    let mut headers = vec![(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    )];
    if let Some(hsts) = hsts {
        headers.push((http::header::STRICT_TRANSPORT_SECURITY, hsts.clone()));
    }
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = match why {
        "" => format!("{status} {reason}\n"),
        _ => format!("{status} {reason}: {why}\n"),
    };
    send(session, status, &headers, Bytes::from(body), request_id).await
}

/// What went wrong, for the statuses a failed proxy attempt ends with.
pub fn failure_reason(status: u16) -> &'static str {
    match status {
        408 => "the request body did not arrive in time",
        413 => "the request body exceeds this site's limit",
        502 => "the backend could not be reached or gave no valid answer",
        503 => "no healthy backend for this request",
        504 => "the backend did not answer in time",
        _ => "",
    }
}
