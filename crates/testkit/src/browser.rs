//! A real browser for tests: headless Chromium driven over WebDriver.
//!
//! One `chromedriver` serves all the tests of a test binary: it starts on the first
//! [`Browser::open`], on a port it picks itself, and stops when the test binary exits (it
//! runs under a small shell that kills it once the binary's end of a pipe closes, which the
//! kernel does however the binary ends). Each test gets a session of its own, a fresh
//! Chromium with a profile in a temporary directory, which [`Browser::close`] ends.
//!
//! Chromium and chromedriver are real peers: when either is missing, [`Browser::open`]
//! reports it ([`crate::peers::missing`]) and answers `None`, and a test that needs one
//! returns; with `POSTERN_REQUIRE_PEERS=1` that report is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use fantoccini::Locator;
pub use fantoccini::elements::Element;

use crate::peers::missing;

/// Where Debian's packages put the browser and its driver (`apt-get install chromium
/// chromium-driver`); `POSTERN_CHROMIUM` and `POSTERN_CHROMEDRIVER` override them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

/// How long a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// The chromedriver of this test binary, started once.
struct Driver {
    /// `http://127.0.0.1:<port>`.
    url: String,
    /// The shell that runs chromedriver; it kills chromedriver when this pipe closes.
    _child: Mutex<Child>,
    _lifeline: Mutex<ChildStdin>,
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

fn chromium_path() -> String {
    std::env::var("POSTERN_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned())
}

fn driver() -> Result<&'static Driver, String> {
    DRIVER.get_or_init(start_driver).as_ref().map_err(Clone::clone)
}

fn start_driver() -> Result<Driver, String> {
    let chromedriver = std::env::var("POSTERN_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.to_owned());
    if Command::new(&chromedriver).arg("--version").output().is_err() {
        return Err(format!("{chromedriver} is not installed (apt-get install chromium-driver)"));
    }
    // `--port=0` lets chromedriver pick a free port, which it prints. The shell waits for
    // standard input to end (the test binary exiting) and then stops chromedriver.
    let script = r#""$0" --port=0 2>/dev/null & pid=$!; cat >/dev/null; kill -TERM $pid 2>/dev/null; wait $pid"#;
    let mut child = Command::new("sh")
        .args(["-c", script, &chromedriver])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start {chromedriver}: {e}"))?;
    let lifeline = child.stdin.take().ok_or("no pipe to chromedriver's shell")?;
    let stdout = child.stdout.take().ok_or("no output of chromedriver")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let port = loop {
        let line = rx
            .recv_timeout(WAIT)
            .map_err(|_| format!("{chromedriver} did not say where it listens; it printed {printed:?}"))?;
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            break rest.trim_end_matches('.').trim().parse::<u16>().map_err(|e| format!("{line:?}: {e}"))?;
        }
        printed.push(line);
    };
    // Keep reading, so chromedriver never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Ok(Driver { url: format!("http://127.0.0.1:{port}"), _child: Mutex::new(child), _lifeline: Mutex::new(lifeline) })
}

/// How [`Browser::open_with`] starts Chromium, besides the kit's own arguments.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch<'a> {
    /// More command-line arguments (`--ignore-certificate-errors` for a server whose
    /// certificate a test CA issued).
    pub args: &'a [&'a str],
    /// Whether the browser sends cookies in third-party contexts (a page's iframe of another
    /// site), as Chrome and Edge do by default; Debian's Chromium, like Safari and Firefox,
    /// does not.
    pub third_party_cookies: bool,
}

/// A fresh headless Chromium session. End it with [`Browser::close`].
pub struct Browser {
    client: fantoccini::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A new session in a fresh profile, or `None` (after reporting why) when Chromium or
    /// chromedriver is missing. `test` names the test in the report.
    pub async fn open(test: &str) -> Option<Self> {
        Self::open_with(test, &Launch::default()).await
    }

    /// [`Browser::open`], with Chromium started as `launch` says.
    pub async fn open_with(test: &str, launch: &Launch<'_>) -> Option<Self> {
        let chromium = chromium_path();
        if !std::path::Path::new(&chromium).exists() {
            missing(test, &format!("{chromium} is not installed (apt-get install chromium)"));
            return None;
        }
        let driver = match driver() {
            Ok(d) => d,
            Err(why) => {
                missing(test, &why);
                return None;
            }
        };
        match Self::session(driver, &chromium, launch).await {
            Ok(b) => Some(b),
            // The peers are there but do not work together: always a failure.
            Err(e) => panic!("{test}: a Chromium session could not start: {e:#}"),
        }
    }

    async fn session(driver: &Driver, chromium: &str, launch: &Launch<'_>) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let mut caps = serde_json::Map::new();
        // --no-sandbox: tests run as root, where Chromium's sandbox refuses to start.
        let kit = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--disable-gpu"];
        let mut args: Vec<String> = kit.into_iter().map(str::to_owned).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(launch.args.iter().map(|a| (*a).to_owned()));
        let mut options = serde_json::json!({ "binary": chromium, "args": args });
        if launch.third_party_cookies {
            // Chromium's settings ("Allow third-party cookies"), as Chrome's and Edge's users
            // have them by default; Debian's Chromium blocks them.
            options["prefs"] = serde_json::json!({
                "profile.cookie_controls_mode": 0,
                "profile.block_third_party_cookies": false,
            });
        }
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await?;
        Ok(Self { client, _profile: profile })
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &fantoccini::Client {
        &self.client
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        Ok(self.client.goto(url).await?)
    }

    /// The address of the page shown now.
    pub async fn url(&self) -> anyhow::Result<url::Url> {
        Ok(self.client.current_url().await?)
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self.client.source().await?)
    }

    /// Waits (up to [`WAIT`]) for an element matching the CSS `selector`.
    pub async fn find(&self, selector: &str) -> anyhow::Result<Element> {
        let found = self.client.wait().at_most(WAIT).for_element(Locator::Css(selector)).await;
        found.map_err(|e| anyhow::anyhow!("no element {selector:?} within {WAIT:?}: {e}"))
    }

    /// Types `text` into the field matching `selector` (after clearing it).
    pub async fn fill(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let field = self.find(selector).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        Ok(self.find(selector).await?.click().await?)
    }

    /// Waits (up to [`WAIT`]) until the page's address satisfies `check`, and answers it.
    pub async fn wait_for_url(&self, what: &str, check: impl Fn(&url::Url) -> bool) -> anyhow::Result<url::Url> {
        let deadline = tokio::time::Instant::now() + WAIT;
        // WebDriver has no event for a navigation the page starts itself (a form post and
        // its redirects): the address is asked again at a short interval until it is the
        // one expected.
        let mut ask = tokio::time::interval(Duration::from_millis(25));
        loop {
            let now = self.url().await?;
            if check(&now) {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("the browser did not reach {what} within {WAIT:?}; it shows {now}");
            }
            ask.tick().await;
        }
    }

    /// The browser's cookies for the page shown now, as `(name, value)`.
    pub async fn cookies(&self) -> anyhow::Result<Vec<(String, String)>> {
        let all = self.client.get_all_cookies().await?;
        Ok(all.into_iter().map(|c| (c.name().to_owned(), c.value().to_owned())).collect())
    }

    /// Ends the session: Chromium stops and its profile is deleted.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
