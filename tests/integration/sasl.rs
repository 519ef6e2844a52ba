//! SASL/SCRAM to the broker, with the real binary and a broker of the test's own that requires
//! authentication. nisshi keeps SCRAM users in its PostgreSQL storage engine, so the test runs
//! a PostgreSQL server of its own on loopback (Debian's `postgresql` package; scripts/test.sh
//! installs it and the postgres-enabled nisshi, and sets TAILSIFT_NISSHI_PG).
//!
//! SCRAM-SHA-512 over plaintext (SASL_PLAINTEXT) and over TLS (SASL_SSL), the password from
//! `${env:...}`: every client tailsift makes authenticates and every kept trace arrives. With a
//! wrong password tailsift stays up, unready, and its log says authentication failed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixture::broker::{self_signed, Broker};
use crate::fixture::instance::{launch, log_of, RunConfig};
use crate::fixture::traffic::{self, RULES};
use crate::fixture::*;

const USER: &str = "tailsift";
const PASSWORD: &str = "scram-test-password";
const PASSWORD_ENV: &str = "TAILSIFT_TEST_SCRAM_PASSWORD";

/// The postgres-enabled nisshi binary.
fn nisshi_pg() -> String {
    let bin = std::env::var("TAILSIFT_NISSHI_PG")
        .unwrap_or_else(|_| "/opt/tailsift-ci/nisshi-0.7.0-postgres/bin/nisshi".into());
    assert!(
        Path::new(&bin).exists(),
        "the SASL test needs nisshi built with its PostgreSQL storage engine: run \
         scripts/test.sh (it installs it and sets TAILSIFT_NISSHI_PG); {bin} is missing"
    );
    bin
}

/// The newest PostgreSQL server binaries (`TAILSIFT_PG_BIN` to choose).
fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("TAILSIFT_PG_BIN") {
        return b.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
    });
    let bin = versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists());
    bin.expect(
        "the SASL test needs a PostgreSQL server (Debian package `postgresql`, which \
         scripts/test.sh installs), or TAILSIFT_PG_BIN set to its bin directory",
    )
}

/// A PostgreSQL server of the test's own on a free loopback port, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<u32>,
}

/// A command that runs as the `postgres` user when this process is root (initdb and the
/// server refuse to run as root).
fn pg_command(bin: &Path, tool: &str, run_as: Option<u32>) -> Command {
    let mut c = Command::new(bin.join(tool));
    if let Some(uid) = run_as {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(uid_gid(uid));
    }
    c.stdout(Stdio::null());
    c
}

fn uid_gid(uid: u32) -> u32 {
    // SAFETY: getpwuid returns a pointer to static storage or null; read once, at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            uid
        } else {
            (*pw).pw_gid
        }
    }
}

fn postgres_uid() -> Option<u32> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("name");
    // SAFETY: getpwnam takes a valid C string and returns static storage or null.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, the SASL test runs PostgreSQL as the `postgres` user, which the \
         Debian package creates: it is missing"
    );
    // SAFETY: non-null, just returned.
    Some(unsafe { (*pw).pw_uid })
}

