"""A person's path through the platform, in Debian's chromium driven by Playwright."""

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from conftest import SERVING_CONFIG, LiveServer, log_text, wait_for
from llmapp.extensions import db

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser_page(request):
    """A chromium page at 1400 px; parametrized indirectly with a locale ("zh-CN"), the browser's language
    (its Accept-Language), else English."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("LLMAPP_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (LLMAPP_REQUIRE_BROWSER=1) but is not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900}, locale=getattr(request, "param", None))
        errors = []

        # A 422 is how a form with errors comes back; chromium logs every 4xx, so those are expected. Once
        # the test's server has stopped, the page's polls and streams fail (a reset connection): not counted.
        def record_error(message):
            if message.type == "error" and LiveServer.serving and "status of 422" not in message.text:
                errors.append(message.text)

        page.on("console", record_error)
        yield page
        browser.close()
        assert errors == [], f"the browser console reported errors: {errors}"


def log_in(page, server, user):
    page.goto(server.url + "/login")
    page.fill("#email", user.email)
    page.fill("#password", "password123")
    page.click("button[type=submit]")


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    # caret="initial": hiding the caret injects a style, which our CSP (rightly) blocks.
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, caret="initial")


@pytest.mark.parametrize("config_overrides", [{"WTF_CSRF_ENABLED": True}])
def expect_running(page, app, name: str, timeout: int) -> None:
    """The detail page's badge turns to running; a deploy that did not says why (its status, its reason and
    the end of its log), where Playwright would show only the badge's word."""
    from playwright.sync_api import expect

    from llmapp.models import Application

    try:
        expect(page.locator("#live h1 .badge")).to_have_text("running", timeout=timeout)
    except AssertionError as error:
        with app.app_context():
            row = db.session.scalar(db.select(Application).filter_by(name=name))
            lines = log_text(app, row.id).splitlines()[-30:]
        raise AssertionError(f"{name} is {row.status}: {row.last_error}; its log ends:\n" + "\n".join(lines)) from error


