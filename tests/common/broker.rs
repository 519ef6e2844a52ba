//! A nisshi broker of a test's own (for tests that freeze it or configure it differently;
//! never the shared one).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::instance::free_addr;

/// A nisshi broker on a free port, stopped (and resumed first, if frozen) on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    pub fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// With extra `nisshi broker` arguments (`--cert`, `--key`...).
    pub fn start_with(dir: &std::path::Path, args: &[&str]) -> Self {
        let bin = std::env::var("TAILSIFT_NISSHI")
            .unwrap_or_else(|_| "/opt/tailsift-ci/nisshi-0.7.0/bin/nisshi".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "this test starts its own nisshi: run scripts/test.sh (it sets \
             TAILSIFT_NISSHI) or set TAILSIFT_NISSHI to the nisshi binary; {bin} is missing"
        );
        Self::start_from(
            dir,
            &bin,
            "memory://nisshi/",
            &free_addr().to_string(),
            args,
        )
    }

    /// A broker from the nisshi binary `bin`, on `addr`, with the given storage engine.
    pub fn start_from(
        dir: &std::path::Path,
        bin: &str,
        storage: &str,
        addr: &str,
        args: &[&str],
    ) -> Self {
        let addr = addr.to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nisshi.log"))
            .expect("log");
        let child = Command::new(bin)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://{addr}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{addr}"))
            .args([
                "--storage-engine",
                storage,
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nisshi did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Broker { child, addr }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
