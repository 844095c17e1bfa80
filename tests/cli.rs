//! The command line: its contract (names, flags, JSON keys) and its answers to bad
//! input: one line naming the problem and the fix, a non-zero exit, nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tidemark::config::SourceKind;
use tidemark::event::{ChangeEvent, Payload, RedisCommand};
use tidemark::journal::{Journal, JournalOptions, Progress};
use tidemark::position::Position;
use tidemark::time::Timestamp;

fn tidemark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env_remove("TIDEMARK_CONFIG")
        .output()
        .unwrap()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("tidemark.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn config_with_journal(dir: &Path, journal: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[journal]\npath = \"{}\"\nretention = \"1h\"\n\n[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://u:hunter2@127.0.0.1:1\"\n",
            journal.display()
        ),
    )
}

/// Asserts failure with a single line on stderr containing every `needle`.
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in: {err}");
    }
    assert!(!err.contains("hunter2"), "secret leaked: {err}");
}

/// A journal with one Redis source: events at t=1s..=10s, coverage 10s, one image at 0.
fn populated_journal(path: &Path) {
    let j = std::sync::Arc::new(Journal::open(path, JournalOptions::default()).unwrap());
    let src = j.register_source("cache", SourceKind::Redis).unwrap();
    let sec = 1_000_000;
    let w = j
        .begin_image(
            src,
            Position::redis("r", 0),
            Timestamp::from_micros(0),
            "test",
        )
        .unwrap();
    w.finish(&Progress::default()).unwrap();
    let events: Vec<ChangeEvent> = (1..=10i64)
        .map(|i| ChangeEvent {
            position: Some(Position::redis("r", i as u64)),
            commit_time_us: Some(i * sec),
            capture_time_us: i * sec,
            payload: Some(Payload::Redis(RedisCommand {
                db: 0,
                args: vec![b"SET".to_vec(), format!("k{i}").into_bytes()],
            })),
            ..Default::default()
        })
        .collect();
    j.append(
        src,
        &events,
        &Progress {
            coverage: Some(Timestamp::from_micros(10 * sec)),
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn config_validate_accepts_the_shipped_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for f in std::fs::read_dir(root).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
                .args(["config", "validate", "-c"])
                .arg(&f)
                .env("PGPASSWORD", "x")
                .env("REDIS_PASSWORD", "x")
                .env("KAFKA_PASSWORD", "x")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
            n += 1;
        }
    }
    assert!(n >= 2, "example configs missing");
}

#[test]
fn bad_configs_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let j = journal.display().to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("[journal]\npath = \"{j}\"\n[[source]\nname = \"x\""), vec!["line 3"]),
        (format!("[journal]\npath = \"{j}\"\n[[source]]\nname = \"x\"\nkind = \"mysql\"\nurl = \"mysql://h\"\n"), vec!["mysql", "postgres"]),
        (format!("[journal]\npath = \"{j}\"\n[[source]]\nname = \"x\"\nkind = \"redis\"\nurl = \"redis://h:1\"\nport = 5\n"), vec!["unknown field `port`"]),
        (format!("[journal]\npath = \"{j}\"\n[[source]]\nname = \"x\"\nkind = \"redis\"\nurl = \"http://u:hunter2@h\"\n"), vec!["source[0].url", "redis://"]),
        (format!("[journal]\npath = \"{j}\"\n[[source]]\nname = \"x\"\nkind = \"redis\"\nurl = \"redis://:${{TIDEMARK_NOPE}}@h\"\n"), vec!["TIDEMARK_NOPE", "not set"]),
        (format!("[journal]\npath = \"{j}\"\n"), vec!["add at least one source"]),
        ("[[source]]\nname = \"x\"\nkind = \"redis\"\nurl = \"redis://h\"\n".to_string(), vec!["missing field `journal`"]),
    ];
    for (body, needles) in cases {
        let cfg = write_config(dir.path(), &body);
        for args in [
            vec!["config", "validate", "-c"],
            vec!["run", "-c"],
            vec!["status", "-c"],
        ] {
            let mut a = args.clone();
            let c = cfg.display().to_string();
            a.push(&c);
            assert_fails(&tidemark(&a), &needles);
        }
        assert!(
            !journal.exists(),
            "a bad config created the journal: {body}"
        );
    }
    assert_fails(
        &tidemark(&["status", "-c", "/nonexistent/tidemark.toml"]),
        &["cannot read config file", "-c"],
    );
    assert_fails(&tidemark(&["status"]), &["pass -c FILE"]);
}

#[test]
fn run_refuses_kinds_it_does_not_know_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[journal]\npath = \"{}\"\n\n[[source]]\nname = \"catalog\"\nkind = \"cassandra\"\n",
            journal.display()
        ),
    );
    assert_fails(
        &tidemark(&["-c", cfg.to_str().unwrap(), "run"]),
        &["cassandra", "kubernetes", "mongodb"],
    );
    assert!(!journal.exists());
}

#[test]
fn journal_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Missing journal for a read-only command.
    let cfg = config_with_journal(dir.path(), &dir.path().join("absent"));
    assert_fails(
        &tidemark(&["-c", cfg.to_str().unwrap(), "status"]),
        &["no journal at", "tidemark run"],
    );
    assert!(!dir.path().join("absent").exists());
    // A path that cannot be a directory.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let cfg = config_with_journal(dir.path(), &file.join("journal"));
    assert_fails(
        &tidemark(&["-c", cfg.to_str().unwrap(), "prune"]),
        &["cannot use", "writable [journal] path"],
    );
    // Locked by another process.
    let journal = dir.path().join("journal");
    let cfg = config_with_journal(dir.path(), &journal);
    let held = Journal::open(&journal, JournalOptions::default()).unwrap();
    assert_fails(
        &tidemark(&["-c", cfg.to_str().unwrap(), "prune"]),
        &["in use by another tidemark process"],
    );
    drop(held);
}

