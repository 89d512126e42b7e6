//! The live cluster page at `/` in a real browser: headless Chromium driven through
//! chromedriver (the W3C WebDriver protocol, spoken directly over HTTP) against a real
//! five-node ring of `concordant node` processes.
//!
//! The page is loaded from n1, first without a token and with a wrong one (it shows only the
//! token form), then with `#token=`; the test reads the `data-node`, `data-link`,
//! `data-state`, `data-healed` and `data-plot` attributes the page keeps up to date:
//! - within 10 s every node and every ring link is up;
//! - n3 is SIGKILLed: within 3 s the page shows it down, its two links down and the healing
//!   link n2-n4 up;
//! - a burst of 300 writes through n1: within 5 s the writes/s plot moves (`data-max` > 0).
//!
//! A screenshot of the last picture goes to `CARGO_TARGET_TMPDIR/cluster-page.png`, and with
//! `CONCORDANT_SCREENSHOT=1` to `docs/cluster-page.png` as well (docs/operating.md shows it).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; the test fails without them
//! (`.ci/run` installs them).

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::procs::ProcCluster;
use concordant::client::{url_of, Client};
use hyper::Method;
use serde_json::{json, Value};

/// Where Debian's packages put the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Poll period of the waits on the page.
const TICK: Duration = Duration::from_millis(100);
/// Bound on chromedriver answering and on one WebDriver command.
const DRIVER_WAIT: Duration = Duration::from_secs(30);
/// The ring's links, as the page names them.
const RING_LINKS: [&str; 5] = ["n1-n2", "n2-n3", "n3-n4", "n4-n5", "n1-n5"];

