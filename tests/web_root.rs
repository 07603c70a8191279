//! `warden web` against a real daemon (root): every endpoint × role, body
//! and rate limits, failed-auth limits, the event stream (a halt arrives
//! within 500 ms; a reconnect with Last-Event-ID misses nothing), metrics,
//! the OpenAPI document and the dashboard's headers.

mod common;
mod web_common;

use std::time::{Duration, Instant};

use common::{agent, bin, workload, Env};
use serde_json::Value;
use web_common::{sse, token, Web};

const T: Duration = Duration::from_secs(30);

fn env_with_web(web_table: &str) -> Env {
    let agents =
        agent("alpha", workload::COOPERATIVE, 1, "") + &agent("beta", workload::COOPERATIVE, 1, "");
    // [web] must come after the top-level keys and before the agents.
    let mut env = Env::new(&format!("\n[web]\n{web_table}\n"), &agents);
    env.start();
    env.wait_procs(4);
    env
}

struct Tokens {
    viewer: String,
    operator: String,
    admin: String,
}

fn tokens(env: &Env) -> Tokens {
    Tokens {
        viewer: token(bin(), &env.socket(), "view", "viewer"),
        operator: token(bin(), &env.socket(), "op", "operator"),
        admin: token(bin(), &env.socket(), "boss", "admin"),
    }
}