def test_create_validate_recommend_save_find_delete(app, factory, browser_page, config_overrides):
    from playwright.sync_api import expect

    user = factory.user("person@example.com")
    factory.model(name="Llama-70B", parameters_billions=70, precision="bf16", context_length=8192)
    factory.model(name="Qwen-0.5B", parameters_billions=0.5, precision="bf16", context_length=4096)
    page = browser_page
    with LiveServer(app) as server:
        log_in(page, server, user)
        expect(page.locator("h1")).to_have_text("App Center")
        shot(page, "01-empty-list")

        page.click("text=+ Create application")
        expect(page.locator("h1")).to_have_text("Create application")
        # The first model (Llama-70B) does not fit in the 24 GB the tests plan for.
        expect(page.locator("#recommendation")).to_contain_text("does not fit")

        # A validation error first: no name, a batch size out of range. Typed values stay.
        page.fill("#description", "Answers customer questions.")
        page.fill("#batch_size", "999")
        page.click("text=+ Add variable")
        page.fill("[name='env-0-name']", "API_KEY")
        page.fill("[name='env-0-value']", "sk-browser-secret")
        page.check("[name='env-0-secret']")
        expect(page.locator("[name='env-0-value']")).to_have_attribute("type", "password")
        # Something outside the page gives inputs a style attribute (an extension, autofill, or here
        # Playwright hiding the caret); htmx used to copy it onto the re-rendered form's inputs, each a
        # CSP violation in the console (which fails this test).
        page.screenshot(path=str(ARTIFACTS / "02a-before-errors.png"), caret="hide")
        page.click("button:has-text('Create application')")
        expect(page.locator("#name-error")).to_have_text("Name is required.")
        expect(page.locator("#batch_size-error")).to_have_text("Must be between 1 and 256.")
        expect(page.locator("#description")).to_have_value("Answers customer questions.")
        expect(page.locator("[name='env-0-name']")).to_have_value("API_KEY")
        # The typed secret is kept (encrypted, in the form) but never sent back in clear.
        expect(page.locator(".env-row .masked")).to_have_text("••••")
        assert "sk-browser-secret" not in page.content()
        shot(page, "02-validation-errors")

        # Changing the model fetches its recommendation; Apply fills the configuration.
        page.select_option("#model_id", label="Qwen-0.5B")
        expect(page.locator("#recommendation")).to_contain_text("fit at once")
        recommended = re.search(r"max concurrency (\d+)", page.locator("#recommendation").inner_text()).group(1)
        page.click("#recommendation button:has-text('Apply')")
        expect(page.locator("#max_concurrency")).to_have_value(recommended)
        expect(page.locator("#batch_size")).not_to_have_value("999")

        # A second variable, added then removed in place.
        page.click("text=+ Add variable")
        expect(page.locator(".env-row")).to_have_count(2)
        page.locator(".env-row").nth(1).locator("text=Remove").click()
        expect(page.locator(".env-row")).to_have_count(1)

        page.fill("#name", "browser-bot")
        # The restart policy's choice is shown whole (at 1400 px it was cut off).
        assert page.eval_on_selector(
            "#restart_policy",
            """(select) => { const text = document.createElement("canvas").getContext("2d");
                text.font = getComputedStyle(select).font;
                const chosen = select.options[select.selectedIndex].text;
                return text.measureText(chosen).width + 24 <= select.clientWidth; }""",
        )
        shot(page, "03-form-filled")
        page.click("button:has-text('Create application')")
        expect(page.locator(".flash-success")).to_contain_text("Application “browser-bot” created.")
        row = page.locator("tr", has_text="browser-bot")
        expect(row).to_contain_text("Qwen-0.5B")
        expect(row).to_contain_text("stopped")
        shot(page, "04-list-with-app")
        # A row's actions stay on one line.
        tops = row.locator(".actions .btn").evaluate_all("(all) => all.map((b) => b.getBoundingClientRect().top)")
        assert len(tops) >= 3 and len(set(tops)) == 1, tops

        # Filter by status, open an application, come Back: the filter shows what the table shows.
        page.select_option("#status", "stopped")
        expect(page).to_have_url(re.compile(r"status=stopped"))
        page.click("#app-table a:has-text('browser-bot')")
        expect(page.locator("h1")).to_contain_text("browser-bot")
        page.go_back()
        expect(page).to_have_url(re.compile(r"status=stopped"))
        expect(page.locator("#status")).to_have_value("stopped")
        # Back within the list's own history too (htmx restores a snapshot of the page).
        page.select_option("#status", "running")
        expect(page.locator("#app-table")).to_contain_text("No application matches")
        page.go_back()
        expect(page).to_have_url(re.compile(r"status=stopped"))
        expect(page.locator("#app-table")).to_contain_text("browser-bot")
        expect(page.locator("#status")).to_have_value("stopped")
        page.fill("#q", "bot")
        expect(page).to_have_url(re.compile(r"q=bot"))
        page.go_back()
        expect(page.locator("#q")).to_have_value("")
        page.select_option("#status", "")

        page.fill("#q", "browser")
        expect(page.locator("#app-table")).to_contain_text("browser-bot")
        page.fill("#q", "no-such-app")
        expect(page.locator("#app-table")).to_contain_text("No application matches")
        page.fill("#q", "")
        expect(page.locator("#app-table")).to_contain_text("browser-bot")

        page.click("#app-table a:has-text('browser-bot')")
        expect(page.locator("h1")).to_contain_text("browser-bot")
        expect(page.locator("body")).to_contain_text("API_KEY")
        expect(page.locator("body")).not_to_contain_text("sk-browser-secret")
        with app.app_context():  # the secret typed before the errors is the one stored
            from llmapp import secrets_box
            from llmapp.models import EnvVar

            stored = db.session.scalar(db.select(EnvVar).filter_by(name="API_KEY"))
            assert stored.is_secret and secrets_box.decrypt(stored.value) == "sk-browser-secret"
        shot(page, "05-detail")

        page.goto(server.url + "/applications/")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("tr", has_text="browser-bot").locator("button:has-text('Delete')").click()
        expect(page.locator(".flash-success")).to_contain_text("Application “browser-bot” deleted.")
        expect(page.locator("#app-table")).not_to_contain_text("browser-bot")
        shot(page, "06-deleted")


