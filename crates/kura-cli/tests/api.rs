//! The REST API as a client uses it, against a real `kura serve` with a real catalog, real
//! local targets and real backups: every endpoint does what it says, bad input is a 400
//! `invalid` naming the field with nothing applied, errors carry their stable codes, tokens
//! are refused without a word more and never appear in a log, and a restore task restores
//! byte-equal and writes nowhere but its destination. (`api_fuzz.rs`: schemathesis.)

use std::fs;
use std::time::Duration;

use serde_json::{Value, json};

mod api_common;
#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use api_common::{Setup, names, walk_files};
use common::{assert_same_tree, pseudo_random, write};

#[test]
fn resources_and_jobs_are_read_and_written_with_bad_input_refused_whole() {
    let s = Setup::new();
    let token = s.token("ops", &[]);
    let d = s.serve();
    let t = token.as_str();

    // Resources: list, get, add, refuse, remove.
    let all = d.get("/api/v1/resources", t);
    assert!(names(&all, "name").contains(&s.target.to_string()), "{all}");
    let t0 = d.get(&format!("/api/v1/resources/{}", s.target), t);
    assert_eq!(t0["kind"], "target");
    assert_eq!(t0["url"], s.repo.to_str().unwrap());
    let other = s.dir().join("other");
    let new = json!({"kind": "target", "name": "t1", "url": other.to_str().unwrap()});
    let a = d.call("POST", "/api/v1/resources", Some(t), Some(&new));
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json()["url"], other.to_str().unwrap());
    assert_eq!(d.get("/api/v1/resources/t1", t)["kind"], "target");
    d.call("POST", "/api/v1/resources", Some(t), Some(&new))
        .error(409, "conflict", "t1");
    for (body, field) in [
        (json!({"kind": "tape-robot", "name": "x"}), "kind"),
        (json!({"kind": "worker", "name": "w", "url": "/x"}), "url"),
        (json!({"kind": "target", "name": "t2"}), "url"),
        (json!({"kind": "worker", "name": "w", "slots": 0}), "slots"),
        (
            json!({"kind": "worker", "name": "w", "colour": "red"}),
            "colour",
        ),
    ] {
        d.call("POST", "/api/v1/resources", Some(t), Some(&body))
            .error(400, "invalid", field);
    }
    d.call("GET", "/api/v1/resources/w", Some(t), None)
        .error(404, "not_found", "w");
    let a = d.call("DELETE", "/api/v1/resources/t1", Some(t), None);
    assert_eq!(a.status, 204, "{}", a.text);
    d.call("GET", "/api/v1/resources/t1", Some(t), None)
        .error(404, "not_found", "t1");
    d.call("DELETE", "/api/v1/resources/t1", Some(t), None)
        .error(404, "not_found", "t1");

    // Jobs: create; bad input names the field and stores nothing.
    let src = s.src.to_str().unwrap();
    for (body, field) in [
        (json!({"object": src}), "name"),
        (
            json!({"name": "j", "object": src, "settings": {"quorum": 2}}),
            "quorum",
        ),
        (
            json!({"name": "j", "object": src, "schedule": "mon 25:00"}),
            "schedule",
        ),
        (json!({"name": "j", "object": src, "mode": "raid"}), "mode"),
        (
            json!({"name": "j", "object": src, "redundancy": 0}),
            "redundancy",
        ),
        (
            json!({"name": "j", "object": src, "settings": {"stall_timeout": "soon"}}),
            "stall_timeout",
        ),
        (
            json!({"name": "j", "object": src, "settings": {"start_within": "2h", "finish_within": "1h"}}),
            "start_within",
        ),
        (
            json!({"name": "j", "object": src, "settings": {"speed": 1}}),
            "speed",
        ),
        (json!({"name": "j/k", "object": src}), "job name"),
    ] {
        d.call("POST", "/api/v1/jobs", Some(t), Some(&body))
            .error(400, "invalid", field);
    }
    d.call("GET", "/api/v1/jobs/j", Some(t), None)
        .error(404, "not_found", "j");
    let good = json!({"name": "j", "object": src, "schedule": "daily",
        "settings": {"stall_timeout": "5m", "catch_up": "none"}});
    let a = d.call("POST", "/api/v1/jobs", Some(t), Some(&good));
    assert_eq!(a.status, 201, "{}", a.text);
    let j = a.json();
    assert_eq!(j["schedule"], "daily");
    assert!(j["next_run"].is_string(), "{j}");
    assert_eq!(j["settings"]["stall_timeout"], "5m", "{j}");
    assert_eq!(j["settings"]["catch_up"], "none", "{j}");
    d.call("POST", "/api/v1/jobs", Some(t), Some(&good))
        .error(409, "conflict", "j");
    // The CLI sees what the API stored.
    let shown: Value = serde_json::from_str(&s.ok(&["--json", "job", "show", "j"])).unwrap();
    assert_eq!(shown["schedule"], "daily", "{shown}");

    // Edit: a refused change leaves the job as it was.
    for (body, field) in [
        (json!({"object": src, "settings": {"quorum": 3}}), "quorum"),
        (json!({"object": src, "schedule": "*-*-32"}), "schedule"),
        (json!({"name": "renamed", "object": src}), "name"),
        (json!({"object": src, "extra": true}), "extra"),
    ] {
        d.call("PUT", "/api/v1/jobs/j", Some(t), Some(&body))
            .error(400, "invalid", field);
    }
    let j = d.get("/api/v1/jobs/j", t);
    assert_eq!(j["schedule"], "daily", "{j}");
    assert_eq!(j["settings"]["stall_timeout"], "5m", "{j}");
    let edit = json!({"object": src, "redundancy": 1, "mode": "failover",
        "settings": {"hook_timeout": "1m"}});
    let a = d.call("PUT", "/api/v1/jobs/j", Some(t), Some(&edit));
    assert_eq!(a.status, 200, "{}", a.text);
    let j = d.get("/api/v1/jobs/j", t);
    assert_eq!(j["schedule"], Value::Null, "{j}");
    assert_eq!(j["mode"], "failover", "{j}");
    assert_eq!(j["settings"]["hook_timeout"], "1m", "{j}");
    assert_eq!(
        j["settings"]["stall_timeout"], "2m",
        "the default again: {j}"
    );
    d.call("PUT", "/api/v1/jobs/nope", Some(t), Some(&edit))
        .error(404, "not_found", "nope");
    let a = d.call("DELETE", "/api/v1/jobs/j", Some(t), None);
    assert_eq!(a.status, 204, "{}", a.text);
    d.call("GET", "/api/v1/jobs/j", Some(t), None)
        .error(404, "not_found", "j");
    d.call("DELETE", "/api/v1/jobs/j", Some(t), None)
        .error(404, "not_found", "j");

    // A body that is not JSON, and a route that does not exist.
    let a = d.call("POST", "/api/v1/jobs", Some(t), None);
    a.error(400, "invalid", "body");
    d.call("GET", "/api/v1/nothing", Some(t), None)
        .error(404, "not_found", "route");

    // Volumes and pairs: what `kura volume list` and `kura pair list` read.
    assert_eq!(d.get("/api/v1/volumes", t), json!([]));
    s.ok(&["volume", "create", "vol1", "--size", "8M"]);
    let vols = d.get("/api/v1/volumes", t);
    assert_eq!(names(&vols, "name"), ["vol1"], "{vols}");
    let v = d.get("/api/v1/volumes/vol1", t);
    assert_eq!(v["size"], 8 << 20, "{v}");
    assert_eq!(v["served"], false, "{v}");
    d.call("GET", "/api/v1/volumes/vol2", Some(t), None)
        .error(404, "not_found", "vol2");
    assert_eq!(d.get("/api/v1/pairs", t), json!([]));
    s.ok(&["volume", "create", "vol2", "--size", "8M"]);
    s.ok(&["pair", "create", "vol1", "vol2"]);
    let pairs = d.get("/api/v1/pairs", t);
    assert_eq!(pairs.as_array().unwrap().len(), 1, "{pairs}");
    assert_eq!(pairs[0]["primary"], "vol1", "{pairs}");
    assert_eq!(pairs[0]["secondary"], "vol2", "{pairs}");
    assert_eq!(pairs[0]["state"], "duplex", "{pairs}");
    assert_eq!(d.get("/api/v1/volumes/vol2", t)["secondary_of"], "vol1");

    // Every route is in the OpenAPI document.
    let doc = d.call("GET", "/api/v1/openapi.json", None, None).json();
    for p in [
        "/api/v1/resources",
        "/api/v1/resources/{name}",
        "/api/v1/jobs",
        "/api/v1/jobs/{name}",
        "/api/v1/backups",
        "/api/v1/backups/{id}",
        "/api/v1/backups/{id}/heal",
        "/api/v1/targets/{target}/snapshots",
        "/api/v1/targets/{target}/snapshots/{snapshot}/tree",
        "/api/v1/targets/{target}/check",
        "/api/v1/targets/{target}/prune",
        "/api/v1/catalog/rebuild",
        "/api/v1/restores",
        "/api/v1/volumes",
        "/api/v1/volumes/{name}",
        "/api/v1/pairs",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} is not documented");
    }
    for m in ["post", "put", "delete"] {
        let op = if m == "post" {
            "/api/v1/jobs"
        } else {
            "/api/v1/jobs/{name}"
        };
        assert!(doc["paths"][op][m].is_object(), "{m} {op}");
    }
    assert!(
        doc["components"]["schemas"]["JobSettings"]["properties"]["quorum"].is_object(),
        "JobSettings is described from the type"
    );
}