/// `default` if it exists, else `name` found on `PATH`.
fn program(default: &str, name: &str) -> Option<PathBuf> {
    if Path::new(default).is_file() {
        return Some(PathBuf::from(default));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The browser and its driver; fails (never skips) when either is missing.
fn browser_programs() -> (PathBuf, PathBuf) {
    let chromium = program(CHROMIUM, "chromium");
    let driver = program(CHROMEDRIVER, "chromedriver");
    match (chromium, driver) {
        (Some(c), Some(d)) => (c, d),
        (c, d) => panic!(
            "this test drives a real headless Chromium and needs the Debian packages \
             `chromium` and `chromium-driver` (missing: {}{}); install them with \
             `apt-get install -y chromium chromium-driver` (.ci/run does)",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver" } else { "" },
        ),
    }
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// chromedriver (in its own process group, with the browser it starts) and one session.
/// Dropped: the session is deleted (the browser quits), then the whole group is killed.
struct Browser {
    driver: Option<Child>,
    port: u16,
    client: Client,
    session: Option<String>,
    log: PathBuf,
    /// The browser's profile and chromedriver's log; removed when dropped.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session of 1400x1000.
    async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        use std::os::unix::process::CommandExt as _;
        let port = free_port();
        let dir = tempfile::tempdir().expect("browser dir");
        let log = dir.path().join("chromedriver.log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let mut browser = Browser {
            driver: Some(child),
            port,
            client: Client::new(&format!("http://127.0.0.1:{port}"), None)
                .expect("driver client")
                .with_timeout(DRIVER_WAIT),
            session: None,
            log,
            dir,
        };
        // Ready?
        let start = Instant::now();
        loop {
            if let Some(status) = browser
                .driver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("chromedriver exited with {status}:\n{}", browser.log_tail());
            }
            if let Ok(answer) = browser.client.request(Method::GET, "/status", None).await {
                let ready = answer.json().is_some_and(|v| v["value"]["ready"] == true);
                if ready {
                    break;
                }
            }
            assert!(
                start.elapsed() < DRIVER_WAIT,
                "chromedriver not ready within {DRIVER_WAIT:?}:\n{}",
                browser.log_tail()
            );
            tokio::time::sleep(TICK).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", browser.dir.path().join("profile").display()),
                ],
            },
        }}});
        let value = browser
            .call(Method::POST, "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("new browser session: {e}\n{}", browser.log_tail()));
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {value}"))
            .to_string();
        eprintln!(
            "browser: {} {}",
            value["capabilities"]["browserName"].as_str().unwrap_or("?"),
            value["capabilities"]["browserVersion"]
                .as_str()
                .unwrap_or("?")
        );
        browser.session = Some(id);
        browser.viewport(1400, 1000).await;
        browser
    }

    /// Sizes the window so that the page gets `width` x `height` (the window of the new
    /// headless mode is larger than its viewport).
    async fn viewport(&self, width: i64, height: i64) {
        let sizes = "return [innerWidth, innerHeight, outerWidth, outerHeight];";
        let s = self.script(sizes).await;
        let n = |i: usize| s[i].as_i64().unwrap_or(0);
        let rect = json!({"width": width + n(2) - n(0), "height": height + n(3) - n(1)});
        self.session_call(Method::POST, "/window/rect", Some(rect))
            .await;
        let s = self.script(sizes).await;
        eprintln!("viewport: {}x{}", s[0], s[1]);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = self
            .client
            .request(method, path, body)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let json = answer.json().ok_or_else(|| {
            format!(
                "{path}: answered {} without JSON: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        })?;
        if (200..300).contains(&answer.status) {
            Ok(json["value"].clone())
        } else {
            Err(format!(
                "{path}: answered {}: {} {}",
                answer.status, json["value"]["error"], json["value"]["message"]
            ))
        }
    }

    /// A command of the session.
    async fn session_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().expect("session");
        self.call(method, &format!("/session/{session}{path}"), body)
            .await
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    async fn open(&self, url: &str) {
        self.session_call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    async fn script(&self, script: &str) -> Value {
        self.session_call(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The page as a PNG.
    async fn screenshot(&self) -> Vec<u8> {
        let value = self.session_call(Method::GET, "/screenshot", None).await;
        let text = value.as_str().expect("screenshot is a string");
        let png = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "screenshot is a PNG");
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first (the browser quits), bounded; then SIGKILL the whole group.
        if let Some(session) = self.session.take() {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let request = format!(
                    "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                if s.write_all(request.as_bytes()).is_ok() {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            }
        }
        if let Some(mut child) = self.driver.take() {
            // The group chromedriver leads (the browser's processes stay in it).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the page shows, read from its `data-*` attributes.
const READ_PAGE: &str = r#"
const all = (s) => Array.from(document.querySelectorAll(s));
const plots = {};
for (const e of all('svg[data-plot]')) {
  plots[e.getAttribute('data-plot')] = {
    max: Number(e.getAttribute('data-max')),
    points: Number(e.getAttribute('data-points')),
  };
}
const error = document.getElementById('error');
return {
  nodes: Object.fromEntries(all('[data-node]').map((e) =>
    [e.getAttribute('data-node'), e.getAttribute('data-state')])),
  links: Object.fromEntries(all('[data-link]').map((e) =>
    [e.getAttribute('data-link'),
     {state: e.getAttribute('data-state'), healed: e.getAttribute('data-healed')}])),
  plots: plots,
  events: all('#events [data-event]').length,
  error: error && !error.classList.contains('hidden') ? error.textContent : null,
  token_form: !!document.getElementById('login') &&
    !document.getElementById('login').classList.contains('hidden'),
  token_refused: !!document.querySelector('#login .refused'),
};
"#;

fn node_is(page: &Value, id: &str, state: &str) -> bool {
    page["nodes"][id] == state
}

fn link_is(page: &Value, id: &str, state: &str, healed: bool) -> bool {
    let link = &page["links"][id];
    link["state"] == state && link["healed"] == if healed { "true" } else { "false" }
}

fn plot_max(page: &Value, plot: &str) -> f64 {
    page["plots"][plot]["max"].as_f64().unwrap_or(0.0)
}

/// The page and the node it came from (whose `/v1/cluster` the waits' failure reports show).
struct Scene<'a> {
    browser: &'a Browser,
    /// n1's API with the token.
    api: Client,
}

impl Scene<'_> {
    async fn read(&self) -> Value {
        self.browser.script(READ_PAGE).await
    }

    /// Polls the page every [`TICK`] until `ok` holds, at most `timeout` from `since`;
    /// the page then. Fails with the page, n1's `/v1/cluster` and every node's peers.
    async fn wait_for(
        &self,
        cluster: &ProcCluster,
        what: &str,
        since: Instant,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        loop {
            let page = self.read().await;
            if ok(&page) {
                eprintln!("page shows {what} after {:?}", since.elapsed());
                return page;
            }
            if since.elapsed() > timeout {
                let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-page-failed.png");
                let _ = std::fs::write(&shot, self.browser.screenshot().await);
                let answer = match self.api.json(Method::GET, "/v1/cluster", None).await {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => format!("GET /v1/cluster failed: {e}"),
                };
                panic!(
                    "the page does not show {what} within {timeout:?}\npage: {page:#}\n\
                     screenshot: {}\nn1's /v1/cluster: {answer}\npeers:\n{}",
                    shot.display(),
                    cluster.report().await
                );
            }
            tokio::time::sleep(TICK).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_ring_its_healing_and_a_write_burst_in_a_real_browser() {
    let (chromium, chromedriver) = browser_programs();
    let mut cluster = ProcCluster::start(5, "ring").await;
    let token = cluster
        .config
        .api_token
        .clone()
        .expect("init writes an API token");
    let n1 = cluster.config.node("n1").expect("n1").api;
    let base = url_of(n1);
    let api = Client::new(&base, Some(token.clone()))
        .expect("client")
        .with_timeout(Duration::from_secs(10));

    let browser = Browser::start(&chromium, &chromedriver).await;
    let scene = Scene {
        browser: &browser,
        api: api.clone(),
    };

    // Without the token the page asks for it and shows nothing of the cluster.
    browser.open(&format!("{base}/")).await;
    let page = scene
        .wait_for(
            &cluster,
            "the token form",
            Instant::now(),
            Duration::from_secs(5),
            |p| p["token_form"] == true,
        )
        .await;
    assert!(
        page["nodes"].as_object().is_some_and(|n| n.is_empty()),
        "no node is shown without the token: {page}"
    );
    // A wrong token is refused (401): the form again, saying so.
    browser.open(&format!("{base}/#token=wrong")).await;
    let page = scene
        .wait_for(
            &cluster,
            "the token form after a refused token",
            Instant::now(),
            Duration::from_secs(5),
            |p| p["token_form"] == true && p["token_refused"] == true,
        )
        .await;
    assert!(
        page["nodes"].as_object().is_some_and(|n| n.is_empty()),
        "no node is shown with a wrong token: {page}"
    );

    // With it: five nodes and the ring's links up.
    let opened = Instant::now();
    browser.open(&format!("{base}/#token={token}")).await;
    let page = scene
        .wait_for(
            &cluster,
            "five nodes and the five ring links up",
            opened,
            Duration::from_secs(10),
            |p| {
                p["nodes"].as_object().is_some_and(|n| n.len() == 5)
                    && cluster.ids().iter().all(|id| node_is(p, id, "up"))
                    && RING_LINKS.iter().all(|l| link_is(p, l, "up", false))
            },
        )
        .await;
    eprintln!("links: {}", page["links"]);

    // n3 SIGKILLed: down, its links down, n2 linked to n4 around it.
    let killed = Instant::now();
    cluster.kill(2).await;
    let page = scene
        .wait_for(
            &cluster,
            "n3 down and the healing link n2-n4 up",
            killed,
            Duration::from_secs(3),
            |p| {
                node_is(p, "n3", "down")
                    && link_is(p, "n2-n4", "up", true)
                    && ["n1", "n2", "n4", "n5"]
                        .iter()
                        .all(|id| node_is(p, id, "up"))
            },
        )
        .await;
    eprintln!("links: {}", page["links"]);
    scene
        .wait_for(
            &cluster,
            "n3's links down",
            killed,
            Duration::from_secs(3),
            |p| link_is(p, "n2-n3", "down", false) && link_is(p, "n3-n4", "down", false),
        )
        .await;

    // A write burst through n1: the writes/s plot moves.
    let before = scene.read().await;
    eprintln!(
        "writes plot before the burst: max {} over {} samples",
        plot_max(&before, "writes"),
        before["plots"]["writes"]["points"]
    );
    let burst = Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let access = cluster.access(0);
            tokio::spawn(async move {
                for i in 0..100 {
                    // Every write its own value: a real change each (setting a key to the
                    // value it has changes nothing), no two alike.
                    let n = w * 100 + i;
                    let request = json!({"ops": [{"op": "set", "path": ["k"], "value": n}]});
                    let doc = format!("burst{w}");
                    if let Err(e) = access.op(&doc, &request).await {
                        return Err(format!("write {i} of writer {w}: {e}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        if let Err(e) = writer.await.expect("writer") {
            let log = cluster.child(0).log_text();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "{e}\nn1's log tail:\n{}\npeers:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n"),
                cluster.report().await
            );
        }
    }
    eprintln!("300 writes through n1 took {:?}", burst.elapsed());
    let page = scene
        .wait_for(
            &cluster,
            "the write burst in the writes/s plot",
            burst,
            Duration::from_secs(5),
            |p| plot_max(p, "writes") > 0.0,
        )
        .await;
    eprintln!(
        "writes plot: max {} over {} samples; lag plot: max {}",
        plot_max(&page, "writes"),
        page["plots"]["writes"]["points"],
        plot_max(&page, "lag")
    );

    // The picture for docs/operating.md: a little after the burst, n3 still down and healed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    scene
        .wait_for(
            &cluster,
            "the final picture",
            Instant::now(),
            Duration::from_secs(5),
            |p| {
                p["error"].is_null()
                    && node_is(p, "n3", "down")
                    && link_is(p, "n2-n4", "up", true)
                    && plot_max(p, "writes") > 0.0
            },
        )
        .await;
    let png = browser.screenshot().await;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-page.png");
    std::fs::write(&tmp, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", tmp.display(), png.len());
    if std::env::var("CONCORDANT_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("docs dir");
        let path = docs.join("cluster-page.png");
        std::fs::write(&path, &png).expect("write docs/cluster-page.png");
        eprintln!("screenshot: {}", path.display());
    }
    drop(scene);
    drop(browser);
    drop(cluster);
}
