/* cyllama-db dashboard: fetches /api/summary and draws everything as inline SVG and tables.
 * Plain ES5-style script, no dependencies, nothing loaded from the network but this server. */
(function () {
  "use strict";

  var body = document.body;
  var refreshMs = Math.max(1, Number(body.getAttribute("data-refresh") || 5)) * 1000;
  var SVG_NS = "http://www.w3.org/2000/svg";

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

  var PALETTE = ["#2f6fde", "#d9480f", "#16a085", "#8e44ad", "#c2185b", "#7c6f00", "#0b7285", "#5c940d"];

  function clockTime(ms, withDate) {
    var d = new Date(ms);
    var time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return withDate ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + time : time;
  }

  // Relative tick labels: -10m, -2h, -1d ...
  var TICKS = [60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3];
  function tickLabel(ago) {
    if (ago === 0) { return "now"; }
    if (ago % 86400e3 === 0) { return "-" + ago / 86400e3 + "d"; }
    if (ago % 3600e3 === 0) { return "-" + ago / 3600e3 + "h"; }
    return "-" + Math.round(ago / 60e3) + "m";
  }

  // A line chart of one or more series over [t0, t1] with a hover read-out.
  // spec: {label, unit, max, format(v), empty, attrs, series: [{name, color, dash, area, points: [[t, v]]}]}
  function lineChart(spec, t0, t1) {
    var W = 600, H = 190, L = 52, R = 14, T = 10, B = 24;
    var pw = W - L - R, ph = H - T - B, span = Math.max(t1 - t0, 1);
    var format = spec.format || function (v) { return fmt(v) + (spec.unit || ""); };
    var all = [];
    spec.series.forEach(function (s) {
      s.points = s.points.filter(function (p) { return p[0] >= t0 && p[0] <= t1 + 5000; });
      s.points.forEach(function (p) { if (isNum(p[1])) { all.push(p[1]); } });
    });
    var max = spec.max || niceMax(Math.max.apply(null, all.concat([spec.minMax || 1])));
    function x(t) { return L + ((t - t0) / span) * pw; }
    function y(v) { return T + ph - Math.min(Math.max(v / max, 0), 1) * ph; }

    var attrs = { "class": "chart", viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": spec.label };
    Object.keys(spec.attrs || {}).forEach(function (k) { attrs[k] = spec.attrs[k]; });
    var root = svg("svg", attrs);
    var grid = svg("g", { "class": "grid" }), axis = svg("g", { "class": "axis" });
    for (var i = 0; i <= 4; i += 1) {
      var v = (max * i) / 4, yy = y(v).toFixed(1);
      grid.appendChild(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy }));
      axis.appendChild(svg("text", { x: L - 6, y: Number(yy) + 3, "text-anchor": "end" },
        spec.axisFormat ? spec.axisFormat(v) : fmt(v, v === Math.round(v) ? 0 : 1) + (spec.unit || "")));
    }
    var step = TICKS[TICKS.length - 1];
    for (var k = 0; k < TICKS.length; k += 1) { if (span / TICKS[k] <= 6) { step = TICKS[k]; break; } }
    for (var ago = 0; ago <= span + 1e-6; ago += step) {
      var xx = x(t1 - ago).toFixed(1);
      grid.appendChild(svg("line", { x1: xx, x2: xx, y1: T, y2: T + ph }));
      axis.appendChild(svg("text", { x: xx, y: H - 6, "text-anchor": "middle" }, tickLabel(ago)));
    }
    root.appendChild(grid);
    root.appendChild(axis);

    var drawnTotal = 0;
    spec.series.forEach(function (s) {
      var points = s.points;
      // Break the line where a value is missing or the samples stopped for a while.
      var gaps = [];
      for (var k = 1; k < points.length; k += 1) { gaps.push(points[k][0] - points[k - 1][0]); }
      gaps.sort(function (a, b) { return a - b; });
      var typical = spec.gap || (gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0);
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
        var gap = idx > 0 && typical > 0 && p[0] - points[idx - 1][0] > (spec.gap ? 1.5 : 3) * typical;
        if (!isNum(p[1]) || gap) { flush(); }
        if (isNum(p[1])) { segment.push([x(p[0]), y(p[1])]); drawn += 1; }
      });
      flush();
      if (spec.markers) {  // sparse points (one per step with generations) stay visible
        points.forEach(function (p) {
          if (isNum(p[1])) {
            root.appendChild(svg("circle", { "class": "marker", cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1),
              r: 2.5, fill: s.color }));
          }
        });
      }
      if (s.area) { root.appendChild(svg("path", { "class": "area", fill: s.color, d: area || "M0,0" })); }
      var pathAttrs = { "class": "series", stroke: s.color, d: line, "data-points": String(drawn),
        "data-series": s.name };
      if (s.dash) { pathAttrs["stroke-dasharray"] = "5 4"; }
      root.appendChild(svg("path", pathAttrs));
      drawnTotal += drawn;
    });
    if (!drawnTotal) {
      root.appendChild(svg("text", { "class": "empty", x: L + pw / 2, y: T + ph / 2,
        "text-anchor": "middle" }, spec.empty || "no samples yet"));
    }

    // Hover: one transparent column per moment with data; its <title> is the read-out
    // (also what assistive technology reads), and the script shows it beside a cursor line.
    var moments = {};
    spec.series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (!isNum(p[1])) { return; }
        (moments[p[0]] = moments[p[0]] || []).push({ name: s.name, color: s.color, value: p[1] });
      });
    });
    var times = Object.keys(moments).map(Number).sort(function (a, b) { return a - b; });
    var hover = svg("g", { "class": "hover" });
    var cursor = svg("line", { "class": "cursor", x1: 0, x2: 0, y1: T, y2: T + ph, visibility: "hidden" });
    hover.appendChild(cursor);
    var longSpan = span > 86400e3 / 2;
    times.forEach(function (t, idx) {
      var left = idx === 0 ? L : (x(times[idx - 1]) + x(t)) / 2;
      var right = idx === times.length - 1 ? W - R : (x(t) + x(times[idx + 1])) / 2;
      var text = clockTime(t, longSpan) + "\n" + moments[t].map(function (m) {
        return m.name + ": " + format(m.value);
      }).join("\n");
      var hit = svg("rect", { "class": "hit", x: left.toFixed(1), y: T, width: Math.max(right - left, 0.5).toFixed(1),
        height: ph, "data-t": String(t), "data-x": x(t).toFixed(1) });
      hit.appendChild(svg("title", {}, text));
      hover.appendChild(hit);
    });
    root.appendChild(hover);
    return { node: root, latest: all.length ? all[all.length - 1] : null };
  }

  // The read-out box: follows the pointer over any chart's hover columns.
  var tip = el("div", { "class": "tip", role: "status" });
  tip.style.display = "none";
  document.body.appendChild(tip);
  document.addEventListener("mouseover", function (event) {
    var target = event.target;
    if (!target || !target.classList || !target.classList.contains("hit")) { return; }
    var chart = target.ownerSVGElement, cursor = chart.querySelector("line.cursor");
    cursor.setAttribute("x1", target.getAttribute("data-x"));
    cursor.setAttribute("x2", target.getAttribute("data-x"));
    cursor.setAttribute("visibility", "visible");
    var lines = target.firstChild.textContent.split("\n");
    while (tip.firstChild) { tip.removeChild(tip.firstChild); }
    lines.forEach(function (line, i) { tip.appendChild(el("div", { "class": i ? "" : "when", text: line })); });
    var box = chart.getBoundingClientRect(), svgW = chart.viewBox.baseVal.width;
    var px = box.left + window.scrollX + Number(target.getAttribute("data-x")) * box.width / svgW;
    tip.style.display = "block";
    tip.style.top = (box.top + window.scrollY + 8) + "px";
    tip.style.left = Math.min(px + 12, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8) + "px";
  });
  document.addEventListener("mouseout", function (event) {
    var target = event.target;
    if (!target || !target.classList || !target.classList.contains("hit")) { return; }
    var cursor = target.ownerSVGElement.querySelector("line.cursor");
    cursor.setAttribute("visibility", "hidden");
    tip.style.display = "none";
  });

  function bytesAxis(v) { return v === 0 ? "0" : bytes(v).replace(".0 ", " "); }

  var CHARTS = [
    { id: "cpu", key: "cpu_usage", label: "Host CPU", unit: "%", max: 100, color: "#2f6fde" },
    { id: "memory", key: "memory_usage", label: "Host memory", unit: "%", max: 100, color: "#8e44ad" },
    { id: "process-cpu", key: "process_cpu_usage", label: "Inference process CPU", unit: "%", color: "#0b7285",
      minMax: 100, empty: "no inference process seen yet" },
    { id: "process-rss", key: "process_rss_bytes", label: "Inference process memory (RSS)", color: "#c2185b",
      format: bytes, axisFormat: bytesAxis, minMax: 1048576, empty: "no inference process seen yet" },
    { id: "gpu", key: "gpu_usage", label: "GPU", unit: "%", max: 100, color: "#16a085",
      empty: "no GPU readings" },
    { id: "rpm", key: "requests_per_minute", label: "Requests / min", unit: "", max: null,
      color: "#e67e22" }
  ];

  function renderMetrics(metrics, nowMs) {
    var container = $("charts");
    if (!metrics || !metrics.available) {
      unavailable("charts", metrics, "The metrics store");
      return;
    }
    var windowMs = metrics.window_minutes * 60000;
    var last = metrics.rows.length ? metrics.rows[metrics.rows.length - 1] : {};
    $("metrics-window").textContent = "host and inference process over the last " +
      fmt(metrics.window_minutes, 0) + " minutes (" + metrics.rows.length + " samples" +
      (isNum(last.process_pid) ? ", process " + last.process_pid : "") + ")";
    while (container.firstChild) { container.removeChild(container.firstChild); }
    CHARTS.forEach(function (chart) {
      var points = metrics.rows.map(function (r) { return [r.t, r[chart.key]]; });
      var drawn = lineChart({ label: chart.label + " over the last " + Math.round(windowMs / 60000) + " minutes",
        unit: chart.unit, max: chart.max, minMax: chart.minMax, empty: chart.empty, format: chart.format,
        axisFormat: chart.axisFormat, attrs: { "data-metric": chart.key },
        series: [{ name: chart.label, color: chart.color, area: true, points: points }] }, nowMs - windowMs, nowMs);
      var latest = isNum(drawn.latest) ? (chart.format ? chart.format(drawn.latest) : fmt(drawn.latest) + chart.unit) : "–";
      var card = el("section", { "class": "card", id: "chart-" + chart.id },
        [el("h2", null, [chart.label, el("span", { "class": "value", text: latest })])]);
      card.appendChild(drawn.node);
      container.appendChild(card);
    });
  }

  // -- generations over time -------------------------------------------------------------

  var RANGE_NAMES = { "10m": "10 minutes", "1h": "hour", "24h": "24 hours", "7d": "7 days" };

  function modelName(m) { return m.model_name || basename(m.model_path); }

  function renderSeries(series, nowMs) {
    if (!series || !series.available) {
      unavailable("gen-charts", series, "The statistics store");
      return;
    }
    var t1 = nowMs, t0 = nowMs - series.range_seconds * 1000, stepMs = series.step_seconds * 1000;
    var w = series.window || {};
    $("series-window").textContent = fmt(w.total_generations, 0) + " generations in the last " +
      (RANGE_NAMES[series.range] || series.range) + ", one point per " +
      (stepMs >= 3600e3 ? stepMs / 3600e3 + " h" : stepMs >= 60e3 ? stepMs / 60e3 + " min" : stepMs / 1000 + " s") +
      (series.exact ? "" : " (percentiles from the rollup's latency histogram)");
    var tps = [], latency = [];
    series.models.forEach(function (m, i) {
      var color = PALETTE[i % PALETTE.length], name = modelName(m);
      var at = function (key) { return m.points.map(function (p) { return [p.t, p[key]]; }); };
      tps.push({ name: name, color: color, points: at("tokens_per_second") });
      latency.push({ name: name + " p50", color: color, points: at("p50_latency_ms") });
      latency.push({ name: name + " p95", color: color, dash: true, points: at("p95_latency_ms") });
    });
    var container = $("gen-charts");
    while (container.firstChild) { container.removeChild(container.firstChild); }
    var charts = [
      { id: "tps", title: "Tokens / s by model", key: "tokens_per_second", unit: " tok/s", series: tps,
        value: isNum(w.tokens_per_second) ? fmt(w.tokens_per_second, 1) + " tok/s" : "–" },
      { id: "latency", title: "Latency p50 / p95 (dashed)", key: "latency", unit: " ms", series: latency,
        format: function (v) { return v >= 1000 ? fmt(v / 1000, 2) + " s" : fmt(v, 0) + " ms"; },
        axisFormat: function (v) { return v >= 1000 ? fmt(v / 1000, 1) + "s" : fmt(v, 0) + "ms"; }, value: "" }
    ];
    charts.forEach(function (c) {
      var drawn = lineChart({ label: c.title, unit: c.unit, series: c.series, format: c.format, axisFormat: c.axisFormat,
        gap: stepMs, markers: true, empty: "no generations in this range", attrs: { "data-chart": c.key } },
        t0, t1);
      var card = el("section", { "class": "card", id: "chart-" + c.id },
        [el("h2", null, [c.title, el("span", { "class": "value", text: c.value })])]);
      card.appendChild(drawn.node);
      if (c.series.length) {
        card.appendChild(el("div", { "class": "legend" }, series.models.map(function (m, i) {
          var swatch = el("span", { "class": "swatch" });
          swatch.style.background = PALETTE[i % PALETTE.length];
          return el("span", null, [swatch, modelName(m)]);
        })));
      }
      container.appendChild(card);
    });
    var links = document.querySelectorAll("#range a");
    for (var i = 0; i < links.length; i += 1) {
      links[i].className = links[i].getAttribute("data-range") === series.range ? "active" : "";
    }
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
      tile("tokens/s", fmt(stats.tokens_per_second, 1))
    ]));
    var models = stats.by_model || [];
    if (models.length) {
      wrap.appendChild(table(
        ["model", "generations", "tokens", "hit rate", "tok/s", "p50 ms", "p95 ms"],
        models.map(function (m) {
          var name = el("span", { title: m.model_path || "", text: m.model_name || basename(m.model_path) });
          return [name, fmt(m.generations, 0), fmt(m.tokens, 0),
            pct(m.cache_hit_rate), fmt(m.tokens_per_second, 1), fmt(m.p50_latency_ms, 0),
            fmt(m.p95_latency_ms, 0)];
        }),
        [false, true, true, true, true, true, true]));
    } else {
      wrap.appendChild(el("p", { "class": "note", text: "no generations recorded yet" }));
    }
    replace("stats", wrap);
  }

  function ms(v) { return !isNum(v) ? "–" : v >= 1000 ? fmt(v / 1000, 2) + " s" : fmt(v, v < 10 ? 1 : 0) + " ms"; }

  function renderRecent(recent) {
    if (!recent || !recent.available) {
      unavailable("recent", recent, "The statistics store");
      unavailable("logs", recent, "The logs store");
      return;
    }
    if (recent.generations.length) {
      replace("recent", table(
        ["when", "model", "prompt", "generated", "tok/s", "cache", "latency"],
        recent.generations.map(function (g) {
          return [new Date(g.created_at).toLocaleTimeString(),
            el("span", { title: g.model_path || "", text: g.model_name || basename(g.model_path) }),
            fmt(g.prompt_tokens, 0), fmt(g.generated_tokens, 0),
            g.cache_hit ? "–" : fmt(g.tokens_per_second, 1),
            el("span", { "class": "pill " + (g.cache_hit ? "hit" : "miss"), text: g.cache_hit ? "hit" : "miss" }),
            ms(g.total_time_ms)];
        }),
        [false, false, true, true, true, false, true]));
    } else {
      replace("recent", el("p", { "class": "note", text: "no generations recorded yet" }));
    }
    var loads = recent.model_loads || [];
    $("loads").textContent = loads.length ? "model load " + ms(loads[0].load_ms) + " (" +
      basename(loads[0].model_path) + ", not part of any latency)" : "";
    if (recent.logs.length) {
      replace("logs", el("ul", { "class": "logs" }, recent.logs.map(function (row) {
        return el("li", null, [
          el("span", { "class": "level " + String(row.level).toLowerCase(), text: row.level }),
          el("span", { "class": "when", text: when(row.created_at) }),
          el("span", { "class": "category", text: row.category || "" }),
          el("div", { "class": "message", text: (row.error_type ? row.error_type + ": " : "") + row.message })
        ]);
      })));
    } else {
      replace("logs", el("p", { "class": "note", text: "no warnings or errors" }));
    }
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
    renderSeries(data.series, nowMs);
    renderMetrics(data.metrics, nowMs);
    renderStats(data.stats);
    renderRecent(data.recent);
    renderCache(data.cache);
    renderModels(data.models);
    updates += 1;
    body.setAttribute("data-loaded", "1");
    body.setAttribute("data-updates", String(updates));
    setStatus("updated " + new Date(nowMs).toLocaleTimeString() + " · every " + refreshMs / 1000 + " s", false);
  }

  // The time range comes from the address (#range=24h), so it survives a reload and
  // can be linked to; the picker's links change it.
  var RANGES = ["10m", "1h", "24h", "7d"];
  function currentRange() {
    var match = /range=([0-9a-z]+)/.exec(window.location.hash || "");
    return match && RANGES.indexOf(match[1]) >= 0 ? match[1] : "1h";
  }
  window.addEventListener("hashchange", function () { load(); });

  function load() {
    var request = new XMLHttpRequest();
    var range = currentRange();
    body.setAttribute("data-range", range);
    request.open("GET", "api/summary?range=" + encodeURIComponent(range), true);
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
