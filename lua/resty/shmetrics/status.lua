-- resty.shmetrics.status: a live status page served by nginx itself.
--
--   location = /status { content_by_lua_block { prometheus:status() } }
--
-- GET /status          one self-contained HTML document (inline CSS and script,
--                      nothing fetched from elsewhere) that polls:
-- GET /status?data=1   a bounded JSON snapshot: every family with its series
--                      count (no series), the gateway catalog's families (at most
--                      CATALOG_LIMIT series each), one page of one family's series
--                      (&family=NAME&offset=N&limit=N&match=TEXT, at most
--                      PAGE_LIMIT series), and the self-metrics.
-- Anything but GET and HEAD is answered 405. See docs/status.md.

local type = type
local tonumber = tonumber
local pairs = pairs
local concat = table.concat
local floor = math.floor
local str_format = string.format
local str_byte = string.byte
local str_char = string.char
local str_gsub = string.gsub
local bit = require "bit"
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit = bit.rshift, bit.lshift, bit.ror, bit.tobit
local ngx = ngx

local _M = { _VERSION = "0.1.0" }

-- Most series of one family in the page's table, per poll.
local PAGE_LIMIT = 100
local PAGE_DEFAULT = 50
-- Most series per gateway-catalog family, per poll (namespaces x models x status).
local CATALOG_LIMIT = 1000
-- Longest family name and filter text a poll may send.
local MAX_ARG = 256

-- The families the gateway section reads (docs/gateway.md).
local CATALOG = {
    "namespace_requests_total", "namespace_tokens_total", "model_requests_total",
    "model_tokens_input_total", "model_tokens_output_total", "model_cost_usd_total",
    "model_request_duration_seconds", "model_time_to_first_token_seconds",
}

-- The self-metrics (README.md, "Self-metrics"), read from their exposition.
local SELF = {
    "shmetrics_errors_total", "shmetrics_series_used", "shmetrics_series_capacity",
    "shmetrics_worker_slots", "shmetrics_series_dropped_total",
    "shmetrics_series_overflow_total", "shmetrics_region_replaced",
}

------------------------------------------------------------------------------
-- SHA-256, for the Content-Security-Policy hashes of the inline style and
-- script (computed once, when this module loads).

