//! The demo's "Settings → API Keys" page (`examples/keys_page.html`) in headless Chromium,
//! driven through chromedriver (WebDriver) as a person would use it: paste a key, list, create
//! (the key shown once), reload, revoke, and read each error in words. Each state is saved as a
//! screenshot under `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them); `CHROMIUM` and `CHROMEDRIVER` name other binaries. So that
//! `cargo test` needs only the Rust toolchain, the tests are `#[ignore]`d, and run with
//! `cargo test -- --ignored browser::` (as `.ci/run` does); without a browser they fail,
//! saying so.
#![cfg(all(feature = "axum", feature = "rate-limit"))]

use crate::common;
use crate::demo::example;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tower_api_key::{ApiKey, KeyManager, MemoryKeyStore};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what a step expects.
const PATIENCE: Duration = Duration::from_secs(20);

/// The demo on 127.0.0.1, in memory, with `per_minute` requests per minute per free-tier key.
struct Demo {
    address: SocketAddr,
    /// The live key the demo prints at start, with full access.
    key: ApiKey,
}

impl Demo {
    async fn start(per_minute: u32) -> Self {
        let limits = example::tier_limits(per_minute);
        let keys = KeyManager::new(MemoryKeyStore::new()).tier_limits(limits.clone());
        let account = common::suite::account();
        let (live, _test) = example::demo_keys(&keys, &account).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = example::app(keys, example::rate_limit(limits));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            address,
            key: live.key,
        }
    }

    fn page(&self) -> String {
        format!("http://{}/settings/api-keys", self.address)
    }

    async fn call(&self, method: Method, path: &str, key: &str) -> common::Answer {
        let headers: &common::Headers<'_> = &[("x-api-key", key.as_bytes())];
        common::http(self.address, method, path, headers, "").await
    }
}

