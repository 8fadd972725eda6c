//! Test fixtures: a sandbox of temporary directories, the real server binary
//! started in it on port 0, and a TLS client that trusts the sandbox's dev CA.
//! Everything started here is killed when its handle is dropped. Server logs go
//! to a file in the sandbox, and also to the terminal when `TEST_LOG` is set.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use handover_shared::api::{LoginResponse, NetworkFile};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The HS256 key the test servers sign with, so that tests can forge tokens.
pub const JWT_SECRET: &str = "e2e-test-signing-key-0123456789abcdef";
pub const ISSUER: &str = "handover";
pub const AUDIENCE: &str = "handover-api";
pub const DEMO_PASSWORD: &str = "handover-demo";

/// A binary of the workspace, built by `cargo test --workspace` next to this
/// test executable (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// The variable that runs the suite on PostgreSQL: `HANDOVER_E2E_STORE=postgres`,
/// with `HANDOVER_TEST_POSTGRES` naming the server. Unset: sled.
pub const STORE_VARIABLE: &str = "HANDOVER_E2E_STORE";

/// Whether this run's servers keep their data in PostgreSQL.
pub fn on_postgres() -> bool {
    match std::env::var(STORE_VARIABLE).as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{STORE_VARIABLE}={other}: expected sled or postgres"),
    }
}