local K256 = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256(msg)
    local len = #msg
    -- Padding: 0x80, zeros, then the length in bits as a 64-bit big-endian number.
    local pad = 64 - (len + 9) % 64
    if pad == 64 then
        pad = 0
    end
    local bits = len * 8
    local tail = { "\128", string.rep("\0", pad) }
    for i = 7, 0, -1 do
        tail[#tail + 1] = str_char(floor(bits / 2 ^ (8 * i)) % 256)
    end
    msg = msg .. concat(tail)
    local h = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
    for i = 1, #h do
        h[i] = tobit(h[i])
    end
    local w = {}
    for chunk = 1, #msg, 64 do
        for t = 0, 15 do
            local a, b, c, d = str_byte(msg, chunk + 4 * t, chunk + 4 * t + 3)
            w[t] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
        end
        for t = 16, 63 do
            local x, y = w[t - 15], w[t - 2]
            local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
            local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
            w[t] = tobit(w[t - 16] + s0 + w[t - 7] + s1)
        end
        local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
        for t = 0, 63 do
            local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
            local ch = bxor(band(e, f), band(bnot(e), g))
            local t1 = tobit(hh + S1 + ch + tobit(K256[t + 1]) + w[t])
            local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
            local maj = bxor(band(a, b), band(a, c), band(b, c))
            local t2 = tobit(S0 + maj)
            hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
        end
        h[1], h[2], h[3], h[4] = tobit(h[1] + a), tobit(h[2] + b), tobit(h[3] + c), tobit(h[4] + d)
        h[5], h[6], h[7], h[8] = tobit(h[5] + e), tobit(h[6] + f), tobit(h[7] + g), tobit(h[8] + hh)
    end
    local out = {}
    for i = 1, 8 do
        local v = h[i]
        out[i] = str_char(band(rshift(v, 24), 255), band(rshift(v, 16), 255),
                          band(rshift(v, 8), 255), band(v, 255))
    end
    return concat(out)
end
_M._sha256 = sha256  -- for tests

------------------------------------------------------------------------------
-- The page. Every value from the registry (names, help texts, label values)
-- reaches the document through textContent or a canvas, never as markup.

local STYLE = [==[
:root{--fg:#1d2330;--mut:#667085;--bg:#f6f7f9;--card:#fff;--line:#e3e6eb;--acc:#2f6fde;--warn:#b54708;--warnbg:#fef0c7;--bad:#b42318;--badbg:#fee4e2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px;padding:12px 20px;background:var(--card);border-bottom:1px solid var(--line)}
h1{font-size:18px;margin:0}
h2{font-size:15px;margin:0 0 8px}
main{padding:12px 20px;display:grid;gap:14px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow-x:auto}
.mut{color:var(--mut)}
.banner{border-radius:8px;padding:10px 14px;font-weight:600}
.banner.warn{background:var(--warnbg);color:var(--warn)}
.banner.bad{background:var(--badbg);color:var(--bad)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:12px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.tile .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.tile canvas{width:100%;height:44px;display:block;margin-top:4px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--mut);font-size:12px}
th:first-child,td:first-child{text-align:left}
td.t{text-align:left;white-space:pre-wrap;word-break:break-all;max-width:420px}
tr.total td{font-weight:650;border-top:2px solid var(--line)}
tr.sel td{background:#eef4ff}
.bar{height:8px;background:var(--line);border-radius:4px;overflow:hidden;margin:6px 0}
.bar>div{height:100%;background:var(--acc)}
.bar.warn>div{background:var(--warn)}
.bar.bad>div{background:var(--bad)}
.nz{color:var(--bad);font-weight:600}
button{font:inherit;border:1px solid var(--line);background:var(--card);border-radius:6px;padding:2px 8px;cursor:pointer}
button.link{border:0;background:none;color:var(--acc);padding:0;text-align:left}
input{font:inherit;padding:2px 6px;border:1px solid var(--line);border-radius:6px}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:8px}
.grid2{display:grid;grid-template-columns:minmax(260px,1fr) minmax(320px,2fr);gap:14px}
@media (max-width:800px){.grid2{grid-template-columns:1fr}}
th.t{text-align:left}
td.w{text-align:left;white-space:normal;color:var(--mut)}
#gw{display:grid;gap:14px}
[hidden]{display:none!important}
]==]

local SCRIPT = [==[
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // Poll interval in seconds (?every=N on the page's URL; tests set it high and poll by hand).
  const every = Math.min(3600, Math.max(1, Number(params.get("every")) || 5));
  const HISTORY_S = 600;   // the charts' span, kept in this page only
  const st = { family: null, offset: 0, limit: 50, match: "", prev: null, cur: null,
               history: [], polls: 0, busy: false, error: null, pageSig: null };

  const num = (v) => (typeof v === "number" ? v : v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : NaN);
  const fmtInt = (v) => (Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "—");
  const fmtNum = (v) => {
    if (typeof v === "string") return v;
    if (!Number.isFinite(v)) return "—";
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
    return String(Number(v.toPrecision(6)));
  };
  const fmt3 = (v) => (v == null || !Number.isFinite(v) ? "—" : String(Number(v.toPrecision(3))));
  const fmtUsd = (v) => (Number.isFinite(v) ? "$" + String(Number(v.toPrecision(6))) : "—");
  const fmtPct = (v) => (v == null || !Number.isFinite(v) ? "—" : String(Number((v * 100).toPrecision(3))) + "%");
  const fmtSec = (v) => (v == null || !Number.isFinite(v) ? "—" : String(Number(v.toPrecision(3))) + " s");

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells, cls) {
    const tr = el("tr", null, cls);
    cells.forEach((c, i) => {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el("td", c, i === 0 ? "t" : null));
    });
    return tr;
  }
  function setRows(tbody, rows) { tbody.replaceChildren(...rows); }
  function head(tr, names, left) { tr.replaceChildren(...names.map((n, i) => el("th", n, i < left ? "t" : null))); }

  // A snapshot's families by name, each series by its labels.
  function index(doc) {
    const m = new Map();
    for (const f of (doc && doc.families) || []) {
      const series = new Map();
      for (const s of f.series) series.set(JSON.stringify(s.labels), s);
      m.set(f.name, { fam: f, series });
    }
    return m;
  }

  // Per value of label `by`: total now, and the increase since the previous poll
  // (null without one; a series new since then counts from 0; a reset from its value).
  function groups(cur, prev, name, by, pick) {
    const out = new Map();
    const f = cur.get(name);
    if (!f) return out;
    const pf = prev ? prev.get(name) : null;
    for (const [k, s] of f.series) {
      if (pick && !pick(s.labels)) continue;
      const g = by ? s.labels[by] : "";
      const v = num(s.value);
      let o = out.get(g);
      if (!o) out.set(g, (o = { total: 0, delta: prev ? 0 : null }));
      o.total += v;
      if (prev) {
        const ps = pf ? pf.series.get(k) : null;
        const p = ps ? num(ps.value) : 0;
        o.delta += v >= p ? v - p : v;
      }
    }
    return out;
  }

  // Per value of `by`: a histogram's buckets summed, as increases since the
  // previous poll: { bounds, cum } (cumulative counts in the window).
  function bucketGroups(cur, prev, name, by) {
    const out = new Map();
    const f = cur.get(name);
    if (!f || !prev) return out;
    const pf = prev.get(name);
    for (const [k, s] of f.series) {
      const g = s.labels[by];
      const ps = pf ? pf.series.get(k) : null;
      let o = out.get(g);
      if (!o) out.set(g, (o = { bounds: s.buckets.map((b) => num(b[0])), cum: s.buckets.map(() => 0) }));
      if (o.cum.length !== s.buckets.length) continue;
      const reset = ps && num(ps.count) > num(s.count);
      s.buckets.forEach((b, i) => { o.cum[i] += num(b[1]) - (ps && !reset ? num(ps.buckets[i][1]) : 0); });
    }
    return out;
  }

  // The q-quantile of cumulative bucket counts, interpolated linearly inside
  // the bucket (as Prometheus's histogram_quantile does).
  function quantile(q, h) {
    if (!h) return null;
    const n = h.cum.length;
    const total = h.cum[n - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    let i = 0;
    while (i < n - 1 && h.cum[i] < rank) i++;
    if (i === n - 1) return h.bounds[n - 2];       // in +Inf: the largest finite bound
    const hi = h.bounds[i];
    const lo = i === 0 ? 0 : h.bounds[i - 1];
    if (i === 0 && hi <= 0) return hi;
    const below = i === 0 ? 0 : h.cum[i - 1];
    return lo + (hi - lo) * (rank - below) / (h.cum[i] - below);
  }

  function rate(o, win) { return o && o.delta != null && win > 0 ? o.delta / win : null; }

  function renderGateway(doc, win) {
    const cur = index(doc.catalog);
    const prev = st.prev ? index(st.prev.catalog) : null;
    const present = cur.has("namespace_requests_total") || cur.has("model_requests_total");
    $("gw").hidden = !present;
    if (!present) return null;
    const truncated = doc.catalog.families.filter((f) => f.series_count > f.series.length);
    $("gw-trunc").hidden = truncated.length === 0;
    $("gw-trunc").textContent = truncated.length
      ? "Only the first " + doc.limits.catalog + " series of " + truncated.map((f) => f.name).join(", ") + " are read: figures are partial." : "";

    const nsReq = groups(cur, prev, "namespace_requests_total", "namespace");
    const nsErr = groups(cur, prev, "namespace_requests_total", "namespace", (l) => l.status === "error");
    const nsIn = groups(cur, prev, "namespace_tokens_total", "namespace", (l) => l.token_type === "input");
    const nsOut = groups(cur, prev, "namespace_tokens_total", "namespace", (l) => l.token_type === "output");
    const nsCost = groups(cur, prev, "model_cost_usd_total", "namespace");
    const names = [...new Set([...nsReq.keys(), ...nsIn.keys(), ...nsCost.keys()])].sort();
    const sum = (m) => { let t = 0, d = prev ? 0 : null; for (const o of m.values()) { t += o.total; if (d != null) d += o.delta; } return { total: t, delta: d }; };
    const errRatio = (r, e) => (r && r.delta > 0 ? (e ? e.delta : 0) / r.delta : null);
    const totRatio = (r, e) => (r && r.total > 0 ? (e ? e.total : 0) / r.total : null);
    const line = (name, r, e, i, o, c, cls) => row([name, fmt3(rate(r, win)), fmtPct(errRatio(r, e)), fmt3(rate(i, win)), fmt3(rate(o, win)),
      fmt3(c && rate(c, win) != null ? rate(c, win) * 3600 : null), fmtInt(r ? r.total : 0), fmtPct(totRatio(r, e)),
      fmtInt(i ? i.total : 0), fmtInt(o ? o.total : 0), fmtUsd(c ? c.total : 0)], cls);
    const T = { r: sum(nsReq), e: sum(nsErr), i: sum(nsIn), o: sum(nsOut), c: sum(nsCost) };
    setRows($("ns-body"), names.map((n) => line(n, nsReq.get(n), nsErr.get(n), nsIn.get(n), nsOut.get(n), nsCost.get(n)))
      .concat([line("total", T.r, T.e, T.i, T.o, T.c, "total")]));

    const mReq = groups(cur, prev, "model_requests_total", "model");
    const mErr = groups(cur, prev, "model_requests_total", "model", (l) => l.status === "error");
    const mIn = groups(cur, prev, "model_tokens_input_total", "model");
    const mOut = groups(cur, prev, "model_tokens_output_total", "model");
    const mCost = groups(cur, prev, "model_cost_usd_total", "model");
    const mLat = bucketGroups(cur, prev, "model_request_duration_seconds", "model");
    const mTtft = bucketGroups(cur, prev, "model_time_to_first_token_seconds", "model");
    const models = [...new Set([...mReq.keys(), ...mIn.keys(), ...mCost.keys()])].sort();
    setRows($("model-body"), models.map((m) => {
      const r = mReq.get(m), e = mErr.get(m), i = mIn.get(m), o = mOut.get(m), c = mCost.get(m);
      return row([m, fmt3(rate(r, win)), fmtPct(errRatio(r, e)), fmt3(rate(i, win)), fmt3(rate(o, win)),
        fmt3(c && rate(c, win) != null ? rate(c, win) * 3600 : null),
        fmtSec(quantile(0.5, mLat.get(m))), fmtSec(quantile(0.95, mLat.get(m))),
        fmtSec(quantile(0.5, mTtft.get(m))), fmtSec(quantile(0.95, mTtft.get(m))),
        fmtInt(r ? r.total : 0), fmtInt(i ? i.total : 0), fmtInt(o ? o.total : 0), fmtUsd(c ? c.total : 0)]);
    }));
    return { req: rate(T.r, win), err: errRatio(T.r, T.e), tok: (rate(T.i, win) == null ? null : rate(T.i, win) + rate(T.o, win)),
             cost: rate(T.c, win) == null ? null : rate(T.c, win) * 3600 };
  }

  function renderSelf(self) {
    const used = num(self.shmetrics_series_used), cap = num(self.shmetrics_series_capacity);
    const ratio = cap > 0 ? used / cap : 0;
    $("self-series").textContent = fmtInt(used) + " of " + fmtInt(cap) + " series (" + fmtPct(ratio) + ")";
    const bar = $("self-bar");
    bar.className = "bar" + (ratio >= 0.95 ? " bad" : ratio >= 0.8 ? " warn" : "");
    bar.firstChild.style.width = Math.min(100, ratio * 100).toFixed(1) + "%";
    const slots = self.shmetrics_worker_slots || {};
    $("self-slots").textContent = "worker slots: " + fmtInt(num(slots.live)) + " live, " + fmtInt(num(slots.dead)) +
      " dead, " + fmtInt(num(slots.free)) + " free";
    const prevSelf = st.prev ? st.prev.self : null;
    const errs = self.shmetrics_errors_total || {};
    // Reasons that refused something; one line when none did.
    const refused = Object.keys(errs).sort().filter((k) => num(errs[k]) > 0);
    setRows($("self-errors"), refused.length ? refused.map((k) => {
      const tr = row([k, fmtInt(num(errs[k]))]);
      tr.cells[1].className = "nz";
      return tr;
    }) : [row(["none", "0"])]);
    const perFamily = (obj, what) => Object.keys(obj || {}).sort().map((k) => row([k, what, fmtInt(num(obj[k]))]));
    const fam = perFamily(self.shmetrics_series_dropped_total, "dropped (store full)")
      .concat(perFamily(self.shmetrics_series_overflow_total, "sent to __overflow__"));
    setRows($("self-families"), fam.length ? fam : [row(["none", "", ""])]);
    const replaced = Object.keys(self.shmetrics_region_replaced || {});
    const warnings = [];
    let level = "warn";
    if (ratio >= 0.8) warnings.push("Series store " + fmtPct(ratio) + " full (" + fmtInt(used) + " of " + fmtInt(cap) +
      "): raise max_series and restart, or lower a label's cardinality.");
    if (ratio >= 0.95) level = "bad";
    const dropped = Object.values(self.shmetrics_series_dropped_total || {}).reduce((a, b) => a + num(b), 0);
    if (dropped > 0) { warnings.push(fmtInt(dropped) + " new series refused: the store is full."); level = "bad"; }
    if (Object.keys(self.shmetrics_series_overflow_total || {}).length)
      warnings.push("Some families exceeded their own max_series (counted in __overflow__).");
    if (num(slots.free) === 0) warnings.push("No free worker slot: raise max_slots.");
    const prevErr = prevSelf ? prevSelf.shmetrics_errors_total || {} : null;
    const newErr = prevErr ? Object.keys(errs).filter((k) => num(errs[k]) > num(prevErr[k] || 0)) : [];
    if (newErr.length) warnings.push("Updates refused since the last poll: " + newErr.join(", ") + ".");
    if (replaced.length) warnings.push("The region replaced an unusable file (" + replaced.join(", ") + "): see the error log.");
    const b = $("banner");
    b.hidden = warnings.length === 0;
    b.className = "banner " + level;
    b.textContent = warnings.join(" ");
    return used;
  }

  function renderFamilies(doc) {
    const fams = doc.summary.families;
    $("fam-count").textContent = fams.length + " families, " +
      fmtInt(fams.reduce((a, f) => a + f.series_count, 0)) + " series";
    setRows($("fam-body"), fams.map((f) => {
      const b = el("button", f.name, "link");
      b.type = "button";
      b.addEventListener("click", () => { st.family = f.name; st.offset = 0; st.match = ""; $("match").value = ""; poll(); });
      const tr = row([b, f.type, fmtInt(f.series_count), f.help], f.name === st.family ? "sel" : null);
      tr.cells[3].className = "w";
      return tr;
    }));
  }

  function renderPage(doc, win) {
    const f = doc.page && doc.page.families[0];
    $("series").hidden = !f;
    if (!f) return;
    $("series-name").textContent = f.name;
    $("series-help").textContent = f.help;
    const n = f.series.length;
    $("series-range").textContent = n ? "series " + fmtInt(st.offset + 1) + "–" + fmtInt(st.offset + n) + " of " +
      fmtInt(f.series_count) + (st.match ? " matching" : "") : "no series" + (st.match ? " match" : "");
    $("prev-page").disabled = st.offset === 0;
    $("next-page").disabled = st.offset + n >= f.series_count;
    // Rates for the series also on the previous poll's page.
    const prev = st.prev && st.prev.page && st.prev.pageSig === st.pageSig ? index(st.prev.page).get(f.name) : null;
    const hist = f.type === "histogram";
    const cols = f.labels.concat(hist ? ["count", "sum", "count/s"] : f.type === "counter" ? ["value", "rate/s"] : ["value"]);
    head($("series-head"), cols, f.labels.length);
    setRows($("series-body"), f.series.map((s) => {
      const cells = f.labels.map((l) => s.labels[l]);
      const ps = prev ? prev.series.get(JSON.stringify(s.labels)) : null;
      const r = (v, p) => (ps && win > 0 ? fmt3((v >= p ? v - p : v) / win) : "—");
      if (hist) cells.push(fmtNum(num(s.count)), fmtNum(num(s.sum)), r(num(s.count), ps ? num(ps.count) : 0));
      else if (f.type === "counter") cells.push(fmtNum(num(s.value)), r(num(s.value), ps ? num(ps.value) : 0));
      else cells.push(fmtNum(num(s.value)));
      const tr = el("tr");
      cells.forEach((c, i) => tr.appendChild(el("td", c, i < f.labels.length ? "t" : null)));
      return tr;
    }));
  }

  // A small line chart of one history field on a canvas (numbers only).
  function chart(id, key, fmtv) {
    const c = $(id);
    const pts = st.history.filter((h) => h[key] != null && Number.isFinite(h[key]));
    const last = pts.length ? pts[pts.length - 1][key] : null;
    $(id + "-v").textContent = fmtv(last);
    const w = c.clientWidth || 200, h = c.clientHeight || 44, dpr = window.devicePixelRatio || 1;
    c.width = w * dpr; c.height = h * dpr;
    const g = c.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    if (pts.length < 2) return;
    // The span kept so far (up to HISTORY_S), left to right; 0 at the bottom.
    const t1 = pts[pts.length - 1].t, t0 = Math.max(pts[0].t, t1 - HISTORY_S), span = t1 - t0 || 1;
    const max = Math.max(...pts.map((p) => p[key])) || 1;
    g.strokeStyle = "#2f6fde"; g.lineWidth = 1.5; g.beginPath();
    pts.forEach((p, i) => {
      const x = (p.t - t0) / span * (w - 2) + 1, y = h - 2 - p[key] / max * (h - 14);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = "#667085"; g.font = "10px system-ui,sans-serif";
    g.fillText("max " + fmtv(max) + ", last " + Math.round(span) + " s", 2, 10);
  }

  function render(doc) {
    const win = st.prev ? doc.now - st.prev.now : null;
    $("updated").textContent = "updated " + new Date(doc.now * 1000).toLocaleTimeString("en-GB") + ", every " + every + " s";
    $("window").textContent = win == null ? "rates: waiting for a second poll" :
      "rates over the last " + win.toFixed(2) + " s (between the last two polls)";
    $("window").dataset.seconds = win == null ? "" : String(win);
    const headline = renderGateway(doc, win) || {};
    const used = renderSelf(doc.self);
    renderFamilies(doc);
    renderPage(doc, win);
    st.history.push({ t: doc.now, req: headline.req, err: headline.err, tok: headline.tok, cost: headline.cost, used });
    while (st.history.length && st.history[0].t < doc.now - HISTORY_S) st.history.shift();
    const gw = !$("gw").hidden;
    for (const id of ["c-req", "c-err", "c-tok", "c-cost"]) $(id).parentNode.hidden = !gw;
    chart("c-req", "req", (v) => fmt3(v) + (v == null ? "" : "/s"));
    chart("c-err", "err", fmtPct);
    chart("c-tok", "tok", (v) => fmt3(v) + (v == null ? "" : "/s"));
    chart("c-cost", "cost", (v) => (v == null ? "—" : "$" + fmt3(v) + "/h"));
    chart("c-used", "used", fmtInt);
  }

  async function poll() {
    if (st.busy) return;
    st.busy = true;
    try {
      const q = new URLSearchParams({ data: "1", limit: String(st.limit), offset: String(st.offset) });
      if (st.family != null) q.set("family", st.family);
      if (st.match) q.set("match", st.match);
      const sig = q.get("family") + "\u0000" + st.offset + "\u0000" + st.match;
      const res = await fetch(location.pathname + "?" + q, { cache: "no-store", credentials: "same-origin" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const doc = await res.json();
      doc.pageSig = sig;
      if (st.family == null && doc.summary.families.length) {
        // Show the first family's series from the next poll on.
        st.family = doc.summary.families[0].name;
      }
      st.pageSig = sig;
      render(doc);
      st.prev = doc;
      st.polls++;
      document.body.dataset.polls = String(st.polls);
      $("err").hidden = true;
    } catch (e) {
      $("err").hidden = false;
      $("err").textContent = "poll failed: " + e.message;
    } finally {
      st.busy = false;
    }
  }

  $("prev-page").addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.limit); poll(); });
  $("next-page").addEventListener("click", () => { st.offset += st.limit; poll(); });
  $("match").addEventListener("change", (e) => { st.match = e.target.value.slice(0, 256); st.offset = 0; poll(); });
  window.shmetricsStatus = { poll, state: st };
  poll();
  setInterval(poll, every * 1000);
})();
]==]

