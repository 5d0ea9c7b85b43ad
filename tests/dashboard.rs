//! The dashboard in a real browser: headless Chromium (Debian package
//! `chromium`, installed by .ci/run) opens `/` on `charter dev`, logs in with
//! the dev token, finds the node, a granted lease, a cron job and a
//! deployment in the DOM, then sees a new lease appear without a reload.
//! It is driven over the DevTools protocol (a WebSocket on loopback) and
//! leaves a screenshot in the test's output directory.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// `GET path` of Chromium's DevTools HTTP endpoint, which keeps the
/// connection open: read by its content length.
fn devtools_json(port: &str, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Headless Chromium and one page of it, spoken to over DevTools.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian package chromium; .ci/run installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address");
        let port = url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let page = wait_for("a page target", Duration::from_secs(10), || {
            let list = devtools_json(&port, "/json/list")?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
        });
        let (ws, _) = tungstenite::connect(page.as_str()).unwrap();
        Browser {
            child,
            ws,
            next: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page, or what it threw.
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Waits until `expr` is true in the page.
    fn until(&mut self, what: &str, expr: &str, within: Duration) {
        let end = Instant::now() + within;
        loop {
            // While a navigation (the login's) replaces the document, the
            // page may not have the elements yet: not yet, not an error.
            if self.try_eval(expr) == Ok(json!(true)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the page never showed {what}; its text:\n{}",
                self.try_eval("document.body.innerText").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `charter dev` in a home of its own, stopped on drop.
struct Dev {
    child: Child,
    home: tempfile::TempDir,
    grpc: String,
    http: String,
}

impl Dev {
    fn start() -> Dev {
        let home = tempfile::tempdir().unwrap();
        let ports = free_ports(2);
        let (grpc, http) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
        );
        let child = Command::new(BIN)
            .args(["dev", "--listen", &grpc, "--http", &http])
            .env("CHARTER_HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dev = Dev {
            child,
            home,
            grpc,
            http,
        };
        wait_for("dev to lead", Duration::from_secs(30), || {
            let out = dev.cli(&["cluster", "status", "--json"]);
            (out.status.success() && json_ok(&out)["role"] == "leader").then_some(())
        });
        dev
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["--server", &self.grpc])
            .args(args)
            .env("CHARTER_HOME", self.home.path())
            .env_remove("CHARTER_TOKEN")
            .output()
            .unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.home.path().join("dev-token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Dev {
    /// Stops `charter dev` as a person does (SIGTERM): its agent then ends
    /// its leases' processes (the deployed app's server among them), which
    /// a `kill -9` would leave running, as an agent's crash does.
    fn drop(&mut self) {
        let _ = charter::harness::stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// An app whose build copies a shell script that serves HTTP with Python.
fn app(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("site");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("serve.sh"),
        "#!/bin/sh\nexec python3 -m http.server \"$PORT\"\n",
    )
    .unwrap();
    let git = |args: &[&str]| charter::harness::git(&repo, args).unwrap();
    git(&["init", "--quiet", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "v1"]);
    let f = dir.join("app.toml");
    std::fs::write(
        &f,
        format!(
            "kind = \"app\"\nname = \"site\"\nrepo = \"{}\"\nbranch = \"main\"\nservers = 1\nprogress_deadline = \"60s\"\nsecret = \"s3cret\"\n\n[build]\ncommand = [\"sh\", \"-c\", \"mkdir -p out && cp serve.sh out/serve && chmod +x out/serve\"]\nartifact = \"out/serve\"\ncpu = 0.1\nmem = \"256MiB\"\ntimeout = \"1m\"\n\n[run]\ncommand = [\"./serve\"]\nports = [\"http\"]\n\n[health]\nhttp = \"/\"\ninterval = \"200ms\"\nmin_healthy = \"1s\"\n\n[requirements]\ncpu = 0.1\nmem = \"64MiB\"\n",
            repo.display()
        ),
    )
    .unwrap();
    f
}

#[test]
fn the_dashboard_logs_in_shows_the_cluster_and_updates_from_events_without_a_reload() {
    let dev = Dev::start();
    let work = tempfile::tempdir().unwrap();
    open_like_tmp(work.path());
    let crontab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/crontab.toml");
    json_ok(&dev.cli(&["cron", "apply", crontab, "--json"]));
    json_ok(&dev.cli(&[
        "deploy",
        "apply",
        app(work.path()).to_str().unwrap(),
        "--json",
    ]));
    let d = json_ok(&dev.cli(&["deploy", "trigger", "site", "--json"]));
    let deployment = d["deployment"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{d}"));
    let first = json_ok(&dev.cli(&["lease", "request", "--cpu", "0.1", "--for", "10m", "--json"]));
    let first = first["id"].as_u64().unwrap();
    let node = node_names(&json_ok(&dev.cli(&["node", "list", "--json"])))[0].clone();

    let mut b = Browser::start();
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": false }),
    );
    b.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/", dev.http) }),
    );
    b.until(
        "the login form",
        "!!document.querySelector('#login-box') && !document.querySelector('#login-box').hidden",
        Duration::from_secs(20),
    );
    // A wrong token is refused and says so.
    b.eval("document.querySelector('#login input').value = 'not-a-token'; document.querySelector('#login').submit(); true");
    b.until(
        "the refusal",
        "document.querySelector('#login-error') && document.querySelector('#login-error').textContent.includes('refused')",
        Duration::from_secs(20),
    );
    let login = format!(
        "document.querySelector('#login input').value = {}; document.querySelector('#login').submit(); true",
        json!(dev.token())
    );
    b.eval(&login);
    b.until(
        "the dashboard",
        "!document.querySelector('#app').hidden",
        Duration::from_secs(20),
    );
    b.until(
        "the node",
        &format!(
            "!!document.querySelector('#nodes [data-node={}]')",
            json!(node)
        ),
        Duration::from_secs(10),
    );
    b.until(
        "the first lease",
        &format!("!!document.querySelector('#leases [data-lease-id=\"{first}\"]')"),
        Duration::from_secs(10),
    );
    b.until(
        "a cron job of the example crontab",
        "!!document.querySelector('#cron [data-job=\"ingest\"]')",
        Duration::from_secs(10),
    );
    b.until(
        "the deployment",
        &format!("!!document.querySelector('#apps [data-deployment-id=\"{deployment}\"]')"),
        Duration::from_secs(10),
    );
    b.until(
        "the live event feed",
        "document.querySelectorAll('#events li').length > 0",
        Duration::from_secs(10),
    );

    // A lease granted now appears on the same page, which is not reloaded.
    b.eval("window.charterMarker = 42; true");
    let second = json_ok(&dev.cli(&[
        "lease",
        "request",
        "--cpu",
        "0.1",
        "--for",
        "10m",
        "--reason",
        "seen live",
        "--json",
    ]));
    let second = second["id"].as_u64().unwrap();
    b.until(
        "the new lease without a reload",
        &format!(
            "window.charterMarker === 42 && !!document.querySelector('#leases [data-lease-id=\"{second}\"]')"
        ),
        Duration::from_secs(5),
    );
    b.until(
        "the new lease's grant in the event feed",
        &format!("[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('lease.granted {second}'))"),
        Duration::from_secs(5),
    );

    // The deployment's promotion reaches the page too.
    b.until(
        "the deployment promoted",
        &format!("[...document.querySelectorAll('#apps [data-deployment-id=\"{deployment}\"] .ok')].some(e => e.textContent === 'active')"),
        Duration::from_secs(60),
    );

    // A server's live log: its health checks' requests, as they come.
    b.eval("[...document.querySelectorAll('#tasks tr[data-task-id]')].find(r => r.textContent.includes('#1')).click(); true");
    b.until(
        "the server's live log",
        "!document.querySelector('#log').hidden && document.querySelector('#log pre').textContent.includes('GET / HTTP')",
        Duration::from_secs(20),
    );

    // The page as a person sees it.
    let shot = b.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {} ({} bytes)", path.display(), png.len());

    // On a phone's width nothing runs off the side: the page scrolls down,
    // a wide table scrolls inside its own box.
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    );
    b.until(
        "a page as wide as the phone",
        "document.documentElement.scrollWidth <= 391",
        Duration::from_secs(5),
    );
}