/// Temporary data and certs directories that outlive server restarts, and on
/// PostgreSQL a database of the sandbox's own, dropped with it.
pub struct Sandbox {
    database: Option<handover_server::store::postgres::ScratchDatabase>,
    root: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let database = on_postgres().then(|| {
            handover_server::store::postgres::ScratchDatabase::from_env().unwrap_or_else(|| {
                panic!("{STORE_VARIABLE}=postgres needs {}", handover_server::store::postgres::TEST_SERVER_VARIABLE)
            })
        });
        Self { database, root: tempfile::tempdir().expect("a temporary directory") }
    }

    /// A sandbox whose servers keep their data in `database`, whatever
    /// backend the run is on.
    pub fn on_database(database: handover_server::store::postgres::ScratchDatabase) -> Self {
        Self { database: Some(database), root: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn database(&self) -> Option<&handover_server::store::postgres::ScratchDatabase> {
        self.database.as_ref()
    }

    /// The settings that point a server at this sandbox's store.
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        match &self.database {
            Some(database) => vec![
                ("HANDOVER__STORE__BACKEND", "postgres".to_owned()),
                ("HANDOVER__STORE__POSTGRES_URL", database.url().to_owned()),
            ],
            None => Vec::new(),
        }
    }

    /// The store of `other` copied into this sandbox, as `other`'s stopped
    /// server left it: its data dir, and on PostgreSQL its database.
    pub fn copy_store_from(&mut self, other: &Sandbox) {
        if other.data_dir().exists() {
            copy_dir(&other.data_dir(), &self.data_dir());
        }
        if let Some(database) = &other.database {
            self.database = Some(database.copy().expect("a copy of the sandbox's database"));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.root.path().join("certs")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Runs `handover-server ARGS --data-dir DATA` to completion.
    pub fn server_command(&self, args: &[&str]) -> Output {
        Command::new(binary("handover-server"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("HANDOVER__AUTH__JWT_SECRET", JWT_SECRET)
            .envs(self.store_env())
            .output()
            .expect("handover-server runs")
    }

    /// Writes a network file into the sandbox and returns its path.
    pub fn write_network(&self, name: &str, file: &Value) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, serde_json::to_vec_pretty(file).expect("json")).expect("write");
        path
    }

    /// Starts `handover-server serve` with the demo network.
    pub fn start_demo(&self) -> TestServer {
        self.start(&["--demo"])
    }

    /// Starts `handover-server serve EXTRA` on 127.0.0.1:0 in this sandbox and
    /// waits for its `listening on` line.
    pub fn start(&self, extra: &[&str]) -> TestServer {
        self.start_with_env(extra, &[])
    }

    /// Starts the server, or says why it would not start (its log included).
    pub fn try_start(&self, extra: &[&str]) -> Result<TestServer, String> {
        TestServer::start(self, extra, &[]).map_err(|err| format!("{err:#}"))
    }

    /// Starts the server with extra `HANDOVER__...` settings in its environment.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::start(self, extra, env).expect("the server starts")
    }
}

/// A running `handover-server serve`.
pub struct TestServer {
    child: Child,
    pub url: String,
    pub client: reqwest::Client,
    log: PathBuf,
}

impl TestServer {
    fn start(sandbox: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = sandbox.path(&format!("server-{}.log", uuid_like()));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary("handover-server"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(sandbox.data_dir())
            .arg("--certs-dir")
            .arg(sandbox.certs_dir())
            // Port 0 unless the test names an address (to come back on the same one).
            .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(extra)
            .env("HANDOVER__AUTH__JWT_SECRET", JWT_SECRET)
            .envs(sandbox.store_env())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(Stdio::from(log_file));
        }
        let mut child = command.spawn().context("spawning handover-server")?;
        let Some(url) = announced_url(&mut child, "listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not print `listening on`; log:\n{}", std::fs::read_to_string(&log)?);
        };
        let client = if url.starts_with("https://") {
            tls_client(&sandbox.certs_dir().join("ca.pem"))?
        } else {
            reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_idle_timeout(IDLE_CONNECTIONS).build()?
        };
        Ok(Self { child, url, client, log })
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits: the graceful shutdown path.
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("the server exits")
    }

    /// How many confirmation batches the server has answered (it logs each).
    pub fn answered_batches(&self) -> u64 {
        self.log().matches("confirmations pushed").count() as u64
    }

    /// Waits until the server has answered `batches` batches in all, or the
    /// agent has ended, then `jitter_ms` more: a moment in the middle of a
    /// sync, wherever the machine's speed puts it.
    pub fn wait_for_batches(&self, batches: u64, agent: &mut Child, jitter_ms: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline && agent.try_wait().ok().flatten().is_none() {
            if self.answered_batches() >= batches {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(jitter_ms));
    }

    /// The exit status, if the server has ended on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `127.0.0.1:PORT` of the server.
    pub fn addr(&self) -> std::net::SocketAddr {
        let authority = self.url.split("://").nth(1).expect("a URL with a scheme");
        authority.parse().expect("an IP address and a port")
    }

    /// SIGKILL: a crash, with no chance to flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("the server answers")).await
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(format!("{}{path}", self.url)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("the server answers")).await
    }

    /// Posts raw bytes with a content type, for malformed input.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request =
            self.client.post(format!("{}{path}", self.url)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("the server answers")).await
    }

    /// Logs in and returns the token pair, failing the test if login fails.
    pub async fn login(&self, username: &str, password: &str, device_id: Option<&str>) -> LoginResponse {
        let mut body = json!({"username": username, "password": password});
        if let Some(device_id) = device_id {
            body["device_id"] = json!(device_id);
        }
        let (status, body) = self.post("/api/v1/auth/login", &body, None).await;
        assert_eq!(status, StatusCode::OK, "login of {username}: {body}");
        serde_json::from_value(body).expect("a login response")
    }

    /// Places an order and confirms it as `token`'s account; returns the receipt id.
    pub async fn confirm_order(&self, token: &str, customer: &str, item: &str, quantity: u32) -> String {
        let body = json!({"customer_id": customer, "item_id": item, "quantity": quantity});
        let (status, draft) = self.post("/api/v1/orders", &body, Some(token)).await;
        assert_eq!(status, StatusCode::CREATED, "order of {quantity} {item} for {customer}: {draft}");
        let order_id = draft["order_id"].as_str().expect("a draft has an order id");
        let (status, receipt) = self.post(&format!("/api/v1/orders/{order_id}/confirm"), &json!({}), Some(token)).await;
        assert_eq!(status, StatusCode::CREATED, "confirm of {order_id}: {receipt}");
        receipt["receipt_id"].as_str().expect("a receipt has an id").to_owned()
    }

    /// A receipt as `token`'s account reads it; anything but 200 fails the test.
    pub async fn receipt(&self, token: &str, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/receipts/{id}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "receipt {id}: {body}");
        body
    }

    /// A delivery as `token`'s account reads it; anything but 200 fails the test.
    pub async fn delivery(&self, token: &str, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/deliveries/{id}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "delivery {id}: {body}");
        body
    }

    /// Runs planning as the dispatcher `token`: a barrier after which every
    /// confirmed receipt is planned or backordered. Returns the run's answer.
    pub async fn plan(&self, token: &str) -> Value {
        let (status, body) = self.post("/api/v1/shipments/run", &json!({}), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "planning run: {body}");
        body
    }

    /// Logs in with the demo password and returns the access token.
    pub async fn token(&self, username: &str) -> String {
        self.login(username, DEMO_PASSWORD, None).await.access_token
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a child prints on a line starting with `prefix` (its stdout is
/// drained on a thread from then on), or `None` if it prints none within a minute.
fn announced_url(child: &mut Child, prefix: &'static str) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (lines, first_url) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix(prefix) {
                let _ = lines.send(url.to_owned());
            }
        }
    });
    first_url.recv_timeout(Duration::from_secs(60)).ok()
}

/// A running `handover-agent daemon`; killed (SIGKILL) when dropped, which it
/// survives by design: every save is durable before the page says so.
pub struct AgentDaemon {
    child: Child,
    /// `http://127.0.0.1:PORT` of its handheld page.
    pub url: String,
}

impl Drop for AgentDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first form field `name` in a page (`name="..." value="..."`).
pub fn field_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no field {name} in:\n{html}")) + marker.len();
    html[start..].split('"').next().unwrap_or_default().to_owned()
}

/// Test clients drop idle connections before the server's keep-alive (5 s)
/// closes them, so that a request after a long pause never lands on a
/// connection the server is closing.
const IDLE_CONNECTIONS: Duration = Duration::from_secs(2);

/// A client that trusts only the given CA.
pub fn tls_client(ca: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(IDLE_CONNECTIONS)
        .build()?)
}

