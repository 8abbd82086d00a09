//! schemathesis fuzzing the daemon's REST API against its own OpenAPI document.

use std::fs;
use std::process::Command;
use std::time::Instant;

mod api_common;
#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use api_common::Setup;

/// One schemathesis run over the operations `select` picks; what it printed.
fn schemathesis(st: &str, s: &Setup, url: &str, token: &str, select: &[&str]) -> String {
    let o = Command::new(st)
        .args(["--no-color", "run"])
        .arg(format!("{url}/api/v1/openapi.json"))
        .args(["--url", url])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--workers", "2"])
        .args(["--request-timeout", "30", "--seed", "1"])
        .args(["--generation-database", "none"])
        .args(select)
        // Its configuration file (below) is read from here.
        .current_dir(s.dir())
        .output()
        .unwrap();
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "schemathesis found problems:\n{out}");
    out
}

/// schemathesis (`KURA_TEST_SCHEMATHESIS`: its `st` command; scripts/test.sh installs it)
/// fuzzes every operation of the OpenAPI document with a valid token, against a daemon with
/// a job, targets and a backup: no 5xx, and every answer matches its schema. The operations
/// that name a target, a snapshot or a backup get the real ones (so the fuzzing reaches
/// repositories, not only 404s); the deletions run last, so they do not empty the catalog
/// under the rest.
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
    let backup = d.get("/api/v1/backups", &token)[0]["id"].as_i64().unwrap();
    s.ok(&["volume", "create", "vol1", "--size", "8M"]);
    fs::write(
        s.dir().join("schemathesis.toml"),
        format!(
            "[parameters]\n\"path.target\" = \"{}\"\n\"path.snapshot\" = \"latest\"\n\n\
             [[operations]]\ninclude-path-regex = \"^/api/v1/backups/\\\\{{id\\\\}}\"\n\
             parameters = {{ \"path.id\" = {backup} }}\n",
            s.target
        ),
    )
    .unwrap();
    let started = Instant::now();
    let url = d.url();
    let out = schemathesis(&st, &s, &url, &token, &["--exclude-method", "DELETE"]);
    // It did test the API (and not, say, an empty document)…
    assert!(out.contains("/api/v1/restores"), "{out}");
    // …and reached the real target and backup: tasks ran on them.
    for (kind, subject) in [
        ("check", s.target.to_string()),
        ("prune", s.target.to_string()),
        ("heal", format!("backup {backup}")),
    ] {
        let q = format!("/api/v1/tasks?kind={kind}&limit=1000");
        let n = d
            .get(&q, &token)
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["subject"] == subject.as_str() && t["started_by"] == "api:fuzz")
            .count();
        assert!(
            n > 0,
            "no {kind} task on {subject}: the fuzzing never got past 404s"
        );
    }
    let out = schemathesis(&st, &s, &url, &token, &["--include-method", "DELETE"]);
    assert!(out.contains("DELETE"), "{out}");
    eprintln!("schemathesis ran {:.0} s", started.elapsed().as_secs_f64());
    let daemon_log = fs::read_to_string(&d.log).unwrap();
    assert!(!daemon_log.contains(&token), "the token was logged");
}
