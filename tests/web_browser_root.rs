//! The dashboard in a real browser (Debian's chromium and chromium-driver,
//! driven by python3-selenium; never a downloaded browser): token once, both
//! agents, halt with a reason, the SAFE MODE banner over SSE, a screenshot
//! under target/.

mod common;
mod web_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent, bin, workload, Env};
use web_common::{token, Web};

#[test]
fn dashboard_in_chromium() {
    for (p, pkg) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
        (
            "/usr/lib/python3/dist-packages/selenium",
            "python3-selenium",
        ),
    ] {
        assert!(
            std::path::Path::new(p).exists(),
            "{p} missing: apt-get install {pkg} (.ci/run does)"
        );
    }
    let agents =
        agent("alpha", workload::COOPERATIVE, 1, "") + &agent("beta", workload::COOPERATIVE, 1, "");
    let mut env = Env::new("", &agents);
    env.start();
    env.wait_procs(4);
    let admin = token(bin(), &env.socket(), "browser", "admin");
    let web = Web::start(bin(), &env.config, &env.path("web.stderr"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let shot = format!("{target}/web-dashboard.png");
    let mut child = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/browser.py"))
        .arg(format!("http://127.0.0.1:{}/", web.port))
        .arg(&admin)
        .arg(&shot)
        .args(["alpha", "beta"])
        .env("HOME", env.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser test did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}\n{se}");
    println!("{so}");
    let st = env.status();
    assert_eq!(st["daemon"]["safe_mode"]["reason"], "browser test halt");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    drop(web);
    env.signal(nix::sys::signal::Signal::SIGTERM);
    env.wait_exit(Duration::from_secs(30));
    env.assert_nothing_left();
}