def chinese():
    """The compiled Chinese catalog the platform reads: gettext(message, **values) as a page writes it."""
    from babel.support import Translations

    catalog = Translations.load(str(Path(__file__).resolve().parents[2] / "llmapp" / "translations"), ["zh"])
    assert isinstance(catalog, Translations), "the Chinese catalog is not compiled (make does it)"
    return lambda message, **values: catalog.gettext(message) % values if values else catalog.gettext(message)


# What may stay in Latin letters on a Chinese page besides its data: product, format and technical names,
# the OpenAI field `model`, log levels. Anything else is English a Chinese reader would meet: a message
# nobody marked.
LATIN_ALLOWED = {
    "llmapp",
    "API",
    "REST",
    "OpenAI",
    "vLLM",
    "token",
    "tokens",
    "URL",
    "JSON",
    "GPU",
    "CPU",
    "UTC",
    "CSV",
    "txt",
    "ndjson",
    "English",
    "model",
    "INFO",
}


def english_left(page, *data: str) -> dict[str, str]:
    """Latin words a Chinese page shows as text, beyond ``data`` (names, emails), paths and LATIN_ALLOWED, each
    with the line it is on; code samples and the choices of selects are not looked at."""
    text = page.evaluate(
        """() => { const body = document.body.cloneNode(true);
                   const skipped = "pre, code, script, style, noscript, .mono, option, [hidden]";
                   body.querySelectorAll(skipped).forEach((e) => e.remove());
                   return body.innerText; }"""
    )
    for value in data:
        text = text.replace(value, " ")
    text = re.sub(r"(?<!\w)/[\w./-]+", " ", text)  # paths: data too
    return {
        word: line.strip()[:160]
        for line in text.splitlines()
        for word in re.findall(r"[A-Za-z][A-Za-z-]{2,}", line)
        if word not in LATIN_ALLOWED
    }


@pytest.mark.parametrize("browser_page", ["zh-CN"], indirect=True)
@pytest.mark.parametrize("config_overrides", [{"WTF_CSRF_ENABLED": True}])
def test_the_main_walk_in_chinese(app, factory, browser_page, config_overrides):
    """A browser that asks for zh-CN gets every page of the main walk in Simplified Chinese, with the spec's
    terms, Chinese field errors and dates; the Account page switches the language and keeps the choice."""
    from playwright.sync_api import expect

    zh = chinese()
    user = factory.user("person@example.com")
    factory.model(name="Llama-70B", parameters_billions=70, precision="bf16", context_length=8192)
    factory.model(name="Qwen-0.5B", parameters_billions=0.5, precision="bf16", context_length=4096)
    page = browser_page
    data = ("person@example.com", "browser-bot", "Llama-70B", "Qwen-0.5B", "bf16", "transformers")
    leaks = {}
    with LiveServer(app) as server:
        page.goto(server.url + "/login")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("h1")).to_have_text(zh("Log in to llmapp"))
        expect(page.locator(".language-switch button[aria-current]")).to_have_text("简体中文")
        leaks["login"] = english_left(page, *data)
        shot(page, "zh-01-login")
        log_in(page, server, user)
        expect(page.locator("h1")).to_have_text("应用中心")
        expect(page.locator(".mainnav")).to_contain_text("应用中心")
        expect(page.locator("[role=tab]").first).to_have_text("应用管理")
        expect(page.locator("[role=tab]").nth(1)).to_have_text("插件管理")
        leaks["list"] = english_left(page, *data)

        page.get_by_role("link", name="创建应用").click()
        expect(page.locator("h1")).to_have_text("创建应用")
        for label in ("最大并发数", "超时设置", "日志级别", "缓存大小", "批处理大小"):
            expect(page.locator("#application-form label", has_text=label)).to_have_count(1)
        expect(page.locator("#application-form")).to_contain_text("环境变量")
        page.fill("#batch_size", "999")
        page.get_by_role("button", name="创建应用").click()
        expect(page.locator("#name-error")).to_have_text(zh("Name is required."))
        expect(page.locator("#batch_size-error")).to_have_text(
            zh("Must be between %(low)s and %(high)s.", low=1, high=256)
        )
        page.select_option("#model_id", label="Qwen-0.5B")
        expect(page.locator("#recommendation")).to_contain_text(zh("Recommended for this model:"))
        page.locator("#recommendation").get_by_role("button", name=zh("Apply")).click()
        expect(page.locator("#batch_size")).not_to_have_value("999")
        leaks["form"] = english_left(page, *data)
        shot(page, "zh-02-form-errors-and-recommendation")
        page.fill("#name", "browser-bot")
        page.get_by_role("button", name="创建应用").click()
        expect(page.locator(".flash-success")).to_have_text(zh("Application “%(name)s” created.", name="browser-bot"))
        row = page.locator("tr", has_text="browser-bot")
        expect(row).to_contain_text("已停止")
        expect(row.get_by_role("button", name="部署")).to_be_visible()
        leaks["list with an application"] = english_left(page, *data)
        shot(page, "zh-03-list")

        page.click("#app-table a:has-text('browser-bot')")
        for heading in ("基本信息", "配置信息", "监控信息", "日志信息", "插件信息"):
            expect(page.locator("h2", has_text=heading)).to_have_count(1)
        # Dates as Chinese writes them: 2026年12月6日 05:20 UTC
        expect(page.locator("dl").first).to_contain_text(re.compile(r"\d{4}年\d{1,2}月\d{1,2}日 \d\d:\d\d UTC"))
        leaks["detail"] = english_left(page, *data)
        shot(page, "zh-04-detail")

        # The Account page's choice wins over the browser's, is kept on the account, and can be undone.
        page.goto(server.url + "/users/account")
        page.select_option("#language", "en")
        page.locator("form", has=page.locator("#language")).get_by_role("button").click()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_have_text("Account")
        with app.app_context():
            from llmapp.models import User

            assert db.session.get(User, user.id).locale == "en"
        page.goto(server.url + "/applications/")
        expect(page.locator("h1")).to_have_text("App Center")
        page.goto(server.url + "/users/account")
        page.select_option("#language", "")
        page.locator("form", has=page.locator("#language")).get_by_role("button").click()
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        leaks["account"] = english_left(page, *data)
        shot(page, "zh-05-account")

        page.goto(server.url + "/applications/")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("tr", has_text="browser-bot").get_by_role("button", name="删除").click()
        expect(page.locator(".flash-success")).to_have_text(zh("Application “%(name)s” deleted.", name="browser-bot"))
    leaked = {name: words for name, words in leaks.items() if words}
    assert not leaked, f"English left on Chinese pages: {leaked}"


