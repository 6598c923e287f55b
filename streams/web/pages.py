"""The HTML pages: plain HTML, one stylesheet and one script, no build step.

Pages carry their parameters in a ``<script type="application/json" id="vrec-config">`` block
and all behaviour is in ``/static/vrec.js`` (so a strict Content-Security-Policy holds); the
script fills the pages from the JSON API and builds DOM nodes with ``textContent`` only.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
REFRESH_MS = 3000

CSS = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #e5e5ea; --accent: #c8102e; --bg: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 1.5rem; padding: .8rem 1.5rem;
         background: #fff; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; font-size: 1.2rem; color: var(--accent); text-decoration: none; }
header nav a { color: var(--muted); margin-right: 1rem; text-decoration: none; }
main { max-width: 1280px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.5rem; margin: .6rem 0 .2rem; word-break: break-all; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
.muted, .status { color: var(--muted); font-size: .85rem; }
.status.error { color: var(--accent); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 14px; }
.grid.small { grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)); }
.card { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
        overflow: hidden; display: flex; flex-direction: column; }
.card a.img { display: block; aspect-ratio: 3 / 4; background: #f2f2f2; }
.card img { width: 100%; height: 100%; object-fit: contain; display: block; }
.card figcaption { padding: .45rem .55rem .6rem; font-size: .82rem; }
.card .title { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .score { font-variant-numeric: tabular-nums; color: var(--muted); }
.card .reason { margin-top: .2rem; color: #0a5; }
.card .reason.trending { color: #b60; }
.badge { display: inline-block; font-size: .7rem; padding: 0 .4rem; border-radius: 9px;
         background: #eee; color: #333; margin-right: .3rem; }
.badge.purchase { background: #fde2e4; color: #a0001c; }
.badge.view { background: #e4effd; color: #0b4aa2; }
.hero { display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }
.hero img { width: 280px; max-width: 100%; border: 1px solid var(--line); border-radius: 8px;
            background: #fff; }
.hero dl { display: grid; grid-template-columns: auto 1fr; gap: .2rem 1rem; margin: 0; }
.hero dt { color: var(--muted); }
form.box { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem;
           display: flex; gap: .8rem; flex-wrap: wrap; align-items: end; }
form.box label { display: flex; flex-direction: column; font-size: .8rem; color: var(--muted); }
form.box input[type=text], form.box input[type=password] {
  padding: .35rem; border: 1px solid var(--line); border-radius: 4px; }
button { padding: .45rem 1rem; border: 0; border-radius: 4px; background: var(--accent);
         color: #fff; font-weight: 600; cursor: pointer; }
.preview { max-height: 160px; border-radius: 6px; }
ul.links { padding-left: 1.2rem; }
.empty { color: var(--muted); font-style: italic; }
.spaced { margin-top: 1rem; }
"""