#[test]
fn backups_snapshots_and_maintenance_tasks() {
    let s = Setup::new();
    let token = s.token("ops", &[]);
    let d = s.serve();
    let t = token.as_str();
    let tg = s.target;
    d.succeeds("POST", "/api/v1/jobs/nightly/run", t, None);

    // Backups with their copies.
    let bs = d.get("/api/v1/backups", t);
    assert_eq!(bs.as_array().unwrap().len(), 1, "{bs}");
    let b = &bs[0];
    assert_eq!(b["state"], "complete", "{b}");
    assert_eq!(b["object"], s.src.to_str().unwrap());
    assert_eq!(
        b["copies"],
        json!([{"target": tg, "whole": true, "sections": []}]),
        "{b}"
    );
    let id = b["id"].as_i64().unwrap();
    assert_eq!(d.get(&format!("/api/v1/backups/{id}"), t)["id"], id);
    let q = format!("/api/v1/backups?object={}", s.src.to_str().unwrap());
    assert_eq!(d.get(&q, t).as_array().unwrap().len(), 1);
    assert_eq!(d.get("/api/v1/backups?object=/elsewhere", t), json!([]));
    d.call("GET", "/api/v1/backups/999", Some(t), None)
        .error(404, "not_found", "999");
    d.call("GET", "/api/v1/backups/abc", Some(t), None)
        .error(400, "invalid", "path");

    // Snapshot browsing.
    let snaps = d.get(&format!("/api/v1/targets/{tg}/snapshots"), t);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    assert_eq!(snaps[0]["paths"], json!([s.src.to_str().unwrap()]));
    let short = snaps[0]["short_id"].as_str().unwrap();
    let ls =
        |snap: &str, path: &str| format!("/api/v1/targets/{tg}/snapshots/{snap}/tree?path={path}");
    let dir = d.get(&ls(short, s.src.to_str().unwrap()), t);
    assert_eq!(names(&dir, "name"), ["d", "f0", "f1", "f2"], "{dir}");
    assert_eq!(dir[1]["size"], 200_000);
    assert_eq!(dir[0]["type"], "dir");
    let inner = d.get(&ls("latest", &format!("{}/d", s.src.display())), t);
    assert_eq!(inner[0]["path"], format!("{}/d/inner", s.src.display()));
    d.call("GET", &ls("latest", "/a/../b"), Some(t), None)
        .error(400, "invalid", "..");
    d.call("GET", &ls("latest", "/no/such"), Some(t), None)
        .error(404, "not_found", "/no/such");
    d.call("GET", &ls("ffffffff", "/"), Some(t), None)
        .error(404, "not_found", "ffffffff");
    d.call("GET", "/api/v1/targets/nope/snapshots", Some(t), None)
        .error(404, "not_found", "nope");
    d.call(
        "GET",
        "/api/v1/targets/local-worker/snapshots",
        Some(t),
        None,
    )
    .error(400, "invalid", "not a target");

    // Check, prune, heal, rebuild: tasks with ids, states and logs.
    let log = d.succeeds("POST", &format!("/api/v1/targets/{tg}/check"), t, None);
    assert!(log.contains("checked 1 snapshot(s)"), "{log}");
    let log = d.succeeds(
        "POST",
        &format!("/api/v1/targets/{tg}/check?read_data=true"),
        t,
        None,
    );
    assert!(
        !log.contains("read 0 pack(s)"),
        "--read-data read packs: {log}"
    );
    let log = d.succeeds("POST", &format!("/api/v1/targets/{tg}/prune"), t, None);
    assert!(log.contains("blobs used"), "{log}");
    let log = d.succeeds("POST", &format!("/api/v1/backups/{id}/heal"), t, None);
    assert!(log.contains("already holds a complete copy"), "{log}");
    let body = json!({"targets": [tg]});
    let log = d.succeeds("POST", "/api/v1/catalog/rebuild", t, Some(&body));
    assert!(log.contains("1 already known"), "{log}");
    d.call(
        "POST",
        "/api/v1/catalog/rebuild",
        Some(t),
        Some(&json!({"targets": []})),
    )
    .error(400, "invalid", "targets");
    d.call("POST", "/api/v1/targets/nope/check", Some(t), None)
        .error(404, "not_found", "nope");
    d.call("POST", "/api/v1/backups/999/heal", Some(t), None)
        .error(404, "not_found", "999");
    // A damaged repository fails its check task, naming the damage.
    let packs = s.repo.join("data");
    let pack = walk_files(&packs).into_iter().next().unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    let (task, log) = d.task(
        "POST",
        &format!("/api/v1/targets/{tg}/check?read_data=true"),
        t,
        None,
    );
    assert_eq!(task["state"], "failed", "{task}\n{log}");
    assert!(
        task["error"].as_str().unwrap().contains("damaged"),
        "{task}"
    );
    // Every task is listed, and filtered by kind.
    let checks = d.get("/api/v1/tasks?kind=check", t);
    assert_eq!(checks.as_array().unwrap().len(), 3, "{checks}");
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["started_by"] == "api:ops"),
        "{checks}"
    );
}

