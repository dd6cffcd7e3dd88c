//! The `config` and `test` commands as a user runs them (in-process, through
//! the same `cli::run` the binary calls).

use integration_tests::{cli, repo_root};

fn default_config() -> String {
    repo_root()
        .join("config/ratethrottle.yaml")
        .display()
        .to_string()
}

#[test]
fn the_default_config_validates() {
    let (code, out, _err) = cli(&["config", "--validate", "--config", &default_config()]);
    assert_eq!(code, 0);
    assert!(out.contains(": ok: "), "{out}");
    assert!(
        out.contains("storage memory"),
        "the default needs no Redis: {out}"
    );
}

#[test]
fn config_may_stand_before_or_after_the_subcommand() {
    let path = default_config();
    assert_eq!(cli(&["--config", &path, "config", "--validate"]).0, 0);
    assert_eq!(cli(&["config", "--config", &path, "--validate"]).0, 0);
}

#[test]
fn a_typo_exits_1_naming_the_file_line_path_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "rules:\n  - name: api\n    limit: 10\n    window: 60\n    stratgy: token_bucket\n",
    )
    .unwrap();
    let (code, out, err) = cli(&["config", "--validate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    let expected = format!(
        "{}:5:5: rules[0].stratgy: unknown key \"stratgy\", did you mean \"strategy\"?",
        file.display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn every_error_is_reported_one_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "rules:\n  - { name: a, limit: 0, window: 60 }\n  - { name: b, limit: 5, window: soon }\n",
    )
    .unwrap();
    let (code, _out, err) = cli(&["config", "--validate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains(":2:") && lines[0].contains("rules[0].limit"),
        "{err}"
    );
    assert!(
        lines[1].contains(":3:") && lines[1].contains("rules[1].window"),
        "{err}"
    );
    assert!(
        lines[1].contains(r#"expected a duration like 60, "90s", "1m", "1h""#),
        "{err}"
    );
}

#[test]
fn show_and_export_print_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.yaml");
    std::fs::write(
        &file,
        "admin: { token: hunter2 }\nstorage:\n  type: redis\n  redis: { host: r.internal, password: s3cret }\nrules: [{ name: a, limit: 5, window: 60 }]\n",
    )
    .unwrap();
    let (code, shown, _) = cli(&["config", "--show", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"));
    assert!(
        shown.contains("strategy: sliding_window"),
        "defaults are spelled out: {shown}"
    );

    let export = dir.path().join("effective.yaml");
    let (code, out, _) = cli(&[
        "config",
        "--export",
        export.to_str().unwrap(),
        "--config",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&export).unwrap(), shown);
    // The exported file is itself a valid config.
    assert_eq!(
        cli(&["config", "--validate", "--config", export.to_str().unwrap()]).0,
        0
    );
}

#[test]
fn test_replays_the_configured_limit_exactly() {
    let (code, out, err) = cli(&[
        "test",
        "--rule",
        "auth_strict",
        "--identifier",
        "1.2.3.4",
        "--requests",
        "10",
        "--config",
        &default_config(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("allowed        5\n"), "{out}");
    assert!(out.contains("blocked        5\n"), "{out}");
    assert!(out.contains("first blocked  request #6"), "{out}");
    assert!(out.contains("retry after    60s"), "{out}");
}

#[test]
fn test_with_an_interval_lets_the_window_slide() {
    let (code, out, _) = cli(&[
        "test",
        "--rule",
        "auth_strict",
        "--identifier",
        "1.2.3.4",
        "--requests",
        "20",
        "--delay",
        "12s",
        "--json",
        "--config",
        &default_config(),
    ]);
    assert_eq!(code, 0);
    let replay: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 5 per 60 s at one per 12 s: exactly at the limit, never over.
    assert_eq!(replay["allowed"], 20);
    assert_eq!(replay["blocked"], 0);
    assert_eq!(replay["first_blocked"], serde_json::Value::Null);
}

#[test]
fn test_reports_a_token_bucket_refill_in_verbose_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bucket.yaml");
    std::fs::write(
        &file,
        "rules: [{ name: b, limit: 60, window: 1m, strategy: token_bucket, burst: 2 }]\n",
    )
    .unwrap();
    let args = [
        "test",
        "--rule",
        "b",
        "--identifier",
        "k",
        "--requests",
        "4",
        "--interval",
        "500ms",
        "--verbose",
        "--json",
        "--config",
    ];
    let (code, out, _) = cli(&[&args[..], &[file.to_str().unwrap()]].concat());
    assert_eq!(code, 0);
    let replay: serde_json::Value = serde_json::from_str(&out).unwrap();
    let allowed: Vec<bool> = replay["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["allowed"] == true)
        .collect();
    // Burst of 2, one token a second: t=0 ok, 0.5 ok, 1.0 ok (refilled one), 1.5 no.
    assert_eq!(allowed, [true, true, true, false]);
    assert_eq!(replay["retry_after"], 1);
}

#[test]
fn mistakes_on_the_command_line_are_errors_not_panics() {
    let config = default_config();
    let (code, _, err) = cli(&[
        "test",
        "--rule",
        "nope",
        "--identifier",
        "x",
        "--requests",
        "1",
        "--config",
        &config,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no rule named \"nope\""), "{err}");
    assert!(
        err.contains("api_default"),
        "names the rules there are: {err}"
    );

    let (code, _, err) = cli(&[
        "test",
        "--rule",
        "api_default",
        "--identifier",
        "x",
        "--requests",
        "0",
        "--config",
        &config,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--requests"), "{err}");

    let (code, _, err) = cli(&[
        "test",
        "--rule",
        "r",
        "--identifier",
        "x",
        "--requests",
        "1",
        "--interval",
        "soon",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("expected a duration"), "{err}");

    let (code, _, err) = cli(&[
        "config",
        "--validate",
        "--config",
        "/nonexistent/ratethrottle.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/ratethrottle.yaml"), "{err}");

    let (code, _, err) = cli(&["config"]);
    assert_eq!(code, 2, "an action is required: {err}");

    let (code, out, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("config") && out.contains("test"));
}

mod against_a_running_gateway {
    //! `manage` and `stats` talk to a live gateway's admin API.

    use integration_tests::cli;
    use integration_tests::net::{get, http1_client, send, start_gateway, start_upstream};

    const GATEWAY: &str = r#"
server: { listen: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0, token: s3cret }
upstreams:
  default: { url: "http://{upstream}" }
rules:
  - { name: api, limit: 2, window: 1h, block_duration: 10m }
"#;

    /// The command line runs its own runtime: keep it off the test's.
    async fn run(args: Vec<String>) -> (u8, String, String) {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args)
        })
        .await
        .expect("the command line ran")
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn manage_blacklists_an_address_the_gateway_then_refuses_and_lists_it() {
        let upstream = start_upstream().await;
        let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
        let admin = format!("http://{}", gateway.admin());
        let client = http1_client();
        assert_eq!(send(&client, get(&gateway.url("/"), &[])).await.status, 200);

        let (code, out, err) = run(args(&[
            "manage",
            "--admin",
            &admin,
            "--token",
            "s3cret",
            "--blacklist-add",
            "127.0.0.1",
            "--duration",
            "1h",
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("added 127.0.0.1 to the blacklist for 1h (until Unix time "),
            "{out}"
        );
        assert_eq!(send(&client, get(&gateway.url("/"), &[])).await.status, 403);

        let (code, out, _) = run(args(&["manage", "--admin", &admin, "--list-all"])).await;
        assert_eq!(code, 0);
        assert!(out.contains("blacklist (1)\n  127.0.0.1 "), "{out}");
        assert!(out.contains("runtime"), "{out}");

        let (code, out, err) = run(args(&[
            "manage",
            "--admin",
            &admin,
            "--token",
            "s3cret",
            "--blacklist-remove",
            "127.0.0.1",
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "removed 127.0.0.1 from the blacklist\n");
        assert_eq!(send(&client, get(&gateway.url("/"), &[])).await.status, 200);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_changes_nothing_and_says_why() {
        let upstream = start_upstream().await;
        let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
        let admin = format!("http://{}", gateway.admin());
        let add = |token: Option<&str>| {
            let mut list = args(&["manage", "--admin", &admin, "--whitelist-add", "10.0.0.0/8"]);
            if let Some(token) = token {
                list.extend(args(&["--token", token]));
            }
            list
        };
        let (code, out, err) = run(add(Some("wrong"))).await;
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(
            err.contains("refused the token") && err.contains("401"),
            "{err}"
        );
        // An empty --token counts as none (the variable set but empty).
        let (code, _, err) = run(add(Some(""))).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("wants a token (401)") && err.contains("RATETHROTTLE_ADMIN_TOKEN"),
            "{err}"
        );
        let (_, out, _) = run(args(&["manage", "--admin", &admin, "--list-all"])).await;
        assert!(out.contains("whitelist (0)"), "{out}");
    }

    #[tokio::test]
    async fn stats_prints_and_exports_what_the_gateway_counted() {
        let upstream = start_upstream().await;
        let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
        let admin = format!("http://{}", gateway.admin());
        let client = http1_client();
        let statuses: Vec<u16> = {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.push(
                    send(&client, get(&gateway.url("/"), &[]))
                        .await
                        .status
                        .as_u16(),
                );
            }
            all
        };
        // Two allowed, then the violation earns a block: 429, then 403.
        assert_eq!(statuses, [200, 200, 429, 403]);

        let (code, out, err) = run(args(&["stats", "--admin", &admin])).await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("requests: 4 total, 2 allowed, 2 blocked (50.00% blocked)"),
            "{out}"
        );
        assert!(out.contains("\n  api "), "{out}");
        assert!(out.contains("active blocks (1)\n  ip:127.0.0.1"), "{out}");

        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("stats.json");
        let (code, _, err) = run(args(&[
            "stats",
            "--admin",
            &admin,
            "--export",
            json.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        let exported: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(exported["total_requests"], 4);
        assert_eq!(exported["rules"]["api"]["allowed"], 2);

        let csv = dir.path().join("stats.csv");
        let (code, _, err) = run(args(&[
            "stats",
            "--admin",
            &admin,
            "--export",
            csv.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(text.contains("totals,,blocked_requests,2\n"), "{text}");
        assert!(text.contains("rule,api,allowed,2\n"), "{text}");
        assert!(
            text.contains("block,ip:127.0.0.1,reason,violation\n"),
            "{text}"
        );

        let (code, _, err) =
            run(args(&["stats", "--admin", &admin, "--export", "stats.txt"])).await;
        assert_eq!(code, 1);
        assert!(err.contains("must end in .json or .csv"), "{err}");
    }

    #[tokio::test]
    async fn a_gateway_that_is_not_there_is_reported_not_panicked_on() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin = format!("http://127.0.0.1:{port}");
        for command in [
            args(&["stats", "--admin", &admin]),
            args(&["manage", "--admin", &admin, "--list-all"]),
        ] {
            let (code, out, err) = run(command).await;
            assert_eq!((code, out.as_str()), (1, ""));
            assert!(
                err.starts_with("error: cannot reach the admin API at"),
                "{err}"
            );
            assert!(err.contains("is the gateway running?"), "{err}");
        }
        let (code, _, err) = run(args(&["manage", "--list-all", "--admin", "https://x:1"])).await;
        assert_eq!(code, 1);
        assert!(err.contains("plain HTTP"), "{err}");
        // --duration only goes with an addition.
        let (code, _, err) = run(args(&[
            "manage",
            "--admin",
            &admin,
            "--list-all",
            "--duration",
            "1h",
        ]))
        .await;
        assert_eq!(code, 2, "{err}");
    }
}