impl Postgres {
    fn start(dir: &Path) -> Self {
        let bin = pg_bin();
        let run_as = postgres_uid();
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).expect("pg dir");
        if let Some(uid) = run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(uid_gid(uid))).expect("chown");
            // The server must reach its directory through the test's temporary one.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let data = root.join("data");
        let ok = pg_command(&bin, "initdb", run_as)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(ok.success(), "initdb");
        let port = free_addr().port();
        let ok = pg_command(&bin, "pg_ctl", run_as)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(root.join("postgres.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                root.display()
            ))
            .arg("start")
            .status()
            .expect("run pg_ctl");
        assert!(
            ok.success(),
            "PostgreSQL started: {}",
            std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default()
        );
        Postgres {
            bin,
            data,
            port,
            run_as,
        }
    }

    /// A new database; the storage URL nisshi takes for it.
    fn database(&self, name: &str) -> String {
        let ok = pg_command(&self.bin, "createdb", self.run_as)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .status()
            .expect("run createdb");
        assert!(ok.success(), "createdb {name}");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl", self.run_as)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

/// A broker on `storage` requiring SCRAM, with user `USER` created while it was still open
/// (a fresh broker has no user to authenticate the request that creates one).
fn scram_broker(dir: &Path, storage: &str, tls: &[&str]) -> Broker {
    let bin = nisshi_pg();
    let addr = free_addr().to_string();
    let open = Broker::start_from(dir, &bin, storage, &addr, &[]);
    let out = Command::new(&bin)
        .args(["user", "create", "--broker"])
        .arg(format!("tcp://{addr}"))
        .args(["--mechanism", "scram512", USER, PASSWORD])
        .output()
        .expect("nisshi user create");
    assert!(
        out.status.success(),
        "nisshi user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(open);
    let mut args = vec!["--authentication"];
    args.extend_from_slice(tls);
    Broker::start_from(dir, &bin, storage, &free_addr().to_string(), &args)
}

/// The config of an instance on `broker` with `props` and the password from `${env:..}`.
/// (The lag interval is 3 s, and so the lag queries' timeout: nisshi on PostgreSQL answered
/// end-offset queries after traffic in more than the 1 s a 500 ms interval gives them, on
/// this shared machine.)
fn config(
    broker: &str,
    input: &str,
    output: &str,
    props: &[(&str, &str)],
    rules: &Path,
) -> RunConfig {
    let mut c = RunConfig::quick(input, output, rules)
        .set("kafka.brokers", broker)
        .remove("kafka.consumer_properties")
        .set("completion.root_grace", "300ms")
        .set("monitoring.lag_interval", "3s");
    for (k, v) in props {
        c = c.property(k, v);
    }
    c.property("sasl.password", &format!("${{env:{PASSWORD_ENV}}}"))
}

/// Sends traffic through tailsift on `broker` with `props` (the password apart) and checks
/// every kept trace arrives; then a wrong password: up, unready, the failure logged. A client
/// with `anonymous` (the same transport, no SASL) is refused.
async fn kept_traces_arrive(
    dir: &Path,
    name: &str,
    broker: &str,
    props: &[(&str, &str)],
    anonymous: &[(&str, &str)],
) {
    // The broker requires authentication: a client without it learns nothing.
    let c: rdkafka::consumer::BaseConsumer =
        client_config(broker, anonymous).create().expect("client");
    assert!(
        rdkafka::consumer::Consumer::fetch_metadata(&c, None, Duration::from_secs(3)).is_err(),
        "{name}: the broker refuses a client that does not authenticate"
    );
    drop(c);
    let mut client_props = props.to_vec();
    client_props.push(("sasl.password", PASSWORD));
    let (input, output) = (unique("sasl-in"), unique("sasl-out"));
    create_topic_with(broker, &input, 2, &client_props).await;
    create_topic_with(broker, &output, 1, &client_props).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let config = config(broker, &input, &output, props, rules.path());
    let inst = launch(dir, name, &config)
        .env(PASSWORD_ENV, PASSWORD)
        .start();
    inst.wait_ready(Duration::from_secs(60)).await;
    let p = producer_with(broker, &client_props);
    let (run, n) = (13, 200);
    traffic::send_interleaved(&p, &input, run, 0..n, Duration::from_millis(1));
    let expected = traffic::expected(rules.path(), run, 0..n);
    let mut reader = Reader::with(broker, &output, &client_props);
    let whole = reader.read_until(Duration::from_secs(60), |m| traffic::complete(&expected, m));
    let v = traffic::verdict(&expected, &reader.messages);
    assert!(
        whole,
        "{name}: every kept trace whole: missing {:?}",
        v.missing
    );
    v.assert_promise_kept();
    // The lag client authenticates too: its queries answer (/readyz fails while the last one
    // did not) and the lag is exposed.
    let addr = inst.addr;
    assert!(
        eventually(Duration::from_secs(30), || http_get(addr, "/readyz")
            .is_ok_and(|(s, _)| s == 200))
        .await,
        "{name}: ready after the traffic: {:?}",
        http_get(addr, "/readyz")
    );
    assert!(
        http_get(inst.addr, "/metrics").is_ok_and(|(_, b)| b.contains("tailsift_consumer_lag{")),
        "{name}: the lag is measured over SASL"
    );
    drop(inst);

    let wrong_name = format!("{name}-wrong");
    let mut wrong = launch(dir, &wrong_name, &config)
        .env(PASSWORD_ENV, "not-the-password")
        .start();
    let addr = wrong.addr;
    assert!(
        eventually(Duration::from_secs(30), || http_get(addr, "/readyz")
            .is_ok_and(|(s, _)| s == 503))
        .await,
        "{name}: /readyz answers while authentication fails"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, why) = http_get(addr, "/readyz").expect("readyz");
    assert_eq!(
        status, 503,
        "{name}: never ready with a wrong password: {why}"
    );
    assert!(wrong.is_running(), "{name}: tailsift keeps running");
    wrong.kill9();
    let log = log_of(dir, &wrong_name);
    assert!(
        log.to_lowercase().contains("authentication"),
        "{name}: the log says authentication failed: {}",
        &log[..log.len().min(2000)]
    );
    assert!(
        !log.contains("not-the-password"),
        "{name}: the password is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_plaintext_and_tls_keeps_every_trace_and_a_wrong_password_is_unready() {
    // Its lag queries against nisshi on PostgreSQL are slow under load.
    let _turn = load_sensitive().await;
    tokio::time::timeout(Duration::from_secs(300), sasl())
        .await
        .expect("the SASL test finishes within 5 minutes");
}

async fn sasl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path());
    let scram = [("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", USER)];

    let broker = scram_broker(dir.path(), &pg.database("nisshi_plain"), &[]);
    let mut props = vec![("security.protocol", "SASL_PLAINTEXT")];
    props.extend_from_slice(&scram);
    kept_traces_arrive(dir.path(), "sasl-plaintext", &broker.addr, &props, &[]).await;
    drop(broker);

    let (cert, key) = self_signed(dir.path(), "broker");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let broker = scram_broker(
        dir.path(),
        &pg.database("nisshi_ssl"),
        &["--cert", &cert, "--key", &key],
    );
    let mut props = vec![
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", cert.as_str()),
    ];
    props.extend_from_slice(&scram);
    let tls_only = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", cert.as_str()),
    ];
    kept_traces_arrive(dir.path(), "sasl-ssl", &broker.addr, &props, &tls_only).await;
}
