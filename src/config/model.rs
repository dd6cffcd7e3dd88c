//! The validated configuration: what the rest of the gateway reads. Built only
//! by `config::load*` from YAML, after every check has passed; every field here
//! has its default applied already.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;

use crate::identity::KeySpec;
use crate::limit::StrategyKind;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Reverse proxy; `None` when the `server` section is absent.
    pub server: Option<ServerConfig>,
    pub admin: AdminConfig,
    /// Envoy front ends; `None` when the section is absent.
    pub ext_authz: Option<ExtAuthzConfig>,
    pub storage: StorageConfig,
    pub global: GlobalConfig,
    /// In file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// In file order; names are unique.
    pub rules: Vec<RuleConfig>,
    /// `None` when the `routes` section is absent (every rule applies to every
    /// request, narrowed by its paths/methods); `Some(vec![])` is an explicit empty list.
    pub routes: Option<Vec<RouteConfig>>,
    pub lists: ListsConfig,
    pub ddos: DdosConfig,
    pub violations: ViolationsConfig,
    pub alerting: AlertingConfig,
    pub monitoring: MonitoringConfig,
    /// Defaults for routes' `websocket` / `grpc` / `graphql` blocks, from the
    /// Python package's top-level sections of the same names.
    pub websocket_defaults: WebSocketLimits,
    pub grpc_defaults: GrpcLimits,
    pub graphql_defaults: GraphqlLimits,
    /// The seed's `websocket.enabled` / `grpc.enabled` / `graphql.enabled`:
    /// when true, routes without their own block get the defaults (already
    /// filled in by the loader), and so do requests when there are no routes.
    pub websocket_enabled: bool,
    pub grpc_enabled: bool,
    pub graphql_enabled: bool,
}

impl Config {
    /// Where a request without a route-specific upstream goes: the upstream
    /// named `default`, else the only one.
    pub fn default_upstream(&self) -> Option<&str> {
        self.upstreams
            .iter()
            .find(|u| u.name == "default")
            .or(match self.upstreams.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .map(|u| u.name.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub max_header_bytes: u64,
    pub header_read_timeout: Duration,
    pub max_body_bytes: u64,
    pub idle_timeout: Duration,
    pub max_connections: u64,
    pub max_connections_per_ip: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `None` when unset or empty: mutating endpoints then answer 403.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthzConfig {
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub path_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub kind: StorageType,
    pub redis: RedisConfig,
    pub on_error: OnError,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; built from host/port/db/password when the
    /// seed's form is used. Ignored when `cluster` is non-empty.
    pub url: String,
    pub cluster: Vec<String>,
    pub key_prefix: String,
    /// Per-call timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    Legacy,
    Ietf,
    Both,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub enabled: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub default_strategy: StrategyKind,
    pub headers_enabled: bool,
    pub header_style: HeaderStyle,
    pub log_violations: bool,
    /// Default for `RUST_LOG` (from the seed's `global.log_level`), lower-cased.
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub http2: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub name: String,
    /// 1 ..= 1_000_000_000.
    pub limit: u64,
    /// Non-zero.
    pub window: Duration,
    pub strategy: StrategyKind,
    /// token_bucket capacity; `None` = limit.
    pub burst: Option<u64>,
    pub key: KeySpec,
    /// Zero = no block.
    pub block_duration: Duration,
    pub shadow: bool,
    /// Path prefixes; empty = every path.
    pub paths: Vec<String>,
    /// Upper-case methods; empty = every method.
    pub methods: Vec<Method>,
    pub descriptors: Vec<DescriptorConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorConfig {
    pub domain: String,
    pub entries: Vec<DescriptorEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorEntry {
    pub key: String,
    /// `None` matches any value and counts each value separately.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    /// Name of an entry of `upstreams` (checked).
    pub upstream: Option<String>,
    /// Names of entries of `rules` (checked), in order.
    pub rules: Vec<String>,
    pub websocket: Option<WebSocketLimits>,
    pub grpc: Option<GrpcLimits>,
    pub graphql: Option<GraphqlLimits>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    /// Exact path.
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// Host without port, lower-cased; a leading `*.` matches any subdomain.
    pub host: Option<String>,
    /// Upper-case; empty = any.
    pub methods: Vec<Method>,
    /// Lower-cased header name → exact value.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketLimits {
    pub connections_per_minute: Option<u64>,
    pub max_concurrent_connections: Option<u64>,
    pub messages_per_minute: Option<u64>,
    pub bytes_per_minute: Option<u64>,
    pub max_message_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GrpcLimits {
    pub requests_per_minute: Option<u64>,
    pub concurrent_requests: Option<u64>,
    pub stream_messages_per_minute: Option<u64>,
    pub per_method: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlLimits {
    pub max_depth: Option<u32>,
    pub max_complexity: Option<u64>,
    pub default_list_size: u64,
    pub max_list_size: u64,
    pub list_fields: Vec<String>,
    pub field_costs: BTreeMap<String, u64>,
    pub introspection: bool,
    pub budget: Option<Budget>,
    pub queries_per_minute: Option<u64>,
    pub mutations_per_minute: Option<u64>,
    pub subscriptions_per_minute: Option<u64>,
    pub field_limits: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub limit: u64,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListsConfig {
    pub whitelist: Vec<IpNet>,
    pub blacklist: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DdosConfig {
    pub enabled: bool,
    pub threshold: u64,
    pub window: Duration,
    pub auto_block: bool,
    pub block_duration: Duration,
    pub max_block_duration: Duration,
    pub suspicious_threshold: f64,
    pub max_unique_endpoints: u64,
    pub burst_threshold: u64,
    pub burst_window: Duration,
    pub min_interval_threshold: Duration,
    pub max_tracked_identifiers: u64,
    pub ipv6_prefix: u8,
    pub under_attack: Option<UnderAttackConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnderAttackConfig {
    pub requests_per_second: u64,
    /// In (0, 1].
    pub limit_factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViolationsConfig {
    pub log: bool,
    /// Webhooks to POST violations to: `violations.webhook`, the seed's
    /// `alerting.webhook` and `alerting.slack` all end up here.
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Our JSON batch.
    Json,
    /// A Slack incoming-webhook message.
    Slack,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: Duration,
    pub headers: BTreeMap<String, String>,
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertingConfig {
    pub enabled: bool,
    pub cooldown: Duration,
    pub thresholds: AlertThresholds,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertThresholds {
    /// Percentages, as the Python package's `block_rate`.
    pub block_rate_warning: f64,
    pub block_rate_critical: f64,
    pub violations_per_minute_warning: u64,
    pub violations_per_minute_critical: u64,
    pub ddos_score_warning: f64,
    pub ddos_score_critical: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitoringConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub log_metrics: bool,
    /// Where to write the stats as JSON every `interval`, when set.
    pub export_path: Option<PathBuf>,
}
