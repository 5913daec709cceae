// Small behaviours htmx does not cover, without inline script (our CSP forbids it).

// The words this script writes, in the page's language: base.html gives them as JSON data (English
// where one is missing). Counts: "{count}" stands for the number.
const UI_TEXT = (() => {
  try {
    return JSON.parse(document.getElementById("ui-text")?.textContent || "{}");
  } catch {
    return {};
  }
})();
const ENGLISH = {
  copy: "Copy", copied: "Copied", selected: "Selected: press Ctrl-C", live: "live", reconnecting: "reconnecting…",
  plain_secret: "Type the value to keep it as plain text",
  line_one: "{count} line", line_other: "{count} lines", new_line_one: "{count} new line", new_line_other: "{count} new lines",
};
const uiText = (key) => UI_TEXT[key] || ENGLISH[key];
const uiCount = (n, key) => uiText(`${key}_${n === 1 ? "one" : "other"}`).replace("{count}", String(n));

document.addEventListener("click", (event) => {
  const remove = event.target.closest("[data-remove-row]");
  if (remove) {
    remove.closest("tr").remove();
    return;
  }
  const replace = event.target.closest("[data-replace-secret]");
  if (replace) {
    const input = document.getElementById(replace.dataset.replaceSecret);
    replace.previousElementSibling?.remove(); // the mask
    replace.remove();
    input.classList.remove("hidden");
    input.focus();
  }
});

// A secret value is typed into a password field. Unticking a stored secret asks for its value in
// the open (the stored one is never sent back to the browser): the server refuses an empty one.
document.addEventListener("change", (event) => {
  const toggle = event.target.closest("[data-secret-toggle]");
  if (!toggle) return;
  const input = document.getElementById(toggle.dataset.secretToggle);
  if (!input) return;
  input.type = toggle.checked ? "password" : "text";
  const replace = input.parentElement.querySelector("[data-replace-secret]");
  if (!toggle.checked && replace) {
    replace.previousElementSibling?.remove(); // the mask
    replace.remove();
    input.classList.remove("hidden");
    input.placeholder = uiText("plain_secret");
    input.focus();
  }
});

// The live log pane: follow new lines at the bottom unless the reader scrolled up (then count them),
// keep the stream's last id in its URL (a fresh connection resumes exactly there), and say whether
// the stream is live.
const logViewport = () => document.querySelector("[data-log-viewport]");
const logState = { pinned: true, unseen: 0 };

function atBottom(viewport) {
  return viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - 8;
}

const lines = (n) => uiCount(n, "line");

function showPaused() {
  const button = document.querySelector("[data-log-resume]");
  if (!button) return;
  button.classList.toggle("hidden", logState.pinned || logState.unseen === 0);
  const count = button.querySelector("[data-new-lines]");
  if (count) count.textContent = uiCount(logState.unseen, "new_line");
}

// The caption counts the lines the pane shows, as they arrive.
function countShownLines() {
  const caption = document.querySelector("[data-log-count]");
  const viewport = logViewport();
  if (caption && viewport) caption.textContent = lines(viewport.querySelectorAll("li").length);
}

function pinToBottom() {
  const viewport = logViewport();
  if (viewport) viewport.scrollTop = viewport.scrollHeight;
  logState.pinned = true;
  logState.unseen = 0;
  showPaused();
}

function setLiveState(label, live) {
  const state = document.querySelector("[data-live-state]");
  if (state) {
    state.textContent = label;
    state.classList.toggle("is-live", live);
  }
}

document.addEventListener("scroll", (event) => {
  const viewport = logViewport();
  if (!viewport || event.target !== viewport) return;
  logState.pinned = atBottom(viewport);
  if (logState.pinned) logState.unseen = 0;
  showPaused();
}, true);

document.addEventListener("click", (event) => {
  if (event.target.closest("[data-log-resume]")) pinToBottom();
});

document.addEventListener("htmx:sseMessage", (event) => {
  if (!event.target.closest("#logs")) return;
  const lines = event.target;
  const id = event.detail && event.detail.lastEventId;
  if (id && lines.getAttribute("sse-connect")) {
    const url = new URL(lines.getAttribute("sse-connect"), window.location.href);
    url.searchParams.set("after", id);
    lines.setAttribute("sse-connect", url.pathname + url.search);
  }
  document.querySelector(".log-empty")?.remove();
  countShownLines();
  if (logState.pinned) {
    pinToBottom();
  } else {
    logState.unseen += 1;
    showPaused();
  }
});

// (The playground's replies are SSE streams too: only the log's own stream says whether the log is live.)
document.addEventListener("htmx:sseOpen", (event) => event.target.closest("#logs") && setLiveState(uiText("live"), true));
document.addEventListener("htmx:sseError", (event) => event.target.closest("#logs") && setLiveState(uiText("reconnecting"), false));

// A freshly loaded pane opens on its newest lines.
document.addEventListener("htmx:load", (event) => {
  if (event.detail.elt.querySelector?.("[data-log-viewport]") || event.detail.elt.matches?.("[data-log-viewport]")) {
    logState.unseen = 0;
    pinToBottom();
  }
});

// The playground: the conversation follows its newest words.
function followChat(event) {
  const chat = event.target.closest?.(".chat") || event.detail?.target?.closest?.(".chat");
  if (!chat) return;
  chat.querySelector(".chat-empty")?.remove();
  chat.scrollTop = chat.scrollHeight;
}
document.addEventListener("htmx:sseMessage", followChat);
document.addEventListener("htmx:afterSwap", followChat);

// Copy buttons on code blocks: the whole block, with a word of thanks (or of how, where the browser
// refuses the clipboard: it is only offered on https and localhost).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const code = button.closest(".snippet")?.querySelector("pre");
  if (!code) return;
  let copied = false;
  try {
    await navigator.clipboard.writeText(code.textContent);
    copied = true;
  } catch {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    copied = document.execCommand("copy");
  }
  button.textContent = copied ? uiText("copied") : uiText("selected");
  setTimeout(() => { button.textContent = uiText("copy"); }, 2000);
});

// The detail page's menu marks the part being read.
(() => {
  const links = document.querySelectorAll(".page-menu a[data-section]");
  if (!links.length || !("IntersectionObserver" in window)) return;
  const mark = (id) => links.forEach((link) => link.setAttribute("aria-current", String(link.dataset.section === id)));
  const seen = new Map();
  const observer = new IntersectionObserver((entries) => {
    entries.forEach((entry) => seen.set(entry.target.id, entry.isIntersecting));
    const first = [...links].find((link) => seen.get(link.dataset.section));
    if (first) mark(first.dataset.section);
  }, { rootMargin: "-60px 0px -50% 0px" });
  links.forEach((link) => {
    const section = document.getElementById(link.dataset.section);
    if (section) observer.observe(section);
  });
})();
