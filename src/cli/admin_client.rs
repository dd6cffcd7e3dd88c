//! A small HTTP/1.1 client for a running gateway's admin API, used by
//! `manage` and `stats`: one connection per call, a timeout on everything,
//! and errors that say what to do about them.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Cli, Io, load_config};

/// The environment variable holding the admin token, as SPEC.md names it
/// (clap reads it into `--token`).
pub const TOKEN_VARIABLE: &str = "RATETHROTTLE_ADMIN_TOKEN";

/// How long one call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers above this size are not an admin API's.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct AdminClient {
    /// `host:port`, as dialled and sent in `Host`.
    authority: String,
    token: Option<String>,
}

/// A 2xx answer's body.
pub struct Answer {
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .context("the admin API answered something that is not JSON")
    }
}

impl AdminClient {
    /// The client for `--admin URL`, else for the admin listener of the
    /// config the command line names; `token` from `--token` or the
    /// environment. `None` when that config does not load (its errors are
    /// already printed).
    pub fn from_command_line(
        cli: &Cli,
        admin: Option<&str>,
        token: Option<String>,
        io: &mut Io<'_>,
    ) -> anyhow::Result<Option<AdminClient>> {
        let token = token.filter(|t| !t.is_empty());
        let authority = match admin {
            Some(url) => parse_admin_url(url)?,
            None => {
                let Some((_, loaded)) = load_config(cli, io)? else {
                    return Ok(None);
                };
                let mut listen = loaded.config.admin.listen;
                // A wildcard listener is reached through loopback.
                if listen.ip().is_unspecified() {
                    listen.set_ip(match listen {
                        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                listen.to_string()
            }
        };
        Ok(Some(AdminClient { authority, token }))
    }

    /// The client for an admin URL given directly (the dashboard's
    /// library entry point has no command line to read it from).
    pub fn for_url(url: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        Ok(AdminClient {
            authority: parse_admin_url(url)?,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, None).await
    }

    /// Any call; the token goes with every call when it is set.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Answer> {
        let attempt = self.exchange(method.clone(), path, body);
        let (status, bytes) = match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(result) => result?,
            Err(_) => bail!(
                "the admin API at {} did not answer {method} {path} within {}s",
                self.url(),
                CALL_TIMEOUT.as_secs()
            ),
        };
        if status.is_success() {
            return Ok(Answer { body: bytes });
        }
        let message = error_message(&bytes);
        Err(match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => anyhow!(
                "the admin API wants a token (401): set ${TOKEN_VARIABLE} to the gateway's admin.token"
            ),
            StatusCode::UNAUTHORIZED => anyhow!(
                "the admin API refused the token in ${TOKEN_VARIABLE} (401): it is not the gateway's admin.token"
            ),
            StatusCode::FORBIDDEN => anyhow!("the admin API refused the change (403): {message}"),
            _ => anyhow!("the admin API answered {status}: {message}"),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!(
                "cannot reach the admin API at {} ({e}); is the gateway running? --admin URL names another",
                self.url()
            )
        };
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        // The connection is driven beside the request; it ends with it.
        tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(path.parse::<Uri>().context("admin API path")?)
            .header(HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the admin request")?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| anyhow!("reading the admin API's answer: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// `http://host:port[/]` or `host:port`; the admin API speaks plain HTTP.
fn parse_admin_url(url: &str) -> anyhow::Result<String> {
    let shape = || format!("--admin {url}: expected http://HOST:PORT, e.g. http://127.0.0.1:9090");
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => bail!("{}; the admin API speaks plain HTTP", shape()),
        None => url,
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!(shape());
    }
    let parsed: http::uri::Authority = authority.parse().map_err(|_| anyhow!(shape()))?;
    if parsed.port_u16().is_none() {
        bail!(shape());
    }
    Ok(authority.to_string())
}

/// The `message` of the admin API's JSON error body, else the body as text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// Runs one admin call on a throwaway current-thread runtime: the commands
/// are synchronous, like the rest of the command line.
pub fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(future)
}

/// "1h 2m 3s", "45s": a span of seconds as a person reads it.
pub fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s")];
    let text: Vec<String> = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}

/// Whole seconds from now until a Unix time; 0 if it has passed. The
/// gateway rounds end times up to the second, so "now" is rounded up too.
pub fn seconds_until(unix: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().div_ceil(1_000_000_000) as u64);
    unix.saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_with_and_without_a_scheme() {
        assert_eq!(
            parse_admin_url("http://127.0.0.1:9090").unwrap(),
            "127.0.0.1:9090"
        );
        assert_eq!(parse_admin_url("http://[::1]:9090/").unwrap(), "[::1]:9090");
        assert_eq!(parse_admin_url("localhost:9090").unwrap(), "localhost:9090");
        for bad in [
            "https://127.0.0.1:9090",
            "http://127.0.0.1",
            "http://h:1/x",
            "",
            "http://",
        ] {
            assert!(parse_admin_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(3723), "1h 2m 3s");
        assert_eq!(human_duration(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn the_error_message_is_taken_from_the_json_body() {
        assert_eq!(
            error_message(br#"{"error":"x","message":"no token"}"#),
            "no token"
        );
        assert_eq!(error_message(b"plain\n"), "plain");
    }
}