@pytest.mark.parametrize("config_overrides", [{"WTF_CSRF_ENABLED": True}])
def test_deploy_watch_call_and_stop(app, factory, browser_page, workers, tiny, config_overrides, gateway):
    import openai
    from playwright.sync_api import expect

    workers.start(1)
    app.config["GATEWAY_URL"] = gateway  # the page shows it first: the address a person copies
    user = factory.user("operator@example.com")
    factory.application(user, tiny, name="hello-tiny", config=dict(SERVING_CONFIG))
    page = browser_page
    with LiveServer(app) as server:
        log_in(page, server, user)
        page.click("#app-table a:has-text('hello-tiny')")

        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#live button:has-text('Deploy')")
        expect(page.locator("#live .phases")).to_contain_text("starting process", timeout=15_000)
        shot(page, "07-deploying")
        # No reload: the live part polls until the server is ready.
        expect_running(page, app, "hello-tiny", timeout=60_000)
        expect(page.locator("#live .phases")).to_contain_text("warming up")
        expect(page.locator("#live")).to_contain_text("Call it")

        page.fill("[name=label]", "browser")
        page.click("button:has-text('Create key')")
        key = page.locator(".new-key").inner_text().strip()
        endpoint = page.locator("#live code.mono").first.inner_text().strip()
        assert endpoint == gateway
        client = openai.OpenAI(base_url=endpoint, api_key=key, max_retries=0)

        def reply():
            try:
                return client.chat.completions.create(
                    model="hello-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
                )
            except openai.APIStatusError:  # the gateway learns the route a moment after the page says running
                return None

        assert wait_for(reply, 30, 0.2, "an answer through the gateway").usage.completion_tokens >= 1
        expect(page.locator("#log-lines")).to_contain_text("ready on port", timeout=10_000)
        shot(page, "08-running")

        # The playground: the status change brought it in without a reload; the reply streams in.
        page.fill("#playground-form textarea[name=message]", "Hello there")
        page.fill("#playground-form [name=max_tokens]", "12")
        page.fill("#playground-form [name=temperature]", "0")  # greedy: sampled, the tiny model can end at once
        page.click("#playground-form button:has-text('Send')")
        expect(page.locator("#playground .bubble-user")).to_have_text(re.compile("Hello there"))
        expect(page.locator("#playground [data-request-id]")).to_be_visible(timeout=30_000)
        # The demo's tiny model answers this greedily with 12 spaces: what streamed in is counted, not read.
        expect(page.locator("#playground .turn-stats")).to_contain_text("+ 12 tokens", timeout=30_000)
        bubble = "document.querySelector('#playground .bubble-assistant .bubble-text')"
        page.wait_for_function(f"{bubble}.textContent.length")
        expect(page.locator("#playground-form textarea[name=message]")).to_have_value("")
        request_id = page.locator("#playground [data-request-id]").inner_text()
        expect(page.locator("#log-lines")).to_contain_text(request_id, timeout=15_000)
        page.locator("#playground").scroll_into_view_if_needed()
        page.locator("#playground").screenshot(path=str(ARTIFACTS / "08e-playground.png"), caret="initial")

        # Monitoring: the requests sent are counted and charted, without a reload.
        api = openai.OpenAI(base_url=endpoint, api_key=key, max_retries=0)
        for i in range(6):
            api.completions.create(model="hello-tiny", prompt=f"hello {i}", max_tokens=4)
        # (The gateway answers another model's name itself: the server counts what reaches it directly.)
        direct = page.locator("#live [data-endpoint=direct]").inner_text().strip()
        with pytest.raises(openai.NotFoundError):
            api.with_options(base_url=direct).completions.create(model="not-this-one", prompt="x")
        page.click("#monitoring nav a:has-text('15m')")
        # 8: the chat, the playground's reply and six completions.
        expect(page.locator("#monitoring [data-outcome='2xx']")).to_have_text("8", timeout=30_000)
        # (The 404 came last: it may reach the pane one refresh, 10 s, after the eighth 2xx.)
        expect(page.locator("#monitoring [data-outcome='404']")).to_have_text("1", timeout=30_000)
        # A series is drawn (a lone 10 s point is a round dot, which Playwright calls hidden: check its path).
        expect(page.locator("#monitoring .chart svg path.series-a").first).to_have_attribute("d", re.compile("^M"))
        expect(page.locator("#monitoring")).to_contain_text("browser")  # the key's label
        page.locator("#monitoring").scroll_into_view_if_needed()
        shot(page, "08b-monitoring")
        page.locator("#monitoring").screenshot(path=str(ARTIFACTS / "08c-monitoring-pane.png"), caret="initial")

        # Logs: a request's line (with its request id) arrives live; scrolling up pauses the auto-scroll.
        expect(page.locator("#logs [data-live-state]")).to_have_text("live", timeout=15_000)
        api.with_options(default_headers={"X-Request-Id": "browser-trace-1"}).completions.create(
            model="hello-tiny", prompt="hi", max_tokens=2
        )
        expect(page.locator("#log-lines")).to_contain_text("browser-trace-1", timeout=15_000)
        for i in range(25):  # enough lines to scroll
            api.completions.create(model="hello-tiny", prompt=f"line {i}", max_tokens=1)
        expect(page.locator("#log-lines li")).not_to_have_count(0)
        viewport = page.locator("[data-log-viewport]")
        viewport.evaluate("(element) => { element.scrollTop = 0; element.dispatchEvent(new Event('scroll')); }")
        for i in range(3):
            api.completions.create(model="hello-tiny", prompt=f"while paused {i}", max_tokens=1)
        expect(page.locator("[data-log-resume]")).to_be_visible(timeout=15_000)
        expect(page.locator("[data-log-resume]")).to_contain_text("new lines")
        page.locator("#logs").scroll_into_view_if_needed()
        shot(page, "08d-logs-paused")
        page.click("[data-log-resume]")
        expect(page.locator("[data-log-resume]")).to_be_hidden()
        # The caption counts the lines the pane shows, those that arrived live included.
        page.wait_for_function(
            """() => document.querySelector("[data-log-count]").textContent
                === document.querySelectorAll("#log-lines li").length + " lines" """,
            timeout=10_000,
        )
        assert viewport.evaluate("(e) => e.scrollTop + e.clientHeight >= e.scrollHeight - 8")
        # A page opened afresh shows the newest lines, not the oldest.
        page.reload()
        page.wait_for_function(
            """() => { const e = document.querySelector("[data-log-viewport]");
                return e && e.scrollHeight > e.clientHeight && e.scrollTop + e.clientHeight >= e.scrollHeight - 8; }""",
            timeout=10_000,
        )

        # kill -9 of its server: restarted by the reconcile, at the same endpoint, which answers again.
        with app.app_context():
            from llmapp.models import Application, Replica

            pid = db.session.scalar(db.select(Replica.pid).join(Application).filter(Application.name == "hello-tiny"))
        os.kill(pid, signal.SIGKILL)
        expect(page.locator("#live")).to_contain_text("Restarts (1)", timeout=30_000)
        expect_running(page, app, "hello-tiny", timeout=60_000)
        expect(page.locator("#live code.mono").first).to_have_text(endpoint)
        assert api.completions.create(model="hello-tiny", prompt="back", max_tokens=2).usage.completion_tokens >= 1
        shot(page, "08f-restarted")

        # Limits: a key's limit set on the page holds from the next request; the Usage section counts,
        # and the Usage and Audit pages show it.
        page.locator("#api-keys td details.limits summary").first.click()
        page.locator("#api-keys td details.limits[open] input[name=rpm]").fill("2")
        page.locator("#api-keys td details.limits[open] button:has-text('Save limits')").click()
        expect(page.locator("#api-keys")).to_contain_text("2 requests per minute")
        with pytest.raises(openai.RateLimitError) as limited:
            for _ in range(3):
                api.completions.create(model="hello-tiny", prompt="counted", max_tokens=1)
        assert "key browser: 2 requests per minute" in limited.value.message
        page.locator("#api-keys").scroll_into_view_if_needed()
        page.locator("#api-keys").screenshot(path=str(ARTIFACTS / "08g-keys-limits.png"), caret="initial")
        page.reload()
        expect(page.locator("#usage")).to_contain_text("browser")
        page.locator("#usage").scroll_into_view_if_needed()
        page.locator("#usage").screenshot(path=str(ARTIFACTS / "08h-usage-section.png"), caret="initial")
        page.click("nav.mainnav a:has-text('Usage')")
        expect(page.locator("#usage-report")).to_contain_text("hello-tiny")
        shot(page, "08i-usage-page")
        page.click("nav.mainnav a:has-text('Audit')")
        expect(page.locator("#audit-log")).to_contain_text("key.update")
        expect(page.locator("#audit-log")).to_contain_text("limit_rpm")
        shot(page, "08j-audit-page")
        page.go_back()
        page.go_back()

        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#live button:has-text('Stop')")
        expect(page.locator("#live h1 .badge")).to_have_text("stopped", timeout=30_000)
        expect(page.locator("#log-lines")).to_contain_text("stopped", timeout=15_000)
        shot(page, "09-stopped")
        page.goto("about:blank")  # the live log's stream closes before the server does


