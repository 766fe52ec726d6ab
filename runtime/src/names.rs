//! Validation of function names and route prefixes.
//!
//! Names become directory names under the data dir and path segments in URLs, so they are
//! deliberately narrow: `[a-z0-9-]{1,63}`, starting with a letter.

use anyhow::{Result, bail};

/// The longest function or model name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// The longest route prefix accepted.
pub const MAX_ROUTE_LEN: usize = 256;

/// Path prefixes the node serves itself; functions cannot claim them.
pub const RESERVED_PREFIXES: [&str; 3] = ["/fn", "/healthz", "/readyz"];

/// Checks a function (or model) name: `[a-z0-9-]{1,63}`, starting with a letter, not ending in `-`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("name must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        bail!(
            "name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        );
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        bail!(
            "name `{}` contains {bad:?}; only a-z, 0-9 and `-` are allowed",
            name.escape_default()
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("name `{name}` must start with a letter");
    }
    if name.ends_with('-') {
        bail!("name `{name}` must not end with `-`");
    }
    Ok(())
}

/// Normalizes and checks an extra route prefix given at deploy time.
///
/// A prefix is an absolute URL path of `/`-separated segments made of `[A-Za-z0-9._~-]`; it
/// must not contain `.` or `..` segments, must not end with `/` (except `/` itself, the
/// catch-all) and must not shadow the node's own paths (`/fn`, `/healthz`, `/readyz`).
pub fn normalize_route(route: &str) -> Result<String> {
    if route.len() > MAX_ROUTE_LEN {
        bail!(
            "route is {} characters long; the limit is {MAX_ROUTE_LEN}",
            route.len()
        );
    }
    if !route.starts_with('/') {
        bail!("route `{}` must start with `/`", route.escape_default());
    }
    let trimmed = route.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    for segment in trimmed[1..].split('/') {
        if segment.is_empty() {
            bail!("route `{route}` contains an empty segment (`//`)");
        }
        if segment == "." || segment == ".." {
            bail!("route `{route}` must not contain `.` or `..` segments");
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
        {
            bail!(
                "route `{}` contains {bad:?}; only letters, digits and `-_.~` are allowed in segments",
                route.escape_default()
            );
        }
    }
    for reserved in RESERVED_PREFIXES {
        if path_has_prefix(trimmed, reserved) {
            bail!("route `{route}` is reserved by the node (`{reserved}`)");
        }
    }
    Ok(trimmed.to_string())
}

/// Whether `path` lies under `prefix` on a segment boundary (`/api` covers `/api` and `/api/x`,
/// not `/apix`; `/` covers everything).
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["hello", "a", "vector-add", "embed2", &"a".repeat(63)] {
            validate_name(name).unwrap();
        }
    }

    #[test]
    fn bad_names_fail_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("Hello", "only a-z"),
            ("../etc", "only a-z"),
            ("a/b", "only a-z"),
            ("a..b", "only a-z"),
            ("with space", "only a-z"),
            ("1abc", "start with a letter"),
            ("-abc", "start with a letter"),
            ("abc-", "end with"),
            ("héllo", "only a-z"),
        ];
        for (name, reason) in cases {
            let error = validate_name(name).unwrap_err().to_string();
            assert!(error.contains(reason), "{name:?}: {error}");
        }
        let long = "a".repeat(64);
        assert!(
            validate_name(&long)
                .unwrap_err()
                .to_string()
                .contains("limit is 63")
        );
    }

    #[test]
    fn routes_normalize_and_reject_bad_input() {
        assert_eq!(normalize_route("/api/v1/").unwrap(), "/api/v1");
        assert_eq!(normalize_route("/").unwrap(), "/");
        assert_eq!(normalize_route("/hello").unwrap(), "/hello");
        for bad in [
            "api",
            "/a//b",
            "/a/../b",
            "/fn/x",
            "/healthz",
            "/a b",
            "/a?b",
            "/readyz/x",
        ] {
            assert!(normalize_route(bad).is_err(), "{bad} should be rejected");
        }
        assert!(normalize_route("/fnord").is_ok(), "/fnord is not under /fn");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/x", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
