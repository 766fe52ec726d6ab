//! Maps request paths to functions: every function at `/fn/NAME/...`, plus the extra route
//! prefixes given at deploy, longest prefix first.

use crate::names::path_has_prefix;

/// The extra routes of all functions, longest prefix first.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<(String, String)>,
}

/// Where a path was routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The function that serves it.
    pub function: String,
    /// The prefix that matched (`/fn/NAME` or an extra route).
    pub prefix: String,
}

impl RouteTable {
    /// Builds the table from `(function, prefixes)` pairs.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut routes: Vec<(String, String)> = entries
            .into_iter()
            .flat_map(|(function, prefixes)| {
                prefixes
                    .iter()
                    .map(move |prefix| (prefix.clone(), function.to_string()))
            })
            .collect();
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        RouteTable { routes }
    }

    /// The function that owns exactly this prefix, if any.
    pub fn owner(&self, prefix: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, f)| f.as_str())
    }

    /// Resolves a request path. `/fn/NAME[/...]` always means function NAME (if `exists` says
    /// so); otherwise the longest matching extra route wins.
    pub fn resolve(&self, path: &str, exists: impl Fn(&str) -> bool) -> Option<RouteMatch> {
        if let Some(rest) = path.strip_prefix("/fn/") {
            let name = rest.split('/').next().unwrap_or_default();
            if !name.is_empty() && exists(name) {
                return Some(RouteMatch {
                    function: name.to_string(),
                    prefix: format!("/fn/{name}"),
                });
            }
            return None;
        }
        self.routes
            .iter()
            .find(|(prefix, _)| path_has_prefix(path, prefix))
            .map(|(prefix, function)| RouteMatch {
                function: function.clone(),
                prefix: prefix.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_fn_paths_are_direct() {
        let api = ["/api".to_string()];
        let users = ["/api/users".to_string(), "/people".to_string()];
        let all = ["/".to_string()];
        let table = RouteTable::new([
            ("api", &api[..]),
            ("users", &users[..]),
            ("fallback", &all[..]),
        ]);
        let exists = |name: &str| ["api", "users", "fallback"].contains(&name);
        let route = |path| table.resolve(path, exists).map(|m| m.function);
        assert_eq!(route("/api/users/7").as_deref(), Some("users"));
        assert_eq!(route("/api/users").as_deref(), Some("users"));
        assert_eq!(route("/api/usersx").as_deref(), Some("api"));
        assert_eq!(route("/api").as_deref(), Some("api"));
        assert_eq!(route("/people").as_deref(), Some("users"));
        assert_eq!(route("/other").as_deref(), Some("fallback"));
        assert_eq!(route("/fn/api/x").as_deref(), Some("api"));
        assert_eq!(
            route("/fn/nope/x"),
            None,
            "/fn/ never falls through to other routes"
        );
        assert_eq!(table.owner("/people"), Some("users"));
        assert_eq!(table.owner("/peo"), None);
    }
}
