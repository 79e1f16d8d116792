//! The command line against a real broker: topic create and list, produce
//! from stdin lines, consume a count of messages from the earliest offset.

mod common;

use common::{run_cli, BrokerProc, RawConn, TestDir};
use std::time::Duration;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn cli(args: &[&str], stdin: &[u8]) -> (std::process::ExitStatus, String, String) {
    run_cli(args, stdin, CLI_TIMEOUT)
}

#[test]
fn topic_create_then_list_shows_the_topic_and_its_partitions() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr().to_string();
    let (status, out, err) = cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--addr",
            &addr,
        ],
        b"",
    );
    assert!(status.success(), "topic create failed: {out}{err}");
    let (status, out, err) = cli(&["topic", "list", "--addr", &addr], b"");
    assert!(status.success(), "topic list failed: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("orders"))
        .unwrap_or_else(|| panic!("topic list does not show orders: {out:?}"));
    assert!(
        line.contains('3'),
        "the listing shows 3 partitions: {line:?}"
    );
    // Creating it again fails with a non-zero exit.
    let (status, _, err) = cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--addr",
            &addr,
        ],
        b"",
    );
    assert!(!status.success(), "creating a topic twice must fail");
    assert!(
        err.contains("TopicAlreadyExists") || err.to_lowercase().contains("exists"),
        "stderr says why: {err:?}"
    );
}

#[test]
fn produce_from_stdin_lines_then_consume_prints_the_values() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr().to_string();
    RawConn::connect(broker.addr()).create_topic("lines", 1);
    let (status, out, err) = cli(
        &["produce", "--topic", "lines", "--addr", &addr],
        "first line\nsecond line\n三 third\n".as_bytes(),
    );
    assert!(status.success(), "produce failed: {out}{err}");
    assert_eq!(
        RawConn::connect(broker.addr())
            .list_offsets("lines", 0)
            .latest,
        3,
        "one message per line was acknowledged"
    );
    let (status, out, err) = cli(
        &[
            "consume", "--topic", "lines", "--count", "3", "--from", "earliest", "--addr", &addr,
        ],
        b"",
    );
    assert!(status.success(), "consume failed: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["first line", "second line", "三 third"]);
}

#[test]
fn produce_to_an_unknown_topic_exits_non_zero() {
    let dir = TestDir::new();
    let broker = BrokerProc::start(&dir.data, &[]);
    let addr = broker.addr().to_string();
    let (status, _, err) = cli(&["produce", "--topic", "missing", "--addr", &addr], b"x\n");
    assert!(!status.success(), "produce to an unknown topic must fail");
    assert!(
        err.contains("UnknownTopic") || err.to_lowercase().contains("unknown topic"),
        "stderr says why: {err:?}"
    );
}
