//! Hot reload of a running gateway: under continuous load, through the file
//! watcher and the admin API, and with broken files that must change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use integration_tests::net::{get, http1_client, send, start_gateway, start_upstream};

fn config(limit: u64, extra_route_limit: u64) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0, token: secret }}
upstreams:
  default: {{ url: "http://{{upstream}}" }}
rules:
  - {{ name: bulk, limit: {limit}, window: 1h, strategy: token_bucket }}
  - {{ name: tight, limit: {extra_route_limit}, window: 1h, strategy: fixed_window }}
routes:
  - {{ name: tight, match: {{ path_prefix: /tight }}, rules: [tight] }}
  - {{ name: rest, match: {{ path_prefix: / }}, rules: [bulk] }}
# Continuous load from one address is what DDoS protection blocks.
ddos_protection: {{ enabled: false }}
"#
    )
}

fn reload_request(admin: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("http://{admin}/config/reload"))
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(&config(1_000_000, 1_000_000), Some(upstream.addr)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let url = gateway.url("/work");
        load.push(tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                match client.request(get(&url, &[])).await {
                    Ok(response) if response.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let admin = http1_client();
    for i in 0..20u64 {
        // Alternate the limit: the rule keeps its name, strategy and key, so its counters carry over.
        gateway.write_config(
            &config(1_000_000 + i % 2, 1_000_000).replace("{upstream}", &upstream.addr.to_string()),
        );
        let got = send(&admin, reload_request(gateway.admin())).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "load ran during the reloads"
    );
    assert!(gateway.gateway.metrics().reloads_ok.load(Ordering::Relaxed) >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_file_applies_within_a_second_and_a_broken_one_changes_nothing() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(&config(1_000, 1_000), Some(upstream.addr)).await;
    gateway.gateway.watch_for_reloads().unwrap();
    let client = http1_client();
    let url = gateway.url("/tight");
    assert_eq!(send(&client, get(&url, &[])).await.status, 200);

    // Tighten /tight to 2 an hour: one more request passes, then 429.
    let edited = Instant::now();
    gateway.write_config(&config(1_000, 2).replace("{upstream}", &upstream.addr.to_string()));
    let applied = loop {
        let got = send(&client, get(&url, &[])).await;
        if got.header("x-ratelimit-limit") == Some("2") {
            break edited.elapsed();
        }
        assert!(
            edited.elapsed() < Duration::from_secs(5),
            "the edit was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        applied < Duration::from_secs(1),
        "applied after {applied:?}"
    );
    assert_eq!(send(&client, get(&url, &[])).await.status, 429);

    // A broken file: rejected, counted, and the limit of 2 still holds.
    let failures_before = gateway
        .gateway
        .metrics()
        .reloads_failed
        .load(Ordering::Relaxed);
    gateway.write_config("rules:\n  - { name: tight, limit: -5, window: soon }\n");
    let admin = http1_client();
    let got = send(&admin, reload_request(gateway.admin())).await;
    assert_eq!(got.status, 422);
    assert!(
        got.json()["errors"][0]
            .as_str()
            .unwrap()
            .contains("rules[0].limit"),
        "{:?}",
        got.body
    );
    assert!(
        gateway
            .gateway
            .metrics()
            .reloads_failed
            .load(Ordering::Relaxed)
            > failures_before
    );
    let still = send(&client, get(&url, &[])).await;
    assert_eq!(still.status, 429);
    assert_eq!(still.header("x-ratelimit-limit"), Some("2"));
}

#[tokio::test]
async fn a_changed_listen_address_is_rebound() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(&config(10, 10), Some(upstream.addr)).await;
    let before = gateway.proxy();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let moved = config(10, 10)
        .replace("listen: 127.0.0.1:0 }", &format!("listen: {free} }}"))
        .replace("{upstream}", &upstream.addr.to_string());
    gateway.write_config(&moved);
    gateway
        .gateway
        .reload(ratethrottle::reload::ReloadTrigger::Api)
        .unwrap();
    assert_eq!(gateway.proxy(), free);
    let got = send(&http1_client(), get(&format!("http://{free}/x"), &[])).await;
    assert_eq!(got.status, 200);
    // The old address no longer accepts.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(before).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused);
}
