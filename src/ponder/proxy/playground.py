"""`/ui/playground`: ask one question of several routes at once and watch them side by side.

The HTML is rendered on the server (every value escaped); one static inline script, allowed by
its sha256 hash in the page's Content-Security-Policy, sends the question to
`/v1/chat/completions` once per chosen route (streamed, with `include_usage`) and fills each
route's column with its reasoning, its answer, its tokens and its time. The script presents the
key the page was opened with (the password of HTTP Basic auth, or the Bearer key), which the
server writes into the page (`data-key`; the page is never cached). The backend calls come with
the usage, at the end of the stream (`ponder.backend_calls`).

Query parameters prefill the form (`q`, `route` repeated, `model`) and `ask=1` asks at once, so
a comparison can be shared as a link.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence

SCRIPT = r"""
(() => {
  const root = document.getElementById("playground");
  const form = document.getElementById("ask-form");
  const columns = document.getElementById("columns");
  const key = root.dataset.key || "";

  function chosenRoutes() {
    const routes = [...form.querySelectorAll("input[name=route]:checked")].map((b) => b.value);
    for (const r of form.elements.extra.value.split(/[\s,]+/)) {
      if (r && !routes.includes(r)) routes.push(r);
    }
    return routes;
  }

  function element(tag, cls, id, text) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (id) el.id = id;
    if (text) el.textContent = text;
    return el;
  }

  function column(route) {
    const col = element("section", "column", "col-" + route);
    col.appendChild(element("h2", "route", null, route));
    const details = element("details", "reasoning-box");
    details.open = true;
    details.appendChild(element("summary", null, null, "Reasoning"));
    const reasoning = element("pre", "reasoning", "reasoning-" + route);
    details.appendChild(reasoning);
    col.appendChild(details);
    const answer = element("div", "answer", "answer-" + route);
    col.appendChild(answer);
    const stats = element("dl", "stats");
    const cells = {};
    for (const [name, label] of [["tokens", "tokens"], ["calls", "backend calls"],
                                 ["time", "time"]]) {
      stats.appendChild(element("dt", null, null, label));
      cells[name] = element("dd", name, name + "-" + route, "…");
      stats.appendChild(cells[name]);
    }
    col.appendChild(stats);
    const status = element("p", "status", "status-" + route, "waiting");
    col.appendChild(status);
    columns.appendChild(col);
    return { col, reasoning, answer, status, ...cells };
  }

  function errorText(body) {
    try {
      const parsed = JSON.parse(body);
      return (parsed.error && parsed.error.message) || body;
    } catch (_) {
      return body;
    }
  }

  async function ask(route, model, question, view) {
    const started = performance.now();
    const tick = () => {
      view.time.textContent = ((performance.now() - started) / 1000).toFixed(2) + " s";
    };
    const headers = { "Content-Type": "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    try {
      const response = await fetch(location.origin + "/v1/chat/completions", {
        method: "POST",
        headers,
        body: JSON.stringify({
          model: route + "-" + model,
          messages: [{ role: "user", content: question }],
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      if (!response.ok) {
        throw new Error(response.status + ": " + errorText(await response.text()));
      }
      view.status.textContent = "streaming";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
            for (const choice of chunk.choices || []) {
              const delta = choice.delta || {};
              if (delta.reasoning_content) view.reasoning.textContent += delta.reasoning_content;
              if (delta.content) view.answer.textContent += delta.content;
            }
            if (chunk.usage) {
              const u = chunk.usage;
              view.tokens.textContent = u.total_tokens + " (" + u.prompt_tokens + " in, " +
                u.completion_tokens + " out)";
            }
            if (chunk.ponder && chunk.ponder.backend_calls !== undefined) {
              view.calls.textContent = String(chunk.ponder.backend_calls);
            }
          }
        }
        tick();
      }
      tick();
      view.status.textContent = "done";
      view.col.classList.add("done");
    } catch (error) {
      tick();
      view.status.textContent = "error: " + error.message;
      view.col.classList.add("failed");
    }
  }

  async function run(event) {
    if (event) event.preventDefault();
    const routes = chosenRoutes();
    const question = form.elements.q.value.trim();
    const model = form.elements.model.value;
    const notice = document.getElementById("notice");
    if (!routes.length || !question) {
      notice.textContent = "Choose at least one route and type a question.";
      return;
    }
    notice.textContent = "";
    columns.replaceChildren();
    root.dataset.state = "running";
    await Promise.all(routes.map((r) => ask(r, model, question, column(r))));
    root.dataset.state = "done";
  }

  form.addEventListener("submit", run);
  if (root.dataset.ask === "1") run();
})();
"""

SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; script-src '{SCRIPT_HASH}'; "
    "connect-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f;
       background: #fafafa; }
h1 { margin: 0 0 .6rem; }
fieldset { border: 1px solid #ddd; border-radius: 6px; margin: 0 0 .8rem; background: #fff; }
.routes label { display: inline-block; margin: 0 .9rem .2rem 0; font-size: 14px; }
.routes .plugin { color: #555; font-style: italic; }
textarea { width: 100%; box-sizing: border-box; font: inherit; }
#notice { color: #b3261e; }
#columns { display: flex; gap: .8rem; align-items: flex-start; overflow-x: auto; }
.column { flex: 1 1 0; min-width: 18rem; background: #fff; border: 1px solid #ddd;
          border-radius: 6px; padding: .5rem .8rem; }
.column h2 { margin: 0 0 .4rem; font-size: 17px; font-family: ui-monospace, monospace; }
.reasoning { white-space: pre-wrap; font: 12px/1.35 ui-monospace, monospace; color: #555;
             max-height: 20rem; overflow-y: auto; margin: .3rem 0; }
.answer { white-space: pre-wrap; border-top: 1px solid #eee; padding-top: .4rem;
          min-height: 1.5rem; }
.stats { display: grid; grid-template-columns: auto 1fr; gap: 0 .6rem; font-size: 13px; }
.stats dt { color: #666; } .stats dd { margin: 0; }
.status { font-size: 12px; color: #666; } .failed .status { color: #b3261e; }
"""


