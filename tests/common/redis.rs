//! Real `redis-server` processes for the Redis store's tests: a single node on a free port
//! (killed and restarted at will, on the same port, plain or TLS only), a three-master Redis
//! Cluster and a Sentinel (plain or TLS only).
//!
//! Servers run in the foreground as children of the test (never daemonized), without
//! persistence, in their own temporary directory, and are killed when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::pki::Pki;

/// How long a server may take to answer PING after it is started.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// One `redis-server` on a loopback port.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
    /// `redis-cli`'s TLS arguments for a TLS-only server (`port` is then its TLS port); empty
    /// for a plain one.
    cli_tls: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with `extra` arguments on a free port and waits until it answers.
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::start_configured(&extra, &[])
    }

    /// Starts a server that serves only TLS, on a free port, with `certificates`, and requires
    /// clients to present a certificate signed by their CA. [`RedisServer::cli`] and the
    /// readiness check then go over TLS with the client certificate.
    pub fn start_tls_only(certificates: &Certificates) -> Self {
        Self::start_configured(&tls_server_args(certificates), &tls_cli_args(certificates))
    }

    /// Starts a server with `extra` arguments (TLS only if `cli_tls` is not empty) on a free
    /// port and waits until it answers.
    fn start_configured(extra: &[String], cli_tls: &[String]) -> Self {
        // A free port can be taken by someone else before redis binds it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                child: None,
                extra: extra.to_vec(),
                cli_tls: cli_tls.to_vec(),
                dir: tempfile::tempdir().unwrap(),
            };
            if server.spawn_and_wait() {
                return server;
            }
            last_log = server.log();
        }
        panic!("redis-server did not start; last log:\n{last_log}");
    }

    /// Starts a server on `port` with `extra` arguments (for cluster nodes, whose ports are
    /// chosen together). Panics if it does not answer.
    pub fn start_on(port: u16, extra: &[String]) -> Self {
        let mut server = Self {
            port,
            child: None,
            extra: extra.to_vec(),
            cli_tls: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        assert!(
            server.spawn_and_wait(),
            "redis-server on port {port} did not start:\n{}",
            server.log()
        );
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Kills the server (SIGKILL) and waits for it to exit: its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses the server (SIGSTOP): connections stay open, nothing is answered, nothing lost.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("a running server");
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Starts the server again on the same port (empty: there is no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait(),
            "redis-server did not restart on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Runs `redis-cli -p PORT args...`, expecting success; returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Starts `redis-cli -p PORT args...` in the background (for commands that block).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Every bucket key matching `pattern` (`redis-cli --scan`), sorted: the set of live
    /// replicas (`{prefix}{replicas}:live`) is left out.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|line| !line.is_empty() && !line.contains("{replicas}"))
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// A key's remaining time to live in milliseconds (`PTTL`: -1 none, -2 no such key).
    pub fn pttl(&self, key: &str) -> i64 {
        self.cli(&["PTTL", key]).parse().unwrap()
    }

    /// Whether the server answers PING now.
    pub fn answers(&self) -> bool {
        if self.cli_tls.is_empty() {
            ping(self.port)
        } else {
            tls_ping(self.port, &self.cli_tls)
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns the process and waits until it answers; false if it exits or never answers.
    fn spawn_and_wait(&mut self) -> bool {
        let port = self.port.to_string();
        let ports: &[&str] = if self.cli_tls.is_empty() {
            &["--port", &port]
        } else {
            &["--port", "0", "--tls-port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let end = Instant::now() + READY_DEADLINE;
        while Instant::now() < end {
            if !self.is_running() {
                self.child = None;
                return false;
            }
            if self.answers() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, all signed by
/// that CA, made by `openssl` in a temporary directory ([`Pki`]): `ca.crt`, `server.crt`,
/// `server.key`, `client.crt`, `client.key` (PEM).
pub struct Certificates {
    pki: Pki,
}

impl Certificates {
    pub fn generate() -> Self {
        let pki = Pki::new();
        pki.issue("server", "ca", "serverAuth", &["IP:127.0.0.1"]);
        pki.issue("client", "ca", "clientAuth", &[]);
        Self { pki }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.pki.path(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl RedisServer {
    /// Starts a server that also serves TLS on a second free port, with `certificates`, and
    /// requires clients to present a certificate signed by their CA. The plain port stays for
    /// the tests' own inspection. Returns the server and its TLS port.
    pub fn start_tls(certificates: &Certificates) -> (Self, u16) {
        let tls_port = free_port().to_string();
        let mut extra = vec!["--tls-port".to_owned(), tls_port.clone()];
        extra.extend(tls_server_args(certificates));
        let server = Self::start_configured(&extra, &[]);
        (server, tls_port.parse().unwrap())
    }
}

/// `redis-server` arguments to serve TLS with `certificates`' server certificate and to
/// require a client certificate signed by their CA.
fn tls_server_args(certificates: &Certificates) -> Vec<String> {
    let path = |name: &str| certificates.path(name).display().to_string();
    [
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `redis-cli` arguments to connect over TLS, trusting `certificates`' CA and presenting their
/// client certificate.
fn tls_cli_args(certificates: &Certificates) -> Vec<String> {
    let path = |name: &str| certificates.path(name).display().to_string();
    vec![
        "--tls".to_owned(),
        "--cacert".to_owned(),
        path("ca.crt"),
        "--cert".to_owned(),
        path("client.crt"),
        "--key".to_owned(),
        path("client.key"),
    ]
}

/// PING with `redis-cli` and `cli_tls`: true if `PONG` comes back within 1 s (the client is
/// killed after that).
fn tls_ping(port: u16, cli_tls: &[String]) -> bool {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(cli_tls)
        .arg("PING")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(1);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut reply = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut reply);
    // A server that wants a password answers too.
    reply.trim() == "PONG" || reply.contains("NOAUTH")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PING over a raw connection: true if `+PONG` comes back within 500 ms.
fn ping(port: u16) -> bool {
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) =
        TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), timeout)
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // A server that wants a password answers too.
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}

/// A Redis Cluster of three masters (no replicas) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create` and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|n| {
                // The cluster bus gets its own free port (the default, port + 10000, may not
                // exist or be free).
                let (port, bus) = (free_port(), free_port());
                RedisServer::start_on(port, &cluster_args(dir.path(), n, bus))
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes, _dir: dir };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let states: Vec<bool> = cluster
                .nodes
                .iter()
                .map(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                .collect();
            if states.iter().all(|ok| *ok) {
                break;
            }
            assert!(
                Instant::now() < end,
                "the cluster never reached cluster_state:ok on every node: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The nodes' URLs (cluster seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap()
    }

    /// The index of the node serving `slot`: the one whose own line in `CLUSTER NODES` lists
    /// a slot range containing it.
    pub fn node_of_slot(&self, slot: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| {
                node.cli(&["CLUSTER", "NODES"])
                    .lines()
                    .filter(|line| line.contains("myself"))
                    .any(|line| {
                        line.split_whitespace()
                            .skip(8)
                            .any(|range| in_range(range, slot))
                    })
            })
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }
}

fn in_range(range: &str, slot: u16) -> bool {
    match range.split_once('-') {
        Some((start, end)) => match (start.parse::<u16>(), end.parse::<u16>()) {
            (Ok(start), Ok(end)) => (start..=end).contains(&slot),
            _ => false,
        },
        None => range.parse::<u16>() == Ok(slot),
    }
}

fn cluster_args(dir: &Path, n: usize, bus: u16) -> Vec<String> {
    vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        dir.join(format!("nodes-{n}.conf")).display().to_string(),
        "--cluster-port".into(),
        bus.to_string(),
        "--cluster-node-timeout".into(),
        "5000".into(),
    ]
}

/// A Redis Sentinel (`redis-server --sentinel`) on a free port, watching one master.
pub struct RedisSentinel {
    pub port: u16,
    child: Child,
    /// `redis-cli`'s TLS arguments for a TLS-only Sentinel; empty for a plain one.
    cli_tls: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts a Sentinel that watches the master on `master_port` as `name` (quorum 1, the
    /// master down after 500 ms without answers) and waits until it answers.
    pub fn start(name: &str, master_port: u16) -> Self {
        Self::start_with(name, master_port, "")
    }

    /// [`RedisSentinel::start`] with `extra` lines of configuration.
    pub fn start_with(name: &str, master_port: u16, extra: &str) -> Self {
        let port = free_port();
        Self::start_configured(
            name,
            master_port,
            port,
            &format!("port {port}\n{extra}"),
            &[],
        )
    }

    /// A Sentinel that serves only TLS, with `certificates`' server certificate, requiring
    /// clients to present a certificate signed by their CA, and that watches a TLS-only master
    /// on `master_port` ([`RedisServer::start_tls_only`]), presenting their client certificate
    /// to it. [`RedisSentinel::url`] is then `rediss://`, and [`RedisSentinel::cli`] and the
    /// readiness check go over TLS.
    pub fn start_tls(name: &str, master_port: u16, certificates: &Certificates) -> Self {
        let port = free_port();
        let path = |name: &str| certificates.path(name).display().to_string();
        let config = format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients yes\ntls-replication yes\n\
             tls-client-cert-file {}\ntls-client-key-file {}\n",
            path("server.crt"),
            path("server.key"),
            path("ca.crt"),
            path("client.crt"),
            path("client.key"),
        );
        Self::start_configured(
            name,
            master_port,
            port,
            &config,
            &tls_cli_args(certificates),
        )
    }

    /// Starts a Sentinel watching `name` with `lines` of configuration (which make it listen
    /// on `port`), and waits until it answers PING (over TLS with `cli_tls` if not empty).
    fn start_configured(
        name: &str,
        master_port: u16,
        port: u16,
        lines: &str,
        cli_tls: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 500\n\
                 sentinel failover-timeout {name} 2000\n{lines}",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sentinel = Self {
            port,
            child,
            cli_tls: cli_tls.to_vec(),
            dir,
        };
        let end = Instant::now() + READY_DEADLINE;
        while !sentinel.answers() {
            assert!(
                Instant::now() < end,
                "redis sentinel did not start:\n{}",
                sentinel.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sentinel
    }

    /// Whether the Sentinel answers PING now.
    fn answers(&self) -> bool {
        if self.cli_tls.is_empty() {
            ping(self.port)
        } else {
            tls_ping(self.port, &self.cli_tls)
        }
    }

    /// `redis://127.0.0.1:PORT`, `rediss://` for a TLS-only Sentinel.
    pub fn url(&self) -> String {
        let scheme = if self.cli_tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p PORT args...` against the Sentinel; returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The Sentinel's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
