use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let cfg = Config::parse(text, Path::new("t.toml"))?;
    cfg.validate()?;
    Ok(cfg)
}

const GOOD: &str = r#"
[journal]
path = "/var/lib/tidemark"
retention = "7d"

[[source]]
name = "orders"
kind = "postgres"
url = "postgres://tm:secret@db:5432/orders"
tables = ["public.orders"]

[[source]]
name = "cache"
kind = "redis"
url = "redis://cache:6379"

[[source]]
name = "events"
kind = "kafka"
brokers = ["k1:9092"]
topics = ["orders", "^audit\\..*"]
groups = ["billing"]

[[source]]
name = "catalog"
kind = "mongodb"
url = "mongodb://m:27017"

[[source]]
name = "k8s"
kind = "kubernetes"
namespaces = ["shop"]
"#;

#[test]
fn accepts_every_kind() {
    let cfg = parse(GOOD).unwrap();
    let kinds: Vec<_> = cfg.sources.iter().map(|s| s.kind().as_str()).collect();
    assert_eq!(
        kinds,
        ["postgres", "redis", "kafka", "mongodb", "kubernetes"]
    );
    assert_eq!(
        cfg.retention().unwrap(),
        Some(Duration::from_secs(7 * 86400))
    );
    assert_eq!(cfg.journal.sync, SyncPolicy::Always);
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace(
        "url = \"redis://cache:6379\"",
        "url = \"redis://cache:6379\"\nurll = 1",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("unknown field `urll`"), "{e}");
    assert!(e.contains("line 1") || e.contains("line "), "{e}");
}

#[test]
fn unknown_kind_lists_the_kinds() {
    let e = parse(&GOOD.replace("kind = \"redis\"", "kind = \"mysql\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mysql") && e.contains("postgres"), "{e}");
}

#[test]
fn key_of_another_kind_is_rejected() {
    let e = parse(&GOOD.replace(
        "url = \"redis://cache:6379\"",
        "url = \"redis://cache:6379\"\ntopics = [\"x\"]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `topics`"), "{e}");
}

#[test]
fn env_expansion_and_missing_variable() {
    std::env::set_var("TIDEMARK_TEST_PW", "s3cret");
    let cfg = parse(&GOOD.replace("tm:secret", "tm:${TIDEMARK_TEST_PW}")).unwrap();
    let SourceConfig::Postgres { url, .. } = &cfg.sources[0] else {
        panic!()
    };
    assert_eq!(url, "postgres://tm:s3cret@db:5432/orders");
    let e = parse(&GOOD.replace("tm:secret", "tm:${TIDEMARK_TEST_UNSET_VAR}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source[0].url") && e.contains("TIDEMARK_TEST_UNSET_VAR"),
        "{e}"
    );
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (GOOD.replace("postgres://tm", "mysql://tm"), "source[0].url"),
        (
            GOOD.replace("\"k1:9092\"", "\"k1\""),
            "source[2].brokers[0]",
        ),
        (
            GOOD.replace("name = \"cache\"", "name = \"orders\""),
            "source[1].name",
        ),
        (
            GOOD.replace("retention = \"7d\"", "retention = \"soon\""),
            "journal.retention",
        ),
        (
            GOOD.replace("\"public.orders\"", "\"a.b.c\""),
            "source[0].tables[0]",
        ),
        (
            GOOD.replace("name = \"k8s\"", "name = \"k 8s\""),
            "source[4].name",
        ),
    ];
    for (text, field) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(field), "expected {field} in: {e}");
    }
}

#[test]
fn errors_never_show_passwords() {
    let e = parse(&GOOD.replace("postgres://tm:secret@db", "mysql://tm:secret@db"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("secret"), "{e}");
    assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
    assert_eq!(redact_url("redis://h:1"), "redis://h:1");
}

#[test]
fn no_sources_is_an_error() {
    let e = parse("[journal]\npath = \"/x\"\n").unwrap_err().to_string();
    assert!(e.contains("add at least one source"), "{e}");
}
