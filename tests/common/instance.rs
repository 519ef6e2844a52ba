//! tailsift processes for the multi-instance tests: started from a config file, killed when
//! the guard drops (a panic included), logs in files beside the config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, http_get, metric};

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A running tailsift binary.
pub struct Instance {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What differs between the instances of one group.
pub struct Spec<'a> {
    pub name: &'a str,
    /// Static membership id (`TAILSIFT_GROUP_INSTANCE_ID`), if any.
    pub instance_id: Option<&'a str>,
}

/// Starts `tailsift run` on `config_text` (with `{listen}` replaced by a free address).
pub fn start(
    dir: &Path,
    config_text: &str,
    spec: Spec<'_>,
    extra_env: &[(&str, &str)],
) -> Instance {
    start_command("run", dir, config_text, spec, extra_env)
}

/// Starts `tailsift <command> --config` on `config_text`, as [`start`] does.
pub fn start_command(
    command: &str,
    dir: &Path,
    config_text: &str,
    spec: Spec<'_>,
    extra_env: &[(&str, &str)],
) -> Instance {
    let addr = free_addr();
    let path: PathBuf = dir.join(format!("{}.yaml", spec.name));
    std::fs::write(&path, config_text.replace("{listen}", &addr.to_string()))
        .expect("write config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.log", spec.name)))
        .expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailsift"));
    cmd.args([command, "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn,tailsift=info")
        .env_remove("TAILSIFT_BROKERS")
        .env_remove("TAILSIFT_GROUP_INSTANCE_ID")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(id) = spec.instance_id {
        cmd.env("TAILSIFT_GROUP_INSTANCE_ID", id);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start tailsift");
    Instance {
        child,
        addr,
        name: spec.name.to_string(),
    }
}

impl Instance {
    pub async fn wait_ready(&self, timeout: Duration) {
        let addr = self.addr;
        let ok = eventually(timeout, || {
            http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 200)
        })
        .await;
        assert!(ok, "instance {} at {addr} never became ready", self.name);
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then waits for the exit; returns (exit status ok, time taken).
    pub async fn terminate(&mut self, bound: Duration) -> (bool, Duration) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return (s.success(), started.elapsed());
            }
            assert!(
                started.elapsed() < bound,
                "instance {} did not exit within {bound:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric's value (summed over labels matching `labels`), 0 if absent or unreachable.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        http_get(self.addr, "/metrics")
            .ok()
            .and_then(|(_, b)| metric(&b, name, labels))
            .unwrap_or(0.0)
    }
}
