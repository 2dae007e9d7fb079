//! Answers porteiro writes itself: `respond` routes and its own errors (unknown host, no
//! healthy backend, bad gateway). Errors are short plain text that names the problem, never
//! the tenant's internals; the request id lets an operator find the matching log line.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::headers::X_REQUEST_ID;

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
        resp.insert_header(X_REQUEST_ID, id.clone())?;
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

/// A plain-text error answer: `status` and a one-line reason.
pub async fn error(
    session: &mut Session,
    status: u16,
    reason: &'static str,
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
    send(
        session,
        status,
        &headers,
        Bytes::from_static(reason.as_bytes()),
        request_id,
    )
    .await
}

/// The reason line for each status porteiro produces itself.
pub fn reason_for(status: u16) -> &'static str {
    match status {
        400 => "400 Bad Request: the request has no usable Host\n",
        404 => "404 Not Found: no tenant serves this host\n",
        421 => "421 Misdirected Request\n",
        502 => "502 Bad Gateway: the backend could not be reached or gave no valid answer\n",
        503 => "503 Service Unavailable: no healthy backend for this request\n",
        504 => "504 Gateway Timeout: the backend did not answer in time\n",
        _ => "porteiro could not serve this request\n",
    }
}
