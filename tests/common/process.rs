//! The real `tollgate` binary as a child process, for what only a process shows: signals,
//! crashes (SIGKILL), restarts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running `tollgate serve`.
pub struct Tollgate {
    pub child: Child,
    pub grpc: u16,
    pub http: u16,
}

impl Tollgate {
    /// `tollgate serve` with `args` (and its own free ports), once it answers on both ports.
    pub async fn serve(args: &[&str]) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--log-level", "warn"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Self { child, grpc, http };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let healthy = reqwest::get(format!("http://127.0.0.1:{http}/healthcheck"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return server;
            }
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "tollgate exited at start"
            );
            assert!(Instant::now() < end, "tollgate did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs one descriptor (`entries`) costing `hits` in `domain` to `/json`: the status (200
    /// or 429) and what is left.
    pub async fn call(&self, domain: &str, entries: &[(&str, &str)], hits: u64) -> (u16, u64) {
        let entries: Vec<serde_json::Value> = entries
            .iter()
            .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
            .collect();
        let body = serde_json::json!({
            "domain": domain,
            "descriptors": [{"entries": entries, "hitsAddend": hits}],
        });
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/json", self.http))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status == 200 || status == 429,
            "POST /json answered {status}"
        );
        let answer: serde_json::Value = response.json().await.unwrap();
        let remaining = answer["statuses"][0]["limitRemaining"]
            .as_u64()
            .unwrap_or(0);
        (status, remaining)
    }

    /// POSTs one descriptor (`entries`) in `domain` to `/json`: true when admitted.
    pub async fn admit(&self, domain: &str, entries: &[(&str, &str)]) -> bool {
        self.call(domain, entries, 1).await.0 == 200
    }

    /// What is left on one descriptor, read with a check that takes nothing.
    pub async fn remaining(&self, domain: &str, entries: &[(&str, &str)]) -> u64 {
        self.call(domain, entries, 0).await.1
    }

    /// How many of `calls` requests on one descriptor are admitted.
    pub async fn admitted(&self, domain: &str, entries: &[(&str, &str)], calls: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..calls {
            admitted += usize::from(self.admit(domain, entries).await);
        }
        admitted
    }

    /// SIGKILL: a crash.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "tollgate exited with {status}");
                return;
            }
            assert!(Instant::now() < end, "tollgate did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