local BODY = [==[
<header><h1>shmetrics</h1><span class="mut" id="updated">loading…</span><span class="mut" id="window"></span></header>
<main>
<div id="err" class="banner bad" hidden></div>
<div id="banner" class="banner warn" hidden></div>
<div class="tiles">
 <div class="tile"><div class="mut">requests/s</div><div class="v" id="c-req-v">—</div><canvas id="c-req"></canvas></div>
 <div class="tile"><div class="mut">error ratio</div><div class="v" id="c-err-v">—</div><canvas id="c-err"></canvas></div>
 <div class="tile"><div class="mut">tokens/s (in + out)</div><div class="v" id="c-tok-v">—</div><canvas id="c-tok"></canvas></div>
 <div class="tile"><div class="mut">cost per hour</div><div class="v" id="c-cost-v">—</div><canvas id="c-cost"></canvas></div>
 <div class="tile"><div class="mut">series used</div><div class="v" id="c-used-v">—</div><canvas id="c-used"></canvas></div>
</div>
<div id="gw" hidden>
<section><h2>Namespaces</h2><div class="mut" id="gw-trunc" hidden></div>
<table id="ns"><thead><tr><th>namespace</th><th>req/s</th><th>errors</th><th>in tok/s</th><th>out tok/s</th><th>$/hour</th><th>requests</th><th>errors (all)</th><th>input tokens</th><th>output tokens</th><th>cost</th></tr></thead><tbody id="ns-body"></tbody></table></section>
<section><h2>Models</h2>
<table id="models"><thead><tr><th>model</th><th>req/s</th><th>errors</th><th>in tok/s</th><th>out tok/s</th><th>$/hour</th><th>p50</th><th>p95</th><th>TTFT p50</th><th>TTFT p95</th><th>requests</th><th>input tokens</th><th>output tokens</th><th>cost</th></tr></thead><tbody id="model-body"></tbody></table>
<p class="mut">Rates, error ratios and latency quantiles cover the window between the last two polls; totals are since the region was created. Quantiles are interpolated inside histogram buckets.</p></section>
</div>
<div class="grid2">
<section><h2>shmetrics</h2><div id="self-series"></div><div class="bar" id="self-bar"><div></div></div><div id="self-slots" class="mut"></div>
<table><thead><tr><th>refused updates, by reason</th><th>total</th></tr></thead><tbody id="self-errors"></tbody></table>
<table><thead><tr><th>family</th><th>limit</th><th>updates</th></tr></thead><tbody id="self-families"></tbody></table></section>
<section><h2>Families</h2><div class="mut" id="fam-count"></div>
<table><thead><tr><th>family</th><th>type</th><th>series</th><th class="t">help</th></tr></thead><tbody id="fam-body"></tbody></table></section>
</div>
<section id="series" hidden><h2 id="series-name"></h2><div class="mut" id="series-help"></div>
<div class="row"><input id="match" placeholder="filter label values" maxlength="256"><button type="button" id="prev-page">‹ prev</button><button type="button" id="next-page">next ›</button><span class="mut" id="series-range"></span></div>
<table><thead><tr id="series-head"></tr></thead><tbody id="series-body"></tbody></table></section>
</main>
]==]

