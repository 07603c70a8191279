//! `GET /metrics`: Prometheus text, from `status` (agents, SAFE MODE,
//! approvals) and `metrics` (halt counters, phase histogram, audit seq),
//! read at scrape time. Needs a viewer token (Prometheus sends it with
//! `authorization: {credentials: ...}`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use warden_proto::control::Request;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

pub async fn metrics(State(st): State<Arc<AppState>>, c: Caller) -> Result<Response, ApiError> {
    let (status, counters) =
        tokio::join!(st.call(&c, Request::Status), st.call(&c, Request::Metrics));
    let text = render(&status?, &counters?);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Label values escaped as the exposition format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text of one scrape.
pub fn render(status: &Value, counters: &Value) -> String {
    let mut out = String::new();
    let safe = status["daemon"]["state"] == "safe_mode";
    head(
        &mut out,
        "warden_safe_mode",
        "gauge",
        "1 while warden is in SAFE MODE.",
    );
    let _ = writeln!(out, "warden_safe_mode {}", safe as u8);

    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for s in [
        "running", "stopped", "backoff", "stopping", "failed", "halted", "frozen",
    ] {
        states.insert(s.into(), 0);
    }
    for a in &agents {
        *states
            .entry(a["state"].as_str().unwrap_or("unknown").into())
            .or_default() += 1;
    }
    head(&mut out, "warden_agents", "gauge", "Agents by state.");
    for (s, n) in &states {
        let _ = writeln!(out, "warden_agents{{state=\"{}\"}} {n}", label(s));
    }
    head(
        &mut out,
        "warden_agent_cpu_seconds_total",
        "counter",
        "CPU time of the agent's cgroup.",
    );
    for a in &agents {
        if let Some(us) = a["cpu_usec"].as_u64() {
            let name = label(a["name"].as_str().unwrap_or_default());
            let _ = writeln!(
                out,
                "warden_agent_cpu_seconds_total{{agent=\"{name}\"}} {}",
                us as f64 / 1e6
            );
        }
    }
    head(
        &mut out,
        "warden_agent_memory_bytes",
        "gauge",
        "Memory charged to the agent's cgroup.",
    );
    for a in &agents {
        if let Some(b) = a["memory_bytes"].as_u64() {
            let name = label(a["name"].as_str().unwrap_or_default());
            let _ = writeln!(out, "warden_agent_memory_bytes{{agent=\"{name}\"}} {b}");
        }
    }
    head(
        &mut out,
        "warden_agent_restarts_total",
        "counter",
        "Restarts of the agent by its supervisor.",
    );
    for a in &agents {
        let name = label(a["name"].as_str().unwrap_or_default());
        let n = a["restarts"].as_u64().unwrap_or(0);
        let _ = writeln!(out, "warden_agent_restarts_total{{agent=\"{name}\"}} {n}");
    }
    head(
        &mut out,
        "warden_halts_total",
        "counter",
        "Hard halts since the daemon started, by trigger.",
    );
    if let Some(m) = counters["halts_total"].as_object() {
        for (t, n) in m {
            let _ = writeln!(
                out,
                "warden_halts_total{{trigger=\"{}\"}} {}",
                label(t),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    head(
        &mut out,
        "warden_halt_duration_seconds",
        "histogram",
        "Duration of each phase of hard halts (freeze, evidence, kill, empty, total).",
    );
    let buckets: Vec<f64> = counters["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if let Some(m) = counters["halt_phase_seconds"].as_object() {
        for (phase, h) in m {
            let phase = label(phase);
            let counts: Vec<u64> = h["counts"]
                .as_array()
                .map(|c| c.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            for (le, n) in buckets.iter().zip(&counts) {
                let _ = writeln!(
                    out,
                    "warden_halt_duration_seconds_bucket{{phase=\"{phase}\",le=\"{le}\"}} {n}"
                );
            }
            let count = h["count"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "warden_halt_duration_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "warden_halt_duration_seconds_sum{{phase=\"{phase}\"}} {}",
                h["sum"].as_f64().unwrap_or(0.0)
            );
            let _ = writeln!(
                out,
                "warden_halt_duration_seconds_count{{phase=\"{phase}\"}} {count}"
            );
        }
    }
    head(
        &mut out,
        "warden_approvals_pending",
        "gauge",
        "Tool calls waiting for an operator's approval.",
    );
    let _ = writeln!(
        out,
        "warden_approvals_pending {}",
        status["broker"]["pending_approvals"].as_u64().unwrap_or(0)
    );
    head(
        &mut out,
        "warden_audit_seq",
        "counter",
        "seq of the last committed audit entry.",
    );
    let _ = writeln!(
        out,
        "warden_audit_seq {}",
        counters["audit_seq"].as_u64().unwrap_or(0)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let status = serde_json::json!({
            "daemon": {"state": "safe_mode"},
            "agents": [{"name": "a\"b", "state": "running", "cpu_usec": 1_500_000, "memory_bytes": 4096, "restarts": 2}],
            "broker": {"pending_approvals": 3},
        });
        let counters = serde_json::json!({
            "halts_total": {"stop_file": 1},
            "buckets": [0.01, 0.1],
            "halt_phase_seconds": {"freeze": {"counts": [1, 1], "sum": 0.002, "count": 1}},
            "audit_seq": 42,
        });
        let t = render(&status, &counters);
        for want in [
            "warden_safe_mode 1",
            "warden_agents{state=\"running\"} 1",
            "warden_agents{state=\"failed\"} 0",
            "warden_agent_cpu_seconds_total{agent=\"a\\\"b\"} 1.5",
            "warden_agent_memory_bytes{agent=\"a\\\"b\"} 4096",
            "warden_agent_restarts_total{agent=\"a\\\"b\"} 2",
            "warden_halts_total{trigger=\"stop_file\"} 1",
            "warden_halt_duration_seconds_bucket{phase=\"freeze\",le=\"0.01\"} 1",
            "warden_halt_duration_seconds_bucket{phase=\"freeze\",le=\"+Inf\"} 1",
            "warden_halt_duration_seconds_count{phase=\"freeze\"} 1",
            "warden_approvals_pending 3",
            "warden_audit_seq 42",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
    }
}
