//! The metrics endpoint scraped by Debian's real Prometheus in the home
//! agent's namespace, during namespace traffic: the counters Prometheus
//! stores moved by exactly what was sent, and the binding change's
//! telemetry (change to first packet) is there.
//! Needs root (CI is root), `prometheus` (scripts/install-deps.sh) and
//! `cargo build --release -p homeward`.

use std::time::{Duration, Instant};

use homeward_tests::agent::{key_file, HomeAgent};
use homeward_tests::netns::Netns;
use homeward_tests::{require_root, Topology, UdpSend};

const METRICS: &str = "127.0.0.1:9434";
const KEY: &str = "00112233445566778899aabbccddeeff0011223344556677";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// One instant query through Prometheus' HTTP API, from inside `ns`: the
/// first result's value, or `None` if there is none yet.
fn query(ns: &Netns, expr: &str) -> Option<f64> {
    let script = r#"
import json, sys, urllib.parse, urllib.request
url = "http://%s/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode({"query": sys.argv[2]}))
body = json.load(urllib.request.urlopen(url, timeout=5))
r = body["data"]["result"]
print(r[0]["value"][1] if r else "none")
"#;
    let out = ns.exec(&["python3", "-c", script, PROMETHEUS, expr]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse().ok()
}

/// Waits until `expr` has a value for which `ok` holds; returns it.
#[track_caller]
fn wait_query(ns: &Netns, expr: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        last = query(ns, expr);
        if let Some(v) = last.filter(|v| ok(*v)) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{expr}: last value {last:?} after {timeout:?}");
}

/// Every query of the shipped Grafana dashboard is valid PromQL to this
/// Prometheus and names only series homeward exposes.
fn dashboard_queries_work(ns: &Netns) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control/grafana/homeward-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let page = String::from_utf8_lossy(
        &ns.exec(&[
            "python3",
            "-c",
            "import urllib.request,sys; print(urllib.request.urlopen('http://' + sys.argv[1] + '/metrics').read().decode())",
            METRICS,
        ])
        .stdout,
    )
    .into_owned();
    let script = r#"
import json, sys, urllib.parse, urllib.request
url = "http://%s/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode({"query": sys.argv[2]}))
try:
    print(json.load(urllib.request.urlopen(url, timeout=5))["status"])
except urllib.error.HTTPError as e:
    print(e.read().decode())
"#;
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            let out = ns.exec(&["python3", "-c", script, PROMETHEUS, &expr]);
            let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(status, "success", "{expr}");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("homeward_"))
            {
                let family = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
                assert!(
                    page.lines().any(|l| l.starts_with(family)),
                    "the dashboard's {name} is not exposed:\n{page}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn prometheus_scrapes_the_counters_and_the_migration_telemetry() {
    require_root();
    let lab = Topology::home_agent_lab("prom");
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), 256, KEY, &format!("{}/32", lab.vm_home));
    let keys = keys.display().to_string();
    let ha = HomeAgent::start(
        &lab,
        &[
            "--metrics",
            METRICS,
            "--log-format",
            "json",
            "--registration-keys",
            &keys,
        ],
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: homeward\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let config_arg = format!("--config.file={}", config.display());
    let storage_arg = format!("--storage.tsdb.path={}", dir.path().join("data").display());
    let listen_arg = format!("--web.listen-address={PROMETHEUS}");
    let mut prometheus = lab
        .ha
        .spawn(&["prometheus", &config_arg, &storage_arg, &listen_arg]);
    let up = wait_query(
        &lab.ha,
        "up{job=\"homeward\"}",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    assert_eq!(up, 1.0);

    // The migration: the foreign hypervisor registers the VM's care-of
    // address (RFC 5944, authenticated).
    let vm = lab.vm_home.to_string();
    let (ha_addr, care_of) = (lab.ha_wan.addr.to_string(), lab.care_of.to_string());
    let out = ha.register_from(
        &lab.foreign,
        &[
            "--home-agent",
            &ha_addr,
            "--home-address",
            &vm,
            "--care-of",
            &care_of,
            "--spi",
            "256",
            "--keys",
            &keys,
            "--timeout",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client's first datagram waits for proxy ARP: send one, then count.
    lab.client.send_udp(&UdpSend::new(lab.vm_home, 9, 64));
    let encapsulated = "sum(homeward_forwarded_packets_total{direction=\"encapsulated\"})";
    let before = wait_query(&lab.ha, encapsulated, Duration::from_secs(10), |v| v >= 1.0);
    let sent = 300u32;
    lab.client
        .send_udp(&UdpSend::new(lab.vm_home, 9, 100).repeat(sent, Duration::from_millis(1)));
    let after = wait_query(&lab.ha, encapsulated, Duration::from_secs(15), |v| {
        v >= before + f64::from(sent)
    });
    assert_eq!(
        after - before,
        f64::from(sent),
        "Prometheus counted more than was sent"
    );
    // Bytes: the inner datagrams, 20 IPv4 + 8 UDP + payload (64 for the
    // first ones, 100 for the counted ones).
    let want = before * 92.0 + f64::from(sent) * 128.0;
    let bytes = wait_query(
        &lab.ha,
        "sum(homeward_forwarded_bytes_total{direction=\"encapsulated\"})",
        Duration::from_secs(5),
        |v| v >= want,
    );
    assert_eq!(bytes, want);
    let per_binding = wait_query(
        &lab.ha,
        &format!("homeward_binding_packets_total{{vm=\"{vm}\"}}"),
        Duration::from_secs(5),
        |v| v >= after,
    );
    assert_eq!(per_binding, after, "the binding's own series");
    // homeward's own view agrees with what Prometheus stored.
    assert_eq!(ha.counter("counters", "encapsulated") as f64, after);
    // The binding change's telemetry: one observation, as long as the
    // proxy ARP took at most.
    let observed = wait_query(
        &lab.ha,
        "homeward_binding_change_to_first_packet_seconds_count",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert_eq!(observed, 1.0);
    let seconds = query(
        &lab.ha,
        "homeward_binding_change_to_first_packet_seconds_sum",
    )
    .unwrap();
    assert!(seconds > 0.0 && seconds < 5.0, "{seconds}");
    let listed = ha.binding(&vm).expect("binding listed");
    let ms = listed["first_packet_ms"]
        .as_f64()
        .expect("first_packet_ms in list");
    assert!(
        (ms / 1e3 - seconds).abs() < 1e-6,
        "list {ms} ms, histogram {seconds} s"
    );
    // Drops by reason are there (zero here) and the frames add up.
    assert_eq!(
        query(&lab.ha, "homeward_drops_total{reason=\"no_binding\"}"),
        Some(0.0)
    );
    assert_eq!(
        query(&lab.ha, "sum(homeward_frames{place=\"unaccounted\"})"),
        Some(0.0)
    );
    assert_eq!(query(&lab.ha, "homeward_maps_in_sync"), Some(1.0));
    assert_eq!(
        query(&lab.ha, "homeward_registration_replies_total{code=\"0\"}"),
        Some(1.0)
    );
    assert_eq!(
        query(&lab.ha, "homeward_store_commit_seconds_count"),
        Some(1.0)
    );
    dashboard_queries_work(&lab.ha);
    prometheus.stop();
    // --log-format json: every line one object, the event's fields next to
    // the message.
    let logs = ha.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let bound = lines
        .iter()
        .find(|l| l["message"] == "bound")
        .unwrap_or_else(|| panic!("no bound line in {logs}"));
    assert_eq!(bound["vm"], vm.as_str());
    assert_eq!(bound["level"], "INFO");
    let accepted = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("registration accepted"))
        })
        .unwrap_or_else(|| panic!("no registration line in {logs}"));
    assert_eq!(accepted["code"], 0);
    assert_eq!(accepted["spi"], 256);
    assert!(lines.iter().any(
        |l| l["message"] == "first packet forwarded under the new binding"
            && l["vm"] == vm.as_str()
    ));
    let t = ha.stop();
    assert!(t.success, "{}", t.stderr);
}
