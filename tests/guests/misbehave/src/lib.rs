//! A test guest written against the raw `wasi` crate (no Flint SDK). The last path segment
//! picks the behaviour:
//!
//! - `echo`: answers `METHOD PATH\n` followed by the request body.
//! - `env?key=K`: the value of environment variable K (404 if unset).
//! - `tag`: `$TAG` (used to tell deployed versions apart), after `?ms=N` milliseconds.
//! - `sleep?ms=N`: sleeps N ms, then answers `slept N`.
//! - `print?lines=N`: writes N numbered lines to stdout and one to stderr.
//! - `trap`: panics (a trap).
//! - `loop`: spins forever (a timeout).
//! - `bomb`: allocates memory until it cannot (the memory cap).
//! - `noresponse`: returns without sending a response.
//! - `outbound?url=U`: tries an outgoing HTTP GET of U and reports the outcome.
//! - `residue?mb=N&stride=S&ms=M`: grows memory by N MiB (default 16), which a fresh sandbox
//!   must find all zero, and answers `residue K` with K the bytes that were not. Before
//!   answering it writes `0xA5` over one 4 KiB page in every S (default 1: all of them) and
//!   sleeps M ms: what one request writes is what the next one in the same pool slot would
//!   see if the slot were not reset. A stride of 2 leaves many small dirty runs, not one.
//! - `count`: how many requests this instance has handled, this one included (always 1 in a
//!   fresh sandbox), and its `FLINT_INVOCATION_ID`, as `N ID`.

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Guest;

/// Requests this instance has handled.
static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

wasi::http::proxy::export!(Guest);

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("body");
    let mut bytes = Vec::new();
    {
        let stream = body.stream().expect("stream");
        while let Ok(chunk) = stream.blocking_read(65536) {
            bytes.extend_from_slice(&chunk);
        }
    }
    IncomingBody::finish(body);
    bytes
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("status");
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("stream");
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write");
        }
    }
    OutgoingBody::finish(outgoing, None).expect("finish");
}

/// The number in query parameter `name`, or `default` if it is missing or not a number.
fn query_number<T: std::str::FromStr>(query: &str, name: &str, default: T) -> T {
    query_param(query, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sleep_ms(query: &str) -> u64 {
    let ms = query_number(query, "ms", 0);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    ms
}

impl wasi::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let full = request.path_with_query().unwrap_or_default();
        let (path, query) = full.split_once('?').unwrap_or((&full, ""));
        let action = path.rsplit('/').next().unwrap_or_default();
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match action {
            "count" => {
                let id = std::env::var("FLINT_INVOCATION_ID").unwrap_or_default();
                respond(out, 200, format!("{handled} {id}").as_bytes());
            }
            "echo" => {
                let method = match request.method() {
                    Method::Get => "GET".to_string(),
                    Method::Post => "POST".to_string(),
                    Method::Put => "PUT".to_string(),
                    other => format!("{other:?}"),
                };
                let mut answer = format!("{method} {path}\n").into_bytes();
                answer.extend(read_body(&request));
                respond(out, 200, &answer);
            }
            "env" => {
                let key = query_param(query, "key").unwrap_or_default();
                match std::env::var(&key) {
                    Ok(value) => respond(out, 200, value.as_bytes()),
                    Err(_) => respond(out, 404, format!("{key} is not set").as_bytes()),
                }
            }
            "tag" => {
                sleep_ms(query);
                let tag = std::env::var("TAG").unwrap_or_default();
                respond(out, 200, tag.as_bytes());
            }
            "sleep" => {
                let ms = sleep_ms(query);
                respond(out, 200, format!("slept {ms}").as_bytes());
            }
            "print" => {
                let lines: u32 = query_number(query, "lines", 1);
                for i in 0..lines {
                    println!("guest line {i}");
                }
                eprintln!("guest stderr line");
                respond(out, 200, format!("printed {lines}").as_bytes());
            }
            "trap" => panic!("misbehave: deliberate panic"),
            "loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    chunk[0] = hoard.len() as u8;
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            "residue" => {
                let block = grow_memory(query_number::<usize>(query, "mb", 16) << 20);
                let residue = block.iter().filter(|&&byte| byte != 0).count();
                for page in block
                    .chunks_mut(4096)
                    .step_by(query_number(query, "stride", 1).max(1))
                {
                    page.fill(0xA5);
                }
                std::hint::black_box(&block);
                sleep_ms(query);
                respond(out, 200, format!("residue {residue}").as_bytes());
            }
            "noresponse" => {}
            "outbound" => {
                let url = query_param(query, "url").unwrap_or_default();
                let outcome = outbound_get(&url);
                respond(out, 200, outcome.as_bytes());
            }
            _ => respond(out, 404, format!("unknown action `{action}`").as_bytes()),
        }
    }
}

/// Grows linear memory by `bytes` (rounded up to whole wasm pages) and returns the new pages.
/// The WebAssembly spec makes them zero. They are taken straight from `memory.grow`, not from
/// the allocator, which may clear what it hands out and so hide what an earlier instance left.
fn grow_memory(bytes: usize) -> &'static mut [u8] {
    const WASM_PAGE: usize = 64 << 10;
    let pages = bytes.div_ceil(WASM_PAGE);
    let first_page = core::arch::wasm32::memory_grow(0, pages);
    assert_ne!(
        first_page,
        usize::MAX,
        "memory.grow of {pages} pages failed"
    );
    // SAFETY: the pages were just added to linear memory; nothing else refers to them (the
    // allocator grows memory past them when it needs more).
    unsafe {
        std::slice::from_raw_parts_mut((first_page * WASM_PAGE) as *mut u8, pages * WASM_PAGE)
    }
}

fn outbound_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match wasi::http::outgoing_handler::handle(request, None) {
        Err(error) => format!("denied: {error:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status {}", response.status()),
                Some(Ok(Err(error))) => format!("denied: {error:?}"),
                other => format!("failed: {other:?}"),
            }
        }
    }
}
