//! The agent on a real LVM thin back end: started in the background in the
//! VM, it creates the declared thin pool and volume, extends the volume when
//! its manifest changes, serves the thin pool's data and metadata use as
//! Prometheus gauges, and exits 0 on SIGTERM. One VM boot.

use crate::harness::Scenario;

const H: &str = "apiVersion: cinderblock.dev/v1alpha1\n";

/// `wait_for TIMEOUT CMD...`: retries CMD every 0.2 s until it succeeds (on
/// timeout: the agent's log tail on stderr); `get PATH`: the agent's HTTP
/// endpoint; `lv_size NAME`, `has_size NAME BYTES`: the LV tagged NAME.
const GUEST_LIB: &str = r#"
wait_for() { t=$1; shift; i=0; until "$@" >/dev/null 2>&1; do i=$((i+1)); [ $i -le $((t*5)) ] || { echo "timed out: $*" >&2; tail -n 30 agent.log >&2; return 1; }; sleep 0.2; done; }
get() { busybox wget -q -O - "http://127.0.0.1:9470$1"; }
lv_size() { lvs --noheadings --units b --nosuffix -o lv_size "@cinderblock.name=$1" | tr -d ' '; }
has_size() { [ "$(lv_size "$1")" = "$2" ]; }
"#;

fn volume(size: &str) -> String {
    format!(
        "{H}kind: Volume\nmetadata:\n  name: a\nspec:\n  size: {size}\n  deletionPolicy: Delete\n"
    )
}

#[test]
#[ignore = "needs the VM lab"]
fn the_agent_reconciles_an_lvm_thin_back_end_and_serves_pool_gauges() {
    let backend = format!(
        "{H}kind: Backend\nmetadata:\n  name: thin\nspec:\n  host: lab\n  lvm:\n    volumeGroup: vg0\n    thinPool: pool0\n    thinPoolSize: 512Mi\n"
    );
    let out = Scenario::new("agent-lvm")
        .file("lib-agent.sh", GUEST_LIB)
        .file("m/backend.yaml", backend)
        .file("m/a.yaml", volume("64Mi"))
        .file("a-128.yaml", volume("128Mi"))
        .step(
            "setup",
            "pvcreate -y /dev/vda >/dev/null && vgcreate vg0 /dev/vda >/dev/null",
        )
        .step(
            "start",
            ". ./lib-agent.sh
             sh -c 'cinderblock --state st --host lab agent -f m --resync 1h --listen 127.0.0.1:9470 > agent.log 2>&1 &
                    echo $! > agent.pid; wait $!; echo $? > agent.rc' &
             wait_for 60 get /readyz",
        )
        .step(
            "created",
            ". ./lib-agent.sh; wait_for 30 lv_size a; lv_size a",
        )
        .step(
            "data",
            ". ./lib-agent.sh
             p=$(lvs --noheadings -o lv_path @cinderblock.name=a | tr -d ' ')
             dd if=/dev/urandom of=\"$p\" bs=1M count=32 oflag=direct 2>/dev/null
             sync",
        )
        .step(
            "extended",
            ". ./lib-agent.sh
             cp a-128.yaml m/a.yaml
             wait_for 30 has_size a 134217728
             lv_size a",
        )
        .step(
            "metrics",
            ". ./lib-agent.sh
             kill -HUP $(cat agent.pid)
             sleep 1
             wait_for 30 get /readyz
             get /metrics > \"$OUT/metrics.txt\"",
        )
        .step(
            "stop",
            ". ./lib-agent.sh
             kill -TERM $(cat agent.pid)
             wait_for 30 test -f agent.rc
             cp agent.log \"$OUT/agent.log\"
             echo \"exit $(cat agent.rc)\"",
        )
        .run();
    assert_eq!(
        out.stdout("created"),
        "67108864",
        "{}",
        out.report("created")
    );
    assert_eq!(
        out.stdout("extended"),
        "134217728",
        "{}",
        out.report("extended")
    );
    assert_eq!(out.stdout("stop"), "exit 0", "{}", out.text("agent.log"));
    let metrics = out.text("metrics.txt");
    let gauge = |name: &str| -> f64 {
        let key = format!("{name}{{backend=\"thin\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{metrics}"))
    };
    // 32 MiB written into a 512 MiB pool: some 6 % of its data.
    let data = gauge("cinderblock_backend_thin_data_percent");
    assert!((5.0..=8.0).contains(&data), "data {data} %\n{metrics}");
    let meta = gauge("cinderblock_backend_thin_metadata_percent");
    assert!(meta > 0.0 && meta < 50.0, "metadata {meta} %\n{metrics}");
    assert!(
        gauge("cinderblock_backend_up") > 0.5,
        "backend down\n{metrics}"
    );
    assert!(
        metrics.contains("cinderblock_objects{kind=\"volume\",state=\"ready\"} 1"),
        "{metrics}"
    );
}