/// (method, path, body, least role, status expected once allowed; 0: any
/// that is neither an auth error nor a server error).
const MATRIX: &[(&str, &str, Option<&str>, u8, u16)] = &[
    ("GET", "/api/status", None, 1, 200),
    ("GET", "/api/agents", None, 1, 200),
    ("GET", "/api/agents/alpha", None, 1, 200),
    ("GET", "/api/agents/nosuch", None, 1, 404),
    ("GET", "/api/agents/alpha/logs", None, 1, 200),
    ("GET", "/api/agents/alpha/logs?offset=0", None, 1, 200),
    ("GET", "/api/approvals", None, 1, 200),
    ("GET", "/api/runs", None, 1, 0),
    ("GET", "/api/runs/nosuch", None, 1, 404),
    ("GET", "/api/authorizations", None, 1, 200),
    ("GET", "/api/credentials", None, 1, 200),
    ("GET", "/api/audit?n=5", None, 1, 200),
    ("GET", "/api/audit/1", None, 1, 200),
    ("GET", "/api/audit/999999", None, 1, 404),
    ("GET", "/api/audit/verify", None, 1, 200),
    ("GET", "/api/casepacks/nosuch", None, 1, 404),
    ("GET", "/metrics", None, 1, 200),
    ("POST", "/api/agents/nosuch/start", None, 2, 404),
    ("POST", "/api/agents/nosuch/stop", None, 2, 404),
    ("POST", "/api/agents/nosuch/restart", None, 2, 404),
    ("POST", "/api/approvals/nosuch/approve", None, 2, 0),
    (
        "POST",
        "/api/approvals/nosuch/reject",
        Some(r#"{"reason":"no"}"#),
        2,
        0,
    ),
    ("POST", "/api/checkin", None, 2, 200),
    (
        "POST",
        "/api/halt",
        Some(r#"{"reason":"matrix"}"#),
        3,
        u16::MAX,
    ),
    (
        "POST",
        "/api/resume",
        Some(r#"{"reason":"matrix"}"#),
        3,
        409,
    ),
    ("POST", "/api/reload", None, 3, 0),
    (
        "POST",
        "/api/authorizations",
        Some(r#"{"agent":"nosuch","reason":"x"}"#),
        3,
        0,
    ),
    ("POST", "/api/authorizations/nosuch/execute", None, 3, 0),
    ("POST", "/api/authorizations/nosuch/disarm", None, 3, 0),
    (
        "POST",
        "/api/credentials",
        Some(r#"{"agent":"nosuch","kind":"api-key","name":"k"}"#),
        3,
        0,
    ),
    ("POST", "/api/credentials/nosuch/revoke", None, 3, 0),
    ("GET", "/api/tokens", None, 3, 200),
    (
        "POST",
        "/api/tokens",
        Some(r#"{"name":"made-on-web","role":"viewer"}"#),
        3,
        200,
    ),
    ("POST", "/api/tokens/nosuch/revoke", None, 3, 404),
];

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or_default()["error"]["code"]
        .as_str()
        .unwrap_or("<no error code>")
        .to_string()
}

#[test]
fn every_endpoint_and_role() {
    let env =
        env_with_web("failed_auth_per_minute = 1000\nrate_burst = 1000\nrate_per_second = 1000");
    let t = tokens(&env);
    let web = Web::start(bin(), &env.config, &env.path("web.stderr"));

    let (code, _, body) = web.get("/api/health", None);
    assert_eq!(code, 200, "{body}");

    let roles: [(u8, Option<&str>); 4] = [
        (0, None),
        (1, Some(&t.viewer)),
        (2, Some(&t.operator)),
        (3, Some(&t.admin)),
    ];
    for &(method, path, body, least, want) in MATRIX {
        for &(level, tok) in &roles {
            // The admin's halt is the event stream test's.
            if want == u16::MAX && level >= least {
                continue;
            }
            let (code, headers, text) = web.call(method, path, tok, body);
            let ctx = format!("{method} {path} as level {level}: {code} {text}");
            if level == 0 {
                assert_eq!(code, 401, "{ctx}");
                assert_eq!(error_code(&text), "unauthorized", "{ctx}");
                assert!(headers.contains_key("www-authenticate"), "{ctx}");
            } else if level < least {
                assert_eq!(code, 403, "{ctx}");
                assert_eq!(error_code(&text), "forbidden", "{ctx}");
            } else if want == 0 {
                assert!(![401, 403].contains(&code) && code < 500, "{ctx}");
            } else {
                assert_eq!(code, want, "{ctx}");
            }
            if code >= 400 && path != "/metrics" {
                assert_ne!(error_code(&text), "<no error code>", "{ctx}");
            }
        }
    }

    // Unknown, revoked tokens.
    let (code, _, _) = web.get("/api/status", Some("wdn_web_0000"));
    assert_eq!(code, 401);
    let (code, _, text) = web.post("/api/tokens/view/revoke", Some(&t.admin), None);
    assert_eq!(code, 200, "{text}");
    let (code, _, _) = web.get("/api/status", Some(&t.viewer));
    assert_eq!(code, 401, "a revoked token stops working at once");

    // The audit names the token and role beside the web's uid.
    let (_, _, text) = web.get("/api/audit?n=200", Some(&t.admin));
    let v: Value = serde_json::from_str(&text).unwrap();
    let checkin = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "command" && e["data"]["request"]["cmd"] == "checkin")
        .expect("checkin audited");
    assert_eq!(checkin["data"]["on_behalf_of"]["token"], "op");
    assert_eq!(checkin["data"]["on_behalf_of"]["role"], "operator");
    assert_eq!(checkin["uid"], 0);
    let refused = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "web_refused");
    assert!(refused, "refusals are audited");
    // No secret anywhere in the audit or the web's own log.
    for secret in [&t.viewer, &t.operator, &t.admin] {
        assert!(!text.contains(secret.as_str()));
        let log = std::fs::read_to_string(env.path("web.stderr")).unwrap();
        assert!(!log.contains(secret.as_str()));
    }

    // Metrics: every family.
    let (code, headers, text) = web.get("/metrics", Some(&t.operator));
    assert_eq!(code, 200);
    assert!(headers["content-type"].starts_with("text/plain"));
    for family in [
        "warden_safe_mode 0",
        "warden_agents{state=\"running\"} 2",
        "warden_agent_cpu_seconds_total{agent=\"alpha\"}",
        "warden_agent_memory_bytes{agent=\"beta\"}",
        "warden_agent_restarts_total{agent=\"alpha\"} 0",
        "# TYPE warden_halts_total counter",
        "# TYPE warden_halt_duration_seconds histogram",
        "warden_approvals_pending 0",
        "warden_audit_seq ",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // OpenAPI and the dashboard.
    let (code, _, text) = web.get("/api/openapi.json", None);
    assert_eq!(code, 200);
    let spec: Value = serde_json::from_str(&text).unwrap();
    assert!(spec["paths"]["/api/events"].is_object());
    let (code, headers, html) = web.get("/", None);
    assert_eq!(code, 200);
    let csp = &headers["content-security-policy"];
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );
    assert_eq!(web.get("/assets/app.js", None).0, 200);
    let (code, _, text) = web.get("/no/such/page", None);
    assert_eq!((code, error_code(&text).as_str()), (404, "not_found"));
}

#[test]
fn body_rate_and_failed_auth_limits() {
    let env = env_with_web("rate_per_second = 1\nrate_burst = 3\nfailed_auth_per_minute = 3");
    let t = tokens(&env);
    let web = Web::start(bin(), &env.config, &env.path("web.stderr"));

    // 64 KiB body limit, with the JSON error shape.
    let big = format!("{{\"reason\":\"{}\"}}", "x".repeat(70 * 1024));
    let (code, _, text) = web.post("/api/halt", Some(&t.admin), Some(&big));
    assert_eq!(code, 413, "{text}");
    assert_eq!(error_code(&text), "payload_too_large");
    assert!(
        env.status()["daemon"]["state"] == "running",
        "nothing halted"
    );
    let (code, _, text) = web.post("/api/halt", Some(&t.admin), Some("{not json"));
    assert_eq!(
        (code, error_code(&text).as_str()),
        (400, "bad_request"),
        "{text}"
    );

    // Per token: burst of 3, then 429; another token is not affected.
    let mut codes = vec![];
    for _ in 0..5 {
        codes.push(web.get("/api/status", Some(&t.viewer)).0);
    }
    assert_eq!(&codes[..3], &[200, 200, 200], "{codes:?}");
    assert!(codes[3..].contains(&429), "{codes:?}");
    assert_eq!(web.get("/api/status", Some(&t.operator)).0, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(web.get("/api/status", Some(&t.viewer)).0, 200, "refilled");

    // Failed authentications per peer: 3, then even a good token waits.
    for _ in 0..3 {
        assert_eq!(web.get("/api/status", Some("wdn_web_wrong")).0, 401);
    }
    let (code, _, text) = web.get("/api/status", Some(&t.operator));
    assert_eq!(
        (code, error_code(&text).as_str()),
        (429, "rate_limited"),
        "{text}"
    );
}

#[test]
fn events_stream_halt_and_replay() {
    let mut env = env_with_web("");
    let t = tokens(&env);
    let web = Web::start(bin(), &env.config, &env.path("web.stderr"));

    // Forbidden and unauthorized streams are refused before streaming.
    let (code, _, _) = web.get("/api/events", None);
    assert_eq!(code, 401);

    let (conn, rx) = sse(web.port, &t.viewer, None);
    // The stream is live once a fresh event arrives through it.
    web.post("/api/checkin", Some(&t.operator), None);
    let first = rx.recv_timeout(T).expect("an event");
    assert!(first.0 > 0);
    while rx.try_recv().is_ok() {}

    std::fs::create_dir_all(env.stop_file().parent().unwrap()).unwrap();
    let t0 = Instant::now();
    std::fs::write(env.stop_file(), "test").unwrap();
    let halt = loop {
        let (id, e, at) = rx.recv_timeout(T).expect("the halt event");
        assert_eq!(e["seq"].as_u64(), Some(id));
        if e["kind"] == "halt" {
            break (id, at);
        }
    };
    let latency = halt.1 - t0;
    assert!(
        latency < Duration::from_millis(500),
        "halt reached the client after {latency:?}"
    );
    // Disconnect, let things happen, reconnect with Last-Event-ID.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let last_seen = halt.0;
    std::fs::remove_file(env.stop_file()).unwrap();
    let (code, _, text) = web.post(
        "/api/resume",
        Some(&t.admin),
        Some(r#"{"reason":"test over"}"#),
    );
    assert_eq!(code, 200, "{text}");
    let (_, _, text) = web.get("/api/audit?n=1", Some(&t.viewer));
    let head = serde_json::from_str::<Value>(&text).unwrap()["entries"][0]["seq"]
        .as_u64()
        .unwrap();
    assert!(head > last_seen + 1);
    let (conn, rx) = sse(web.port, &t.viewer, Some(last_seen));
    let mut want = last_seen + 1;
    let mut kinds = vec![];
    while want <= head {
        let (id, e, _) = rx.recv_timeout(T).expect("replayed event");
        assert_eq!(id, want, "in order, no gaps, no repeats");
        kinds.push(e["kind"].as_str().unwrap_or_default().to_string());
        want += 1;
    }
    assert!(kinds.iter().any(|k| k == "safe_mode_left"), "{kinds:?}");
    let _ = conn.shutdown(std::net::Shutdown::Both);

    // The admin halts through the API; the daemon answers with the report.
    let (code, _, text) = web.post(
        "/api/halt",
        Some(&t.admin),
        Some(r#"{"reason":"web test"}"#),
    );
    assert_eq!(code, 200, "{text}");
    let st = env.status();
    assert_eq!(st["daemon"]["safe_mode"]["trigger"], "cli");
    let halt_id = st["last_halt"]["id"].as_str().unwrap().to_string();
    let (code, headers, pack) = web.get(&format!("/api/casepacks/{halt_id}"), Some(&t.viewer));
    assert_eq!(code, 200);
    assert!(headers["content-disposition"].contains("attachment"));
    let file = env.path("pack.json");
    std::fs::write(&file, pack).unwrap();
    let (code, out, err) = env.cli(&["casepack", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, _, text) = web.get("/metrics", Some(&t.viewer));
    assert!(text.contains("warden_safe_mode 1"), "{text}");
    assert!(
        text.contains("warden_halts_total{trigger=\"stop_file\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("warden_halts_total{trigger=\"cli\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("warden_halt_duration_seconds_count{phase=\"total\"} 2"),
        "{text}"
    );
    drop(web);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(T);
    env.assert_nothing_left();
}
