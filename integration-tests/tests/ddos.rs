//! DDoS protection through the engine (with a manual clock) and through a
//! running gateway: floods blocked, IPv6 subnets aggregated, the whitelist
//! honoured, limits tightened under attack, blocked addresses closed at
//! accept and excess connections shed.

use std::time::Duration;

use integration_tests::net::{get, http1_client, send, start_gateway, start_upstream};
use integration_tests::{Req, block_on, decide, engine};
use std::sync::Arc;

use ratethrottle::decision::{BlockedBy, Decision};
use ratethrottle::engine::ExtraCheck;
use ratethrottle::frontend::protocol_limits::{Caller, per_minute};
use ratethrottle::limit::{Limit, StrategyKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MS: Duration = Duration::from_millis(1);

fn is_ddos_block(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::Blocked {
            by: BlockedBy::Ddos,
            ..
        }
    )
}

/// A per-address rule of 100 a minute and SPEC.md's DDoS defaults.
const PER_IP: &str = "rules: [{ name: per_ip, limit: 100, window: 1m }]\n";

#[test]
fn one_address_flooding_at_twenty_times_its_limit_is_blocked_within_150_requests() {
    let (engine, clock) = engine(PER_IP);
    let flood = Req::get("/api/items").from("198.51.100.7");
    let blocked_at = (1..=1000)
        .find(|_| {
            clock.advance(30 * MS);
            is_ddos_block(&decide(&engine, &flood))
        })
        .expect("the flood was never blocked");
    // 127 with SPEC.md's defaults (docs/ddos.md).
    assert!(blocked_at <= 150, "blocked only at request {blocked_at}");
    // Blocked from now on, for the first offence's hour, and listed as such.
    clock.advance(Duration::from_secs(600));
    assert!(is_ddos_block(&decide(&engine, &flood)));
    let blocks = engine.blocks().list(engine.now());
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].identity, "ip:198.51.100.7");
    // Someone else is unaffected.
    let other = Req::get("/api/items").from("198.51.100.8");
    assert!(matches!(decide(&engine, &other), Decision::Allow { .. }));
}

#[test]
fn the_whitelist_exempts_from_ddos_protection_too() {
    let (engine, clock) = engine(&format!("{PER_IP}lists: {{ whitelist: [198.51.100.7] }}\n"));
    let flood = Req::get("/").from("198.51.100.7");
    for _ in 0..2000 {
        clock.advance(MS);
        assert!(matches!(decide(&engine, &flood), Decision::Allow { .. }));
    }
}

#[test]
fn rotating_through_one_ipv6_subnet_gets_the_subnet_blocked() {
    let (engine, clock) = engine(PER_IP);
    // Every request from a new address of 2001:db8:1:2::/64: no single
    // address is ever busy, the /64 is.
    let mut blocked_at = None;
    for i in 1..=1000u32 {
        clock.advance(20 * MS);
        let request = Req::get("/").from(&format!("2001:db8:1:2::{i:x}"));
        if is_ddos_block(&decide(&engine, &request)) {
            blocked_at = Some(i);
            break;
        }
    }
    assert!(blocked_at.is_some_and(|n| n <= 150), "{blocked_at:?}");
    let same_subnet = Req::get("/").from("2001:db8:1:2:ffff::1");
    assert!(is_ddos_block(&decide(&engine, &same_subnet)));
    let other_subnet = Req::get("/").from("2001:db8:1:3::1");
    assert!(matches!(
        decide(&engine, &other_subnet),
        Decision::Allow { .. }
    ));
}

