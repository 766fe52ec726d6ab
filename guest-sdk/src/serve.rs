//! The glue between `wasi:http` and `fn(Request) -> Response`.

use crate::{Request, Response};
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Reads the request, runs `handler` and writes its response. Used by [`crate::http_function!`].
pub fn serve(request: IncomingRequest, out: ResponseOutparam, handler: fn(Request) -> Response) {
    let response = match read_request(&request) {
        Ok(request) => handler(request),
        Err(message) => Response::text(400, format!("could not read the request: {message}\n")),
    };
    write_response(out, response);
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

fn read_request(request: &IncomingRequest) -> Result<Request, String> {
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (path_with_query, String::new()),
    };
    let headers = request.headers().entries();
    let body = request
        .consume()
        .map_err(|()| "the body was already consumed".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the body stream is unavailable".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(error) => return Err(format!("reading the body failed: {error:?}")),
            }
        }
    }
    IncomingBody::finish(body);
    Ok(Request {
        method: method_name(request.method()),
        path,
        query,
        headers,
        body: bytes,
    })
}

fn write_response(out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // Invalid or forbidden headers are dropped rather than failing the whole response.
        let _ = headers.append(name, value);
    }
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let body = outgoing.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(outgoing));
    {
        let stream = body.write().expect("a new body has a stream");
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The client went away; nothing more to do.
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
