/* cyllama-db dashboard: fetches /api/summary and draws everything as inline SVG and tables.
 * Plain ES5-style script, no dependencies, nothing loaded from the network but this server. */
(function () {
  "use strict";

  var body = document.body;
  var refreshMs = Math.max(1, Number(body.getAttribute("data-refresh") || 5)) * 1000;
  var SVG_NS = "http://www.w3.org/2000/svg";

  var CHARTS = [
    { id: "cpu", key: "cpu_usage", label: "CPU", unit: "%", max: 100, color: "#2f6fde" },
    { id: "memory", key: "memory_usage", label: "Memory", unit: "%", max: 100, color: "#8e44ad" },
    { id: "gpu", key: "gpu_usage", label: "GPU", unit: "%", max: 100, color: "#16a085",
      empty: "no GPU readings" },
    { id: "rpm", key: "requests_per_minute", label: "Requests / min", unit: "", max: null,
      color: "#e67e22" }
  ];

  // -- small helpers ---------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
      });
    }
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmt(v, digits) {
    if (!isNum(v)) { return "–"; }
    if (digits === undefined) { digits = Math.abs(v) >= 100 || v === Math.round(v) ? 0 : 1; }
    return v.toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function pct(rate) { return isNum(rate) ? fmt(rate * 100, 1) + "%" : "–"; }

  function bytes(n) {
    if (!isNum(n)) { return "–"; }
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? fmt(n, 0) : fmt(n, 1)) + " " + units[i];
  }

  function when(iso) {
    if (!iso) { return "–"; }
    var d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function basename(p) { return p ? String(p).split(/[\\/]/).pop() : "–"; }

  function replace(id, node) {
    var target = $(id);
    while (target.firstChild) { target.removeChild(target.firstChild); }
    if (node) { target.appendChild(node); }
  }

  function unavailable(id, section, what) {
    var text = section && section.error ? "error: " + section.error : what + " is not available in this database";
    replace(id, el("p", { "class": "note", text: text }));
  }

  // The smallest "round" maximum whose four grid steps are round numbers too (e.g. 24: 6, 12, 18).
  function niceMax(v) {
    if (!(v > 0)) { return 4; }
    var quarter = v / 4;
    var p = Math.pow(10, Math.floor(Math.log(quarter) / Math.LN10));
    var steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i += 1) {
      if (steps[i] * p >= quarter - 1e-12) { return 4 * steps[i] * p; }
    }
    return 40 * p;
  }

  // -- charts ----------------------------------------------------------------------------

  function lineChart(chart, rows, windowMs, nowMs) {
    var W = 600, H = 190, L = 42, R = 14, T = 10, B = 24;
    var pw = W - L - R, ph = H - T - B, t0 = nowMs - windowMs;
    var points = [];
    rows.forEach(function (r) {
      if (r.t >= t0 && r.t <= nowMs + 5000) { points.push([r.t, r[chart.key]]); }
    });
    var values = points.map(function (p) { return p[1]; }).filter(isNum);
    var max = chart.max || niceMax(Math.max.apply(null, values.concat([1])));
    function x(t) { return L + ((t - t0) / windowMs) * pw; }
    function y(v) { return T + ph - Math.min(Math.max(v / max, 0), 1) * ph; }

    var root = svg("svg", { "class": "chart", viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": chart.label + " over the last " + Math.round(windowMs / 60000) + " minutes",
      "data-metric": chart.key });
    var grid = svg("g", { "class": "grid" }), axis = svg("g", { "class": "axis" });
    for (var i = 0; i <= 4; i += 1) {
      var v = (max * i) / 4, yy = y(v).toFixed(1);
      grid.appendChild(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy }));
      axis.appendChild(svg("text", { x: L - 6, y: Number(yy) + 3, "text-anchor": "end" },
        fmt(v, v === Math.round(v) ? 0 : 1) + chart.unit));
    }
    var minutes = windowMs / 60000;
    var stepMin = minutes <= 15 ? (minutes <= 5 ? 1 : 2) : Math.ceil(minutes / 6);
    for (var m = 0; m <= minutes + 1e-9; m += stepMin) {
      var xx = x(nowMs - m * 60000).toFixed(1);
      grid.appendChild(svg("line", { x1: xx, x2: xx, y1: T, y2: T + ph }));
      axis.appendChild(svg("text", { x: xx, y: H - 6, "text-anchor": "middle" },
        m === 0 ? "now" : "-" + fmt(m, 0) + "m"));
    }
    root.appendChild(grid);
    root.appendChild(axis);

    // Break the line where a value is missing or samples stopped for a while.
    var gaps = [];
    for (var k = 1; k < points.length; k += 1) { gaps.push(points[k][0] - points[k - 1][0]); }
    gaps.sort(function (a, b) { return a - b; });
    var typical = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
    var line = "", area = "", segment = [], drawn = 0;
    function flush() {
      if (!segment.length) { return; }
      line += "M" + segment.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join("L");
      if (segment.length === 1) { line += "h0.1"; }
      area += "M" + segment[0][0].toFixed(1) + "," + (T + ph) + "L" +
        segment.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join("L") +
        "L" + segment[segment.length - 1][0].toFixed(1) + "," + (T + ph) + "Z";
      segment = [];
    }
    points.forEach(function (p, idx) {
      var gap = idx > 0 && typical > 0 && p[0] - points[idx - 1][0] > 3 * typical;
      if (!isNum(p[1]) || gap) { flush(); }
      if (isNum(p[1])) { segment.push([x(p[0]), y(p[1])]); drawn += 1; }
    });
    flush();
    root.appendChild(svg("path", { "class": "area", fill: chart.color, d: area || "M0,0" }));
    root.appendChild(svg("path", { "class": "series", stroke: chart.color, d: line,
      "data-points": String(drawn) }));
    if (!drawn) {
      root.appendChild(svg("text", { "class": "empty", x: L + pw / 2, y: T + ph / 2,
        "text-anchor": "middle" }, chart.empty || "no samples yet"));
    }
    return { node: root, latest: values.length ? values[values.length - 1] : null };
  }

  function renderMetrics(metrics, nowMs) {
    var container = $("charts");
    if (!metrics || !metrics.available) {
      unavailable("charts", metrics, "The metrics store");
      return;
    }
    var windowMs = metrics.window_minutes * 60000;
    $("metrics-window").textContent = "CPU, memory, GPU and requests per minute over the last " +
      fmt(metrics.window_minutes, 0) + " minutes (" + metrics.rows.length + " samples)";
    while (container.firstChild) { container.removeChild(container.firstChild); }
    CHARTS.forEach(function (chart) {
      var drawn = lineChart(chart, metrics.rows, windowMs, nowMs);
      var value = el("span", { "class": "value", text: isNum(drawn.latest) ? fmt(drawn.latest) + chart.unit : "–" });
      var card = el("section", { "class": "card", id: "chart-" + chart.id },
        [el("h2", null, [chart.label, value])]);
      card.appendChild(drawn.node);
      container.appendChild(card);
    });
  }

  // -- tables and tiles ------------------------------------------------------------------

  function tile(label, big, extra) {
    var node = el("div", { "class": "tile" }, [
      el("div", { "class": "label", text: label }),
      el("div", { "class": "big", text: big })
    ]);
    if (extra) { node.appendChild(extra); }
    return node;
  }

  function bar(fraction) {
    var inner = el("span");
    inner.style.width = Math.max(0, Math.min(1, fraction || 0)) * 100 + "%";
    return el("div", { "class": "bar" }, [inner]);
  }

  function table(headers, rows, numeric) {
    var head = el("tr", null, headers.map(function (h, i) {
      return el("th", { "class": numeric[i] ? "num" : "", text: h });
    }));
    var bodyRows = rows.map(function (r) {
      return el("tr", null, r.map(function (cell, i) {
        if (cell instanceof Node) { return el("td", null, [cell]); }
        return el("td", { "class": numeric[i] ? "num" : (i === r.length - 1 ? "path" : ""),
          text: cell === null || cell === undefined ? "–" : String(cell) });
      }));
    });
    return el("div", { "class": "scroll" }, [el("table", null, [el("thead", null, [head]),
      el("tbody", null, bodyRows)])]);
  }

  function renderStats(stats) {
    if (!stats || !stats.available) { unavailable("stats", stats, "The statistics store"); return; }
    var wrap = el("div");
    wrap.appendChild(el("div", { "class": "tiles" }, [
      tile("generations", fmt(stats.total_generations, 0)),
      tile("tokens", fmt(stats.total_tokens, 0)),
      tile("cache hit rate", pct(stats.cache_hit_rate)),
      tile("avg tokens/s", fmt(stats.avg_tokens_per_second, 1))
    ]));
    var models = stats.by_model || [];
    if (models.length) {
      wrap.appendChild(table(
        ["model", "generations", "tokens", "hit rate", "tok/s", "p50 ms", "p95 ms"],
        models.map(function (m) {
          var name = el("span", { title: m.model_path || "", text: m.model_name || basename(m.model_path) });
          return [name, fmt(m.generations, 0), fmt(m.tokens, 0),
            pct(m.cache_hit_rate), fmt(m.avg_tokens_per_second, 1), fmt(m.p50_latency_ms, 0),
            fmt(m.p95_latency_ms, 0)];
        }),
        [false, true, true, true, true, true, true]));
    } else {
      wrap.appendChild(el("p", { "class": "note", text: "no generations recorded yet" }));
    }
    replace("stats", wrap);
  }

  function renderCache(cache) {
    if (!cache || !cache.available) { unavailable("cache", cache, "The response cache"); return; }
    var used = isNum(cache.size_bytes) && isNum(cache.max_size_bytes) && cache.max_size_bytes > 0
      ? cache.size_bytes / cache.max_size_bytes : null;
    var hit = isNum(cache.hit_rate) ? cache.hit_rate : null;
    replace("cache", el("div", { "class": "tiles" }, [
      tile("entries", fmt(cache.entries, 0)),
      tile(isNum(cache.max_size_bytes) ? "size (limit " + bytes(cache.max_size_bytes) + ")" : "size",
        bytes(cache.size_bytes), used === null ? null : bar(used)),
      tile("hit rate", pct(hit), hit === null ? null : bar(hit)),
      tile("hits served", fmt(cache.hits, 0))
    ]));
  }

  function renderModels(models) {
    if (!models || !models.available) { unavailable("models", models, "The model registry"); return; }
    $("models-count").textContent = models.rows.length + " registered, " +
      models.rows.filter(function (m) { return m.status === "running"; }).length + " running";
    if (!models.rows.length) {
      replace("models", el("p", { "class": "note", text: "no models registered (cyllama-db models add PATH)" }));
      return;
    }
    replace("models", table(
      ["name", "status", "type", "arch", "quant", "params", "ctx", "last used", "path"],
      models.rows.map(function (m) {
        return [m.name, el("span", { "class": "badge " + (m.status || ""), text: m.status || "–" }),
          m.type, m.architecture, m.quantization, m.size_label,
          isNum(m.ctx_size) ? fmt(m.ctx_size, 0) : fmt(m.context_length, 0),
          m.last_used_at ? when(m.last_used_at) : "never", m.model_path];
      }),
      [false, false, false, false, false, false, true, false, false]));
  }

  function renderHeader(data) {
    var db = data.database || {};
    $("db-path").textContent = db.path || "–";
    $("db-size").textContent = bytes(db.file_bytes);
    $("db-schema").textContent = db.schema_version === undefined ? "–" : String(db.schema_version);
  }

  // -- refresh loop ----------------------------------------------------------------------

  var updates = 0;

  function setStatus(text, isError) {
    var node = $("status");
    node.textContent = text;
    node.className = isError ? "error" : "";
  }

  function render(data) {
    var nowMs = data.generated_at_ms || Date.now();
    renderHeader(data);
    renderMetrics(data.metrics, nowMs);
    renderStats(data.stats);
    renderCache(data.cache);
    renderModels(data.models);
    updates += 1;
    body.setAttribute("data-loaded", "1");
    body.setAttribute("data-updates", String(updates));
    setStatus("updated " + new Date(nowMs).toLocaleTimeString() + " · every " + refreshMs / 1000 + " s", false);
  }

  function load() {
    var request = new XMLHttpRequest();
    request.open("GET", "api/summary", true);
    request.onload = function () {
      if (request.status !== 200) {
        setStatus("error: the server answered " + request.status, true);
        body.setAttribute("data-error", String(request.status));
        return;
      }
      try {
        render(JSON.parse(request.responseText));
        body.removeAttribute("data-error");
      } catch (err) {
        setStatus("error: " + err.message, true);
        body.setAttribute("data-error", err.message);
      }
    };
    request.onerror = function () {
      setStatus("error: cannot reach the dashboard server", true);
      body.setAttribute("data-error", "network");
    };
    request.send();
  }

  load();
  window.setInterval(load, refreshMs);
})();
