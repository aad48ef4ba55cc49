// The server's page: which figures of /api/live go where (see live.js for the rest).
"use strict";

(() => {
  const { format, set, sum, reasons, finite } = Live;
  const share = (answer) => answer.kernel_per_connection || {};
  const host = (answer, field) => (answer.host ? answer.host[field] : null);
  const hostBaseline = (answer, field) => (answer.host_baseline ? answer.host_baseline[field] : null);
  // The per-connection kernel figures only mean something while connections are held.
  const held = (answer, value) => (answer.connections_active > 0 && finite(value) ? value : null);

  Live.start({
    title: (answer) => ["wsscale serve", ...answer.labels.map(([, value]) => value)].join(" · "),
    render(answer, r) {
      set("connections-active", format.count(answer.connections_active));
      set("connections-max", format.count(answer.connections_max));
      set("connections-opened", format.count(answer.connections_opened_total));
      set("connections-closed", format.count(sum(answer.connections_closed_total)));
      set("open-rate", format.rate(r.rate((a) => a.connections_opened_total)));
      set("close-rate", format.rate(r.rate((a) => sum(a.connections_closed_total))));
      set("handshakes-in-flight", format.count(answer.handshakes_in_flight));
      set("handshakes-max", format.count(answer.handshakes_max));
      set("threads", format.count(answer.threads));
      set("open-fds", format.count(answer.open_fds));
      set("tasks-alive", format.count(answer.tasks_alive));
      set("runtime-workers", format.count(answer.runtime_workers));
      set("user-plus-kernel-per-connection", format.exactBytes(answer.user_plus_kernel_per_connection_bytes));

      set("rss", format.bytes(answer.rss_bytes));
      set("rss-baseline", format.bytes(answer.rss_baseline_bytes));
      set("rss-per-connection", format.exactBytes(answer.rss_per_connection_bytes));
      set("heap", format.bytes(answer.heap_bytes));
      set("heap-baseline", format.bytes(answer.heap_baseline_bytes));
      set("heap-per-connection", format.exactBytes(answer.heap_per_connection_bytes));
      set("kernel-stack", format.bytes(host(answer, "kernel_stack_bytes")));
      set("kernel-stack-baseline", format.bytes(hostBaseline(answer, "kernel_stack_bytes")));
      set("kernel-stack-per-connection", format.exactBytes(share(answer).kernel_stack_bytes));

      set("tcp-sockets", format.count(host(answer, "tcp_sockets_inuse")));
      set("tcp-sockets-baseline", format.count(hostBaseline(answer, "tcp_sockets_inuse")));
      set("tcp-sockets-added", format.count(share(answer).tcp_sockets_added) + " added");
      for (const [id, field, perSocket] of [
        ["slab", "slab_bytes", "slab_per_socket_bytes"],
        ["slab-unreclaimable", "slab_unreclaimable_bytes", "slab_unreclaimable_per_socket_bytes"],
        ["tcp-memory", "tcp_memory_bytes", "tcp_memory_per_socket_bytes"],
      ]) {
        set(id, format.bytes(host(answer, field)));
        set(id + "-baseline", format.bytes(hostBaseline(answer, field)));
        set(id + "-per-socket", format.exactBytes(share(answer)[perSocket]));
      }

      reasons("closed", answer.connections_closed_total, (reason) => r.rate((a) => a.connections_closed_total[reason]));
      reasons("rejected", answer.connections_rejected_total, (reason) => r.rate((a) => a.connections_rejected_total[reason]));
      for (const [id, field] of [
        ["messages-received", "messages_received_total"],
        ["messages-sent", "messages_sent_total"],
        ["broadcasts", "broadcasts_total"],
        ["pushes-dropped", "pushes_dropped_total"],
      ]) {
        set(id, format.count(answer[field]));
        set(id + "-rate", format.rate(r.rate((a) => a[field])));
      }

      const limits = answer.limits;
      set("limit-max-connections", format.count(limits.max_connections));
      set("limit-bound", limits.bound);
      set("limit-fd", format.count(limits.fd_soft) + " / " + format.count(limits.fd_hard));
      set("limit-max-map-count", format.count(limits.vm_max_map_count));
      set("limit-pid-max", format.count(limits.pid_max));
      set("limit-threads-max", format.count(limits.threads_max));
      const threads = answer.labels.some(([key, value]) => key === "mode" && value === "threads");
      document.body.classList.toggle("threads-mode", threads);
    },
    charts: [
      {
        id: "chart-connections",
        title: "Connections",
        format: format.count,
        integer: true,
        lines: [
          { label: "held", value: (a) => a.connections_active },
          { label: "handshakes in flight", value: (a) => a.handshakes_in_flight },
        ],
      },
      {
        id: "chart-per-connection",
        title: "Memory per connection",
        format: format.exactBytes,
        axis: format.bytes,
        lines: [
          { label: "RSS", value: (a) => a.rss_per_connection_bytes },
          { label: "heap", value: (a) => a.heap_per_connection_bytes },
          { label: "kernel stack", value: (a) => held(a, share(a).kernel_stack_bytes) },
          { label: "socket slab", value: (a) => held(a, share(a).slab_per_socket_bytes) },
        ],
      },
      {
        id: "chart-memory",
        title: "Memory of the process",
        format: format.bytes,
        lines: [
          { label: "RSS", value: (a) => a.rss_bytes },
          { label: "heap", value: (a) => a.heap_bytes },
        ],
      },
      {
        id: "chart-rates",
        title: "Connections opened and closed per second",
        format: format.rate,
        lines: [
          { label: "opened", value: (a, r) => r.rate((x) => x.connections_opened_total) },
          { label: "closed", value: (a, r) => r.rate((x) => sum(x.connections_closed_total)) },
        ],
      },
      {
        id: "chart-threads",
        title: "OS threads and Tokio tasks",
        format: format.count,
        integer: true,
        lines: [
          { label: "OS threads", value: (a) => a.threads },
          { label: "Tokio tasks", value: (a) => a.tasks_alive },
        ],
      },
    ],
  });
})();
