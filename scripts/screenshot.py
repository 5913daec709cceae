"""Refresh docs/screenshot.png (the App Center) and docs/deployed.png (hello-tiny deployed) of a demo install.

LLMAPP_DEMO=1 PORT=5055 .venv/bin/python app.py &     # then:
.venv/bin/python scripts/screenshot.py http://127.0.0.1:5055
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

url = sys.argv[1].rstrip("/")
out = Path(__file__).resolve().parent.parent / "docs"
out.mkdir(exist_ok=True)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 640})
    page.goto(url + "/login")
    page.fill("#email", "demo@llmapp.local")
    page.fill("#password", "demo-password")
    page.click("button[type=submit]")
    page.wait_for_selector("#app-table")
    page.screenshot(path=str(out / "screenshot.png"), caret="initial")
    page.goto(url + "/applications/new")
    page.wait_for_selector("#recommendation")
    page.screenshot(path=str(out / "create-form.png"), full_page=True, caret="initial")
    page.goto(url + "/applications/")
    page.click("#app-table a:has-text('hello-tiny')")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#live button:has-text('Deploy')")
    page.wait_for_selector("#live h1 .badge-running", timeout=90_000)
    page.fill("[name=label]", "laptop")
    page.click("button:has-text('Create key')")
    page.wait_for_selector(".new-key")
    page.wait_for_timeout(6000)  # a resource sample from the reconcile
    page.screenshot(path=str(out / "deployed.png"), full_page=True, caret="initial")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#live button:has-text('Stop')")
    page.wait_for_selector("#live h1 .badge-stopped", timeout=30_000)
    browser.close()
