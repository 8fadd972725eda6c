//! The customer's ordering screen in a real browser: headless Chromium driven
//! through chromedriver (WebDriver) with fantoccini, against the real server
//! over its development TLS.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Where they are missing the
//! test prints a notice and passes, so that a developer without Chromium can still
//! run `cargo test --workspace`; in CI (`CI` set) it fails instead.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use fantoccini::{elements::Element, wd::Capabilities, Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{Sandbox, DEMO_PASSWORD};

/// How long a page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(15);
/// Readiness poll of a fresh chromedriver: at most this many tries, this far apart.
const READY_TRIES: u32 = 100;
const READY_PERIOD: Duration = Duration::from_millis(100);
/// How long Chromium gets to quit after its session is closed, before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// A headless Chromium session behind its own chromedriver. Dropping it (also
/// while a failing test unwinds) closes the session, kills chromedriver and
/// whatever browser process is left.
pub struct Browser {
    pub client: Client,
    session_id: String,
    driver: Driver,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("session_id", &self.session_id).field("driver", &self.driver).finish()
    }
}

impl Browser {
    /// Starts chromedriver and opens a Chromium session, or returns `None` (after a
    /// notice on standard error) where Chromium is not installed and `CI` is unset.
    pub async fn start() -> Option<Self> {
        let (Some(chromedriver), Some(chromium)) = (find_program("chromedriver"), find_program("chromium")) else {
            let missing = ["chromium", "chromedriver"].into_iter().filter(|name| find_program(name).is_none());
            let missing = missing.collect::<Vec<_>>().join(" and ");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install chromium and chromium-driver (Debian packages): no {missing} in /usr/bin or on the PATH"
            );
            eprintln!(
                "NOTICE: browser test skipped: no {missing} in /usr/bin or on the PATH \
                 (apt-get install chromium chromium-driver to run it; CI must)"
            );
            return None;
        };
        let driver = Driver::start(&chromedriver).await.expect("chromedriver starts");
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(&chromium, driver.dir.path()))
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| panic!("chromedriver opens a Chromium session: {e}\n{}", driver.log()));
        let session_id = client.session_creation_response().expect("a session was opened").session_id().to_owned();
        Some(Self { client, session_id, driver })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("the browser opens {url}: {e}"));
    }

    /// The current address: its path, and its query decoded (`/login?next=/order`
    /// whether the server wrote `next=/order` or `next=%2Forder`).
    pub async fn location(&self) -> String {
        let url = self.client.current_url().await.expect("the browser tells its address");
        let query: Vec<String> = url.query_pairs().map(|(name, value)| format!("{name}={value}")).collect();
        if query.is_empty() {
            url.path().to_owned()
        } else {
            format!("{}?{}", url.path(), query.join("&"))
        }
    }

    /// The path of the current address, without its query.
    pub async fn path(&self) -> String {
        self.client.current_url().await.expect("the browser tells its address").path().to_owned()
    }

    /// Waits until the page has an element matching `css`; on a timeout the
    /// failure shows the address and the text of the page instead.
    pub async fn find(&self, css: &str) -> Element {
        match self.client.wait().at_most(PAGE_WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no `{css}` on the page ({e}); {}", self.describe_page().await),
        }
    }

    /// Whether the page has an element matching `css` right now (no waiting).
    pub async fn has(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.expect("the browser searches the page").is_empty()
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_else(|e| panic!("the text of `{css}`: {e}"))
    }

    /// The current value of a form field (what a person sees in it).
    pub async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .unwrap_or_else(|e| panic!("the value of `{css}`: {e}"))
            .unwrap_or_default()
    }

    /// Empties a text field and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap_or_else(|e| panic!("clearing `{css}`: {e}"));
        field.send_keys(text).await.unwrap_or_else(|e| panic!("typing {text:?} into `{css}`: {e}"));
    }

    /// Picks the option with `value` in the select matching `css`.
    pub async fn choose(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("choosing {value:?} in `{css}`: {e}"));
    }

    /// Clicks the element matching `css` and waits until the browser shows the
    /// next document. The current document is marked first, so that a page that
    /// comes back with the same ids (a form shown again with its errors) is never
    /// mistaken for the one the click left.
    pub async fn click_and_load(&self, css: &str) {
        let button = self.find(css).await;
        self.client
            .execute("document.documentElement.setAttribute('data-e2e-left', '')", vec![])
            .await
            .expect("the browser marks the current document");
        button.click().await.unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
        self.find("html:not([data-e2e-left])").await;
    }

    /// With `E2E_SCREENSHOTS=DIR` set, saves what the browser shows as `DIR/NAME.png`,
    /// for a person to look at; otherwise does nothing.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("E2E_SCREENSHOTS") else { return };
        let png = self.client.screenshot().await.expect("the browser takes a screenshot");
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).expect("the screenshot is written");
    }

    /// The address and visible text of the page, for failure messages.
    async fn describe_page(&self) -> String {
        let location = self.client.current_url().await.map(|url| url.to_string()).unwrap_or_default();
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        format!("the browser is at {location} showing:\n{text}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session is what makes chromedriver quit Chromium (which
        // otherwise outlives chromedriver). fantoccini would only do it on a task
        // of the runtime, which may be gone by now, so ask chromedriver directly.
        match http(self.driver.port, "DELETE", &format!("/session/{}", self.session_id)) {
            Ok((200, _)) => self.driver.browser_quitting = true,
            Ok((status, body)) => eprintln!("closing the browser session: {status} {body}; killing it instead"),
            Err(e) => eprintln!("closing the browser session failed ({e}); killing it instead"),
        }
        // `driver` is dropped next: it kills chromedriver and sweeps up the rest.
    }
}