#[test]
fn a_restore_task_restores_byte_equal_and_writes_nowhere_but_its_destination() {
    let s = Setup::new();
    let token = s.token("ops", &[]);
    // Restores through this daemon may write only below `root`.
    let root = s.dir().join("root");
    fs::create_dir(&root).unwrap();
    let d = s.serve_with(&["--restore-root", root.to_str().unwrap()]);
    let t = token.as_str();
    let tg = s.target;
    d.succeeds("POST", "/api/v1/jobs/nightly/run", t, None);
    let rel = s.src.strip_prefix("/").unwrap();

    // A snapshot of a target's repository, into an empty directory.
    let dest = root.join("r1");
    let body = json!({"target": tg, "destination": dest.to_str().unwrap()});
    let log = d.succeeds("POST", "/api/v1/restores", t, Some(&body));
    assert!(log.contains("restored 4 files"), "{log}");
    assert_same_tree(&s.src, &dest.join(rel));

    // A catalog backup, with a pattern.
    let id = d.get("/api/v1/backups", t)[0]["id"].as_i64().unwrap();
    let dest = root.join("r2");
    let body = json!({"backup": id, "destination": dest.to_str().unwrap(),
        "include": [format!("{}/d/**", s.src.display())]});
    d.succeeds("POST", "/api/v1/restores", t, Some(&body));
    assert_eq!(
        fs::read(dest.join(rel).join("d/inner")).unwrap(),
        b"inner file"
    );
    assert!(!dest.join(rel).join("f0").exists());

    // Into a directory where someone planted links to the outside: they are replaced, never
    // written through.
    let outside = s.dir().join("outside");
    fs::create_dir(&outside).unwrap();
    write(&outside.join("victim"), b"keep me");
    write(&outside.join("victim2"), b"keep me too");
    let dest = root.join("r3");
    let base = dest.join(rel);
    fs::create_dir_all(&base).unwrap();
    fs::hard_link(outside.join("victim"), base.join("f0")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim2"), base.join("f1")).unwrap();
    std::os::unix::fs::symlink(&outside, base.join("d")).unwrap();
    let body = json!({"target": tg, "snapshot": "latest", "destination": dest.to_str().unwrap()});
    d.succeeds("POST", "/api/v1/restores", t, Some(&body));
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep me");
    assert_eq!(fs::read(outside.join("victim2")).unwrap(), b"keep me too");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        2,
        "nothing new outside"
    );
    assert_same_tree(&s.src, &base);

    // Bad requests are refused before any task starts, naming the field.
    let tasks_before = d
        .get("/api/v1/tasks?kind=restore", t)
        .as_array()
        .unwrap()
        .len();
    let abs = dest.to_str().unwrap();
    let escape = root.join("escape");
    std::os::unix::fs::symlink(&outside, &escape).unwrap();
    let via_link = escape.join("r4");
    for (body, status, code, says) in [
        (
            json!({"target": tg, "destination": "relative/dir"}),
            400,
            "invalid",
            "destination",
        ),
        (
            json!({"target": tg, "destination": s.dir().join("r5")}),
            400,
            "invalid",
            "--restore-root",
        ),
        (
            json!({"target": tg, "destination": via_link}),
            400,
            "invalid",
            "--restore-root",
        ),
        (
            json!({"target": tg, "destination": format!("{abs}/../up")}),
            400,
            "invalid",
            "destination",
        ),
        (
            json!({"target": tg, "backup": id, "destination": abs}),
            400,
            "invalid",
            "backup",
        ),
        (json!({"destination": abs}), 400, "invalid", "target"),
        (
            json!({"target": tg, "destination": abs, "overwrite": "sometimes"}),
            400,
            "invalid",
            "overwrite",
        ),
        (
            json!({"target": tg, "destination": abs, "colour": 1}),
            400,
            "invalid",
            "colour",
        ),
        (
            json!({"backup": id, "snapshot": "latest", "destination": abs}),
            400,
            "invalid",
            "snapshot",
        ),
        (
            json!({"target": "nope", "destination": abs}),
            404,
            "not_found",
            "nope",
        ),
        (
            json!({"backup": 999, "destination": abs}),
            404,
            "not_found",
            "999",
        ),
    ] {
        d.call("POST", "/api/v1/restores", Some(t), Some(&body))
            .error(status, code, says);
    }
    let tasks_after = d
        .get("/api/v1/tasks?kind=restore", t)
        .as_array()
        .unwrap()
        .len();
    assert_eq!(tasks_before, tasks_after);
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        2,
        "nothing new outside"
    );
    assert!(!s.dir().join("r5").exists());
    // A snapshot that does not exist: the task fails, saying so.
    let body = json!({"target": tg, "snapshot": "ffffffff", "destination": abs});
    let (task, _) = d.task("POST", "/api/v1/restores", t, Some(&body));
    assert_eq!(task["state"], "failed", "{task}");
    assert!(
        task["error"].as_str().unwrap().contains("ffffffff"),
        "{task}"
    );
}