JS = r"""
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const config = JSON.parse(($("#vrec-config") || { textContent: "{}" }).textContent);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function setStatus(text, error = false) {
  const s = $("#status");
  if (!s) return;
  s.textContent = text;
  s.classList.toggle("error", error);
}

async function getJSON(url, options = {}) {
  const r = await fetch(url, { cache: "no-store", ...options });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

// One product card: image (links to the item page), title and optional lines.
function card(item, lines = [], cls = "") {
  const label = item.title ? `${item.item_id}: ${item.title}` : item.item_id;
  const img = el("img", { src: item.image_url, alt: label, title: label, loading: "eager",
                          "data-item-id": item.item_id });
  return el("figure", { class: `card ${cls}`, "data-item-id": item.item_id },
    el("a", { class: "img", href: item.url }, img),
    el("figcaption", {}, el("div", { class: "title", text: item.title || item.item_id }),
       ...lines));
}

function fmtScore(s) { return typeof s === "number" ? s.toFixed(3) : ""; }
function fmtDate(ts) { return ts ? new Date(ts * 1000).toISOString().slice(0, 10) : ""; }

// ---- /users/{id} ----------------------------------------------------------------------------
let userSig = null;
let userVersion = 0;

function renderUser(data) {
  const hist = $("#history");
  hist.replaceChildren(...data.history.map(h => card(h, [
    el("div", {},
       el("span", { class: `badge ${h.kind}`, text: h.kind === "purchase" ? "bought" : "viewed" }),
       el("span", { class: "muted", text: fmtDate(h.ts) })),
  ], "history-item")));
  if (!data.history.length) {
    hist.append(el("p", { class: "empty", text: "No activity yet: showing what is trending." }));
  }
  const recs = $("#recs");
  recs.replaceChildren(...data.items.map(it => card(it, [
    el("div", { class: "score", text: `score ${fmtScore(it.score)}` }),
    el("div", { class: `reason ${it.reason}`, text: it.reason_text }),
  ], "rec")));
  recs.setAttribute("data-rec-ids", data.items.map(i => i.item_id).join(","));
  $("#summary").textContent = data.known
    ? `${data.n_events} events · ${data.strategy} recommendations`
    : "unknown user · trending recommendations";
  if (data.variant) $("#summary").textContent += ` · variant ${data.variant}`;
  userVersion += 1;
  document.body.setAttribute("data-version", String(userVersion));
  document.body.setAttribute("data-rendered-at", String(performance.now()));
}

async function refreshUser() {
  try {
    const data = await getJSON(config.api);
    const sig = JSON.stringify([data.items.map(i => [i.item_id, fmtScore(i.score), i.reason_text]),
                                data.history.map(h => [h.item_id, h.kind, h.ts]), data.n_events]);
    if (sig !== userSig) { renderUser(data); userSig = sig; }
    setStatus(`live · updated ${new Date().toLocaleTimeString()} · model ${data.model_id}`);
  } catch (e) {
    setStatus(`refresh failed: ${e.message}`, true);
  } finally {
    setTimeout(refreshUser, config.refresh_ms || 3000);
  }
}

// ---- /items/{id} ----------------------------------------------------------------------------
function renderItem(data) {
  const it = data.item;
  const dl = el("dl", {});
  for (const [k, v] of [["item id", it.item_id], ["category", it.category],
                        ["product code", it.product_code]]) {
    if (v) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  }
  $("#item").replaceChildren(el("div", { class: "hero" },
    el("img", { src: it.image_url, alt: `${it.item_id}: ${it.title || ""}`,
                "data-item-id": it.item_id }),
    el("div", {}, el("h1", { text: it.title || it.item_id }), dl)));
  const grid = $("#similar");
  grid.replaceChildren(...data.items.map(s => card(s, [
    el("div", { class: "score", text: `similarity ${fmtScore(s.score)}` })], "similar")));
  grid.setAttribute("data-rec-ids", data.items.map(i => i.item_id).join(","));
}

async function loadItem() {
  try {
    renderItem(await getJSON(config.api));
    setStatus(`${config.k} visually similar items`);
  } catch (e) {
    setStatus(`${e.message} (retrying: a new upload appears once it is encoded)`, true);
    setTimeout(loadItem, config.refresh_ms || 3000);
  }
}

// ---- / --------------------------------------------------------------------------------------
function previewFile(input, target) {
  const f = input.files && input.files[0];
  target.replaceChildren();
  if (f) {
    target.append(el("img", { class: "preview", src: URL.createObjectURL(f), alt: "your image" }));
  }
}

async function searchByImage(ev) {
  ev.preventDefault();
  const form = ev.target;
  const out = $("#search-results");
  out.replaceChildren(el("p", { class: "muted", text: "searching…" }));
  try {
    const data = await getJSON("/search/image?k=12", { method: "POST", body: new FormData(form) });
    out.replaceChildren(...data.items.map(s => card(s, [
      el("div", { class: "score", text: `similarity ${fmtScore(s.score)}` })])));
    if (!data.items.length) out.append(el("p", { class: "empty", text: "No items indexed yet." }));
  } catch (e) {
    out.replaceChildren(el("p", { class: "status error", text: e.message }));
  }
}

async function uploadProduct(ev) {
  ev.preventDefault();
  const out = $("#upload-result");
  out.textContent = "uploading…";
  try {
    const form = new FormData(ev.target);
    const token = form.get("token");  // the write token travels as a header, not a field
    form.delete("token");
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const data = await getJSON("/items", { method: "POST", body: form, headers });
    out.replaceChildren("Accepted ", el("a", { href: data.url, text: data.item_id }),
                        ": it appears once the encoder has indexed it.");
  } catch (e) {
    out.replaceChildren(el("span", { class: "status error", text: e.message }));
  }
}

async function loadHealth() {
  try {
    const h = await getJSON("/health");
    setStatus(`${h.ok ? "ok" : "starting"} · ${h.store_count} items · model ${h.model_id}`);
  } catch (e) { setStatus(`health: ${e.message}`, true); }
}

document.addEventListener("DOMContentLoaded", () => {
  if (config.page === "user") refreshUser();
  if (config.page === "item") loadItem();
  if (config.page === "index") {
    loadHealth();
    const s = $("#search-form");
    s.addEventListener("submit", searchByImage);
    s.image.addEventListener("change", () => previewFile(s.image, $("#search-preview")));
    $("#upload-form").addEventListener("submit", uploadProduct);
  }
});
"""