def render(
    *,
    tenant: str,
    key: str,
    slugs: Sequence[str],
    plugins: Sequence[str],
    models: Sequence[str],
    question: str,
    routes: Sequence[str],
    model: str | None,
    ask: bool,
) -> str:
    """The whole page. `slugs` are the registry's strategies, `plugins` its plugins (layers
    around a route); `routes` are prefilled (known ones ticked, the rest in the free field)."""
    e = html.escape
    known = set(slugs) | set(plugins)
    chosen = [r for r in routes if r] or ["none"]
    extra = " ".join(r for r in chosen if r not in known)

    def box(slug: str, cls: str) -> str:
        checked = " checked" if slug in chosen else ""
        return (
            f'<label class="{cls}"><input type="checkbox" name="route" value="{e(slug)}"'
            f' id="route-{e(slug)}"{checked}> {e(slug)}</label>'
        )

    options = "".join(
        f'<option value="{e(m)}"{" selected" if m == model else ""}>{e(m)}</option>' for m in models
    )
    content = (
        f'<main id="playground" data-key="{e(key)}" data-ask="{"1" if ask else "0"}">'
        "<h1>Playground</h1>"
        f'<p id="summary">Tenant <b id="tenant">{e(tenant)}</b>. Ask one question of several '
        "routes at once; each streams its reasoning and its answer.</p>"
        '<form id="ask-form">'
        '<fieldset class="routes" id="strategies"><legend>Strategies</legend>'
        + "".join(box(s, "strategy") for s in slugs)
        + '</fieldset><fieldset class="routes" id="plugins">'
        "<legend>Plugins (around <code>none</code>)</legend>"
        + "".join(box(s, "plugin") for s in plugins)
        + "</fieldset><fieldset><legend>More routes</legend>"
        '<input type="text" name="extra" id="extra" size="40" '
        f'placeholder="e.g. spl&amp;moa readurls&amp;sc" value="{e(extra)}"> '
        '<label>Model <select name="model" id="model">' + options + "</select></label></fieldset>"
        '<textarea name="q" id="question" rows="4" placeholder="Your question" required>'
        + e(question)
        + '</textarea><p><button type="submit" id="ask">Ask</button> '
        '<span id="notice"></span></p></form>'
        '<div id="columns"></div></main>'
        f"<script>{SCRIPT}</script>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Ponder playground: {e(tenant)}</title><style>{STYLE}</style></head>"
        f"<body>{content}</body></html>\n"
    )