/// chromedriver on a free port of 127.0.0.1, in a process group of its own; dropping it kills
/// the group (chromedriver and the Chromium it started), also when a test fails.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let chromedriver = binary("CHROMEDRIVER", CHROMEDRIVER);
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {chromedriver}: {error}"))
        };
        let driver = Self { child, port };
        let started = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A headless Chromium session.
    async fn session(&self) -> Client {
        let chromium = binary("CHROMIUM", CHROMIUM);
        let capabilities = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|error| panic!("chromedriver cannot start {chromium}: {error}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group: chromedriver's id, given by `process_group(0)`.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary at `default`, or the one `variable` names; a test that cannot find it fails,
/// saying what to install.
fn binary(variable: &str, default: &str) -> String {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    assert!(
        Path::new(&path).is_file(),
        "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver; .ci/run installs them), or {variable} \
         naming the binary; skip them with `cargo test -- --skip browser::`"
    );
    path
}

/// The page in the browser, with the checks and screenshots the tests make.
struct Page {
    client: Client,
    /// Each screenshot's name starts with this.
    test: &'static str,
}

impl Page {
    async fn open(client: Client, url: &str, test: &'static str) -> Self {
        client.goto(url).await.unwrap();
        let page = Self { client, test };
        page.wait_for(
            "the page's script",
            "return document.readyState === 'complete'",
        )
        .await;
        page
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns `true`.
    async fn wait_for(&self, what: &str, script: &str) {
        let started = Instant::now();
        while self.js(script).await != Value::Bool(true) {
            if started.elapsed() > PATIENCE {
                self.screenshot("timeout").await;
                let error = self.text("#error").await;
                panic!("the page never showed {what} (error shown: {error:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no request of the page is under way.
    async fn settled(&self) {
        let script = "return document.querySelector('main').getAttribute('aria-busy') !== 'true'";
        self.wait_for("the end of its requests", script).await;
    }

    async fn text(&self, css: &str) -> String {
        let script = format!("return document.querySelector({css:?}).textContent");
        self.js(&script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        let button = self.client.find(Locator::Css(css)).await.unwrap();
        button.click().await.unwrap();
    }

    /// Pastes `key` and waits for the list of `rows` keys.
    async fn use_key(&self, key: &str, rows: usize) {
        self.fill("#key", key).await;
        self.click("#key-form button[type=submit]").await;
        self.settled().await;
        self.wait_for_rows(rows).await;
    }

    async fn wait_for_rows(&self, rows: usize) {
        let script = format!("return document.querySelectorAll('#rows tr').length === {rows}");
        self.wait_for(&format!("{rows} keys"), &script).await;
    }

    /// The table's rows, each as its cells' text.
    async fn rows(&self) -> Vec<Vec<String>> {
        let script = "return [...document.querySelectorAll('#rows tr')]\
                      .map(row => [...row.cells].map(cell => cell.textContent))";
        serde_json::from_value(self.js(script).await).unwrap()
    }

    /// Saves the page as `target/screenshots/<test>-<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let path = screenshots().join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).unwrap();
    }

    /// Everything the browser holds of the page: its DOM, its URL, its storage and cookies.
    async fn everything(&self) -> String {
        let dom = self.client.source().await.unwrap();
        let url = self.client.current_url().await.unwrap();
        let script = "return JSON.stringify([{...localStorage}, {...sessionStorage}, \
                      document.cookie, document.body.innerText])";
        let rest = self.js(script).await;
        format!("{dom}\n{url}\n{rest}")
    }
}

fn screenshots() -> PathBuf {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run runs it: cargo test -- --ignored browser::"]
async fn person_lists_creates_copies_and_revokes_keys_on_the_page() {
    let demo = Demo::start(60).await;
    let live = demo.key.expose_secret();
    let driver = Driver::start();
    let page = Page::open(driver.session().await, &demo.page(), "flow").await;

    // The page's own style applies under its policy: the digest in the header is right.
    let style = "return getComputedStyle(document.querySelector('button')).backgroundColor";
    assert_eq!(page.js(style).await, "rgb(37, 99, 235)");
    assert_eq!(page.text("#error").await, "");
    page.screenshot("1-start").await;

    // The printed live key: the demo's two keys, and the input no longer holds it.
    page.use_key(live, 2).await;
    let rows = page.rows().await;
    assert_eq!(rows[0][0], "demo");
    assert_eq!(rows[0][2], "live");
    assert_eq!(rows[0][3], "full access");
    assert_eq!(rows[0][7], "active");
    assert_eq!(rows[1][0], "demo (test)");
    assert_eq!(rows[1][3], "iocs:read, keys:read, keys:write");
    assert_eq!(
        page.js("return document.getElementById('key').value").await,
        ""
    );
    assert!(!page.everything().await.contains(live));
    page.screenshot("2-listed").await;

    // A new key, shown once in its box, with the warning; the list has it.
    page.fill("#name", "browser-ci").await;
    page.click("#create-form button[type=submit]").await;
    page.settled().await;
    page.wait_for_rows(3).await;
    let new_key = page.text("#new-key").await;
    assert!(new_key.starts_with("sk_live_"), "{new_key:?}");
    assert!(page
        .text("#created")
        .await
        .contains("will not be shown again"));
    assert_eq!(
        page.js("return document.getElementById('created').hidden")
            .await,
        false
    );
    assert_eq!(page.rows().await[2][0], "browser-ci");
    page.click("#copy").await;
    page.wait_for(
        "that the key was copied or selected",
        "return document.getElementById('copy-status').textContent !== ''",
    )
    .await;
    page.screenshot("3-created").await;

    // A fourth active key is over the free tier's quota: its message, in words.
    page.fill("#name", "one too many").await;
    page.click("#create-form button[type=submit]").await;
    page.settled().await;
    let error = page.text("#error").await;
    assert!(error.contains("key_limit_reached"), "{error:?}");
    assert_eq!(
        page.js("return document.getElementById('error').getAttribute('role')")
            .await,
        "alert"
    );
    page.screenshot("4-quota").await;

    // Reloaded, the page has forgotten both keys; pasted again, it shows the new key's hint only.
    page.client.refresh().await.unwrap();
    page.wait_for(
        "the page again",
        "return document.readyState === 'complete'",
    )
    .await;
    assert_eq!(
        page.js("return document.getElementById('keys').hidden")
            .await,
        true
    );
    page.use_key(live, 3).await;
    let listed = demo.call(Method::GET, "/api/v1/keys", live).await.json();
    let created = &listed["data"][2];
    let hint = created["hint"].as_str().unwrap();
    assert_eq!(page.rows().await[2][1], hint);
    let everything = page.everything().await;
    assert!(
        !everything.contains(&new_key),
        "the new key is still in the page"
    );
    assert!(!everything.contains(live), "the pasted key is in the page");
    page.screenshot("5-reloaded").await;

    // The new key works over HTTP.
    let iocs = demo.call(Method::GET, "/api/v1/iocs", &new_key).await;
    assert_eq!(iocs.status, StatusCode::OK);

    // Revoked on the page, after the confirmation naming it: the list shows it revoked, and
    // the key is refused.
    page.click("button[aria-label='Revoke key browser-ci']")
        .await;
    let question = page.client.get_alert_text().await.unwrap();
    assert!(
        question.contains("browser-ci") && question.contains(hint),
        "{question:?}"
    );
    page.client.accept_alert().await.unwrap();
    page.settled().await;
    page.wait_for(
        "the key revoked",
        "return document.querySelectorAll('#rows tr')[2].cells[7].textContent.startsWith('revoked')",
    )
    .await;
    assert_eq!(page.text("#error").await, "");
    let refused = demo.call(Method::GET, "/api/v1/iocs", &new_key).await;
    common::assert_envelope(&refused, StatusCode::UNAUTHORIZED, "expired_api_key");
    let revoked_id = created["id"].as_str().unwrap();
    let revoked = demo
        .call(Method::GET, &format!("/api/v1/keys/{revoked_id}"), live)
        .await;
    assert!(revoked.json()["revoked_at"].is_string());
    page.screenshot("6-revoked").await;

    // A dismissed confirmation revokes nothing.
    page.click("button[aria-label='Revoke key demo (test)']")
        .await;
    page.client.dismiss_alert().await.unwrap();
    page.settled().await;
    assert_eq!(page.rows().await[1][7], "active");

    // Disabled through the API, the key is listed as disabled once the page reads the list.
    let test_key_id = listed["data"][1]["id"].as_str().unwrap();
    let disable = format!("/api/v1/keys/{test_key_id}/disable");
    let disabled = demo.call(Method::POST, &disable, live).await;
    assert_eq!(disabled.status, StatusCode::OK);
    page.use_key(live, 3).await;
    assert!(
        page.rows().await[1][7].starts_with("disabled"),
        "{:?}",
        page.rows().await[1]
    );

    // The revoked key, pasted: the 401's message, and no list.
    page.use_key(&new_key, 0).await;
    let error = page.text("#error").await;
    assert!(error.contains("expired_api_key"), "{error:?}");
    assert_eq!(
        page.js("return document.getElementById('keys').hidden")
            .await,
        true
    );
    page.screenshot("7-unauthorized").await;

    page.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run runs it: cargo test -- --ignored browser::"]
async fn page_shows_the_rate_limit_in_words() {
    let demo = Demo::start(5).await;
    let driver = Driver::start();
    let page = Page::open(driver.session().await, &demo.page(), "limit").await;
    page.use_key(demo.key.expose_secret(), 2).await;
    // 5 requests a minute: the paste was the first, so the fifth refresh is over the limit.
    for _ in 0..4 {
        page.click("#refresh").await;
        page.settled().await;
        assert_eq!(page.text("#error").await, "");
    }
    page.click("#refresh").await;
    page.settled().await;
    let error = page.text("#error").await;
    assert!(error.contains("rate_limited"), "{error:?}");
    assert!(error.contains("Retry in"), "{error:?}");
    // The list from before stays.
    page.wait_for_rows(2).await;
    page.screenshot("1-rate-limited").await;
    page.client.close().await.unwrap();
}