impl TestServer {
    /// A client for the pages: keeps cookies, does not follow redirects.
    pub fn page_client(&self, sandbox: &Sandbox) -> reqwest::Client {
        self.client_from(sandbox, None, true)
    }

    /// A client whose connections leave from `local` (any of 127.0.0.0/8 on
    /// Linux), to be told apart from others by the server; with `pages`, it
    /// keeps cookies and does not follow redirects.
    pub fn client_from(&self, sandbox: &Sandbox, local: Option<std::net::IpAddr>, pages: bool) -> reqwest::Client {
        let pem = std::fs::read(sandbox.certs_dir().join("ca.pem")).expect("the dev CA");
        let builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
            .local_address(local)
            .timeout(Duration::from_secs(30));
        let builder = if pages {
            builder.cookie_store(true).redirect(reqwest::redirect::Policy::none())
        } else {
            builder.pool_idle_timeout(IDLE_CONNECTIONS)
        };
        builder.build().expect("a client")
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
    };
    (status, body)
}

/// The SPEC's error body, for comparing whole.
pub fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A small valid network: the SPEC's example plus an admin, with stock at B1.
pub fn base_network() -> Value {
    json!({
        "nodes": [
            {"id": "MFR", "kind": "manufacturer", "name": "Plant"},
            {"id": "MW", "kind": "master_warehouse", "name": "Central"},
            {"id": "B1", "kind": "branch_warehouse", "name": "North"},
            {"id": "B2", "kind": "branch_warehouse", "name": "South"},
            {"id": "S1", "kind": "seller", "name": "Rep Ada"}
        ],
        "items": [{"id": "TC-100", "name": "Toner 100", "collectable": true, "max_per_order": 20, "discontinued": false}],
        "stock": [{"node_id": "B1", "item_id": "TC-100", "quantity": 5}],
        "customers": [{"id": "C1", "name": "Office A", "branch_1": "B1", "branch_2": "B2", "seller_id": "S1"}],
        "accounts": [
            {"username": "admin", "password": "admin-password", "role": "admin"},
            {"username": "disp", "password": "disp-password", "role": "dispatcher"},
            {"username": "exp1", "password": "exp1-password", "role": "expediter", "node_id": "B1"},
            {"username": "svc1", "password": "svc1-password", "role": "serviceman", "node_id": "S1"},
            {"username": "rep1", "password": "rep1-password", "role": "seller", "node_id": "S1"},
            {"username": "cust1", "password": "cust1-password", "role": "customer", "customer_id": "C1"}
        ]
    })
}

/// Checks that a JSON value is a network file, so fixtures stay honest.
pub fn assert_network_shape(value: &Value) {
    let _: NetworkFile = serde_json::from_value(value.clone()).expect("a network file");
}

impl Sandbox {
    /// `handover-agent ARGS --data-dir SANDBOX/agent-NAME`, not started yet.
    pub fn agent_command(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(binary("handover-agent"));
        command.args(args).arg("--data-dir").arg(self.path(&format!("agent-{name}")));
        command
    }

    /// Starts `handover-agent daemon --port 0 ARGS` for the agent `name`.
    pub fn agent_daemon(&self, name: &str, args: &[&str]) -> AgentDaemon {
        let log = std::fs::File::create(self.path(&format!("daemon-{name}-{}.log", uuid_like()))).expect("a log file");
        let mut child = self
            .agent_command(name, &[&["daemon", "--port", "0"], args].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("handover-agent daemon runs");
        let url = announced_url(&mut child, "handheld page on ");
        let daemon = AgentDaemon { child, url: url.unwrap_or_default() };
        assert!(!daemon.url.is_empty(), "the daemon did not print `handheld page on`");
        daemon
    }

    /// Runs the agent `name` and insists that it succeeds; returns its standard output.
    pub fn agent_ok(&self, name: &str, args: &[&str]) -> String {
        let output = self.agent(name, args, None);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "handover-agent {args:?} failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// `handover-agent login` for the agent `name` as `username` against
    /// `server_url`, trusting the sandbox's CA, the password on stdin.
    pub fn agent_login(
        &self,
        name: &str,
        server_url: &str,
        username: &str,
        password: &str,
        device: Option<&str>,
    ) -> Output {
        let ca = self.certs_dir().join("ca.pem");
        let ca = ca.to_str().expect("a UTF-8 path");
        let mut args = vec!["login", "--server", server_url, "--ca", ca, "--username", username, "--password-stdin"];
        if let Some(device) = device {
            args.extend(["--device-id", device]);
        }
        // With the newline `echo` or a person would add: the agent trims it.
        self.agent(name, &args, Some(&format!("{password}\n")))
    }

    /// Runs `handover-agent ARGS --data-dir SANDBOX/agent-NAME`, with `stdin` fed.
    pub fn agent(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut child = self
            .agent_command(name, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("handover-agent runs");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("stdin written");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("handover-agent ends")
    }
}

/// Copies a directory tree (a stopped server's data dir, an agent's).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a directory to copy") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a copy");
        }
    }
}
