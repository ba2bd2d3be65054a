//! The commands that need no supervisor: enqueue, status, list, show, dlq, config; and bad input.

mod common;

use common::Env;

#[test]
fn enqueue_then_status_counts_it() {
    let env = Env::new();
    assert_eq!(env.enqueue(r#"{"id":"job1","command":"echo Hello World"}"#), "job1");
    assert_eq!(env.count("pending"), 1);
    let st = env.status();
    assert_eq!(st["workers"], 0);
    assert!(st["supervisor_pid"].is_null());
    env.verify_store();
}
