"""Refresh docs/screenshot.png (the App Center), docs/create-form.png, docs/deployed.png (hello-tiny
deployed), docs/monitoring.png (its Monitoring pane after two minutes of mixed traffic) and
docs/dark.png (hello-tiny's page in dark mode), docs/zh-app-center.png and docs/zh-deployed.png (the
same in Chinese) of a demo install.

LLMAPP_DEMO=1 PORT=5055 .venv/bin/python app.py &     # then:
.venv/bin/python scripts/screenshot.py http://127.0.0.1:5055
"""

import random
import sys
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright


def traffic(endpoint: str, key: str, seconds: float) -> None:
    """Two minutes of a varying mix: chats, streams, cache hits, a few errors."""
    rng = random.Random(1)
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        phase = (deadline - time.monotonic()) / seconds
        body = {
            "model": "hello-tiny",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": rng.randint(4, 40),
        }
        kind = rng.random()
        if kind < 0.2:
            body["temperature"] = 0
        elif kind < 0.5:
            body["stream"] = True
        elif kind < 0.53:
            body["model"] = "no-such-model"
        httpx.post(f"{endpoint}/chat/completions", json=body, headers=headers, timeout=30)
        time.sleep(0.05 + 0.3 * phase * rng.random())


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
    key = page.locator(".new-key").inner_text().strip()
    endpoint = page.locator("#live code.mono").first.inner_text().strip()
    clients = [threading.Thread(target=traffic, args=(endpoint, key, 120)) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    page.wait_for_timeout(11000)  # the servers' last flush, then the pane's own refresh
    page.click("#monitoring nav a:has-text('15m')")
    page.wait_for_selector("#monitoring .charts")
    page.locator("#monitoring").screenshot(path=str(out / "monitoring.png"), caret="initial")
    dark = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    dark.context.add_cookies(page.context.cookies())  # the same login
    dark.goto(page.url)
    dark.wait_for_selector("#monitoring .charts")
    dark.screenshot(path=str(out / "dark.png"), caret="initial")
    # The same install read by a browser that asks for Chinese (Accept-Language: zh-CN).
    chinese = browser.new_page(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    chinese.context.add_cookies(page.context.cookies())
    chinese.goto(url + "/applications/")
    chinese.wait_for_selector("#app-table")
    chinese.screenshot(path=str(out / "zh-app-center.png"), caret="initial")
    chinese.goto(page.url)
    chinese.wait_for_selector("#monitoring .charts")
    chinese.screenshot(path=str(out / "zh-deployed.png"), full_page=True, caret="initial")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#live button:has-text('Stop')")
    page.wait_for_selector("#live h1 .badge-stopped", timeout=30_000)
    browser.close()
