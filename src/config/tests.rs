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
"#;

#[test]
fn accepts_every_kind() {
    let cfg = parse(GOOD).unwrap();
    let kinds: Vec<_> = cfg.sources.iter().map(|s| s.kind().as_str()).collect();
    assert_eq!(kinds, ["postgres", "redis", "kafka"]);
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
    let pg = cfg.sources[0]
        .settings
        .as_any()
        .downcast_ref::<crate::connectors::postgres::config::PostgresSettings>()
        .unwrap();
    assert_eq!(pg.url.expose(), "postgres://tm:s3cret@db:5432/orders");
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "Debug shows the password"
    );
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
            GOOD.replace("name = \"events\"", "name = \"ev ents\""),
            "source[2].name",
        ),
        (GOOD.replace("db:5432", "db:99999"), "source[0].url"),
        (
            GOOD.replace(
                "name = \"orders\"",
                &format!("name = \"{}\"", "o".repeat(60)),
            ),
            "source[0].name",
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

#[test]
fn unknown_kinds_are_refused_naming_the_known_ones() {
    let text = format!("{GOOD}\n[[source]]\nname = \"catalog\"\nkind = \"cassandra\"\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("`cassandra`") && e.contains("`kubernetes`") && e.contains("`mongodb`"),
        "{e}"
    );
}

#[test]
fn sources_sharing_a_slot_are_refused() {
    for (a, b) in [("db.a", "db_a"), ("Orders", "orders")] {
        let text = format!(
            "[journal]\npath = \"/x\"\n[[source]]\nname = \"{a}\"\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\n[[source]]\nname = \"{b}\"\nkind = \"postgres\"\nurl = \"postgres://u@h/e\"\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("replication slot"), "{a}/{b}: {e}");
    }
    let text = "[journal]\npath = \"/x\"\n[[source]]\nname = \"a\"\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\nslot = \"s\"\n[[source]]\nname = \"b\"\nkind = \"postgres\"\nurl = \"postgres://u@h:5432/e\"\nslot = \"s\"\n";
    assert!(parse(text)
        .unwrap_err()
        .to_string()
        .contains("replication slot `s`"));
    // The same slot name on two servers is fine.
    let text = "[journal]\npath = \"/x\"\n[[source]]\nname = \"a\"\nkind = \"postgres\"\nurl = \"postgres://u@h1/d\"\n[[source]]\nname = \"a2\"\nkind = \"postgres\"\nurl = \"postgres://u@h2/d\"\nslot = \"tidemark_a\"\n";
    parse(text).unwrap();
}

#[test]
fn unknown_key_is_reported_at_its_own_line() {
    let text = GOOD.replace(
        "url = \"redis://cache:6379\"",
        "url = \"redis://cache:6379\"\nurll = 1",
    );
    let line = text.lines().position(|l| l.starts_with("urll")).unwrap() + 1;
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains(&format!("line {line}")),
        "expected line {line}: {e}"
    );
}

#[test]
fn timeouts_have_defaults_and_can_be_set() {
    let cfg = parse(GOOD).unwrap();
    assert_eq!(cfg.timeouts.connect, Duration::from_secs(10));
    let cfg = parse(&format!(
        "{GOOD}\n[timeouts]\nconnect = \"2s\"\nstall = \"1m\"\n"
    ))
    .unwrap();
    assert_eq!(cfg.timeouts.connect, Duration::from_secs(2));
    assert_eq!(cfg.timeouts.stall, Duration::from_secs(60));
    assert_eq!(cfg.timeouts.read, Duration::from_secs(30));
    let e = parse(&format!("{GOOD}\n[timeouts]\nconnect = \"0s\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 0s"), "{e}");
}

#[test]
fn applications_check_every_reference() {
    let app = |body: &str| {
        format!("{GOOD}\n[[application]]\nname = \"shop\"\nsources = [\"orders\", \"cache\", \"events\"]\n{body}")
    };
    let cfg = parse(&app(
        "points = \"every 30s\"\n[application.profile.staging.orders]\ntarget = \"postgres://u:pw@stg/orders\"\nforce = true\n[application.profile.staging.events]\ntarget = \"kafka://stg:9092\"\ntopic-map = \"orders=o2\"\n",
    ))
    .unwrap();
    let a = cfg.application("shop").unwrap();
    assert_eq!(a.sources, ["orders", "cache", "events"]);
    assert_eq!(a.points, Some(Duration::from_secs(30)));
    let p = &a.profiles["staging"];
    assert!(p.targets["orders"].force);
    assert_eq!(
        p.targets["events"].options.get("topic-map"),
        Some("orders=o2")
    );
    assert!(!format!("{a:?}").contains("pw@"), "Debug shows a password");
    let err = |body: &str| parse(&app(body)).unwrap_err().to_string();
    let e = err("[application.profile.x.orders]\ntarget = \"redis://r:1\"\n");
    assert!(
        e.contains("application[0].profile.x.orders.target") && e.contains("postgres"),
        "{e}"
    );
    let e = err("[application.profile.x.cache]\ntarget = \"redis://r:1\"\ntopic-map = \"a=b\"\n");
    assert!(e.contains("topic-map") && e.contains("kafka"), "{e}");
    let e = err("points = \"sometimes\"\n");
    assert!(e.contains("application[0].points"), "{e}");
    let e = parse(&format!(
        "{GOOD}\n[[application]]\nname = \"shop\"\nsources = [\"nope\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no source named `nope`") && e.contains("orders"),
        "{e}"
    );
    assert!(cfg.application("other").unwrap_err().contains("shop"));
}

#[test]
fn kubernetes_profiles_take_the_restore_transforms() {
    let cfg = |profile: &str| {
        format!(
            "{GOOD}\n[[source]]\nname = \"k8s\"\nkind = \"kubernetes\"\nkubeconfig = \"/k\"\nresources = [\"v1/configmaps\"]\n\n[[application]]\nname = \"a\"\nsources = [\"k8s\"]\n[application.profile.p.k8s]\ntarget = \"kubernetes:///k\"\n{profile}"
        )
    };
    let keys = [
        ("namespace-map", "a=b"),
        ("existing", "recreate"),
        ("prune", "true"),
        ("storage-class-map", "slow=fast"),
        ("image-rewrite", "registry.a/=registry.b/"),
        ("replicas", "*=0"),
        ("add-labels", "drill=yes"),
        ("add-annotations", "note=drill"),
        ("json-patch-file", "/etc/tidemark/rules.json"),
    ];
    let body: String = keys
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let c = parse(&cfg(&body)).unwrap();
    let t = &c.application("a").unwrap().profiles["p"].targets["k8s"];
    for (k, v) in keys {
        assert_eq!(t.options.get(k), Some(v), "{k}");
    }
    let e = parse(&cfg("storage-class = \"a=b\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage-class"), "{e}");
}
