// The live page of a wsscale process (wsscale-web): asks this listener for its figures
// once a second, shows them as text, and charts the last minutes it has seen. What goes
// where is each page's own script (server.js, load.js); this file is what they share:
// polling, the "disconnected" state, telling a restarted process, rates, formatting and
// the charts (uPlot, vendored: see wsscale-web's crate documentation for why).
"use strict";

const LIVE_JSON = "/api/live";
const HISTORY_MINUTES = 10;
const POLL_MS = 1000;
// A wait longer than this is a failed poll: the process is stopped, or too busy to answer.
const TIMEOUT_MS = 3000;

const Live = (() => {
  const DASH = "–";
  const finite = (x) => typeof x === "number" && Number.isFinite(x);
  const grouped = (x) => Math.round(x).toLocaleString("en-US");

  // Formatting: every function answers a dash for a missing figure (null, NaN,
  // infinity), so nothing undefined ever reaches the screen.
  const format = {
    count: (x) => (finite(x) ? grouped(x) : DASH),
    bytes: (x) => {
      if (!finite(x)) return DASH;
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let value = x;
      let unit = 0;
      while (Math.abs(value) >= 1024 && unit < units.length - 1) {
        value /= 1024;
        unit += 1;
      }
      return (unit === 0 ? grouped(value) : value.toFixed(Math.abs(value) >= 100 ? 0 : 1)) + " " + units[unit];
    },
    // Per-connection figures to the byte, as README and compare quote them.
    exactBytes: (x) => (finite(x) ? grouped(x) + " B" : DASH),
    rate: (x) => (finite(x) ? (Math.abs(x) < 10 ? x.toFixed(1) : grouped(x)) + "/s" : DASH),
    ms: (x) => (finite(x) ? (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : grouped(x)) + " ms" : DASH),
    time: (ms) => new Date(ms).toLocaleTimeString("en-GB"),
  };

  // a ÷ b, or null when either is missing or b is not positive.
  const ratio = (a, b) => (finite(a) && finite(b) && b > 0 ? a / b : null);
  const sum = (counts) => Object.values(counts || {}).reduce((total, n) => total + n, 0);

  function set(id, text) {
    const element = document.getElementById(id);
    if (element) element.textContent = text;
  }

  // A table body of counts by reason (or cause), with each one's rate.
  function reasons(id, counts, rateOf) {
    const body = document.getElementById(id);
    if (!body) return;
    const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    body.replaceChildren(
      ...rows.map(([reason, n]) => {
        const row = document.createElement("tr");
        for (const [text, cls] of [[reason, ""], [format.count(n), "num"], [format.rate(rateOf(reason)), "num"]]) {
          const cell = document.createElement("td");
          cell.textContent = text;
          if (cls) cell.className = cls;
          row.append(cell);
        }
        return row;
      }),
    );
    if (rows.length === 0) {
      const row = document.createElement("tr");
      const cell = document.createElement("td");
      cell.colSpan = 3;
      cell.textContent = "none";
      row.append(cell);
      body.append(row);
    }
  }

  // The charts' data: one time column and one column per line, trimmed to the last
  // HISTORY_MINUTES; a null ends a line (a gap while disconnected, at a restart).
  class History {
    constructor(charts) {
      this.charts = charts;
      this.times = [];
      this.columns = charts.map((chart) => chart.lines.map(() => []));
    }

    push(seconds, valuesOf) {
      this.times.push(seconds);
      this.charts.forEach((chart, c) =>
        chart.lines.forEach((line, l) => {
          const value = valuesOf(line);
          this.columns[c][l].push(finite(value) ? value : null);
        }),
      );
      const oldest = seconds - HISTORY_MINUTES * 60;
      while (this.times.length > 0 && this.times[0] < oldest) {
        this.times.shift();
        this.columns.forEach((lines) => lines.forEach((column) => column.shift()));
      }
    }

    gap(seconds) {
      this.push(seconds, () => null);
    }

    data(c) {
      return [this.times, ...this.columns[c]];
    }
  }

  // Ticks of a chart of counts: whole numbers only.
  const INTEGER_STEPS = [1, 2, 5].flatMap((step) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((scale) => step * scale)).sort((a, b) => a - b);

  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

  function makeChart(chart) {
    const element = document.getElementById(chart.id);
    const tick = chart.axis || chart.format;
    return new uPlot(
      {
        width: Math.max(320, element.clientWidth),
        height: 200,
        title: chart.title,
        // From 0 (or below), with room above; 0 to 10 while every figure is 0 or missing.
        scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 10] } },
        series: [
          { value: (u, seconds) => (seconds == null ? DASH : format.time(seconds * 1000)) },
          ...chart.lines.map((line, l) => ({
            label: line.label,
            stroke: COLOURS[l % COLOURS.length],
            width: 2,
            spanGaps: false,
            value: (u, value) => chart.format(value),
          })),
        ],
        axes: [{}, { size: 80, values: (u, ticks) => ticks.map(tick), ...(chart.integer ? { incrs: INTEGER_STEPS } : {}) }],
      },
      [[], ...chart.lines.map(() => [])],
      element,
    );
  }

  // Starts polling. `page` gives:
  //   title(answer)       the heading and the document's title
  //   render(answer, r)   writes the figures; r.rate(f) is the change of f(answer) per
  //                       second since the previous answer of the same process (null at
  //                       first, after a restart, or if it went down)
  //   charts              [{id, title, format, axis?, integer?, lines: [{label, value(answer, r)}]}]
  function start(page) {
    const history = new History(page.charts);
    const plots = page.charts.map(makeChart);
    let previous = null;
    let identity = null;
    let disconnectedSince = null;

    window.addEventListener("resize", () =>
      plots.forEach((plot, c) =>
        plot.setSize({ width: Math.max(320, document.getElementById(page.charts[c].id).clientWidth), height: 200 }),
      ),
    );

    function status(state, text) {
      const element = document.getElementById("status");
      element.dataset.state = state;
      element.textContent = state;
      set("status-detail", text);
      document.body.classList.toggle("stale", state !== "live");
    }

    function redraw() {
      plots.forEach((plot, c) => plot.setData(history.data(c)));
    }

    async function poll() {
      const started = Date.now();
      try {
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
        let answer;
        try {
          const response = await fetch(LIVE_JSON, { cache: "no-store", signal: abort.signal });
          if (!response.ok) throw new Error("HTTP " + response.status);
          answer = await response.json();
        } finally {
          clearTimeout(timer);
        }
        const id = answer.pid + "/" + answer.started_unix_ms;
        if (identity !== null && id !== identity) {
          // Another process answers on this address: its counters start again.
          set("notice", "restarted at " + format.time(answer.started_unix_ms) + " (pid " + identity.split("/")[0] + " → " + answer.pid + ")");
          previous = null;
          history.gap(answer.time_unix_ms / 1000 - 0.001);
        }
        identity = id;
        const seconds = previous ? (answer.time_unix_ms - previous.time_unix_ms) / 1000 : 0;
        const r = {
          rate: (f) => {
            if (!previous || seconds <= 0) return null;
            const change = f(answer) - f(previous);
            return finite(change) && change >= 0 ? change / seconds : null;
          },
        };
        const title = page.title(answer);
        document.title = title;
        set("title", title);
        set("pid", String(answer.pid));
        page.render(answer, r);
        history.push(answer.time_unix_ms / 1000, (line) => line.value(answer, r));
        redraw();
        status("live", "updated " + format.time(answer.time_unix_ms) + " from " + location.host);
        disconnectedSince = null;
        previous = answer;
      } catch (error) {
        if (disconnectedSince === null) {
          disconnectedSince = Date.now();
          history.gap(disconnectedSince / 1000);
          redraw();
        }
        previous = null;
        const why = error && error.name === "AbortError" ? "no answer within " + TIMEOUT_MS / 1000 + " s" : String(error && error.message);
        status("disconnected", "since " + format.time(disconnectedSince) + " (" + why + "); trying again every second");
      }
      setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    }

    poll();
  }

  return { start, format, ratio, sum, set, reasons, finite };
})();
