//! The gRPC side of bench/envoy.sh's load, and its check.
//!
//! `check-request encode --client IP`: writes to stdout one ext_authz v3
//! `CheckRequest` as Envoy sends it for `GET /api/v1/items?page=2` from client
//! IP, in a gRPC message frame (1-byte compression flag, 4-byte big-endian
//! length, then the protobuf), ready for `h2load -d`.
//!
//! `check-request verify [FILE]`: reads one gRPC-framed `CheckResponse` (a
//! response body, from FILE or stdin), prints its status and headers, and
//! exits 0 only when the status is OK with an `OkHttpResponse`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::Timestamp;
use prost::Message;

const USAGE: &str = "usage: check-request encode --client IP > request.bin\n       check-request verify [response.bin]";

fn socket(address: String, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address,
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    })
}

/// What Envoy's ext_authz filter sends for one client request: source and
/// destination, the request line, and the headers (pseudo-headers included,
/// as Envoy does).
fn check_request(client: IpAddr) -> CheckRequest {
    let path = "/api/v1/items?page=2";
    let host = "api.example.com";
    let headers: HashMap<String, String> = [
        (":authority", host),
        (":method", "GET"),
        (":path", path),
        (":scheme", "https"),
        ("accept", "application/json"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl",
        ),
        ("user-agent", "bench-client/1.0"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "9b2f6c1e-5a0d-4c7e-8f3b-2d1a6e9c4b70"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: socket(client.to_string(), 51234),
                ..Peer::default()
            }),
            destination: Some(Peer {
                address: socket("10.0.0.10".into(), 8443),
                ..Peer::default()
            }),
            request: Some(Request {
                time: Some(Timestamp {
                    seconds: 1_764_000_000,
                    nanos: 0,
                }),
                http: Some(HttpRequest {
                    id: "14562398476529835621".into(),
                    method: "GET".into(),
                    headers,
                    path: path.into(),
                    host: host.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn unframe(bytes: &[u8]) -> Result<&[u8], String> {
    let (Some(&flag), Some(length)) = (bytes.first(), bytes.get(1..5)) else {
        return Err(format!("{} bytes: no gRPC message frame", bytes.len()));
    };
    if flag != 0 {
        return Err("compressed gRPC message".into());
    }
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    bytes
        .get(5..5 + length)
        .ok_or_else(|| format!("frame of {length} bytes, only {} present", bytes.len() - 5))
}

fn verify(bytes: &[u8]) -> Result<String, String> {
    let response = CheckResponse::decode(unframe(bytes)?).map_err(|e| e.to_string())?;
    let status = response.status.unwrap_or_default();
    let headers = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .map(|h| format!("{}: {}", h.key, h.value))
            .collect::<Vec<_>>(),
        Some(HttpResponse::DeniedResponse(denied)) => {
            return Err(format!(
                "denied: status {} ({}), HTTP {:?}",
                status.code, status.message, denied.status
            ));
        }
        Some(HttpResponse::ErrorResponse(error)) => {
            return Err(format!(
                "error response: status {} ({}), HTTP {:?}",
                status.code, status.message, error.status
            ));
        }
        None => return Err(format!("no http_response, status {}", status.code)),
    };
    if status.code != 0 {
        return Err(format!("status {} ({})", status.code, status.message));
    }
    Ok(format!(
        "CheckResponse OK, upstream headers: [{}]",
        headers.join(", ")
    ))
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [command, flag, client] if command == "encode" && flag == "--client" => {
            let client: IpAddr = client.parse().map_err(|_| format!("bad IP {client:?}"))?;
            std::io::stdout()
                .write_all(&frame(&check_request(client)))
                .map_err(|e| e.to_string())
        }
        [command, rest @ ..] if command == "verify" && rest.len() <= 1 => {
            let mut bytes = Vec::new();
            let read = match rest.first() {
                Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
                None => std::io::stdin().read_to_end(&mut bytes),
            };
            read.map_err(|e| e.to_string())?;
            println!("{}", verify(&bytes)?);
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("check-request: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_request_decodes_back() {
        let client: IpAddr = "10.1.0.3".parse().unwrap();
        let framed = frame(&check_request(client));
        let request = CheckRequest::decode(unframe(&framed).unwrap()).unwrap();
        assert_eq!(request, check_request(client));
    }
}
