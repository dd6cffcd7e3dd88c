//! Envoy's ext_authz HTTP mode, sent what Envoy sends: the client's method,
//! path behind `path_prefix`, headers, `x-envoy-external-address`, bodies.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use integration_tests::net::{http1_client, send, start_gateway};

const ENVOY: &str = r#"
admin: { listen: 127.0.0.1:0 }
ext_authz: { http_listen: 127.0.0.1:0, path_prefix: /authz }
global: { trusted_proxies: [127.0.0.0/8] }
rules:
  - { name: auth_strict, limit: 2, window: 60, strategy: sliding_window }
  - { name: api_default, limit: 100, window: 1h, strategy: token_bucket }
routes:
  - { name: login, match: { path_prefix: /api/auth, methods: [POST] }, rules: [auth_strict, api_default] }
  - { name: api, match: { path_prefix: /api/ }, rules: [api_default] }
lists: { blacklist: [203.0.113.0/24] }
"#;

fn check(
    port: u16,
    method: &str,
    path: &str,
    client: &str,
    body: &'static str,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "shop.example.com")
        .header("x-envoy-external-address", client)
        .header("x-request-id", "r-1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

#[tokio::test]
async fn check_requests_get_200_with_headers_then_the_proxy_s_429() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway
        .gateway
        .addrs()
        .envoy_http
        .expect("ext_authz listener")
        .port();
    let client = http1_client();
    for remaining in ["1", "0"] {
        let got = send(
            &client,
            check(
                port,
                "POST",
                "/authz/api/auth/login",
                "198.51.100.1",
                "{\"u\":1}",
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-remaining"), Some(remaining));
        assert!(
            got.header("ratelimit-policy")
                .unwrap()
                .starts_with("\"auth_strict\"")
        );
    }
    let got = send(
        &client,
        check(port, "POST", "/authz/api/auth/login", "198.51.100.1", ""),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("60"));
    assert_eq!(
        got.json(),
        serde_json::json!({"error": "rate_limited", "rule": "auth_strict", "retry_after": 60})
    );
    // Another client (by Envoy's external address) is counted apart.
    let got = send(
        &client,
        check(port, "POST", "/authz/api/auth/login", "198.51.100.2", ""),
    )
    .await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn any_method_is_accepted_and_unrouted_paths_are_allowed() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let client = http1_client();
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let got = send(
            &client,
            check(port, method, "/authz/api/items?x=1", "198.51.100.9", ""),
        )
        .await;
        assert_eq!(got.status, 200, "{method}");
    }
    // No route matches: Envoy routes, the gateway only limits.
    let got = send(
        &client,
        check(port, "GET", "/authz/static/logo.png", "198.51.100.9", ""),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.header("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn blacklisted_clients_get_403_by_their_external_address() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let got = send(
        &http1_client(),
        check(port, "GET", "/authz/api/items", "203.0.113.50", ""),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["reason"], "blacklist");
}

#[tokio::test]
async fn without_the_external_address_forwarded_for_from_a_trusted_peer_counts() {
    let gateway = start_gateway(&ENVOY.replace("limit: 2,", "limit: 1,"), None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let client = http1_client();
    let request = |xff: &str| {
        Request::post(format!("http://127.0.0.1:{port}/authz/api/auth/login"))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(send(&client, request("198.51.100.30")).await.status, 200);
    assert_eq!(send(&client, request("198.51.100.31")).await.status, 200);
    assert_eq!(send(&client, request("198.51.100.30")).await.status, 429);
}

/// The example deployments in config/envoy/ and docker/: every RateThrottle
/// config loads, every YAML file parses, and each Envoy file agrees with the
/// RateThrottle config it is paired with (addresses, path prefix, forwarded
/// headers, descriptors), so that editing one side alone fails here.
mod examples {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use integration_tests::net::{http1_client, send, start_gateway};
    use integration_tests::repo_root;
    use ratethrottle::clock::ManualClock;
    use ratethrottle::config::{self, Config, StorageType};
    use ratethrottle::descriptors::DescriptorRequest;
    use ratethrottle::engine::Engine;
    use ratethrottle::identity::KeyPart;
    use ratethrottle::store::MemoryStore;
    use saphyr::{LoadableYamlNode, YamlOwned};

    /// (Envoy bootstrap, RateThrottle config) pairs, from the repository root.
    const HTTP: (&str, &str) = (
        "config/envoy/envoy-ext-authz-http.yaml",
        "config/envoy/ratethrottle-ext-authz-http.yaml",
    );
    const GRPC: (&str, &str) = (
        "config/envoy/envoy-ext-authz-grpc.yaml",
        "config/envoy/ratethrottle-ext-authz-grpc.yaml",
    );
    const RATELIMIT: (&str, &str) = (
        "config/envoy/envoy-ratelimit.yaml",
        "config/envoy/ratethrottle-ratelimit.yaml",
    );
    const DOCKER: (&str, &str) = (
        "docker/envoy/envoy.yaml",
        "docker/ratethrottle/ratethrottle.yaml",
    );
    const PAIRS: [(&str, &str); 4] = [HTTP, GRPC, RATELIMIT, DOCKER];
    const COMPOSE: &str = "docker/docker-compose.yml";

    /// The client the tests pose as.
    const CLIENT: &str = "198.51.100.7";

    fn path(rel: &str) -> PathBuf {
        repo_root().join(rel)
    }

    fn read(rel: &str) -> String {
        std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// The file's single YAML document, a mapping.
    fn yaml(rel: &str) -> YamlOwned {
        let mut docs = YamlOwned::load_from_str(&read(rel))
            .unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
        assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
        let doc = docs.remove(0);
        assert!(doc.is_mapping(), "{rel}: the document is not a mapping");
        doc
    }

    fn get<'a>(node: &'a YamlOwned, key: &str) -> Option<&'a YamlOwned> {
        node.as_mapping_get(key)
    }

    /// `node[keys[0]][keys[1]]...`, or a failure naming the missing key.
    fn at<'a>(node: &'a YamlOwned, keys: &[&str]) -> &'a YamlOwned {
        keys.iter().fold(node, |node, key| {
            get(node, key).unwrap_or_else(|| panic!("missing `{key}` of {keys:?}"))
        })
    }

    fn list(node: &YamlOwned) -> &[YamlOwned] {
        node.as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("not a list: {node:?}"))
    }

    fn list_at<'a>(node: &'a YamlOwned, key: &str) -> &'a [YamlOwned] {
        get(node, key).map_or(&[], list)
    }

    fn text(node: &YamlOwned) -> String {
        if let Some(s) = node.as_str() {
            return s.to_string();
        }
        if let Some(i) = node.as_integer() {
            return i.to_string();
        }
        if let Some(b) = node.as_bool() {
            return b.to_string();
        }
        panic!("not a scalar: {node:?}")
    }

    /// The only key of a one-key mapping, and its value.
    fn single(node: &YamlOwned) -> (String, &YamlOwned) {
        let mapping = node
            .as_mapping()
            .unwrap_or_else(|| panic!("not a mapping: {node:?}"));
        assert_eq!(mapping.len(), 1, "expected one key: {node:?}");
        let (key, value) = mapping.iter().next().expect("one entry");
        (text(key), value)
    }

    /// Loads a RateThrottle config as `ratethrottle serve` does.
    fn load(rel: &str) -> Config {
        let loaded = config::load_file(&path(rel))
            .unwrap_or_else(|errors| panic!("{rel} does not load:\n{errors}"));
        // Only the admin token may be missing from the test's environment;
        // any other warning (an ignored key, a rule nothing uses) is a
        // mistake in the example.
        for warning in &loaded.warnings {
            assert!(
                warning.message.contains("environment variable"),
                "{rel}: unexpected warning: {warning}"
            );
        }
        // The local examples run without Redis; the compose setup counts in
        // the compose file's Redis service.
        if rel.starts_with("docker/") {
            assert_eq!(loaded.config.storage.kind, StorageType::Redis, "{rel}");
            assert_eq!(
                loaded.config.storage.redis.url, "redis://redis:6379/0",
                "{rel}"
            );
        } else {
            assert_eq!(loaded.config.storage.kind, StorageType::Memory, "{rel}");
        }
        loaded.config
    }

    /// Every HTTP connection manager of an Envoy bootstrap (typed_config).
    fn connection_managers(envoy: &YamlOwned) -> Vec<&YamlOwned> {
        let mut found = Vec::new();
        for listener in list(at(envoy, &["static_resources", "listeners"])) {
            for chain in list(at(listener, &["filter_chains"])) {
                for filter in list(at(chain, &["filters"])) {
                    if text(at(filter, &["name"]))
                        == "envoy.filters.network.http_connection_manager"
                    {
                        found.push(at(filter, &["typed_config"]));
                    }
                }
            }
        }
        assert!(!found.is_empty(), "no http_connection_manager");
        found
    }

    /// The typed_config of the one HTTP filter named `name`.
    fn http_filter<'a>(envoy: &'a YamlOwned, name: &str) -> &'a YamlOwned {
        let found: Vec<&YamlOwned> = connection_managers(envoy)
            .into_iter()
            .flat_map(|hcm| list(at(hcm, &["http_filters"])))
            .filter(|filter| text(at(filter, &["name"])) == name)
            .map(|filter| at(filter, &["typed_config"]))
            .collect();
        assert_eq!(found.len(), 1, "expected one {name} filter");
        found[0]
    }

    fn virtual_hosts(envoy: &YamlOwned) -> Vec<&YamlOwned> {
        connection_managers(envoy)
            .into_iter()
            .flat_map(|hcm| list(at(hcm, &["route_config", "virtual_hosts"])))
            .collect()
    }

    fn cluster<'a>(envoy: &'a YamlOwned, name: &str) -> &'a YamlOwned {
        list(at(envoy, &["static_resources", "clusters"]))
            .iter()
            .find(|c| text(at(c, &["name"])) == name)
            .unwrap_or_else(|| panic!("no cluster {name:?}"))
    }

    /// A cluster's one endpoint: host and port.
    fn endpoint(cluster: &YamlOwned) -> (String, u16) {
        let endpoints = list(at(cluster, &["load_assignment", "endpoints"]));
        assert_eq!(endpoints.len(), 1, "one locality: {cluster:?}");
        let hosts = list(at(&endpoints[0], &["lb_endpoints"]));
        assert_eq!(hosts.len(), 1, "one endpoint: {cluster:?}");
        let socket = at(&hosts[0], &["endpoint", "address", "socket_address"]);
        let port = text(at(socket, &["port_value"]));
        (
            text(at(socket, &["address"])),
            port.parse().unwrap_or_else(|_| panic!("port {port:?}")),
        )
    }

    /// Whether Envoy talks HTTP/2 to the cluster, as a gRPC service needs.
    fn speaks_http2(cluster: &YamlOwned) -> bool {
        get(cluster, "typed_extension_protocol_options")
            .and_then(|o| get(o, "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"))
            .and_then(|o| get(o, "explicit_http_config"))
            .and_then(|o| get(o, "http2_protocol_options"))
            .is_some()
    }

    /// The gRPC health check service names of a cluster.
    fn health_checked_services(cluster: &YamlOwned) -> Vec<String> {
        list_at(cluster, "health_checks")
            .iter()
            .filter_map(|check| get(check, "grpc_health_check"))
            .map(|grpc| text(at(grpc, &["service_name"])))
            .collect()
    }

    /// Whether an Envoy ListStringMatcher lets a header name through.
    fn lets_through(matcher: Option<&YamlOwned>, header: &str) -> bool {
        let Some(matcher) = matcher else {
            return false;
        };
        list(at(matcher, &["patterns"])).iter().any(|pattern| {
            let ignore_case = get(pattern, "ignore_case")
                .and_then(YamlOwned::as_bool)
                .unwrap_or(false);
            let fold = |s: String| {
                if ignore_case {
                    s.to_ascii_lowercase()
                } else {
                    s
                }
            };
            let header = fold(header.to_string());
            let value = |key| get(pattern, key).map(|v| fold(text(v)));
            if let Some(exact) = value("exact") {
                header == exact
            } else if let Some(prefix) = value("prefix") {
                header.starts_with(&prefix)
            } else if let Some(suffix) = value("suffix") {
                header.ends_with(&suffix)
            } else if let Some(contains) = value("contains") {
                header.contains(&contains)
            } else {
                panic!("a string matcher this test does not read: {pattern:?}")
            }
        })
    }

    /// The request headers RateThrottle needs to see: Envoy's client
    /// address, X-Forwarded-For, and every header a rule keys on or a route
    /// matches on.
    fn headers_needed(config: &Config) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = ["x-envoy-external-address", "x-forwarded-for"]
            .map(String::from)
            .into();
        for rule in &config.rules {
            for part in rule.key.parts() {
                match part {
                    KeyPart::Header(name) => {
                        names.insert(name.clone());
                    }
                    KeyPart::Cookie(_) => {
                        names.insert("cookie".into());
                    }
                    _ => {}
                }
            }
        }
        for route in config.routes.iter().flatten() {
            names.extend(route.matcher.headers.keys().cloned());
        }
        names
    }

    fn engine(config: &Config) -> Engine {
        Engine::new(
            config.clone(),
            Arc::new(MemoryStore::new()),
            ManualClock::at_test_epoch(),
        )
    }

    /// Every file of a directory tree with one of the extensions.
    fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                found.extend(files_under(&path, extensions));
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                found.push(path);
            }
        }
        found.sort();
        found
    }

    fn relative(path: &Path) -> String {
        path.strip_prefix(repo_root())
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn every_example_file_is_paired_and_parses() {
        let mut files = files_under(&path("config/envoy"), &["yaml", "yml"]);
        files.extend(files_under(&path("docker"), &["yaml", "yml"]));
        let files: BTreeSet<String> = files.iter().map(|p| relative(p)).collect();
        let mut known: BTreeSet<String> = PAIRS
            .iter()
            .flat_map(|(envoy, rt)| [envoy.to_string(), rt.to_string()])
            .collect();
        known.insert(COMPOSE.to_string());
        // A new example must be paired here, and so be checked.
        assert_eq!(files, known);
        for file in &files {
            yaml(file);
        }
    }

    #[test]
    fn every_ratethrottle_example_loads() {
        for (_, rt) in PAIRS {
            let config = load(rt);
            assert!(config.ext_authz.is_some(), "{rt}: no ext_authz section");
            assert!(config.server.is_none(), "{rt}: Envoy carries the traffic");
        }
    }

    #[test]
    fn every_envoy_example_is_a_complete_bootstrap() {
        for (rel, _) in PAIRS {
            let envoy = yaml(rel);
            at(
                &envoy,
                &["admin", "address", "socket_address", "port_value"],
            );
            let clusters = list(at(&envoy, &["static_resources", "clusters"]));
            let names: BTreeSet<String> = clusters.iter().map(|c| text(at(c, &["name"]))).collect();
            assert_eq!(names.len(), clusters.len(), "{rel}: cluster names repeat");
            for cluster in clusters {
                let name = text(at(cluster, &["name"]));
                at(cluster, &["connect_timeout"]);
                assert_eq!(
                    text(at(cluster, &["load_assignment", "cluster_name"])),
                    name,
                    "{rel}"
                );
                endpoint(cluster);
            }
            for hcm in connection_managers(&envoy) {
                let filters = list(at(hcm, &["http_filters"]));
                assert_eq!(
                    filters.last().map(|f| text(at(f, &["name"]))).as_deref(),
                    Some("envoy.filters.http.router"),
                    "{rel}: the router must be the last HTTP filter"
                );
                assert_eq!(
                    get(hcm, "use_remote_address").and_then(YamlOwned::as_bool),
                    Some(true),
                    "{rel}: Envoy at the edge must use the peer address"
                );
            }
            for vhost in virtual_hosts(&envoy) {
                for route in list(at(vhost, &["routes"])) {
                    match (get(route, "route"), get(route, "direct_response")) {
                        (Some(action), None) => {
                            let target = text(at(action, &["cluster"]));
                            assert!(names.contains(&target), "{rel}: no cluster {target:?}");
                        }
                        (None, Some(_)) => {}
                        _ => panic!("{rel}: a route needs one action: {route:?}"),
                    }
                }
            }
            // Every typed config names an Envoy v3 type.
            let mut pending = vec![&envoy];
            while let Some(node) = pending.pop() {
                if let Some(mapping) = node.as_mapping() {
                    for (key, value) in mapping {
                        if key.as_str() == Some("@type") {
                            let url = text(value);
                            assert!(
                                url.starts_with("type.googleapis.com/envoy.")
                                    && url.contains(".v3."),
                                "{rel}: {url}"
                            );
                        }
                        pending.push(value);
                    }
                } else if let Some(items) = node.as_sequence() {
                    pending.extend(items);
                }
            }
        }
    }

    /// The ext_authz gRPC side of a pair: Envoy dials the gRPC listener over
    /// HTTP/2 with the v3 API and sends the headers the rules need.
    fn check_ext_authz_grpc_pair((envoy_rel, rt_rel): (&str, &str)) {
        let envoy = yaml(envoy_rel);
        let config = load(rt_rel);
        let listen = config
            .ext_authz
            .as_ref()
            .and_then(|e| e.grpc_listen)
            .unwrap_or_else(|| panic!("{rt_rel}: no ext_authz.grpc_listen"));
        let filter = http_filter(&envoy, "envoy.filters.http.ext_authz");
        assert!(get(filter, "http_service").is_none(), "{envoy_rel}");
        let service = at(filter, &["grpc_service"]);
        at(service, &["timeout"]);
        assert_eq!(text(at(filter, &["transport_api_version"])), "V3");
        assert!(at(filter, &["failure_mode_allow"]).as_bool().is_some());
        let target = cluster(&envoy, &text(at(service, &["envoy_grpc", "cluster_name"])));
        assert!(speaks_http2(target), "{envoy_rel}: gRPC needs HTTP/2");
        assert_eq!(
            health_checked_services(target),
            ["envoy.service.auth.v3.Authorization"]
        );
        let (host, port) = endpoint(target);
        assert_eq!(port, listen.port(), "{envoy_rel} vs {rt_rel}");
        if !listen.ip().is_unspecified() {
            assert_eq!(host.parse::<IpAddr>().ok(), Some(listen.ip()));
        }
        // Without allowed_headers Envoy sends every header in gRPC mode.
        if let Some(allowed) = get(filter, "allowed_headers") {
            for header in headers_needed(&config) {
                assert!(
                    lets_through(Some(allowed), &header),
                    "{envoy_rel}: {header}"
                );
            }
        }
    }

    #[test]
    fn the_ext_authz_grpc_pairs_agree() {
        check_ext_authz_grpc_pair(GRPC);
        check_ext_authz_grpc_pair(DOCKER);
    }

    #[tokio::test]
    async fn the_ext_authz_http_pair_agrees_and_its_answers_pass_envoy() {
        let (envoy_rel, rt_rel) = HTTP;
        let envoy = yaml(envoy_rel);
        let config = load(rt_rel);
        let ext = config.ext_authz.as_ref().expect("ext_authz section");
        let listen = ext.http_listen.expect("ext_authz.http_listen");
        let filter = http_filter(&envoy, "envoy.filters.http.ext_authz");
        let service = at(filter, &["http_service"]);
        let uri = at(service, &["server_uri"]);
        at(uri, &["timeout"]);
        assert!(at(filter, &["failure_mode_allow"]).as_bool().is_some());
        let (host, port) = endpoint(cluster(&envoy, &text(at(uri, &["cluster"]))));
        assert_eq!(port, listen.port(), "{envoy_rel} vs {rt_rel}");
        assert_eq!(host.parse::<IpAddr>().ok(), Some(listen.ip()));
        assert_eq!(text(at(uri, &["uri"])), format!("http://{host}:{port}"));
        let prefix = get(service, "path_prefix").map(text).unwrap_or_default();
        assert_eq!(prefix, ext.path_prefix, "{envoy_rel} vs {rt_rel}");

        // The check request carries what the rules need ...
        assert!(
            get(service, "authorization_request")
                .and_then(|r| get(r, "allowed_headers"))
                .is_none(),
            "{envoy_rel}: the filter-level allowed_headers replaces the deprecated one"
        );
        let allowed = get(filter, "allowed_headers");
        for header in headers_needed(&config) {
            assert!(lets_through(allowed, &header), "{envoy_rel}: {header}");
        }

        // ... and Envoy lets through what RateThrottle answers, asked as
        // Envoy asks: the prefixed path, the client in x-envoy-external-address.
        let yaml_text = read(rt_rel);
        for addr in [listen, config.admin.listen] {
            assert!(yaml_text.contains(&addr.to_string()), "{addr}");
        }
        let running = yaml_text
            .replace(&listen.to_string(), "127.0.0.1:0")
            .replace(&config.admin.listen.to_string(), "127.0.0.1:0");
        let gateway = start_gateway(&running, None).await;
        let port = gateway
            .gateway
            .addrs()
            .envoy_http
            .expect("ext_authz listener")
            .port();
        let client = http1_client();
        let check = || {
            Request::post(format!("http://127.0.0.1:{port}{prefix}/api/login"))
                .header("host", "api.example.com")
                .header("x-envoy-external-address", CLIENT)
                .header("x-forwarded-for", CLIENT)
                .body(Full::new(Bytes::new()))
                .expect("request")
        };
        let mut passed = Vec::new();
        let mut denied = None;
        for _ in 0..100 {
            let got = send(&client, check()).await;
            if got.status == 200 {
                passed.push(got);
            } else {
                denied = Some(got);
                break;
            }
        }
        let denied = denied.expect("the login route never limited the client");
        assert_eq!(denied.status, 429);
        assert!(denied.header("retry-after").is_some());
        assert!(
            !passed.is_empty()
                && passed.iter().all(|got| {
                    got.header("x-ratelimit-limit")
                        .or(got.header("ratelimit-policy"))
                        .is_some()
                }),
            "checks behind {prefix:?} did not reach RateThrottle's login route"
        );
        // Envoy sets these itself.
        let own = |name: &str| matches!(name, "content-length" | "date");
        let response = at(service, &["authorization_response"]);
        for got in &passed {
            for name in got.headers.keys().map(|n| n.as_str()).filter(|n| !own(n)) {
                for list in [
                    "allowed_upstream_headers",
                    "allowed_client_headers_on_success",
                ] {
                    assert!(lets_through(get(response, list), name), "{list}: {name}");
                }
            }
        }
        for name in denied
            .headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !own(n))
        {
            assert!(
                lets_through(get(response, "allowed_client_headers"), name),
                "allowed_client_headers: {name}"
            );
        }
    }

    /// The descriptor Envoy builds from one `rate_limits` entry for a
    /// request from CLIENT that carries every header.
    fn descriptor(rate_limit: &YamlOwned) -> Vec<(String, String)> {
        list(at(rate_limit, &["actions"]))
            .iter()
            .map(|action| {
                let (kind, body) = single(action);
                let key_or =
                    |default: &str| get(body, "descriptor_key").map_or(default.to_string(), text);
                match kind.as_str() {
                    "remote_address" => ("remote_address".to_string(), CLIENT.to_string()),
                    "generic_key" => (key_or("generic_key"), text(at(body, &["descriptor_value"]))),
                    "header_value_match" => (
                        key_or("header_match"),
                        text(at(body, &["descriptor_value"])),
                    ),
                    "request_headers" => (
                        text(at(body, &["descriptor_key"])),
                        format!("value-of-{}", text(at(body, &["header_name"]))),
                    ),
                    other => panic!("action {other:?}: teach this test what Envoy sends for it"),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn the_rate_limit_pair_agrees_descriptor_by_descriptor() {
        let (envoy_rel, rt_rel) = RATELIMIT;
        let envoy = yaml(envoy_rel);
        let config = load(rt_rel);
        let listen = config
            .ext_authz
            .as_ref()
            .and_then(|e| e.grpc_listen)
            .expect("ext_authz.grpc_listen");
        let filter = http_filter(&envoy, "envoy.filters.http.ratelimit");
        let domain = text(at(filter, &["domain"]));
        at(filter, &["timeout"]);
        assert!(at(filter, &["failure_mode_deny"]).as_bool().is_some());
        let service = at(filter, &["rate_limit_service"]);
        assert_eq!(text(at(service, &["transport_api_version"])), "V3");
        let target = cluster(
            &envoy,
            &text(at(service, &["grpc_service", "envoy_grpc", "cluster_name"])),
        );
        assert!(speaks_http2(target), "{envoy_rel}: gRPC needs HTTP/2");
        assert_eq!(
            health_checked_services(target),
            ["envoy.service.ratelimit.v3.RateLimitService"]
        );
        let (host, port) = endpoint(target);
        assert_eq!(port, listen.port(), "{envoy_rel} vs {rt_rel}");
        assert_eq!(host.parse::<IpAddr>().ok(), Some(listen.ip()));

        // The most a rule lets through before it says OVER_LIMIT.
        let most = config
            .rules
            .iter()
            .map(|r| r.limit.max(r.burst.unwrap_or(0)))
            .max()
            .unwrap_or(0);
        let mut reached: BTreeSet<String> = BTreeSet::new();
        let mut limited_routes = 0;
        for vhost in virtual_hosts(&envoy) {
            let vhost_limits = list_at(vhost, "rate_limits");
            for route in list(at(vhost, &["routes"])) {
                // A direct response has no route entry: no descriptors.
                let Some(action) = get(route, "route") else {
                    continue;
                };
                let per_route = get(route, "typed_per_filter_config")
                    .and_then(|c| get(c, "envoy.filters.http.ratelimit"));
                let own = list_at(action, "rate_limits");
                let include_vhost = match per_route.and_then(|c| get(c, "vh_rate_limits")).map(text)
                {
                    Some(option) if option == "INCLUDE" => true,
                    Some(option) if option == "IGNORE" => false,
                    // OVERRIDE, the default: the virtual host's unless the route has its own.
                    _ => own.is_empty(),
                };
                let domain = per_route
                    .and_then(|c| get(c, "domain"))
                    .map_or(domain.clone(), text);
                let descriptors: Vec<Vec<(String, String)>> = own
                    .iter()
                    .chain(if include_vhost { vhost_limits } else { &[] })
                    .map(descriptor)
                    .collect();
                if descriptors.is_empty() {
                    continue;
                }
                limited_routes += 1;
                let name = format!("route {:?}", at(route, &["match"]));
                // Every descriptor is answered by a rule ...
                let engine = engine(&config);
                let statuses = engine
                    .check_descriptors(&domain, &descriptors, 1)
                    .await
                    .expect("memory store");
                for (entries, status) in descriptors.iter().zip(&statuses) {
                    assert!(
                        status.quota.is_some(),
                        "{name}: no rule of {rt_rel} answers {domain:?} {entries:?}"
                    );
                    let request = DescriptorRequest {
                        domain: &domain,
                        entries,
                    };
                    reached.extend(
                        config
                            .rules
                            .iter()
                            .filter(|rule| rule.descriptors.iter().any(|d| request.matched_by(d)))
                            .map(|rule| rule.name.clone()),
                    );
                }
                // ... and the same request, repeated, goes over a limit.
                let mut over = false;
                for _ in 0..=most {
                    let statuses = engine
                        .check_descriptors(&domain, &descriptors, 1)
                        .await
                        .expect("memory store");
                    if statuses.iter().any(|s| s.over_limit) {
                        over = true;
                        break;
                    }
                }
                assert!(over, "{name}: never over the limit");
            }
        }
        assert!(
            limited_routes > 0,
            "{envoy_rel}: no route sends descriptors"
        );
        let with_descriptors: BTreeSet<String> = config
            .rules
            .iter()
            .filter(|rule| !rule.descriptors.is_empty())
            .map(|rule| rule.name.clone())
            .collect();
        assert_eq!(
            reached, with_descriptors,
            "rules of {rt_rel} that no descriptor of {envoy_rel} reaches"
        );
    }

    /// A compose `ports` entry's container port.
    fn container_port(spec: &str) -> u16 {
        let port = spec.rsplit(':').next().unwrap_or(spec);
        let port = port.split('/').next().unwrap_or(port);
        port.parse()
            .unwrap_or_else(|_| panic!("a port mapping this test does not read: {spec}"))
    }

    /// A service's bind mounts: (host path, container path).
    fn mounts(service: &YamlOwned) -> Vec<(PathBuf, String)> {
        list_at(service, "volumes")
            .iter()
            .filter_map(|volume| {
                let (source, target) = match volume.as_str() {
                    Some(spec) => {
                        let mut parts = spec.split(':');
                        (
                            parts.next().unwrap_or_default().to_string(),
                            parts.next().unwrap_or_default().to_string(),
                        )
                    }
                    None => (text(at(volume, &["source"])), text(at(volume, &["target"]))),
                };
                (source.starts_with('.') || source.starts_with('/'))
                    .then(|| (path("docker").join(source), target))
            })
            .collect()
    }

    /// Where a container path of a service comes from on the host.
    fn host_path(service: &YamlOwned, container: &str) -> PathBuf {
        mounts(service)
            .into_iter()
            .find_map(|(host, target)| {
                let rest = container.strip_prefix(target.trim_end_matches('/'))?;
                Some(host.join(rest.trim_start_matches('/')))
            })
            .unwrap_or_else(|| panic!("nothing is mounted at {container}"))
    }

    fn same_file(a: &Path, b: &Path) -> bool {
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// Checks a Dockerfile against its build context: what it copies exists
    /// and is not left out by .dockerignore. Returns its ENTRYPOINT's
    /// `--config` path.
    fn check_dockerfile(context: &Path, dockerfile: &Path) -> String {
        let text = std::fs::read_to_string(dockerfile).expect("Dockerfile");
        let ignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        let ignored: Vec<&str> = ignore
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut config = None;
        for line in text.lines().map(str::trim) {
            if let Some(args) = line.strip_prefix("COPY ") {
                let args: Vec<&str> = args.split_whitespace().collect();
                if args.iter().any(|a| a.starts_with("--from")) {
                    continue;
                }
                let (_, sources) = args.split_last().expect("COPY SRC... DEST");
                for source in sources {
                    assert!(
                        context.join(source).exists(),
                        "COPY {source}: not in the context"
                    );
                    for pattern in &ignored {
                        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
                        let plain = !pattern.contains(['*', '?', '[', '!']);
                        assert!(
                            !(plain
                                && (*source == pattern
                                    || source.starts_with(&format!("{pattern}/")))),
                            "COPY {source}: left out of the context by .dockerignore ({pattern})"
                        );
                    }
                }
            }
            if let Some(args) = line.strip_prefix("ENTRYPOINT ") {
                let args: Vec<String> =
                    serde_json::from_str(args).expect("ENTRYPOINT in exec form");
                let at = args.iter().position(|a| a == "--config").expect("--config");
                config = args.get(at + 1).cloned();
            }
        }
        config.expect("an ENTRYPOINT with --config")
    }

    #[test]
    fn the_compose_setup_is_coherent() {
        let compose = yaml(COMPOSE);
        let services = at(&compose, &["services"])
            .as_mapping()
            .expect("services mapping");
        let names: BTreeSet<String> = services.keys().map(text).collect();
        let service = |name: &str| at(&compose, &["services", name]);

        // Every host path mounted or built from exists.
        let mut built = Vec::new();
        for (name, definition) in services {
            for (host, _) in mounts(definition) {
                assert!(
                    host.exists(),
                    "{}: {} does not exist",
                    text(name),
                    host.display()
                );
            }
            if let Some(build) = get(definition, "build") {
                let context = path("docker").join(text(at(build, &["context"])));
                assert!(context.is_dir(), "build context {}", context.display());
                let dockerfile = context.join(text(at(build, &["dockerfile"])));
                assert!(dockerfile.is_file(), "{}", dockerfile.display());
                let config = check_dockerfile(&context, &dockerfile);
                built.push((text(name), config));
            }
        }

        // RateThrottle: built here, its config mounted from docker/ratethrottle/.
        let [(rt_name, rt_config_path)] = built.as_slice() else {
            panic!("expected one service built from the Dockerfile: {built:?}");
        };
        let ratethrottle = service(rt_name);
        assert!(same_file(
            &host_path(ratethrottle, rt_config_path),
            &path(DOCKER.1)
        ));
        let config = load(DOCKER.1);
        let grpc = config
            .ext_authz
            .as_ref()
            .and_then(|e| e.grpc_listen)
            .expect("ext_authz.grpc_listen");
        assert!(
            grpc.ip().is_unspecified(),
            "other containers must reach {grpc}"
        );
        let admin = config.admin.listen;
        assert!(
            admin.ip().is_unspecified(),
            "the published port must reach {admin}"
        );
        let published: Vec<u16> = list_at(ratethrottle, "ports")
            .iter()
            .map(|p| container_port(&text(p)))
            .collect();
        assert!(
            published.contains(&admin.port()),
            "admin {admin} not published"
        );
        let health = list(at(ratethrottle, &["healthcheck", "test"]))
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            health.contains(&format!("/dev/tcp/127.0.0.1/{}", admin.port()))
                && health.contains("/readyz"),
            "the health check must ask the admin listener: {health}"
        );

        // Envoy: its config mounted from docker/envoy/, its clusters the
        // compose services, its RateThrottle cluster on the gRPC port.
        let envoy_service = services
            .iter()
            .find(|(_, s)| {
                get(s, "image").is_some_and(|i| text(i).starts_with("envoyproxy/envoy:"))
            })
            .map(|(_, s)| s)
            .expect("an envoyproxy/envoy service");
        let command: Vec<String> = list(at(envoy_service, &["command"]))
            .iter()
            .map(text)
            .collect();
        let at_c = command
            .iter()
            .position(|a| a == "-c")
            .expect("envoy -c FILE");
        assert!(same_file(
            &host_path(envoy_service, &command[at_c + 1]),
            &path(DOCKER.0)
        ));
        let envoy = yaml(DOCKER.0);
        for c in list(at(&envoy, &["static_resources", "clusters"])) {
            let (host, _) = endpoint(c);
            assert!(
                names.contains(&host),
                "cluster address {host:?} is no compose service"
            );
        }
        let filter = http_filter(&envoy, "envoy.filters.http.ext_authz");
        let (host, port) = endpoint(cluster(
            &envoy,
            &text(at(filter, &["grpc_service", "envoy_grpc", "cluster_name"])),
        ));
        assert_eq!((host.as_str(), port), (rt_name.as_str(), grpc.port()));
        let published: Vec<u16> = list_at(envoy_service, "ports")
            .iter()
            .map(|p| container_port(&text(p)))
            .collect();
        for listener in list(at(&envoy, &["static_resources", "listeners"])) {
            let port = text(at(listener, &["address", "socket_address", "port_value"]));
            assert!(
                published.contains(&port.parse().expect("port")),
                "Envoy's listener port {port} is not published"
            );
        }
        // Redis is there for the Redis store to come.
        assert!(names.contains("redis"));
    }
}