#[test]
fn status_reports_the_contract_keys() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    populated_journal(&journal);
    let cfg = config_with_journal(dir.path(), &journal);
    let out = tidemark(&["-c", cfg.to_str().unwrap(), "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["sources"][0];
    assert_eq!(s["name"], "cache");
    assert_eq!(s["kind"], "redis");
    assert_eq!(s["position"], "r:10");
    assert_eq!(s["coverage"], "1970-01-01T00:00:10.000000Z");
    assert_eq!(s["events"], 10);
    assert!(v["journal"]["size_bytes"].as_u64().unwrap() > 0);
    let text = tidemark(&["-c", cfg.to_str().unwrap(), "status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("cache"));
}

#[test]
fn log_filters_by_source_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    populated_journal(&journal);
    let cfg = config_with_journal(dir.path(), &journal);
    let c = cfg.to_str().unwrap();
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = tidemark(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = lines(&["-c", c, "log", "--json"]);
    assert_eq!(all.len(), 10);
    assert_eq!(all[0]["payload"]["redis"]["args"][1], "k1");
    let some = lines(&[
        "-c",
        c,
        "log",
        "--json",
        "--source",
        "cache",
        "--since",
        "1970-01-01T00:00:03Z",
        "--until",
        "1970-01-01T00:00:05.5Z",
    ]);
    let keys: Vec<_> = some
        .iter()
        .map(|e| {
            e["payload"]["redis"]["args"][1]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["k3", "k4", "k5"]);
    let global = lines(&["-c", c, "log", "--json", "--since", "1970-01-01T00:00:09Z"]);
    assert_eq!(global.len(), 2);
    assert_eq!(lines(&["-c", c, "log", "--json", "--limit", "4"]).len(), 4);
    assert_fails(
        &tidemark(&["-c", c, "log", "--since", "tomorrow-ish"]),
        &["--since", "bad time `tomorrow-ish`", "RFC 3339"],
    );
    assert_fails(
        &tidemark(&["-c", c, "log", "--source", "nope"]),
        &["no source named `nope`", "cache"],
    );
}

#[test]
fn restore_plans_refuses_and_names_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    populated_journal(&journal);
    let cfg = config_with_journal(dir.path(), &journal);
    let c = cfg.to_str().unwrap();
    let target = "redis://127.0.0.1:1";
    let out = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "cache",
        "--at",
        "1970-01-01T00:00:04Z",
        "--target",
        target,
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("base image #1") && plan.contains("replay 4 events"),
        "{plan}"
    );
    let latest = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "cache",
        "--at",
        "latest",
        "--target",
        target,
        "--dry-run",
    ]);
    assert!(String::from_utf8_lossy(&latest.stdout).contains("replay 10 events"));
    assert_fails(
        &tidemark(&[
            "-c",
            c,
            "restore",
            "--source",
            "cache",
            "--at",
            "1970-01-01T00:00:11Z",
            "--target",
            target,
        ]),
        &["covered only up to 1970-01-01T00:00:10", "choose --at"],
    );
    assert_fails(
        &tidemark(&[
            "-c", c, "restore", "--source", "db", "--at", "latest", "--target", target,
        ]),
        &["no source named `db`"],
    );
    assert_fails(
        &tidemark(&[
            "-c", c, "restore", "--source", "cache", "--at", "noon", "--target", target,
        ]),
        &["--at", "bad time `noon`"],
    );
    assert_fails(
        &tidemark(&[
            "-c", c, "restore", "--source", "cache", "--at", "latest", "--target", target,
        ]),
        &["cannot connect to Redis", "check the url's host and port"],
    );
}

#[test]
fn documented_time_forms_and_paper_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    populated_journal(&journal);
    let cfg = config_with_journal(dir.path(), &journal);
    let c = cfg.to_str().unwrap();
    // `--at -5m` and `--since -5m` with a space, as the help text documents them.
    let out = tidemark(&["-c", c, "log", "--since", "-100000d", "--limit", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "cache",
        "--at",
        "-5m",
        "--target",
        "redis://127.0.0.1:1",
        "--dry-run",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("unexpected argument"), "{err}");
    assert!(err.contains("covered only up to"), "{err}");
    // A missing config file names the OS error once.
    let out = tidemark(&["status", "-c", "/nonexistent/tidemark.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    // `digest`'s scheme error lists every scheme.
    assert_fails(
        &tidemark(&["digest", "mysql://h/db"]),
        &["postgres://", "redis://", "kafka://"],
    );
    // `status | head -1`: a closed pipe ends the command quietly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["-c", c, "log"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // The name rule says what it means.
    let bad = write_config(
        dir.path(),
        &format!("[journal]\npath = \"{}\"\n[[source]]\nname = \"caché\"\nkind = \"redis\"\nurl = \"redis://h:1\"\n", journal.display()),
    );
    assert_fails(
        &tidemark(&["-c", bad.to_str().unwrap(), "config", "validate"]),
        &["ASCII"],
    );
}

#[test]
fn logs_carry_no_colour_codes_when_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let cfg = config_with_journal(dir.path(), &journal);
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("retrying")
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no log lines"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO") || text.contains("WARN"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in: {text:?}");
    assert!(!text.contains("hunter2"), "{text}");
}
