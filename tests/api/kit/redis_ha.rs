//! Replicated Redis for the failover drills: a master and a replica on free
//! ports, Sentinels, and TCP proxies that play the network.
//!
//! - [`Proxy`] forwards a port to a target and can **pause** (bytes stop
//!   flowing both ways, connections stay open: a partition, or a lagging
//!   replication link), **move** to another target (a virtual IP or DNS
//!   name repointed by an operator), and **cut** every open connection.
//! - [`ReplicatedRedis`] starts a master and a replica whose replication
//!   runs through a [`Proxy`] (`link`), so a test can make the replica fall
//!   behind deterministically, then kill the master and promote the
//!   replica (by hand, or by [`Sentinels`]).
//!
//! Every process is killed on drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::process::free_port;

/// A TCP forwarder on `127.0.0.1:port`.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    target: Arc<Mutex<SocketAddr>>,
    flowing: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    listener: JoinHandle<()>,
}

/// Copies `from` to `to` while the proxy is flowing; waits while paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A pause that began while reading holds these bytes back too.
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// A proxy to `127.0.0.1:target_port`, flowing.
    pub async fn to(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(SocketAddr::from(([127, 0, 0, 1], target_port))));
        let (flowing, _) = watch::channel(true);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let target = target.clone();
            let flowing = flowing.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let addr = *target.lock().unwrap();
                    let rx = flowing.subscribe();
                    let conn = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(addr).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::select! {
                            () = pump(cr, sw, rx.clone()) => {}
                            () = pump(sr, cw, rx) => {}
                        }
                    });
                    let mut all = connections.lock().unwrap();
                    all.retain(|c| !c.is_finished());
                    all.push(conn);
                }
            })
        };
        Self {
            port,
            target,
            flowing,
            connections,
            listener: accept,
        }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops every byte, both ways, on every connection (open ones stay
    /// open; new ones are accepted and held).
    pub fn pause(&self) {
        self.flowing.send_replace(false);
    }

    /// Lets bytes flow again.
    pub fn resume(&self) {
        self.flowing.send_replace(true);
    }

    /// Closes every open connection (new ones are accepted as before).
    pub fn cut(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Sends new connections to `127.0.0.1:port` and cuts the open ones.
    pub fn move_to(&self, port: u16) {
        *self.target.lock().unwrap() = SocketAddr::from(([127, 0, 0, 1], port));
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    // A paused link must not end replication while a drill runs.
    let mut args = vec!["--repl-timeout", "120"];
    args.extend_from_slice(extra);
    Child(super::backends::spawn_redis(port, dir, &args))
}

/// A connection to `127.0.0.1:port`, retried until the server answers.
pub async fn connect(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis on {port} does not answer");
}

/// One field of `INFO replication` on `127.0.0.1:port`.
pub async fn replication_field(port: u16, field: &str) -> Option<String> {
    let mut c = connect(port).await;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// A master and one replica that replicates through [`Proxy`] `link`.
pub struct ReplicatedRedis {
    /// The master's port.
    pub master: u16,
    /// The replica's port.
    pub replica: u16,
    /// The replication link (replica → master).
    pub link: Proxy,
    master_process: Option<Child>,
    _replica_process: Child,
    _dirs: Vec<tempfile::TempDir>,
}

impl ReplicatedRedis {
    /// Starts both servers and waits until the replica is in sync.
    pub async fn start() -> Self {
        let (master, replica) = (free_port(), free_port());
        let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let master_process = spawn_server(master, dirs[0].path(), &[]);
        connect(master).await;
        let link = Proxy::to(master).await;
        // The replica announces its own port to the master (and so to the
        // Sentinels), not the proxy's.
        let replica_process = spawn_server(
            replica,
            dirs[1].path(),
            &["--replicaof", "127.0.0.1", &link.port.to_string()],
        );
        let redis = Self {
            master,
            replica,
            link,
            master_process: Some(master_process),
            _replica_process: replica_process,
            _dirs: dirs,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while replication_field(replica, "master_link_status")
            .await
            .as_deref()
            != Some("up")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica never synced"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis
    }

    /// Waits until the replica acknowledged everything the master wrote
    /// (`WAIT 1`).
    pub async fn wait_caught_up(&self) {
        let mut c = connect(self.master).await;
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(acked, 1, "the replica did not catch up");
    }

    /// The master's replication offset minus the replica's: bytes of
    /// history the replica lacks.
    pub async fn lag_bytes(&self) -> i64 {
        let m: i64 = replication_field(self.master, "master_repl_offset")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let r: i64 = replication_field(self.replica, "slave_repl_offset")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        m - r
    }

    /// Kills the master (`kill -9`).
    pub fn kill_master(&mut self) {
        self.master_process = None;
    }

    /// Promotes the replica by hand (`REPLICAOF NO ONE`), as an operator
    /// or a failover script would.
    pub async fn promote_replica(&self) {
        let mut c = connect(self.replica).await;
        let _: String = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// Three Sentinels (quorum 2) watching a [`ReplicatedRedis`] as `fsm`,
/// quick to fail over: down after 1 s.
pub struct Sentinels {
    /// Their ports.
    pub ports: Vec<u16>,
    _processes: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// The master name the Sentinels use.
pub const MASTER_NAME: &str = "fsm";

impl Sentinels {
    /// Starts them and waits until each knows the master and the replica.
    pub async fn watch(redis: &ReplicatedRedis) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        let mut processes = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.path().display(),
                    master = redis.master,
                ),
            )
            .unwrap();
            let child = std::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting redis-server --sentinel");
            processes.push(Child(child));
            ports.push(port);
        }
        let sentinels = Self {
            ports,
            _processes: processes,
            _dir: dir,
        };
        // Sentinels find the replica from the master's INFO every 10 s and
        // each other by hello messages every 2 s; on a loaded machine that
        // took over 30 s once (a CI run on 2026-12-03).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for &port in &sentinels.ports {
            loop {
                let mut c = connect(port).await;
                let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("SENTINELS")
                    .arg(MASTER_NAME)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !replicas.is_empty() && peers.len() == 2 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "sentinel {port} never saw the replica and its peers"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        sentinels
    }

    /// `redis://` URLs of the Sentinels.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The port the Sentinels name as master.
    pub async fn master_port(&self) -> Option<u16> {
        let mut c = connect(self.ports[0]).await;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query_async(&mut c)
            .await
            .ok()?;
        addr.and_then(|(_, port)| port.parse().ok())
    }
}
