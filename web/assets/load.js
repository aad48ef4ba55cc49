// The generator's page: which figures of /api/live go where (see live.js for the rest).
"use strict";

(() => {
  const { format, set, reasons } = Live;
  const percentile = (latency, key) => (latency ? latency[key] : null);

  Live.start({
    title: (answer) => ["wsscale load", ...answer.labels.map(([, value]) => value)].join(" · "),
    render(answer, r) {
      set("open", format.count(answer.open));
      set("connections", format.count(answer.connections));
      set("phase", answer.phase);
      set("opened", format.count(answer.opened_total));
      set("open-rate", format.rate(r.rate((a) => a.opened_total)));
      set("failed", format.count(answer.failed_total));
      set("fail-rate", format.rate(r.rate((a) => a.failed_total)));
      set("lost", format.count(answer.lost_total));
      set("reconnected", format.count(answer.reconnected_total));
      set("closed-cleanly", format.count(answer.closed_cleanly_total));
      set("messages-echoed", format.count(answer.messages_echoed_total));
      set("processes", format.count(answer.processes));
      set("push-missed", format.count(answer.push_missed_total));
      for (const id of ["rss-per-connection", "rss-per-connection-table"]) {
        set(id, format.exactBytes(answer.rss_per_connection_bytes));
      }
      for (const id of ["heap-per-connection", "heap-per-connection-table"]) {
        set(id, format.exactBytes(answer.heap_per_connection_bytes));
      }
      set("rss", format.bytes(answer.rss_bytes));
      set("rss-baseline", format.bytes(answer.rss_baseline_bytes));
      set("heap", format.bytes(answer.heap_bytes));
      set("heap-baseline", format.bytes(answer.heap_baseline_bytes));
      for (const [id, field] of [
        ["connect", "connect_ms"],
        ["upgrade", "upgrade_ms"],
        ["ping", "ping_rtt_ms"],
        ["ping-recent", "ping_rtt_recent_ms"],
        ["push", "push_delivery_ms"],
        ["reconnect", "reconnect_ms"],
      ]) {
        for (const key of ["p50", "p99", "max"]) set(id + "-" + key, format.ms(percentile(answer[field], key)));
        set(id + "-count", format.count(percentile(answer[field], "count")));
      }
      reasons("failures", answer.failures_total, (cause) => r.rate((a) => a.failures_total[cause]));
      reasons("lost-by-cause", answer.lost_by_cause_total, (cause) => r.rate((a) => a.lost_by_cause_total[cause]));
      reasons("reconnect-failures", answer.reconnect_failures_total, (cause) =>
        r.rate((a) => a.reconnect_failures_total[cause]),
      );
    },
    charts: [
      {
        id: "chart-open",
        title: "Connections open",
        format: format.count,
        integer: true,
        lines: [{ label: "open", value: (a) => a.open }],
      },
      {
        id: "chart-rates",
        title: "Opened, failed and lost per second",
        format: format.rate,
        lines: [
          { label: "opened", value: (a, r) => r.rate((x) => x.opened_total) },
          { label: "failed", value: (a, r) => r.rate((x) => x.failed_total) },
          { label: "lost", value: (a, r) => r.rate((x) => x.lost_total) },
        ],
      },
      {
        id: "chart-ping",
        title: "Ping round trip, last 10 s",
        format: format.ms,
        lines: [
          { label: "p50", value: (a) => percentile(a.ping_rtt_recent_ms, "p50") },
          { label: "p99", value: (a) => percentile(a.ping_rtt_recent_ms, "p99") },
        ],
      },
      {
        id: "chart-memory",
        title: "Generator memory per open connection",
        format: format.exactBytes,
        axis: format.bytes,
        lines: [
          { label: "RSS", value: (a) => a.rss_per_connection_bytes },
          { label: "heap", value: (a) => a.heap_per_connection_bytes },
        ],
      },
    ],
  });
})();
