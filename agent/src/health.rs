//! Health checks of service tasks: HTTP (reqwest, an expected status), a
//! TCP connect, or a command in the sandbox. A monitor runs the check every
//! `interval` with a `timeout`; `healthy_after` passes in a row make the
//! task `healthy`, `unhealthy_after` failures in a row make it `unhealthy`.
//! It starts `starting`.

use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// What to check, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The probe.
    pub probe: Probe,
    /// Between checks.
    pub interval: Duration,
    /// One check's limit.
    pub timeout: Duration,
    /// Passes in a row to become healthy.
    pub healthy_after: u32,
    /// Failures in a row to become unhealthy.
    pub unhealthy_after: u32,
}

/// One probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// `GET http://127.0.0.1:PORT/PATH` answers `status`.
    Http {
        /// Port.
        port: u16,
        /// Path.
        path: String,
        /// Expected status.
        status: u16,
    },
    /// `127.0.0.1:PORT` accepts a connection.
    Tcp {
        /// Port.
        port: u16,
    },
    /// The command exits 0.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// A running health monitor.
pub struct Monitor {
    state: watch::Receiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Starts checking; `dir` is where a command probe runs.
    pub fn start(check: Check, dir: PathBuf) -> Monitor {
        let (tx, rx) = watch::channel("starting");
        let task = tokio::spawn(async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .timeout(check.timeout)
                .no_proxy()
                .build()
                .ok();
            let (mut pass, mut fail) = (0u32, 0u32);
            loop {
                tokio::time::sleep(check.interval).await;
                let ok =
                    tokio::time::timeout(check.timeout, probe(&check.probe, client.as_ref(), &dir))
                        .await
                        .unwrap_or(false);
                if ok {
                    pass += 1;
                    fail = 0;
                } else {
                    fail += 1;
                    pass = 0;
                }
                let cur = *tx.borrow();
                let next = if pass >= check.healthy_after.max(1) {
                    "healthy"
                } else if fail >= check.unhealthy_after.max(1) {
                    "unhealthy"
                } else {
                    cur
                };
                if next != cur && tx.send(next).is_err() {
                    return;
                }
            }
        });
        Monitor { state: rx, task }
    }

    /// The state now.
    pub fn state(&self) -> &'static str {
        *self.state.borrow()
    }

    /// Waits for the next change and returns the new state.
    pub async fn changed(&mut self) -> &'static str {
        if self.state.changed().await.is_err() {
            return std::future::pending().await;
        }
        *self.state.borrow()
    }

    /// Stops checking.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn probe(p: &Probe, client: Option<&reqwest::Client>, dir: &PathBuf) -> bool {
    match p {
        Probe::Http { port, path, status } => {
            let Some(c) = client else { return false };
            let url = format!("http://127.0.0.1:{port}{path}");
            c.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == *status)
        }
        Probe::Tcp { port } => tokio::net::TcpStream::connect(("127.0.0.1", *port))
            .await
            .is_ok(),
        Probe::Command { argv } => {
            let Some((prog, args)) = argv.split_first() else {
                return false;
            };
            tokio::process::Command::new(prog)
                .args(args)
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success())
        }
    }
}