local function b64_sha256(s)
    return ngx.encode_base64(sha256(s))
end

local PAGE = concat({
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width,initial-scale=1">',
    '<meta name="referrer" content="no-referrer"><title>shmetrics status</title>',
    '<style>', STYLE, '</style></head><body>', BODY,
    '<script>', SCRIPT, '</script></body></html>\n',
})

-- Inline style and script allowed by hash; nothing else loads, and the page
-- can only fetch from its own origin.
local CSP = str_format("default-src 'none'; script-src 'sha256-%s'; style-src 'sha256-%s'; "
                       .. "connect-src 'self'; img-src 'none'; base-uri 'none'; "
                       .. "form-action 'none'; frame-ancestors 'none'",
                       b64_sha256(SCRIPT), b64_sha256(STYLE))
_M.PAGE_BYTES = #PAGE

------------------------------------------------------------------------------
-- The data the page polls.

local function json_string(s)
    return '"' .. str_gsub(s, '[%c"\\]', function(c)
        return str_format("\\u%04x", str_byte(c))
    end) .. '"'
end

local function json_number(v)
    if v ~= v or v == math.huge or v == -math.huge then
        return "null"
    end
    if v == floor(v) and v > -2^53 and v < 2^53 then
        return str_format("%d", v)
    end
    return str_format("%.17g", v)
