//! A full disk under the data dir: ingest refuses what it cannot make durable with 507
//! `storage_full` (TCP: `ERR <line> storage_full ...`), `/readyz` says why, nothing acknowledged
//! is lost, and once space is freed ingest takes records again by itself, without a restart.
//!
//! The data dir is moved onto a small tmpfs that the test mounts (root only). Where mounting is
//! impossible the test prints `SKIPPED: <reason>` and passes; the unit tests of the spool and the
//! publisher (a page cap that makes SQLite answer `SQLITE_FULL`) cover the same code.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{error_code, IngestClient, Service};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(60);
const REPLY: Duration = Duration::from_secs(30);
/// The size of the filesystem under the data dir.
const DISK: &str = "size=8m";
/// Room left beside the filler: a few ingest calls.
const HEADROOM: u64 = 384 * 1024;

/// A service whose data dir is a mounted tmpfs. Dropping it stops the service, then unmounts.
struct OnSmallDisk {
    svc: Service,
    mount: PathBuf,
}

impl Drop for OnSmallDisk {
    fn drop(&mut self) {
        self.svc.kill9();
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still has a file open there: detach now, freed once it is closed.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

fn mount_tmpfs(dir: &Path) -> Result<(), String> {
    let output = Command::new("mount")
        .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount -t tmpfs failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Moves the service's data dir onto a fresh tmpfs (the service must be stopped).
fn move_onto_tmpfs(svc: &Service) -> Result<(), String> {
    let data = svc.data_dir().to_path_buf();
    let aside = svc.root().join("data-before-mount");
    fs::rename(&data, &aside).map_err(|e| format!("move the data dir aside: {e}"))?;
    fs::create_dir(&data).map_err(|e| format!("recreate the data dir: {e}"))?;
    if let Err(e) = mount_tmpfs(&data) {
        let _ = fs::remove_dir(&data);
        let _ = fs::rename(&aside, &data);
        return Err(e);
    }
    for entry in fs::read_dir(&aside).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        fs::copy(entry.path(), data.join(entry.file_name()))
            .map_err(|e| format!("copy {:?}: {e}", entry.file_name()))?;
    }
    Ok(())
}

/// Writes `path` until the disk is full, then gives `HEADROOM` back.
fn fill_disk(path: &Path) {
    let mut file = File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.flush();
    file.set_len(written.saturating_sub(HEADROOM))
        .expect("give some room back");
}

/// 100 numbered records of about 1 KB each, the padding in a header.
fn batch(call: u64) -> Value {
    let pad = "p".repeat(1000);
    Value::Array(
        (call * 100..(call + 1) * 100)
            .map(|i| json!({"key": format!("k{}", i % 4), "value": format!("n-{i}"), "headers": {"pad": pad}}))
            .collect(),
    )
}

#[test]
fn a_full_disk_refuses_ingest_with_507_and_recovers_without_a_restart() {
    let mut svc = Service::start();
    let topic = common::unique_topic("disk-full");
    let request = svc.request_topic("alice", &topic, 1);
    svc.kill9();
    if let Err(reason) = move_onto_tmpfs(&svc) {
        println!("SKIPPED: {reason}");
        return;
    }
    let mut disk = OnSmallDisk {
        mount: svc.data_dir().to_path_buf(),
        svc,
    };
    let svc = &mut disk.svc;
    svc.restart();
    let filler = svc.data_dir().join("filler");
    fill_disk(&filler);

    // Records of the pending topic go to the spool until the disk has no room for a call.
    let mut acked = BTreeSet::new();
    let mut call = 0;
    let full = loop {
        assert!(call < 200, "the disk never filled up");
        let reply = svc.produce("alice", &topic, "", &batch(call));
        match reply.0 {
            202 => {
                assert_eq!(reply.1["held"], 100, "{}", reply.1);
                acked.extend(call * 100..(call + 1) * 100);
            }
            _ => break reply,
        }
        call += 1;
    };
    assert_eq!(
        (full.0, error_code(&full.1)),
        (507, "storage_full"),
        "{}",
        full.1
    );
    assert!(
        !acked.is_empty(),
        "the first call already found the disk full"
    );
    println!(
        "disk full after {} acknowledged records: {}",
        acked.len(),
        full.1["error"]["message"]
    );

    // TCP says the same per line, and the connection goes on.
    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("alice")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));
    // Larger than what is left on the disk, within the record size limit.
    let pad = "p".repeat(500_000);
    tcp.send_line(
        &json!({"topic": topic, "value": "n-900000", "headers": {"pad": pad}}).to_string(),
    );
    let reply = tcp.read_line(REPLY).unwrap_or_default();
    assert!(reply.starts_with("ERR 2 storage_full "), "{reply}");

    // /readyz says why the service is not ready.
    let (status, ready) = svc.get_anon("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["storage_full"], true, "{ready}");
    assert!(ready["storage_error"].is_string(), "{ready}");

    // Everything acknowledged is in the spool.
    let held = svc.held_records("carol", &topic, "held");
    let numbers: BTreeSet<u64> = held
        .iter()
        .filter_map(|r| r["value"].as_str().and_then(common::number_of))
        .collect();
    assert_eq!(numbers, acked, "held records while the disk is full");

    // Space is freed: the same process takes records again.
    fs::remove_file(&filler).expect("remove the filler");
    let next = call;
    let (status, reply) = svc.produce("alice", &topic, "", &batch(next));
    assert_eq!(
        (status, reply["held"].as_u64()),
        (202, Some(100)),
        "{reply}"
    );
    acked.extend(next * 100..(next + 1) * 100);
    tcp.send_line(&json!({"topic": topic, "value": "n-900001"}).to_string());
    tcp.finish_sending();
    let replies = tcp.read_to_end(REPLY);
    assert_eq!(
        replies.last().map(String::as_str),
        Some("OK 1"),
        "{replies:?}"
    );
    acked.insert(900_001);
    svc.wait_ready(SETTLE);
    let (_, ready) = svc.get_anon("/readyz");
    assert_eq!(ready["storage_full"], false, "{ready}");

    // Approval drains every acknowledged record into Kafka, headers and all.
    svc.approve("carol", &request);
    svc.wait_request_status(&request, "completed", SETTLE);
    let total = acked.len() as u64;
    svc.wait_topic_counts(&topic, SETTLE, |held, dead, published| {
        (held, dead, published) == (0, 0, total)
    });
    let records = common::kafka_read_numbered(&topic, &acked, SETTLE);
    assert_eq!(common::assert_numbered_arrived(&records, &acked), 0);
    assert!(
        records
            .iter()
            .filter(|r| r.value != "n-900001")
            .all(|r| r.headers.get("pad").is_some_and(|p| p.len() == 1000)),
        "a record lost its headers"
    );
    assert!(svc.is_running(), "the service was not restarted");
}
