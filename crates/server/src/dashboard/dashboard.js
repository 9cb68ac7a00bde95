// tollgate's dashboard: polls /v1/stats (at most once a second) and renders
// it. No dependencies, no build step.
//
// Everything in /v1/stats is data, some of it hostile (keys are whatever
// clients send): the DOM is built with createElement and textContent only,
// never by parsing markup, and the Content-Security-Policy forbids inline
// script.
"use strict";

(function () {
  const STATS = "/v1/stats";
  // Never poll faster than this, whatever the server's interval says.
  const MIN_INTERVAL_MS = 1000;
  // The width of a chart in samples: five minutes at one a second.
  const CHART_SAMPLES = 300;
  // Rows of the top-keys table, always present so that nothing moves.
  const TOP_ROWS = 5;
  const TOKEN_KEY = "tollgate.admin_token";
  const SERIES = ["allowed", "denied", "degraded", "shadow"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let refreshes = 0;
  let lastGood = null;
  // Policy name -> the card's elements, kept across refreshes.
  const cards = new Map();
  // Rows of the store and configuration lists, kept across refreshes.
  const facts = new Map();

  // Any script error or rejected promise is written into the page, where a
  // person (and the browser test) sees it.
  function reportError(text) {
    const line = document.createElement("div");
    line.textContent = text;
    $("errors").appendChild(line);
  }
  window.addEventListener("error", (event) => {
    reportError("script error: " + event.message + " (" + event.filename + ":" + event.lineno + ")");
  });
  window.addEventListener("unhandledrejection", (event) => {
    reportError("unhandled rejection: " + String(event.reason));
  });

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  function num(value) {
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }

  function formatCount(value) {
    const n = num(value);
    if (n === null) return "–";
    if (Math.abs(n) >= 10000) return Math.round(n).toLocaleString("en");
    return String(Math.round(n * 10) / 10);
  }

  function formatDuration(ms) {
    const n = num(ms);
    if (n === null) return "–";
    for (const [unit, size] of [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]]) {
      if (n >= size && n % size === 0) return n / size + unit;
    }
    return n + "ms";
  }

  function formatAgo(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function formatTime(ms) {
    const n = num(ms);
    if (n === null) return "–";
    const d = new Date(n);
    const pad = (v) => String(v).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function formatMs(value) {
    const n = num(value);
    if (n === null) return "–";
    return (n < 10 ? n.toFixed(2) : n.toFixed(1)) + " ms";
  }

  // A key as text a person can read, and as no other key reads: what would
  // not show, or would show as something else, is written as \u{...}
  // (control, format and bidirectional characters, invisible ones, spaces
  // other than one between two characters, and combining marks but up to
  // three on a letter of a script other than Latin, Greek or Cyrillic in a
  // key in NFC, where they are its spelling (Devanagari, Hebrew, Thai): a
  // mark in a key not in NFC could pass for the composed letter (u and
  // U+0308 for ü), one on a Latin, Greek or Cyrillic letter, which NFC
  // composes where it can, for another letter (dotless ı and U+0307 for i),
  // one on a space or a digit for a character of its own, and a fourth on
  // one letter stacks out of the row, where the cell cuts it off), and a
  // backslash as \\, so that no key spells an escape. The cell shows the
  // rest in the order sent (dashboard.css), so right-to-left letters cannot
  // reorder it.
  const HIDDEN = /[\\\p{Cc}\p{Cf}\p{Z}\p{Default_Ignorable_Code_Point}\p{M}]/gu;
  // What a shown mark follows: a letter, and at most two marks on it.
  const MARKED = /(\p{L})\p{M}{0,2}$/u;
  const COMPOSED_SCRIPT = /[\p{Script=Latin}\p{Script=Greek}\p{Script=Cyrillic}]/u;
  function visibleKey(key) {
    const text = String(key);
    const nfc = text.normalize("NFC") === text;
    return text.replace(HIDDEN, (c, at) => {
      if (c === " " && at > 0 && at < text.length - 1 && text[at - 1] !== " " && text[at + 1] !== " ") return c;
      if (nfc && /\p{M}/u.test(c) && !/\p{Default_Ignorable_Code_Point}/u.test(c)) {
        const base = MARKED.exec(text.slice(0, at));
        if (base && !COMPOSED_SCRIPT.test(base[1])) return c;
      }
      return c === "\\" ? "\\\\" : "\\u{" + c.codePointAt(0).toString(16) + "}";
    });
  }

  // A small JSON value (a lease, an unknown field) as "name value, ..." text.
  function describe(value) {
    if (value === null || value === undefined) return "none";
    if (typeof value !== "object") return String(value);
    if (Array.isArray(value)) return value.map(describe).join(", ");
    return Object.entries(value).map(([k, v]) => k.replace(/_/g, " ") + " " + describe(v)).join(", ");
  }

  // ---- policies --------------------------------------------------------

  function newCard(name) {
    const card = el("article", "policy");
    const head = el("div", "policy-head");
    // An Envoy descriptor's value is part of its name: shown as a key is.
    const title = el("h3", null, visibleKey(name));
    const badge = el("span", "badge", "shadow");
    badge.title = "Shadow mode: decisions are counted, never enforced";
    head.append(title, badge);
    const numbers = el("p", "numbers");
    const now = el("dl", "now");
    const values = {};
    for (const series of SERIES) {
      const cell = el("div", series);
      const dd = el("dd", null, "–");
      cell.append(el("dt", null, series + "/s"), dd);
      now.appendChild(cell);
      values[series] = dd;
    }
    const chart = svg("svg", {
      class: "chart", viewBox: "0 0 " + CHART_SAMPLES + " 100", preserveAspectRatio: "none",
      role: "img",
    });
    const chartTitle = svg("title");
    chart.appendChild(chartTitle);
    for (const y of [0, 50, 100]) {
      chart.appendChild(svg("line", {
        class: "grid", x1: 0, x2: CHART_SAMPLES, y1: y, y2: y, "vector-effect": "non-scaling-stroke",
      }));
    }
    const lines = {};
    for (const series of SERIES) {
      lines[series] = svg("polyline", { class: series, points: "", "vector-effect": "non-scaling-stroke" });
      chart.appendChild(lines[series]);
    }
    const axis = el("div", "axis");
    const axisStart = el("span", null, "");
    const axisMax = el("span", null, "");
    axis.append(axisStart, axisMax, el("span", null, "now"));

    const table = el("table", "top");
    const caption = el("caption", null, "Top limited keys (last minute)");
    const head2 = el("thead");
    const headRow = el("tr");
    headRow.append(el("th", null, "key"), el("th", null, "denied"));
    headRow.children[0].scope = "col";
    headRow.children[1].scope = "col";
    head2.appendChild(headRow);
    const body = el("tbody");
    const rows = [];
    for (let i = 0; i < TOP_ROWS; i++) {
      const row = el("tr");
      const key = el("td");
      const count = el("td");
      row.append(key, count);
      body.appendChild(row);
      rows.push({ key, count });
    }
    table.append(caption, head2, body);
    card.append(head, numbers, now, chart, axis, table);
    card.dataset.policy = name;
    return { card, badge, numbers, values, chart, chartTitle, lines, axisStart, axisMax, rows, caption };
  }

  // The smallest of 1, 2, 5 x 10^n at or above `peak`: an axis that reads easily.
  function roundScale(peak) {
    if (!(peak > 1)) return 1;
    const power = 10 ** Math.floor(Math.log10(peak));
    return [1, 2, 5, 10].map((m) => m * power).find((t) => t >= peak);
  }

  function policyNumbers(policy) {
    const parts = [String(policy.algorithm), formatCount(policy.limit) + " per " + formatDuration(policy.period_ms)];
    if (policy.burst !== null && policy.burst !== undefined) parts.push("burst " + formatCount(policy.burst));
    const lease = policy.lease;
    if (lease !== null && lease !== undefined) {
      parts.push(typeof lease === "object" && "max" in lease && "ttl_ms" in lease
        ? "leases of " + formatCount(lease.max) + " for " + formatDuration(lease.ttl_ms)
        : "lease " + describe(lease));
    }
    return parts.join(" · ");
  }

  function renderPolicy(view, policy, intervalMs) {
    view.badge.hidden = policy.shadow !== true;
    view.numbers.textContent = policyNumbers(policy);
    view.numbers.title = view.numbers.textContent;
    const series = policy.series || {};
    const perSecond = 1000 / intervalMs;
    let peak = 0;
    const values = {};
    for (const name of SERIES) {
      const list = Array.isArray(series[name]) ? series[name].slice(-CHART_SAMPLES).map((v) => num(v) || 0) : [];
      values[name] = list;
      for (const v of list) peak = Math.max(peak, v);
      const last = list.length ? list[list.length - 1] * perSecond : null;
      view.values[name].textContent = formatCount(last);
    }
    const top = roundScale(peak);
    for (const name of SERIES) {
      const list = values[name];
      // Newest on the right edge; a short series (a young server) does not stretch.
      const offset = CHART_SAMPLES - list.length;
      view.lines[name].setAttribute("points", list.map((v, i) =>
        (offset + i) + "," + (100 - (v / top) * 100).toFixed(2)).join(" "));
    }
    view.axisStart.textContent = "−" + formatAgo(CHART_SAMPLES * intervalMs);
    view.axisMax.textContent = "scale 0–" + formatCount(top * perSecond) + "/s";
    const lastOf = (name) => formatCount(values[name].length ? values[name][values[name].length - 1] * perSecond : null);
    const label = visibleKey(policy.name) + ": in the last second " + SERIES.map((n) => lastOf(n) + " " + n).join(", ") +
      "; at most " + formatCount(peak * perSecond) + " decisions of one kind per second over the last " +
      formatAgo(CHART_SAMPLES * intervalMs) + ".";
    view.chart.setAttribute("aria-label", label);
    view.chartTitle.textContent = label;

    const top5 = (Array.isArray(policy.top_denied) ? policy.top_denied : []).slice(0, TOP_ROWS);
    const hashed = top5.some((entry) => entry && entry.hashed === true);
    view.caption.textContent = "Top limited keys (last minute" + (hashed ? ", hashed" : "") + ")";
    view.rows.forEach((row, i) => {
      const entry = top5[i];
      if (entry) {
        // The server keeps a key's first 64 bytes: one it cut is marked, or
        // a longer key would read as the key that is those 64 bytes. (No key
        // of at most 64 bytes reads as 64 bytes or more and a mark.)
        const cut = entry.truncated === true;
        const text = visibleKey(entry.key) + (cut ? "…" : "");
        row.key.textContent = text;
        row.key.title = entry.hashed ? "hash of the key (server.dashboard.show_keys is off)" :
          cut ? text + " (the key's first 64 bytes: it is longer)" : text;
        row.key.className = "";
        row.count.textContent = formatCount(entry.denied);
      } else {
        row.key.textContent = i === 0 ? "none denied" : "";
        row.key.className = "muted none";
        row.key.removeAttribute("title");
        row.count.textContent = "";
      }
    });
  }

  function renderPolicies(stats) {
    const intervalMs = Math.max(1, num(stats.interval_ms) || 1000);
    const list = Array.isArray(stats.policies) ? stats.policies : [];
    const container = $("policies");
    const seen = new Set();
    let position = 0;
    for (const policy of list) {
      const name = String(policy.name);
      seen.add(name);
      let view = cards.get(name);
      if (!view) {
        view = newCard(name);
        cards.set(name, view);
      }
      renderPolicy(view, policy, intervalMs);
      // The server's order; a card already in place is left alone (moving
      // it would drop a reader's text selection).
      const here = container.children[position] || null;
      if (here !== view.card) container.insertBefore(view.card, here);
      position += 1;
    }
    for (const [name, view] of cards) {
      if (!seen.has(name)) {
        view.card.remove();
        cards.delete(name);
      }
    }
    $("no-policies").hidden = list.length > 0;
    const omitted = num(stats.policies_omitted) || 0;
    $("omitted").hidden = omitted === 0;
    $("omitted").textContent = omitted + " more polic" + (omitted === 1 ? "y is" : "ies are") +
      " not shown: the dashboard lists the first " + list.length + ".";
    $("span").textContent = formatAgo(CHART_SAMPLES * intervalMs);
  }

  // ---- store and configuration ------------------------------------------

  // Sets the row `label` of the list `listId` (created on first use) to
  // `text`, with an optional class for its value.
  function fact(listId, label, text, tone) {
    const id = listId + "/" + label;
    let dd = facts.get(id);
    if (!dd) {
      const dt = el("dt", null, label);
      dd = el("dd");
      $(listId).append(dt, dd);
      facts.set(id, dd);
    }
    dd.textContent = text;
    dd.className = tone || "";
  }

  // One store into the list `listId`.
  function renderStore(listId, store) {
    store = store || {};
    fact(listId, "Kind", String(store.kind));
    if (store.reachable === true) fact(listId, "Reachable", "yes", "good");
    else fact(listId, "Reachable", "no" + (store.error ? ": " + store.error : ""), "bad");
    const breaker = String(store.breaker).replace(/_/g, " ");
    fact(listId, "Circuit breaker", breaker, store.breaker === "closed" ? "good" : "bad");
    const latency = store.latency_ms || {};
    fact(listId, "Latency (last minute)",
      num(latency.p50) === null && num(latency.p99) === null
        ? "no store calls"
        : "p50 " + formatMs(latency.p50) + " · p99 " + formatMs(latency.p99));
    const cache = store.deny_cache || {};
    const ratio = num(cache.hit_ratio);
    fact(listId, "Deny cache",
      ratio === null
        ? "no lookups yet"
        : (ratio * 100).toFixed(1) + " % hits (" + formatCount(cache.hits) + " of " + formatCount(cache.lookups) + " lookups)");
    fact(listId, "Leases", describe(store.leases));
  }

  function renderConfig(config, nowMs) {
    config = config || {};
    fact("config", "Source", String(config.source));
    const loaded = num(config.loaded_ms);
    fact("config", "Loaded", loaded === null ? "–" : formatTime(loaded) + " (" + formatAgo(nowMs - loaded) + " ago)");
    fact("config", "Reloads", formatCount(config.reloads) + " (" + formatCount(config.reload_failures) + " failed)",
      num(config.reload_failures) > 0 ? "bad" : "");
    if (config.last_error === null || config.last_error === undefined) {
      fact("config", "Last reload error", "none");
    } else {
      const when = num(config.last_error_ms);
      fact("config", "Last reload error",
        String(config.last_error) + (when === null ? "" : " (" + formatTime(when) + ", " + formatAgo(nowMs - when) + " ago)"),
        "bad");
    }
  }

  function render(stats) {
    const nowMs = num(stats.now_ms) || Date.now();
    $("version").textContent = stats.version ? "v" + stats.version : "";
    renderPolicies(stats);
    renderStore("store", stats.store);
    const perSecond = stats.per_second_store;
    $("per-second-panel").hidden = !perSecond;
    if (perSecond) renderStore("per-second-store", perSecond);
    renderConfig(stats.config, nowMs);
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    const started = num(stats.started_ms);
    $("status").textContent = "Updated " + formatTime(nowMs) +
      (started === null ? "" : " · up " + formatAgo(nowMs - started));
  }

  // ---- fetching ----------------------------------------------------------

  function showProblem(text, askToken) {
    $("problem").hidden = false;
    $("problem-text").textContent = text;
    $("token-form").hidden = !askToken;
    document.body.dataset.problem = text;
    if (lastGood === null) $("status").textContent = "No figures yet.";
  }

  function clearProblem() {
    $("problem").hidden = true;
    $("token-form").hidden = true;
    delete document.body.dataset.problem;
  }

  async function problemDetail(response) {
    try {
      const text = (await response.text()).slice(0, 2000);
      try {
        const body = JSON.parse(text);
        if (body && typeof body.detail === "string") return body.detail;
      } catch (_) { /* not JSON: the text itself */ }
      return text.slice(0, 300);
    } catch (_) {
      return "";
    }
  }

  let timer = null;
  let nextInterval = MIN_INTERVAL_MS;

  function schedule(afterMs) {
    clearTimeout(timer);
    timer = setTimeout(poll, afterMs);
  }

  async function poll() {
    const started = performance.now();
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    // fetch refuses a header outside Latin-1 outright, and a Latin-1 byte
    // never equals the UTF-8 of the configured token: neither is the server
    // being down.
    if (token && /[^\x20-\x7e]/.test(token)) {
      showProblem("The token given cannot be sent: an Authorization header carries printable ASCII only, " +
        "and this one has another character (an invisible or a non-ASCII one). Give the token again.", true);
      return;
    }
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(STATS, { headers, cache: "no-store", credentials: "omit" });
    } catch (error) {
      showProblem("Cannot reach the server (" + error.message + "). Retrying every second" +
        (lastGood ? "; the figures below are from " + formatTime(lastGood) + "." : "."), false);
      schedule(MIN_INTERVAL_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      const detail = await problemDetail(response);
      showProblem("This page needs the admin token (server.admin_token) to read /v1/stats" +
        (token ? ": the token given was refused" : "") + ". The server answered " + response.status +
        (detail ? ": " + detail : "") + ".", true);
      // Nothing changes until a token is given: no polling meanwhile.
      return;
    }
    if (!response.ok) {
      const detail = await problemDetail(response);
      showProblem("/v1/stats answered " + response.status + (detail ? ": " + detail : "") +
        ". Retrying every second" + (lastGood ? "; the figures below are from " + formatTime(lastGood) + "." : "."), false);
      schedule(MIN_INTERVAL_MS);
      return;
    }
    let stats;
    try {
      stats = await response.json();
    } catch (error) {
      showProblem("/v1/stats did not answer JSON (" + error.message + "). Retrying every second.", false);
      schedule(MIN_INTERVAL_MS);
      return;
    }
    clearProblem();
    render(stats);
    lastGood = num(stats.now_ms) || Date.now();
    nextInterval = Math.max(MIN_INTERVAL_MS, num(stats.interval_ms) || MIN_INTERVAL_MS);
    schedule(Math.max(0, nextInterval - (performance.now() - started)));
  }

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      schedule(0);
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
