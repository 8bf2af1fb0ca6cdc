//! `/metrics` and `/status` of a running agent move as swipes flow and drain.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use badge_agent::health::server::fetch;
use badge_tests::harness::{terminate, Rig, GATEWAY};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_move_as_swipes_flow_and_drain() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 50.0\ncount = 200\n",
        Duration::from_millis(300),
    )
    .unwrap();
    let config = std::fs::read_to_string(&rig.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&rig.config, config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut agent = rig.start_agent().unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok((200, text)) = fetch(addr, "/metrics", Duration::from_secs(2)) {
            let received = metric(&text, "badge_agent_buffer_received_records_total");
            let committed = metric(&text, "badge_agent_offset_committed");
            let depth = metric(&text, "badge_agent_buffer_records");
            samples.push((received, committed, depth));
            if received >= 200.0 && committed >= 199.0 && depth == 0.0 {
                let swipes = metric(&text, "badge_agent_reader_swipes_total");
                assert_eq!(swipes, 200.0, "{text}");
                assert!(text.contains("badge_agent_build_info{"), "{text}");
                assert!(
                    metric(&text, "badge_agent_last_commit_timestamp_seconds") > 1.7e9,
                    "{text}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed a full drain: {samples:?}"
        );
    }
    // The values moved: reading went up over time and something was buffered on the way.
    assert!(samples.first().unwrap().0 < 200.0, "{samples:?}");
    assert!(samples.iter().any(|s| s.2 > 0.0), "{samples:?}");
    let (status, body) = fetch(addr, "/status", Duration::from_secs(2)).unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["gateway_id"], GATEWAY);
    assert_eq!(doc["drain"]["state"], "open");
    assert_eq!(
        fetch(addr, "/readyz", Duration::from_secs(2)).unwrap().0,
        200
    );
    terminate(&mut agent).unwrap();
    assert_eq!(rig.emulator.ledger(GATEWAY).len(), 200);
}