#[test]
fn tokens_are_refused_without_a_word_more_and_never_logged() {
    let s = Setup::new();
    let token = s.token("ops", &[]);
    let short_lived = s.token("brief", &["--expires", "1s"]);
    let d = s.serve();
    // Work that writes task logs, started with the good token.
    d.succeeds("POST", "/api/v1/jobs/nightly/run", &token, None);
    d.succeeds(
        "POST",
        &format!("/api/v1/targets/{}/check", s.target),
        &token,
        None,
    );

    let unknown = format!("kura_{}", "0".repeat(64));
    std::thread::sleep(Duration::from_millis(1500));
    for bad in [
        Some(unknown.as_str()),
        Some(short_lived.as_str()),
        Some("not-even-a-token"),
        None,
    ] {
        for (m, p) in [
            ("GET", "/api/v1/jobs"),
            ("GET", "/api/v1/resources"),
            ("POST", "/api/v1/restores"),
            ("DELETE", "/api/v1/jobs/nightly"),
            ("GET", "/api/v1/backups/1"),
        ] {
            let a = d.call(m, p, bad, None);
            a.error(401, "unauthorized", "token");
            if let Some(b) = bad {
                assert!(!a.text.contains(b), "{m} {p} echoed the token");
            }
            // The same answer whatever was wrong.
            assert_eq!(
                a.json()["error"]["message"],
                "a valid API token is required (Authorization: Bearer …)"
            );
        }
    }
    // A token in the URL is not a token.
    d.call("GET", &format!("/api/v1/jobs?token={token}"), None, None)
        .error(401, "unauthorized", "token");
    d.call(
        "GET",
        &format!("/api/v1/jobs?access_token={token}"),
        None,
        None,
    )
    .error(401, "unauthorized", "token");
    // The job is still there: nothing the bad calls asked for happened.
    assert_eq!(d.get("/api/v1/jobs/nightly", &token)["name"], "nightly");

    // No secret in any task log, task record or the daemon's output.
    let mut seen = String::new();
    for p in walk_files(&d.state.join("tasks")) {
        seen.push_str(&fs::read_to_string(&p).unwrap());
    }
    assert!(
        seen.contains("api:ops"),
        "the token's name is who started the work"
    );
    seen.push_str(&fs::read_to_string(&d.log).unwrap());
    for secret in [&token, &short_lived, &unknown] {
        assert!(!seen.contains(secret.as_str()), "a token was logged");
        assert!(!seen.contains(&secret[5..]), "a token's digits were logged");
    }
}