/// The `goog:chromeOptions` this test runs Chromium with.
fn capabilities(chromium: &Path, dir: &Path) -> Capabilities {
    let args = [
        "--headless",
        // Running as root in a container, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=412,915",
        // The server's certificate comes from a development CA made afresh in each
        // sandbox. Chromium trusts only its NSS store, and importing the CA there
        // needs certutil and an NSS database per profile; what this test checks is
        // the pages. That TLS verifies against the dev CA is checked by every API
        // test (reqwest trusts that CA alone). The exception lives and dies with
        // this throwaway profile and only loopback addresses are visited.
        "--ignore-certificate-errors",
    ]
    .map(String::from);
    let profile = dir.join("profile");
    let mut args = args.to_vec();
    args.push(format!("--user-data-dir={}", profile.display()));
    let options = json!({
        "browserName": "chrome",
        // A phone's screen: --window-size alone leaves headless Chromium 500 px wide.
        "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
            "mobileEmulation": {"deviceMetrics": {"width": 412, "height": 915, "pixelRatio": 2.0}},
        },
        "timeouts": {"pageLoad": 30_000, "script": 30_000, "implicit": 0},
    });
    match options {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}

/// `/usr/bin/NAME`, where Debian's packages put it, else NAME on the `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
}

/// A running chromedriver and the temporary directory that holds its log, the
/// browser profile and the home directory Chromium sees.
#[derive(Debug)]
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// Set once Chromium was asked to quit: it then gets [`QUIT_GRACE`] to do so.
    browser_quitting: bool,
}

impl Driver {
    /// Spawns chromedriver on a free port and waits until it says it is ready.
    /// The port is picked by binding port 0 and letting it go, so another process
    /// may take it in between: then chromedriver exits, and it is tried again.
    async fn start(program: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("chromedriver.log");
        // Chromium writes crash reports and caches under the home directory
        // whatever `--user-data-dir` says: keep them in the temporary directory.
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            let mut child = Command::new(program)
                .arg(format!("--port={port}"))
                // With TEST_LOG, the log (shown at the end) has every WebDriver command.
                .args(std::env::var_os("TEST_LOG").map(|_| "--log-level=INFO"))
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join(".config"))
                .env("XDG_CACHE_HOME", home.join(".cache"))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file.try_clone()?))
                .stderr(Stdio::from(log_file))
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?;
            match wait_until_ready(&mut child, port).await {
                Ok(()) => return Ok(Self { child, port, log, dir, browser_quitting: false }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("port {port}: {e:#}"));
                }
            }
        }
        bail!("chromedriver did not start: {}\n{}", failures.join("; "), std::fs::read_to_string(&log)?)
    }

    /// The chromedriver log, for failure messages.
    fn log(&self) -> String {
        format!("chromedriver log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium and its crash handlers are not chromedriver's to take along when
        // it is killed; every one of them names this directory on its command line.
        end_processes_naming(self.dir.path(), if self.browser_quitting { QUIT_GRACE } else { Duration::ZERO });
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{}", self.log());
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Polls chromedriver's `/status` a bounded number of times.
async fn wait_until_ready(child: &mut Child, port: u16) -> anyhow::Result<()> {
    for _ in 0..READY_TRIES {
        if let Some(status) = child.try_wait()? {
            bail!("chromedriver exited ({status})");
        }
        if let Ok((200, body)) = http(port, "GET", "/status") {
            let status: Value = serde_json::from_str(&body).unwrap_or_default();
            if status["value"]["ready"] == json!(true) {
                return Ok(());
            }
        }
        tokio::time::sleep(READY_PERIOD).await;
    }
    bail!("no ready answer on /status after {READY_TRIES} tries")
}

/// One plain HTTP/1.1 exchange with chromedriver on 127.0.0.1, blocking and with
/// short timeouts, so that `Drop` can use it with or without a runtime. Returns
/// the status code and the body.
///
/// The request goes out in one write: chromedriver answers a request that arrives
/// in pieces but then ignores its `Connection: close`, so the answer is read up
/// to its `Content-Length` rather than to the end of the connection.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let malformed =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chromedriver's answer: {what}"));
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(malformed("closed before its end"));
        }
        received.extend_from_slice(&chunk[..read]);
        let Some(head_end) = received.windows(4).position(|window| window == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| malformed(&head))?;
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok()).flatten()
            })
            .ok_or_else(|| malformed("no Content-Length"))?;
        let body = &received[head_end + 4..];
        if body.len() >= length {
            return Ok((status, String::from_utf8_lossy(&body[..length]).into_owned()));
        }
    }
}