#[test]
fn under_attack_every_limit_is_tightened_and_restored_afterwards() {
    let yaml = "rules:\n\
                \x20 - { name: per_ip, limit: 10, window: 1h }\n\
                \x20 - { name: per_tenant, limit: 10, window: 1h, paths: [/never/],\n\
                \x20     descriptors: [{ domain: edge, entries: [{ key: tenant }] }] }\n\
                ddos_protection: { under_attack: { requests_per_second: 500, limit_factor: 0.5 } }\n";
    let (engine, clock) = engine(yaml);
    let allowed = |address: &str| {
        let request = Req::get("/").from(address);
        (0..20)
            .filter(|_| matches!(decide(&engine, &request), Decision::Allow { .. }))
            .count()
    };
    // Envoy's rate limit service, one descriptor a call.
    let allowed_calls = |tenant: &str| {
        let descriptor = vec![("tenant".to_string(), tenant.to_string())];
        (0..20)
            .filter(|_| {
                let statuses = block_on(engine.check_descriptors(
                    "edge",
                    std::slice::from_ref(&descriptor),
                    1,
                ))
                .expect("memory store");
                !statuses[0].over_limit
            })
            .count()
    };
    // A limit a front end adds to the batch (a GraphQL budget), 6 an hour:
    // tighter than per_ip, so it is the one that denies.
    let budget = ExtraCheck {
        name: Arc::from("api.graphql.budget"),
        seed: 7,
        limit: Limit::new(StrategyKind::TokenBucket, 6, 3_600 * 1_000_000_000, None),
        cost: 1,
        window: Duration::from_secs(3600),
    };
    let allowed_extra = |address: &str| {
        let request = Req::get("/never/").from(address);
        (0..20)
            .filter(|_| {
                let (decision, _) = block_on(
                    engine.decide_with_extra(&request.facts(), std::slice::from_ref(&budget)),
                );
                matches!(decision, Decision::Allow { .. })
            })
            .count()
    };
    // A route's gRPC or WebSocket rate, 10 a minute.
    let allowed_protocol = |identity: &str| {
        let caller = Caller {
            client_ip: "192.0.2.99".parse().unwrap(),
            route: None,
        };
        (0..20)
            .filter(|_| {
                block_on(per_minute(
                    &engine,
                    &engine.snapshot(),
                    caller,
                    "grpc.requests_per_minute",
                    identity,
                    10,
                ))
                .is_none()
            })
            .count()
    };
    assert_eq!(allowed("192.0.2.1"), 10);
    assert_eq!(allowed_calls("a"), 10);
    assert_eq!(allowed_extra("192.0.2.11"), 6);
    assert_eq!(allowed_protocol("ip:192.0.2.21"), 10);
    // 1,000 addresses, one request each, within one second: each far under
    // its limit, together twice the level.
    for i in 0..1000u32 {
        clock.advance(MS);
        let address = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        assert!(matches!(
            decide(&engine, &Req::get("/").from(&address)),
            Decision::Allow { .. }
        ));
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(allowed("192.0.2.2"), 5, "the limit is halved under attack");
    assert_eq!(allowed_calls("b"), 5, "descriptor rules too");
    assert_eq!(allowed_extra("192.0.2.12"), 3, "GraphQL budgets too");
    assert_eq!(allowed_protocol("ip:192.0.2.22"), 5, "protocol limits too");
    assert!(engine.ddos().unwrap().under_attack());
    // Calm seconds end the mode; the full limit is back.
    clock.advance(Duration::from_secs(30));
    assert_eq!(allowed("192.0.2.3"), 10);
    assert_eq!(allowed_calls("c"), 10);
    assert_eq!(allowed_extra("192.0.2.13"), 6);
    assert_eq!(allowed_protocol("ip:192.0.2.23"), 10);
    assert!(!engine.ddos().unwrap().under_attack());
}

#[test]
fn rate_limit_service_calls_alone_turn_under_attack_mode_on() {
    let yaml = "rules:\n\
                \x20 - { name: per_tenant, limit: 10, window: 1h,\n\
                \x20     descriptors: [{ domain: edge, entries: [{ key: tenant }] }] }\n\
                ddos_protection: { under_attack: { requests_per_second: 500, limit_factor: 0.5 } }\n";
    let (engine, clock) = engine(yaml);
    let call = |tenant: &str| {
        let descriptor = vec![("tenant".to_string(), tenant.to_string())];
        let statuses =
            block_on(engine.check_descriptors("edge", std::slice::from_ref(&descriptor), 1))
                .expect("memory store");
        !statuses[0].over_limit
    };
    // 1,000 tenants, one call each, within one second: twice the level,
    // with no request through the proxy.
    for i in 0..1000 {
        clock.advance(MS);
        assert!(call(&format!("t{i}")));
    }
    clock.advance(Duration::from_secs(1));
    assert!(call("first"));
    assert!(engine.ddos().unwrap().under_attack());
    let allowed = (0..20).filter(|_| call("busy")).count();
    assert_eq!(allowed, 5, "the descriptor rule's limit is halved");
}

/// The first request line of an answer, or "" when the connection closed unanswered.
async fn answer_of(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut buf = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer or a close in time");
    let n = read.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    let client = http1_client();
    let got = send(&client, get(&format!("http://{admin}/metrics"), &[])).await;
    String::from_utf8_lossy(&got.body).into_owned()
}

#[tokio::test]
async fn a_blocked_flooder_gets_403_then_its_connections_are_closed_at_accept() {
    let upstream = start_upstream().await;
    let yaml = "server: { listen: 127.0.0.1:0 }\nadmin: { listen: 127.0.0.1:0 }\n\
                upstreams: { default: { url: \"http://{upstream}\" } }\n\
                rules: [{ name: per_ip, limit: 100000, window: 1m }]\n";
    let gateway = start_gateway(yaml, Some(upstream.addr)).await;
    let client = http1_client();
    let mut first_block = None;
    for n in 1..=2000 {
        let got = send(&client, get(&gateway.url("/"), &[])).await;
        if got.status == 403 {
            first_block = Some((n, got.json()));
            break;
        }
        assert_eq!(got.status, 200);
    }
    let (n, body) = first_block.expect("the flood was never blocked");
    // Back to back from one address, with no rule refusing: the burst and
    // the pace alone (docs/ddos.md).
    assert!(n <= 200, "blocked only at request {n}");
    assert_eq!(body["reason"], "ddos");
    assert_eq!(body["retry_after"], 3600);
    // A new connection from the blocked address gets no HTTP at all.
    assert_eq!(answer_of(gateway.proxy()).await, "");
    let text = metrics(gateway.admin()).await;
    assert!(
        text.contains("ratethrottle_connections_rejected_total{reason=\"blocked\"} 1"),
        "{text}"
    );
    assert!(text.contains("ratethrottle_ddos_blocks_total 1"), "{text}");
}

#[tokio::test]
async fn under_attack_connections_beyond_the_room_left_are_shed_with_503() {
    let upstream = start_upstream().await;
    // Clients arrive through a trusted proxy (this test), each with its own address.
    let yaml = "server: { listen: 127.0.0.1:0, max_connections: 2 }\n\
                admin: { listen: 127.0.0.1:0 }\n\
                global: { trusted_proxies: [127.0.0.1/32] }\n\
                upstreams: { default: { url: \"http://{upstream}\" } }\n\
                rules: [{ name: per_ip, limit: 1000, window: 1m }]\n\
                ddos_protection: { under_attack: { requests_per_second: 20, limit_factor: 0.5 } }\n";
    let gateway = start_gateway(yaml, Some(upstream.addr)).await;
    {
        let client = http1_client();
        let mut on = false;
        for round in 0..200u32 {
            for i in 0..25u32 {
                let address = format!("10.0.{}.{}", round % 250, i + 1);
                send(
                    &client,
                    get(&gateway.url("/"), &[("x-forwarded-for", &address)]),
                )
                .await;
            }
            if metrics(gateway.admin())
                .await
                .contains("ratethrottle_ddos_under_attack 1")
            {
                on = true;
                break;
            }
        }
        assert!(on, "never under attack");
    }
    // Room under attack: 2 × 0.5 = 1 connection. Wait for the load's
    // connections to close, hold one, and the next is shed.
    for _ in 0..100 {
        if metrics(gateway.admin())
            .await
            .contains("ratethrottle_connections_open 0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _held = tokio::net::TcpStream::connect(gateway.proxy())
        .await
        .unwrap();
    // The held connection counts once its task has started.
    let mut shed = String::new();
    for _ in 0..50 {
        shed = answer_of(gateway.proxy()).await;
        if shed.starts_with("HTTP/1.1 503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shed, "HTTP/1.1 503 Service Unavailable");
    let text = metrics(gateway.admin()).await;
    assert!(!text.contains("reason=\"under_attack\"} 0"), "{text}");
}