def _config(data: Mapping[str, Any]) -> str:
    # JSON inside <script>: "<" escaped so no "</script>" can end the block early.
    return json.dumps(data).replace("<", "\\u003c")


def layout(title: str, body: str, config: Mapping[str, Any]) -> str:
    """A full page around ``body`` (trusted HTML) with its config block and the script."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · vrec</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/vrec.css">
<script type="application/json" id="vrec-config">{_config(config)}</script>
<script src="/static/vrec.js" defer></script>
</head>
<body>
<header><a class="brand" href="/">vrec</a>
<nav><a href="/">search by image</a><a href="/health">health</a><a href="/metrics">metrics</a></nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""


def user_page(user_id: str, api: str) -> str:
    e = html.escape(user_id)
    body = f"""<h1>User {e}</h1>
<p class="muted"><span id="summary">loading…</span> · <span id="status" class="status"></span></p>
<h2>Recently bought and viewed</h2>
<div id="history" class="grid small"></div>
<h2>Recommended for you</h2>
<div id="recs" class="grid"></div>
"""
    return layout(
        f"user {user_id}",
        body,
        {"page": "user", "user_id": user_id, "api": api, "refresh_ms": REFRESH_MS},
    )


def item_page(item_id: str, api: str, k: int) -> str:
    body = f"""<div id="item"><h1>Item {html.escape(item_id)}</h1></div>
<h2>Visually similar</h2>
<p id="status" class="status">loading…</p>
<div id="similar" class="grid"></div>
"""
    return layout(
        f"item {item_id}",
        body,
        {"page": "item", "item_id": item_id, "api": api, "k": k, "refresh_ms": REFRESH_MS},
    )


def _links(rows: Sequence[tuple[str, str]]) -> str:
    if not rows:
        return '<p class="empty">none yet</p>'
    items = "".join(
        f'<li><a href="{html.escape(url)}">{html.escape(text)}</a></li>' for url, text in rows
    )
    return f'<ul class="links">{items}</ul>'


def index_page(users: Sequence[Mapping[str, Any]], trending: Sequence[Mapping[str, Any]]) -> str:
    trending_html = "".join(
        f'<figure class="card"><a class="img" href="{html.escape(t["url"])}">'
        f'<img src="{html.escape(t["image_url"])}" alt="{html.escape(t["item_id"])}"></a>'
        f'<figcaption><div class="title">{html.escape(t["title"] or t["item_id"])}</div>'
        f"</figcaption></figure>"
        for t in trending
    )
    body = f"""<h1>Visual recommendations</h1>
<p id="status" class="status"></p>
<h2>Find products that look like a photo</h2>
<form id="search-form" class="box" enctype="multipart/form-data">
  <label>image <input type="file" name="image" accept="image/*" required></label>
  <button type="submit">Search</button>
  <span id="search-preview"></span>
</form>
<div id="search-results" class="grid spaced"></div>
<h2>Add a product</h2>
<form id="upload-form" class="box" enctype="multipart/form-data">
  <label>image <input type="file" name="image" accept="image/*" required></label>
  <label>item id (optional)
    <input type="text" name="item_id" pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{{0,127}}"></label>
  <label>title <input type="text" name="title"></label>
  <label>category <input type="text" name="category"></label>
  <label>write token <input type="password" name="token" autocomplete="off"></label>
  <button type="submit">Upload</button>
  <span id="upload-result" class="muted"></span>
</form>
<h2>Some users</h2>
{_links([(u["url"], f"{u['user_id']} ({u['n_events']} events)") for u in users])}
<h2>Trending</h2>
<div class="grid small">{trending_html or '<p class="empty">nothing yet</p>'}</div>
"""
    return layout("vrec", body, {"page": "index"})