/// Gives the processes whose command line names `dir` up to `grace` to exit, then
/// kills, by process id, those still running. Linux only (it reads `/proc`).
fn end_processes_naming(dir: &Path, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !processes_naming(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_naming(dir);
    if left.is_empty() {
        return;
    }
    eprintln!("killing browser processes still running after {grace:?}: {left:?}");
    for pid in &left {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let deadline = Instant::now() + QUIT_GRACE;
    while !processes_naming(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live processes whose command line contains `dir` (a zombie's is empty).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(&needle))
        })
        .collect()
}

/// The words of a text, keeping ids such as `TC-100` whole.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-')).filter(|word| !word.is_empty()).collect()
}

#[tokio::test]
async fn a_customer_orders_in_the_browser_sees_errors_cancels_and_confirms() {
    let Some(browser) = Browser::start().await else { return };
    let sandbox = Sandbox::new();
    let server = sandbox.start_demo();

    // Not logged in: the ordering screen sends the customer to the login form.
    browser.goto(&format!("{}/order", server.url)).await;
    browser.find("form#login-form").await;
    assert_eq!(browser.location().await, "/login?next=/order");
    browser.fill("input#username", "cust1").await;
    browser.fill("input#password", DEMO_PASSWORD).await;
    browser.click_and_load("button#login-submit").await;
    browser.find("form#order-form").await;
    assert_eq!(browser.path().await, "/order", "after the login the customer lands on the ordering screen");

    // Quantities the server refuses come back next to the field, the entry kept.
    browser.choose("select#item_id", "TC-100").await;
    browser.fill("input#quantity", "0").await;
    browser.click_and_load("button#order-submit").await;
    let error = browser.text("p#quantity-error").await;
    assert!(error.contains("too small"), "the error for 0: {error:?}");
    assert_eq!(browser.value("input#quantity").await, "0", "the entered quantity is kept");
    assert_eq!(browser.value("select#item_id").await, "TC-100", "the chosen item is kept");
    assert!(!browser.has("p#item_id-error").await, "the item was fine");
    browser.screenshot("order-error").await;

    browser.fill("input#quantity", "25").await;
    browser.click_and_load("button#order-submit").await;
    let error = browser.text("p#quantity-error").await;
    assert!(error.contains("at most 20"), "the error for 25: {error:?}");
    assert_eq!(browser.value("input#quantity").await, "25");

    // A valid order shows its summary; cancelling it gives an empty form back.
    browser.fill("input#quantity", "2").await;
    browser.click_and_load("button#order-submit").await;
    let summary = browser.text("section#summary").await;
    let cancelled_order = browser.path().await;
    let cancelled_order =
        cancelled_order.strip_prefix("/order/").expect("the summary is at /order/{order_id}").to_owned();
    assert!(words(&summary).contains(&"TC-100") && words(&summary).contains(&"2"), "the summary: {summary:?}");
    browser.find("button#confirm").await;
    browser.click_and_load("button#cancel").await;
    let notice = browser.text("p#notice").await;
    assert!(notice.contains("The draft was discarded."), "the notice: {notice:?}");
    assert_eq!(browser.path().await, "/order");
    browser.find("form#order-form").await;
    assert_eq!(browser.value("input#quantity").await, "", "the form is empty again");
    assert!(!browser.has("p#quantity-error").await, "no error on a fresh form");

    // Ordered again and confirmed: the receipt.
    browser.choose("select#item_id", "TC-100").await;
    browser.fill("input#quantity", "3").await;
    browser.click_and_load("button#order-submit").await;
    let summary = browser.text("section#summary").await;
    assert!(words(&summary).contains(&"TC-100") && words(&summary).contains(&"3"), "the summary: {summary:?}");
    browser.screenshot("confirmation").await;
    browser.click_and_load("button#confirm").await;
    assert_eq!(browser.text("span#receipt-id").await, "R-000001");
    assert_eq!(browser.path().await, "/receipts/R-000001");
    browser.screenshot("receipt").await;

    // What the browser did is what the server stored: one receipt, nothing open.
    let dispatcher = server.token("disp").await;
    let (status, receipt) = server.get("/api/v1/receipts/R-000001", Some(&dispatcher)).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(
        (&receipt["customer_id"], &receipt["item_id"], &receipt["quantity"]),
        (&json!("C1"), &json!("TC-100"), &json!(3))
    );
    let (_, receipts) = server.get("/api/v1/receipts", Some(&dispatcher)).await;
    assert_eq!(receipts["receipts"].as_array().map(Vec::len), Some(1), "{receipts}");
    let (_, open) = server.get("/api/v1/orders", Some(&dispatcher)).await;
    assert_eq!(open, json!({"orders": []}), "the refused entries left no draft");
    let (_, cancelled) = server.get(&format!("/api/v1/orders/{cancelled_order}"), Some(&dispatcher)).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}
