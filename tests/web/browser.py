#!/usr/bin/python3
"""Drives the dashboard in headless Chromium (Debian's chromium and
chromium-driver, python3-selenium): token once, both demo agents, halt with
a reason, the SAFE MODE banner arriving over the event stream, at phone width.

    browser.py URL TOKEN SCREENSHOT AGENT...

Exit 0 when every step held; the reason on stderr otherwise.
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main():
    url, token, shot, agents = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    profile = tempfile.TemporaryDirectory(prefix="warden-browser-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=390,844", "--user-data-dir=" + profile.name,
              "--no-first-run", "--disable-extensions"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(url)
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        for a in agents:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'article[data-agent="{a}"]'))
        wait.until(lambda d: d.find_element(By.ID, "live").text == "events: live")
        assert driver.execute_script("return sessionStorage.getItem('warden-token')") == token
        assert driver.execute_script("return document.cookie") == "", "no cookies"
        assert not driver.find_element(By.ID, "safe-banner").is_displayed()

        driver.find_element(By.ID, "halt-open").click()
        driver.find_element(By.ID, "halt-reason").send_keys("browser test halt")
        driver.find_element(By.ID, "halt-confirm").click()
        t0 = time.monotonic()
        driver.find_element(By.ID, "halt-go").click()
        # The page polls every 5 s; the banner must come sooner, from the
        # halt's event on the stream.
        WebDriverWait(driver, 4, poll_frequency=0.05).until(
            lambda d: d.find_element(By.ID, "safe-banner").is_displayed())
        took = time.monotonic() - t0
        wait.until(lambda d: "browser test halt" in d.find_element(By.ID, "safe-reason").text)
        log = driver.find_element(By.ID, "events").text
        assert " halt" in log, "the halt is in the live event log: " + log[:400]
        width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"no horizontal scrolling at phone width: {width}"
        driver.save_screenshot(shot)
        csp = [e["message"] for e in driver.get_log("browser")
               if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]
        assert not csp, f"console errors: {csp}"
        print(f"banner {took * 1000:.0f} ms after the click; screenshot {shot}")
    finally:
        driver.quit()
        profile.cleanup()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the test reads stderr
        print(f"browser test failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
