//! schemathesis fuzzing the daemon's REST API against its own OpenAPI document.

use std::fs;
use std::process::Command;
use std::time::Instant;

mod api_common;
#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use api_common::Setup;

/// schemathesis (`KURA_TEST_SCHEMATHESIS`: its `st` command; scripts/test.sh installs it)
/// fuzzes every operation of the OpenAPI document with a valid token, against a daemon with
/// a job, targets and a backup: no 5xx, and every answer matches its schema.
#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_schema() {
    let st = std::env::var("KURA_TEST_SCHEMATHESIS").expect(
        "KURA_TEST_SCHEMATHESIS is not set: scripts/test.sh installs schemathesis and sets it \
         (the path of its `st` command)",
    );
    let s = Setup::new();
    let token = s.token("fuzz", &[]);
    // Whatever restores the fuzzer starts write below this directory only.
    let root = s.dir().join("restores");
    fs::create_dir(&root).unwrap();
    let d = s.serve_with(&["--restore-root", root.to_str().unwrap()]);
    d.succeeds("POST", "/api/v1/jobs/nightly/run", &token, None);
    s.ok(&["volume", "create", "vol1", "--size", "8M"]);
    let started = Instant::now();
    let o = Command::new(&st)
        .args(["--no-color", "run"])
        .arg(format!("{}/api/v1/openapi.json", d.url()))
        .args(["--url", &d.url()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--workers", "2"])
        .args(["--request-timeout", "30", "--seed", "1"])
        .args(["--generation-database", "none"])
        .current_dir(s.dir())
        .output()
        .unwrap();
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("schemathesis ran {:.0} s", started.elapsed().as_secs_f64());
    assert!(o.status.success(), "schemathesis found problems:\n{out}");
    // It did test the API (and not, say, an empty document).
    assert!(out.contains("/api/v1/restores"), "{out}");
    let daemon_log = fs::read_to_string(&d.log).unwrap();
    assert!(!daemon_log.contains(&token), "the token was logged");
}