@pytest.mark.parametrize(
    "config_overrides", [{"WTF_CSRF_ENABLED": True, "ENGINES_DIR": "/nonexistent/llmapp-test-engines"}]
)  # no engine installed
def test_an_admin_manages_users(app, factory, browser_page, config_overrides, tiny_model_dir):
    from playwright.sync_api import expect

    admin = factory.user("lead@example.com", admin=True)
    factory.user("dev@example.com")
    page = browser_page
    with LiveServer(app) as server:
        log_in(page, server, admin)
        page.click("nav a:has-text('Users')")
        expect(page.locator("h1")).to_have_text("Users")
        page.fill("#email", "new-hire@example.com")
        page.fill("#password", "short")
        page.click("button:has-text('Add user')")
        expect(page.locator("#new-user")).to_contain_text("at least 8 characters")
        page.fill("#password", "a long password")
        page.click("button:has-text('Add user')")
        expect(page.locator(".flash-success")).to_contain_text("User new-hire@example.com created.")
        row = page.locator("tr", has_text="dev@example.com")
        row.locator("button:has-text('Make admin')").click()
        expect(page.locator("tr", has_text="dev@example.com")).to_contain_text("Now an admin.")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("tr", has_text="new-hire@example.com").locator("button:has-text('Disable')").click()
        expect(page.locator("tr", has_text="new-hire@example.com")).to_contain_text("disabled")
        shot(page, "10-users")
        page.click(".account a")
        expect(page.locator("h1")).to_have_text("Account")
        # A personal access token for the REST API: shown once, then listed by its prefix.
        page.fill("#tokens #name", "deploy from CI")
        page.click("button:has-text('Create token')")
        expect(page.locator("#tokens .new-key")).to_contain_text("llmapp_pat_")
        expect(page.locator("#tokens table")).to_contain_text("deploy from CI")
        page.locator("#tokens").screenshot(path=str(ARTIFACTS / "10a-api-tokens.png"), caret="initial")
        # The API's reference page, rendered from the OpenAPI document.
        page.click("nav a:has-text('API')")
        expect(page.locator("h1")).to_contain_text("REST API")
        expect(page.locator("#post--api-v1-applications")).to_contain_text("max_concurrency")
        page.screenshot(path=str(ARTIFACTS / "10b-api-page.png"), caret="initial")  # the top of a long page
        page.locator("#post--api-v1-applications").screenshot(path=str(ARTIFACTS / "10c-api-operation.png"))
        # The registry: a model directory detected (the engine that takes it, its family and size),
        # with each engine's column hints from the engine table.
        page.click("nav a:has-text('Models')")
        page.click("a:has-text('Add model')")
        page.fill("#source", tiny_model_dir)
        page.click("button:has-text('Detect from directory')")
        expect(page.locator("[data-detected]")).to_contain_text("engine transformers")
        expect(page.locator("#engine")).to_have_value("transformers")
        expect(page.locator("#family")).to_have_value("gpt2")
        expect(page.locator("form.card")).to_contain_text("openai: where the upstream runs (optional note).")
        shot(page, "14-registry-detect")
        # The engines on this host: built in, or installed by a command the page names.
        page.click("nav a:has-text('Engines')")
        expect(page.locator("h1")).to_have_text("Engines")
        expect(page.locator("tr", has_text="llama.cpp")).to_contain_text("flask engines install llama.cpp")
        shot(page, "15-engines")
        page.wait_for_load_state("networkidle")  # nothing left loading when the server stops