#[test]
fn a_restore_task_can_be_cancelled_and_leaves_nothing_incomplete_under_its_name() {
    let s = Setup::new();
    let big = pseudo_random(2 << 20, 9);
    write(&s.src.join("big"), &big);
    s.ok(&["job", "run", "nightly"]);
    let token = s.token("ops", &[]);
    // Reads from targets at 256 KiB/s: the restore of 2 MiB takes at least 8 s, and it
    // checks for cancellation before each pack it fetches.
    let d = s.serve_with(&["--limit-download", "256KiB/s"]);
    let dest = s.dir().join("slow");
    let body = json!({"target": s.target, "destination": dest.to_str().unwrap()});
    let a = d.call("POST", "/api/v1/restores", Some(&token), Some(&body));
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap().to_string();
    // Cancelled while it restores (its progress has begun), not before it began.
    let log = format!("/api/v1/tasks/{id}/log");
    api_common::wait_for(60, "the restore to begin", || {
        let lines = d.get(&log, &token)["lines"].as_array().unwrap().len();
        (lines >= 2).then_some(())
    });
    let a = d.call(
        "POST",
        &format!("/api/v1/tasks/{id}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(a.status, 202, "{}", a.text);
    let t = api_common::wait_for(120, "the restore to stop", || {
        let t = d.get(&format!("/api/v1/tasks/{id}"), &token);
        (t["state"] != "running").then_some(t)
    });
    assert_eq!(t["state"], "cancelled", "{t}");
    assert!(
        !t["error"].as_str().unwrap().contains("before it began"),
        "{t}"
    );
    // Nothing incomplete under its own name: the big file is whole, or not there.
    let restored = dest.join(s.src.strip_prefix("/").unwrap()).join("big");
    if let Ok(b) = fs::read(&restored) {
        assert!(b == big, "an incomplete file under its own name");
    }
    // Cancelling it again is a conflict: it is not running.
    d.call(
        "POST",
        &format!("/api/v1/tasks/{id}/cancel"),
        Some(&token),
        None,
    )
    .error(409, "conflict", "not running");
}
