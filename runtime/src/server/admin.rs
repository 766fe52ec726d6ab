//! The admin API under `/v1/` (bearer token required), plus `/healthz` and `/readyz`.
//!
//! [`ROUTES`] is the routing table; `openapi.json` next to this file describes the same routes
//! and a test checks the two agree.

use crate::error::{ApiError, ErrorKind};
use crate::invoke::{self, ResponseBody, error_response, json_response};
use crate::node::Node;
use crate::server::public;
use crate::settings::FunctionSettings;
use crate::units::format_size;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every operation of the admin listener, as `(method, path template)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/node"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/gpu"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/models/{name}"),
    ("DELETE", "/v1/models/{name}"),
    ("GET", "/v1/functions"),
    ("GET", "/v1/functions/{name}"),
    ("DELETE", "/v1/functions/{name}"),
    ("GET", "/v1/functions/{name}/versions"),
    ("POST", "/v1/functions/{name}/versions"),
    ("POST", "/v1/functions/{name}/rollback"),
    ("POST", "/v1/functions/{name}/invoke"),
    ("GET", "/v1/functions/{name}/logs"),
];

/// Largest JSON body the admin API reads (rollback requests).
const MAX_JSON_BODY: usize = 64 << 10;

/// Matches `path` against a template of [`ROUTES`]; returns the `{name}` segment if any.
fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut name = None;
    let mut template_segments = template.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (template_segments.next(), path_segments.next()) {
            (None, None) => return Some(name),
            (Some("{name}"), Some(segment)) if !segment.is_empty() => name = Some(segment),
            (Some(t), Some(p)) if t == p => {}
            _ => return None,
        }
    }
}

/// Answers one request on the admin listener.
pub async fn handle(
    node: &Arc<Node>,
    token: &str,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let mut allowed = Vec::new();
    let mut found = None;
    for (route_method, template) in ROUTES {
        if let Some(name) = match_template(template, &path) {
            allowed.push(*route_method);
            if method.as_str() == *route_method {
                found = Some((*template, name.map(str::to_string)));
            }
        }
    }
    let Some((template, name)) = found else {
        if allowed.is_empty() {
            return error_response(&ApiError::not_found(format!("no admin API route `{path}`")));
        }
        let mut response = error_response(&ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "`{method} {path}` is not supported; allowed: {}",
                allowed.join(", ")
            ),
        ));
        if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    };

    if template.starts_with("/v1/") {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !crate::token::authorizes(authorization, token) {
            let mut response = error_response(&ApiError::new(
                ErrorKind::Unauthorized,
                "missing or wrong admin token: send `Authorization: Bearer <token>` (the token is in DATA/admin-token)",
            ));
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }

    let name = name.unwrap_or_default();
    let result = match (method.as_str(), template) {
        ("GET", "/healthz") => Ok(public::health()),
        ("GET", "/readyz") => Ok(public::readiness(node)),
        ("GET", "/metrics") => Ok(metrics(node)),
        ("GET", "/v1/usage") => usage(node, request.uri().query()),
        ("GET", "/v1/stats") => stats(node, request.uri().query()),
        ("GET", "/v1/node") => Ok(node_info(node)),
        ("GET", "/v1/openapi.json") => Ok(openapi()),
        ("GET", "/v1/gpu") => Ok(gpu_info(node)),
        ("GET", "/v1/models") => Ok(list_models(node)),
        ("GET", "/v1/models/{name}") => show_model(node, &name),
        ("POST", "/v1/models/{name}") => add_model(node, &name, request).await,
        ("DELETE", "/v1/models/{name}") => remove_model(node, &name).await,
        ("GET", "/v1/functions") => list(node),
        ("GET", "/v1/functions/{name}") => show(node, &name),
        ("DELETE", "/v1/functions/{name}") => remove(node, &name).await,
        ("GET", "/v1/functions/{name}/versions") => versions(node, &name),
        ("POST", "/v1/functions/{name}/versions") => deploy(node, &name, request).await,
        ("POST", "/v1/functions/{name}/rollback") => rollback(node, &name, request).await,
        ("POST", "/v1/functions/{name}/invoke") => invoke_through_admin(node, &name, request).await,
        ("GET", "/v1/functions/{name}/logs") => logs(node, &name, request.uri().query()).await,
        _ => Err(ApiError::internal(&anyhow::anyhow!(
            "route {method} {template} has no handler"
        ))),
    };
    result.unwrap_or_else(|error| error_response(&error))
}

fn openapi() -> Response<ResponseBody> {
    let mut response = Response::new(invoke::full_body(OPENAPI));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn node_info(node: &Node) -> Response<ResponseBody> {
    let idle = node.options().idle;
    let residency: serde_json::Map<String, serde_json::Value> = node
        .count_by_residency()
        .into_iter()
        .map(|(residency, count)| (residency.name().to_string(), json!(count)))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "data_dir": node.options().data_dir,
            "max_component_size": format_size(node.options().max_component_bytes),
            "max_instances": node.options().engine.max_instances,
            "functions": node.function_names().len(),
            "functions_by_residency": residency,
            "components_in_memory": node.components_in_memory(),
            "idle_park": idle.park_after.map(crate::units::format_duration),
            "idle_unload": idle.unload_after.map(crate::units::format_duration),
            "max_loaded": idle.max_loaded,
            "invocations": node.invocation_count(),
            "ready": node.is_ready(),
        }),
    )
}

/// `GET /v1/functions/NAME/logs?tail=N&after=SEQ&wait=SECONDS`: captured output lines after
/// `after`, at most the last `tail`; with `wait`, waits that long for new lines first.
async fn logs(
    node: &Node,
    name: &str,
    query: Option<&str>,
) -> Result<Response<ResponseBody>, ApiError> {
    crate::names::validate_name(name)
        .map_err(|e| ApiError::invalid(format!("invalid function name: {e}")))?;
    let mut tail = 100usize;
    let mut after = 0u64;
    let mut wait = 0u64;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("`{key}={value}` is not a number")))
        };
        match key.as_ref() {
            "tail" => tail = number()? as usize,
            "after" => after = number()?,
            "wait" => wait = number()?.min(30),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown parameter `{other}` (known: tail, after, wait)"
                )));
            }
        }
    }
    if node.function(name).is_none() {
        return Err(ApiError::not_found(format!("no function named `{name}`")));
    }
    let log = node.guest_logs().function(name);
    if wait > 0 {
        log.wait(after, std::time::Duration::from_secs(wait)).await;
    }
    let (lines, last) = log.read(after, tail);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "lines": lines, "last": last }),
    ))
}

fn metrics(node: &Node) -> Response<ResponseBody> {
    let mut response = Response::new(invoke::full_body(node.render_metrics()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `function` and `since` from a query string; `since` is RFC 3339 or a duration back from now.
fn usage_filter(
    query: Option<&str>,
) -> Result<(Option<String>, Option<std::time::SystemTime>), ApiError> {
    let mut function = None;
    let mut since = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "function" => function = Some(value.into_owned()),
            "since" => {
                since = Some(match humantime::parse_rfc3339_weak(&value) {
                    Ok(time) => time,
                    Err(_) => {
                        let ago = crate::units::parse_duration(&value).map_err(|_| {
                            ApiError::invalid(format!(
                                "`since={value}` is neither RFC 3339 nor a duration like 1h"
                            ))
                        })?;
                        std::time::SystemTime::now() - ago
                    }
                })
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown parameter `{other}` (known: function, since)"
                )));
            }
        }
    }
    Ok((function, since))
}

fn usage(node: &Node, query: Option<&str>) -> Result<Response<ResponseBody>, ApiError> {
    let (function, since) = usage_filter(query)?;
    let records = node
        .metering()
        .read_usage(function.as_deref(), since)
        .map_err(|e| ApiError::internal(&e))?;
    let mut totals: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for record in &records {
        let entry = totals.entry(record.function.clone()).or_insert_with(|| {
            json!({ "invocations": 0, "outcomes": {}, "cold_starts": 0, "wall_ms": 0.0, "gpu_ms": 0.0,
                    "gpu_byte_seconds": 0.0, "bytes_in": 0, "bytes_out": 0 })
        });
        let add_u = |v: &mut serde_json::Value, n: u64| *v = json!(v.as_u64().unwrap_or(0) + n);
        let add_f = |v: &mut serde_json::Value, x: f64| *v = json!(v.as_f64().unwrap_or(0.0) + x);
        add_u(&mut entry["invocations"], 1);
        add_u(&mut entry["outcomes"][record.outcome.name()], 1);
        add_u(&mut entry["cold_starts"], record.cold_start as u64);
        add_f(&mut entry["wall_ms"], record.wall_us as f64 / 1000.0);
        add_f(&mut entry["gpu_ms"], record.gpu_us as f64 / 1000.0);
        add_f(&mut entry["gpu_byte_seconds"], record.gpu_byte_seconds);
        add_u(&mut entry["bytes_in"], record.bytes_in);
        add_u(&mut entry["bytes_out"], record.bytes_out);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": records.len(), "functions": totals }),
    ))
}

fn stats(node: &Node, query: Option<&str>) -> Result<Response<ResponseBody>, ApiError> {
    let (filter, _) = usage_filter(query)?;
    let mut functions = node.metering().stats(filter.as_deref());
    // What is left of each GPU budget, for functions not invoked yet as well.
    let now = crate::gpu_budget::now_ms();
    for function in node.functions() {
        let Some(budget) = function.manifest.settings.gpu_budget else {
            continue;
        };
        if filter.as_deref().is_some_and(|f| f != &*function.name) {
            continue;
        }
        let entry = functions
            .as_object_mut()
            .expect("stats are an object")
            .entry(function.name.to_string())
            .or_insert_with(|| crate::metering::FunctionStats::default().to_json());
        entry["gpu_budget"] = node.gpu_spend(&function.name).status(&budget, now);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "functions": functions }),
    ))
}

fn list_models(node: &Node) -> Response<ResponseBody> {
    let models: Vec<_> = node
        .models()
        .list()
        .iter()
        .map(|m| crate::models::ModelRegistry::describe(m))
        .collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

fn show_model(node: &Node, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    crate::names::validate_name(name)
        .map_err(|e| ApiError::invalid(format!("invalid model name: {e}")))?;
    let model = node
        .models()
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no model named `{name}`")))?;
    Ok(json_response(
        StatusCode::OK,
        &crate::models::ModelRegistry::describe(&model),
    ))
}

async fn add_model(
    node: &Arc<Node>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let body = read_limited(request, MAX_JSON_BODY as u64, "request body").await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddModel {
        path: String,
    }
    let add: AddModel = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body must be {{\"path\": \"/abs/model/dir\"}}: {e}"
        ))
    })?;
    let model = node
        .models()
        .add(name, std::path::Path::new(&add.path))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &crate::models::ModelRegistry::describe(&model),
    ))
}

async fn remove_model(node: &Arc<Node>, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    node.models().remove(name).await?;
    Ok(json_response(StatusCode::OK, &json!({ "removed": name })))
}

fn gpu_info(node: &Node) -> Response<ResponseBody> {
    let pool = node.gpu_pool();
    let utilization = node.utilization().percent(pool);
    let mut holders: Vec<Vec<serde_json::Value>> = vec![Vec::new(); utilization.len()];
    let mut functions = Vec::new();
    for function in node.functions() {
        let held = function.holdings.by_device();
        for (device, bytes) in &held {
            if let Some(list) = holders.get_mut(*device) {
                list.push(json!({ "function": &*function.name, "bytes": bytes }));
            }
        }
        if function.uses_gpu {
            functions.push(json!({
                "name": &*function.name,
                "held_bytes": function.holdings.total(),
                "running": function.scheduler.running(),
                "max_gpu_concurrency": function.manifest.settings.max_gpu_concurrency,
                "gpu_budget": function.manifest.settings.gpu_budget.map(|b| b.render()),
            }));
        }
    }
    let models: Vec<_> = node
        .models()
        .list()
        .iter()
        .map(|m| {
            let location = match m.model.device_index() {
                Some(index) => format!("GPU {index}"),
                None => "host memory".to_string(),
            };
            json!({
                "name": m.registration.name,
                "bytes": m.weight_bytes,
                "location": location,
            })
        })
        .collect();
    let devices: Vec<_> = pool
        .devices()
        .into_iter()
        .map(|d| {
            json!({
                "index": d.index,
                "backend": d.backend,
                "name": d.name,
                "capacity_bytes": d.capacity_bytes,
                "used_bytes": d.used_bytes,
                "free_bytes": d.capacity_bytes.saturating_sub(d.used_bytes),
                "peak_bytes": d.peak_bytes,
                "busy_seconds": d.busy.as_secs_f64(),
                "faulted": d.faulted,
                "fault": d.fault,
                "context_rebuilds": d.context_rebuilds,
                "utilization_percent": utilization.get(d.index).copied().unwrap_or(0.0),
                "holders": holders.get(d.index).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let slots = node.gpu_slots();
    json_response(
        StatusCode::OK,
        &json!({
            "backend": pool.backend(),
            "cpu_reason": pool.cpu_reason(),
            "used_bytes": pool.used_bytes(),
            "gpu_invocations": { "running": slots.taken(), "limit": slots.size() },
            "devices": devices,
            "functions": functions,
            "models": models,
        }),
    )
}

fn loaded(node: &Node, name: &str) -> Result<Arc<crate::function::LoadedFunction>, ApiError> {
    crate::names::validate_name(name)
        .map_err(|e| ApiError::invalid(format!("invalid function name: {e}")))?;
    node.function(name)
        .ok_or_else(|| ApiError::not_found(format!("no function named `{name}`")))
}

fn list(node: &Node) -> Result<Response<ResponseBody>, ApiError> {
    let functions = node
        .functions()
        .iter()
        .map(|function| node.describe(function))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| ApiError::internal(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "functions": functions }),
    ))
}

fn show(node: &Node, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let function = loaded(node, name)?;
    let info = node
        .describe(&function)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(info).unwrap_or_default(),
    ))
}

fn versions(node: &Node, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let manifests = node.versions(name)?;
    let current = node.function(name).map(|f| f.manifest.version);
    let versions: Vec<_> = manifests
        .iter()
        .map(|m| {
            json!({
                "version": m.version,
                "current": Some(m.version) == current,
                "sha256": m.sha256,
                "component_bytes": m.component_bytes,
                "deployed_at": m.deployed_at,
                "routes": m.settings.routes,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "versions": versions }),
    ))
}

async fn remove(node: &Arc<Node>, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    node.remove(name).await?;
    Ok(json_response(StatusCode::OK, &json!({ "removed": name })))
}

async fn deploy(
    node: &Arc<Node>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    crate::names::validate_name(name)
        .map_err(|e| ApiError::invalid(format!("invalid function name: {e}")))?;
    let settings = FunctionSettings::from_query(request.uri().query().unwrap_or_default())
        .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let limit = node.options().max_component_bytes;
    let component = read_limited(request, limit, "component").await?;
    // Without a copy where the body is one buffer (as collected bodies are).
    let outcome = node.deploy(name, settings, Vec::from(component)).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::to_value(outcome).unwrap_or_default(),
    ))
}

async fn rollback(
    node: &Arc<Node>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let body = read_limited(request, MAX_JSON_BODY as u64, "request body").await?;
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RollbackRequest {
            version: Option<u64>,
        }
        let parsed: RollbackRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!("rollback body must be {{\"version\": N}}: {e}"))
        })?;
        parsed.version
    };
    let info = node.rollback(name, to).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(info).unwrap_or_default(),
    ))
}

/// `POST /v1/functions/NAME/invoke?method=GET&path=/sub`: runs the function as if the request
/// had come to `/fn/NAME/sub` on the public listener.
async fn invoke_through_admin(
    node: &Arc<Node>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let function = loaded(node, name)?;
    let mut method = Method::POST;
    let mut sub_path = String::new();
    for (key, value) in form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
    {
        match key.as_ref() {
            "method" => {
                method = Method::from_bytes(value.as_bytes())
                    .map_err(|_| ApiError::invalid(format!("invalid method `{value}`")))?
            }
            "path" => sub_path = value.into_owned(),
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown invoke parameter `{other}` (known: method, path)"
                )));
            }
        }
    }
    if !sub_path.is_empty() && !sub_path.starts_with('/') {
        sub_path.insert(0, '/');
    }
    let uri: http::Uri = format!("/fn/{name}{sub_path}")
        .parse()
        .map_err(|e| ApiError::invalid(format!("invalid path `{sub_path}`: {e}")))?;
    let (mut parts, body) = request.into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers.remove(header::AUTHORIZATION);
    Ok(invoke::invoke(node, function, Request::from_parts(parts, body)).await)
}

async fn read_limited(
    request: Request<Incoming>,
    limit: u64,
    what: &str,
) -> Result<Bytes, ApiError> {
    let (_, bytes) = invoke::read_limited(request, limit, what, "this node's").await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        assert_eq!(
            match_template("/v1/functions/{name}", "/v1/functions/hello"),
            Some(Some("hello"))
        );
        assert_eq!(
            match_template("/v1/functions/{name}", "/v1/functions/"),
            None
        );
        assert_eq!(
            match_template("/v1/functions/{name}", "/v1/functions/a/b"),
            None
        );
        assert_eq!(match_template("/v1/functions", "/v1/functions"), Some(None));
        assert_eq!(match_template("/v1/functions", "/v1/functionsx"), None);
    }

    #[test]
    fn openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<_> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