@pytest.mark.parametrize("config_overrides", [{"WTF_CSRF_ENABLED": True}])
def test_a_plugin_is_configured_through_its_schemas_form(app, factory, browser_page, config_overrides):
    from playwright.sync_api import expect

    from llmapp.models import Plugin

    user = factory.user("builder@example.com")
    application = factory.application(user, factory.model(name="Qwen"), name="front-desk")
    with app.app_context():
        db.session.add(Plugin(name="house-style", type="system_prompt", config={}, created_by_id=user.id))
        db.session.commit()
    page = browser_page
    with LiveServer(app) as server:
        log_in(page, server, user)
        page.click("nav.tabs a:has-text('Plugins')")
        page.click("text=+ Create plugin")
        page.fill("#name", "redact-pii")
        page.select_option("#type", "pii_redaction")  # the configuration fields follow the type
        expect(page.locator("#config-fields legend")).to_contain_text("PII redaction")
        page.uncheck("input[name=config-entities][value=phone]")
        page.fill("#config-region", "China")
        page.click("button:has-text('Create plugin')")
        expect(page.locator("#config-fields")).to_contain_text("A two-letter region code")
        page.fill("#config-region", "CN")
        page.select_option("#config-mask_style", "partial")
        shot(page, "11-plugin-form")
        page.click("button:has-text('Create plugin')")
        expect(page.locator(".flash-success")).to_contain_text("Plugin “redact-pii” created.")
        expect(page.locator("#plugin-table")).to_contain_text("PII redaction")
        shot(page, "12-plugins")
        with app.app_context():
            plugin = db.session.scalar(db.select(Plugin).filter_by(name="redact-pii"))
            assert plugin.config["entities"] == ["email", "id_number"] and plugin.config["mask_style"] == "partial"

        # Attach it and another to an application on its page, order them, override a setting.
        page.goto(f"{server.url}/applications/{application.id}")
        section = page.locator("#plugins")
        expect(section).to_contain_text("No plugins")
        for name in ("redact-pii", "house-style"):
            label = page.locator("#attach-plugin option", has_text=name).inner_text()
            page.select_option("#attach-plugin", label=label)
            page.click("button:has-text('Attach at the end')")
            expect(section.locator(f"li[data-plugin='{name}']")).to_be_visible()
        page.click("button[aria-label='Move house-style up']")
        expect(section.locator("li.chain-step").first).to_have_attribute("data-plugin", "house-style")
        section.locator("li[data-plugin='redact-pii'] button:has-text('Settings')").click()
        page.fill("#config-region", "Hong Kong")
        page.click("button:has-text('Save overrides')")
        expect(section).to_contain_text("A two-letter region code")
        section.screenshot(path=str(ARTIFACTS / "13a-plugin-overrides.png"), caret="initial")
        page.fill("#config-region", "HK")
        page.click("button:has-text('Save overrides')")
        expect(section).to_contain_text("1 setting overridden here")
        section.locator("li[data-plugin='house-style'] button:has-text('Turn off')").click()
        expect(section.locator("li[data-plugin='house-style']")).to_contain_text("off for this application")
        section.screenshot(path=str(ARTIFACTS / "13-application-plugins.png"), caret="initial")
    with app.app_context():
        from llmapp.services import plugins

        document = plugins.chain_document(db.session.get(type(application), application.id))
        assert [(p["name"], p["config"].get("region")) for p in document["plugins"]] == [("redact-pii", "HK")]