end

-- The self-metrics as one JSON object, from their text exposition:
-- {"shmetrics_series_used":N, "shmetrics_errors_total":{"<reason>":N,...}, ...}
-- (each family's one label's values as keys).
local function self_json(text)
    local scalars, maps, order = {}, {}, {}
    for line in text:gmatch("[^\n]+") do
        if line:sub(1, 1) ~= "#" then
            local name, lv, value = line:match('^([%w_]+){[%w_]+="(.-)"}%s+(%S+)$')
            if not name then
                name, value = line:match("^([%w_]+)%s+(%S+)$")
            end
            local v = tonumber(value)
            if name and v then
                if not maps[name] and scalars[name] == nil then
                    order[#order + 1] = name
                end
                if lv then
                    maps[name] = maps[name] or {}
                    local m = maps[name]
                    m[#m + 1] = json_string(lv) .. ":" .. json_number(v)
                else
                    scalars[name] = v
                end
            end
        end
    end
    local out = {}
    for _, name in pairs(order) do
        if maps[name] then
            out[#out + 1] = json_string(name) .. ":{" .. concat(maps[name], ",") .. "}"
        else
            out[#out + 1] = json_string(name) .. ":" .. json_number(scalars[name])
        end
    end
    return "{" .. concat(out, ",") .. "}"
end

-- One query argument: nil when absent; false when malformed (repeated, no
-- value, or longer than MAX_ARG).
local function arg(args, name)
    local v = args[name]
    if v == nil then
        return nil
    end
    if type(v) ~= "string" or #v > MAX_ARG then
        return false
    end
    return v
end

local function integer_arg(args, name, default, max)
    local v = arg(args, name)
    if v == nil then
        return default
    end
    local n = v and tonumber(v)
    if not n or n ~= floor(n) or n < 0 or n > max then
        return false
    end
    return n
end

local function data(reg, render)
    local args = ngx.req.get_uri_args(16)
    local family = arg(args, "family")
    local match = arg(args, "match")
    local offset = integer_arg(args, "offset", 0, 2^32)
    local limit = integer_arg(args, "limit", PAGE_DEFAULT, PAGE_LIMIT)
    if family == false or match == false or not offset or not limit then
        return ngx.exit(ngx.HTTP_BAD_REQUEST)
    end
    local parts = {}
    local summary, err = render(reg, "json", nil, { 0, 0, "" })
    local catalog, page, self
    if summary then
        catalog, err = render(reg, "json", CATALOG, { 0, CATALOG_LIMIT, "" })
    end
    if catalog and family then
        page, err = render(reg, "json", { family }, { offset, limit, match or "" })
    end
    if catalog and (page or not family) then
        self, err = render(reg, "text", SELF)
    end
    if not self then
        ngx.log(ngx.ERR, "shmetrics: status data failed: ", err)
        return ngx.exit(ngx.HTTP_INTERNAL_SERVER_ERROR)
    end
    ngx.update_time()
    parts[1] = str_format('{"now":%.3f,"registry":%s,"limits":{"page":%d,"catalog":%d},"self":',
                          ngx.now(), json_string(reg.name), PAGE_LIMIT, CATALOG_LIMIT)
    parts[2] = self_json(self)
    parts[3] = ',"summary":'
    parts[4] = summary
    parts[5] = ',"catalog":'
    parts[6] = catalog
    parts[7] = ',"page":'
    parts[8] = page or "null"
    parts[9] = "}\n"
    ngx.header.content_type = "application/json; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.print(parts)
end

--- status.serve(registry, render)   (prometheus:status() calls it; render(registry,
--- format, names, page) is the registry module's exposition as one string)
function _M.serve(reg, render)
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx.header["Allow"] = "GET, HEAD"
        return ngx.exit(ngx.HTTP_NOT_ALLOWED)
    end
    if ngx.var.arg_data then
        return data(reg, render)
    end
    ngx.header.content_type = "text/html; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.header["Content-Security-Policy"] = CSP
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.header["Referrer-Policy"] = "no-referrer"
    ngx.print(PAGE)
end

return _M
