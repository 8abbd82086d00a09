use super::*;
use serde_json::json;

#[test]
fn stored_job_settings_read_as_before() {
    // What `kura job add` has stored: every field, durations as typed, the extent in bytes.
    let stored = r#"{"extent_size":67108864,"extent_timeout":"2m","hook_timeout":"10m",
        "post":null,"pre":"pg_dump db > /tmp/db.sql","quorum":2,"stall_timeout":"90s",
        "targets":["t0","t1"],"unreachable_timeout":"1s"}"#;
    let s = JobSettings::from_json("job nightly", stored).unwrap();
    assert_eq!(s.quorum, 2);
    assert_eq!(s.extent_size, ByteSize::mib(64));
    assert_eq!(s.stall_timeout, Duration::from_secs(90));
    assert_eq!(s.pre.as_deref(), Some("pg_dump db > /tmp/db.sql"));
    assert_eq!(s.post, None);
    assert_eq!(s.targets, ["t0", "t1"]);
    // `{}` (the catalog's own tests, hand-made rows) is the defaults.
    assert_eq!(
        JobSettings::from_json("job j", "{}").unwrap(),
        JobSettings::default()
    );
    // Written back, the same shape: every field, sizes as numbers, durations as text.
    let v: Value = serde_json::from_str(&s.to_json()).unwrap();
    assert_eq!(v["extent_size"], json!(67108864));
    assert_eq!(v["stall_timeout"], json!("1m30s"));
    assert_eq!(v["post"], Value::Null);
    assert_eq!(
        JobSettings::from_json("job nightly", &s.to_json()).unwrap(),
        s
    );
}

#[test]
fn bad_job_settings_name_the_job_and_the_field() {
    for (text, field, why) in [
        (
            r#"{"hook_timeout":"10 minutes"}"#,
            Some("hook_timeout"),
            "invalid duration",
        ),
        (r#"{"quorum":"two"}"#, Some("quorum"), "invalid type"),
        (r#"{"quorum":-1}"#, Some("quorum"), "invalid value"),
        (
            r#"{"extent_size":"64 furlongs"}"#,
            Some("extent_size"),
            "invalid size",
        ),
        (r#"{"targets":"t0"}"#, Some("targets"), "invalid type"),
        (
            r#"{"colour":"blue"}"#,
            Some("colour"),
            "unknown field (known: quorum",
        ),
        ("null", None, "not a JSON object but null"),
        ("[1]", None, "not a JSON object"),
        ("{", None, "not valid JSON"),
    ] {
        let e = JobSettings::from_json("job nightly", text).unwrap_err();
        assert_eq!(e.owner, "job nightly");
        assert_eq!(e.field.as_deref(), field, "{text}: {e}");
        assert!(e.why.contains(why), "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with("job nightly: "), "{msg}");
        if let Some(f) = field {
            assert!(msg.contains(&format!("field {f:?}")), "{msg}");
        }
    }
}

#[test]
fn job_settings_checks() {
    let ok = JobSettings {
        quorum: 2,
        ..JobSettings::default()
    };
    ok.check("job j", 2).unwrap();
    let e = ok.check("job j", 1).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("quorum"));
    assert!(e.why.contains("between 1 and the redundancy (1)"), "{e}");
    let small = JobSettings {
        extent_size: ByteSize::kib(512),
        ..JobSettings::default()
    };
    let e = small.check("job j", 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "job j: field \"extent_size\": 512KiB is below the smallest, 1MiB"
    );
    let zero = JobSettings {
        hook_timeout: Duration::ZERO,
        ..JobSettings::default()
    };
    assert_eq!(
        zero.check("job j", 2).unwrap_err().field.as_deref(),
        Some("hook_timeout")
    );
}

#[test]
fn api_input_deserializes_strictly() {
    let s: JobSettings =
        serde_json::from_value(json!({"quorum": 2, "hook_timeout": "5m"})).unwrap();
    assert_eq!(s.hook_timeout, Duration::from_mins(5));
    let e = serde_json::from_value::<JobSettings>(json!({"quorom": 2})).unwrap_err();
    assert!(e.to_string().contains("\"quorom\": unknown field"), "{e}");
}

#[test]
fn resource_configs_as_stored() {
    use ConfigKind as K;
    let t = ResourceConfig::from_json(K::Target, "target t0", r#"{"url":"/srv/t0"}"#).unwrap();
    assert_eq!(t, ResourceConfig::Target(TargetConfig::new("/srv/t0")));
    assert_eq!(t.to_json(), r#"{"url":"/srv/t0"}"#);
    let full = r#"{"repository":"ab12","sequential":true,"url":"s3://b/p"}"#;
    let t = ResourceConfig::from_json(K::Target, "target t1", full).unwrap();
    assert_eq!(
        t.target().and_then(|t| t.repository.as_deref()),
        Some("ab12")
    );
    assert!(t.target().is_some_and(|t| t.sequential));
    let m =
        ResourceConfig::from_json(K::Medium, "medium t0.medium", r#"{"implicit":true}"#).unwrap();
    assert_eq!(m.to_json(), r#"{"implicit":true}"#);
    let m = ResourceConfig::from_json(K::Medium, "medium tape1", "{}").unwrap();
    assert_eq!(m.to_json(), "{}");
    for text in ["null", "{}"] {
        let w = ResourceConfig::from_json(K::None, "worker w", text).unwrap();
        assert_eq!(w, ResourceConfig::None);
        assert_eq!(w.to_json(), "null");
    }
}

#[test]
fn bad_resource_configs_name_the_resource_and_the_field() {
    use ConfigKind as K;
    for (kind, text, field, why) in [
        (K::Target, "{}", Some("url"), "a target needs a URL"),
        (K::Target, r#"{"url":7}"#, Some("url"), "invalid type"),
        (
            K::Target,
            r#"{"url":"/x","sequential":"yes"}"#,
            Some("sequential"),
            "invalid type",
        ),
        (
            K::Target,
            r#"{"url":"/x","bucket":"b"}"#,
            Some("bucket"),
            "unknown field",
        ),
        (K::Target, "null", None, "not a JSON object"),
        (
            K::Medium,
            r#"{"label":"x"}"#,
            Some("label"),
            "unknown field",
        ),
        (K::None, r#"{"speed":1}"#, Some("speed"), "unknown field"),
        (K::None, "7", None, "not a JSON object"),
    ] {
        let e = ResourceConfig::from_json(kind, "thing x", text).unwrap_err();
        assert_eq!(e.owner, "thing x");
        assert_eq!(e.field.as_deref(), field, "{text}: {e}");
        assert!(e.why.contains(why), "{text}: {e}");
    }
}