def test_canary_promote_and_rollback_in_one_click_each(app, factory, browser_page, workers, tiny, gateway):
    """While it runs: an edit is a draft release; the Releases pane tries it as a canary; the banner
    promotes it; a release's button rolls back to it. Each is one click (and a confirmation)."""
    from playwright.sync_api import expect

    workers.start(2)
    app.config["GATEWAY_URL"] = gateway
    user = factory.user("releaser@example.com")
    application = factory.application(user, tiny, name="versioned", config=dict(SERVING_CONFIG))
    page = browser_page
    with LiveServer(app) as server:
        log_in(page, server, user)
        page.goto(f"{server.url}/applications/{application.id}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#live button:has-text('Deploy')")
        expect_running(page, app, "versioned", timeout=90_000)

        page.goto(f"{server.url}/applications/{application.id}/edit")
        expect(page.locator(".flash-info")).to_contain_text("a draft that serves nothing until you Redeploy it")
        page.fill("[name=timeout_s]", "45")
        page.fill("[name=note]", "a longer timeout")
        page.click("form button[type=submit]")
        expect(page.locator("#releases")).to_contain_text("draft")
        page.fill("#releases [name=share]", "25")
        page.click("#releases button:has-text('Start canary')")
        banner = page.locator("#live .canary")
        expect(banner).to_contain_text("release 2 takes 25 % of the gateway's requests", timeout=90_000)
        shot(page, "10-canary")
        banner.screenshot(path=str(ARTIFACTS / "10-canary-banner.png"))
        page.locator("#releases").screenshot(path=str(ARTIFACTS / "10-canary-releases.png"))

        page.once("dialog", lambda dialog: dialog.accept())
        banner.locator("button:has-text('Promote')").click()
        expect(page.locator("#live .canary")).to_have_count(0, timeout=30_000)
        expect(page.locator("#releases tr:has(td.mono:text-is('2'))")).to_contain_text("running", timeout=30_000)

        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#releases tr:has(td.mono:text-is('1')) button:has-text('Roll back to this')").click()
        expect(page.locator("#live")).to_contain_text("Rolling out release 3", timeout=30_000)
        expect(page.locator("#releases tr:has(td.mono:text-is('3'))")).to_contain_text("running", timeout=90_000)
        expect(page.locator("#releases")).to_contain_text("Rollback to release 1")
        shot(page, "11-rolled-back")
        page.locator("#live .replicas").screenshot(path=str(ARTIFACTS / "11-rolled-back-replicas.png"))
        page.locator("#releases").screenshot(path=str(ARTIFACTS / "11-rolled-back-releases.png"))
        page.goto("about:blank")  # its live part polls while it runs: not after the server is gone
    with app.app_context():
        from llmapp.models import Application

        assert db.session.get(Application, application.id).config["timeout_s"] == SERVING_CONFIG["timeout_s"]
