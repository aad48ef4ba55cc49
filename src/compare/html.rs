//! index.html: the report as one self-contained page — the same tables as report.md, the
//! commands, the machine, the sizing and the charts inline as SVG — with its style in the
//! page and no script, so it opens from disk, offline, anywhere. Everything that comes
//! from outside wsscale (server commands and names, the command line) is escaped.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use super::report::{self, Report};
use super::summary::KERNEL_SOCKETS_DERIVATION;
use super::table::{Align, Table};

pub const INDEX: &str = "index.html";

const STYLE: &str = "\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#1b1f24}\
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:4px}\
table{border-collapse:collapse;margin:12px 0;font-variant-numeric:tabular-nums}\
th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top}th{background:#f3f5f7}\
td.l,th.l{text-align:left}td.r,th.r{text-align:right}td.c,th.c{text-align:center}\
tbody tr:nth-child(even){background:#fafbfc}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em;background:#f3f5f7}\
pre{padding:8px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}\
figure{margin:16px 0}figcaption{font-weight:600}svg{max-width:100%;height:auto}\
nav a{margin-right:12px}.warning{background:#fff8c5;padding:6px 8px}.muted{color:#57606a}.wide{overflow-x:auto}";

/// `text` safe anywhere in HTML: in text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The report's Markdown sentences as HTML: escaped, with `**bold**` and `` `code` ``.
fn inline(markdown: &str) -> String {
    let escaped = escape(markdown);
    let mut out = String::with_capacity(escaped.len());
    let (mut bold, mut code) = (false, false);
    let mut rest = escaped.as_str();
    while let Some(c) = rest.chars().next() {
        if !code && rest.starts_with("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
            continue;
        }
        if c == '`' {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    // An unpaired marker closes at the end rather than swallowing the page.
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

fn table(out: &mut String, id: &str, table: &Table) {
    let class = |align: Align| match align {
        Align::Left => "l",
        Align::Right => "r",
        Align::Center => "c",
    };
    let _ = write!(out, "<div class=\"wide\"><table id=\"{}\"><thead><tr>", escape(id));
    for (cell, align) in table.head.iter().zip(&table.align) {
        let _ = write!(out, "<th class=\"{}\">{}</th>", class(*align), escape(cell));
    }
    out.push_str("</tr></thead><tbody>");
    for row in &table.rows {
        out.push_str("<tr>");
        for (cell, align) in row.iter().zip(&table.align) {
            let _ = write!(out, "<td class=\"{}\">{}</td>", class(*align), escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

/// A section's id from its run name: letters, digits and dashes.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The page.
pub fn page(report: &Report<'_>) -> String {
    let summaries = report.summaries;
    let plan = report.plan;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>wsscale compare: {}</title><style>{STYLE}</style></head><body>\n",
        escape(
            &summaries
                .runs
                .iter()
                .map(|run| run.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(report::TITLE));
    let _ = writeln!(
        out,
        "<nav><a href=\"#per-connection\">Per connection</a><a href=\"#sizing\">Sizing</a>\
         <a href=\"#kernel-sockets\">Kernel socket memory</a><a href=\"#conclusions\">Conclusions</a>\
         <a href=\"#charts\">Charts</a><a href=\"#samples\">Samples</a><a href=\"#setup\">Machine and commands</a></nav>"
    );

    let _ = writeln!(out, "<h2 id=\"per-connection\">Per connection</h2>");
    table(
        &mut out,
        "per-connection-table",
        &report::per_connection_table(summaries),
    );
    if let Some(ratios) = report::ratio_table(summaries) {
        table(&mut out, "ratios-table", &ratios);
    }

    let _ = writeln!(
        out,
        "<h2 id=\"sizing\">Sizing</h2><p>{}</p>",
        inline(&report::sizing_intro())
    );
    table(&mut out, "sizing-table", &report::sizing_table(summaries));
    table(&mut out, "limits-table", &report::limits_table(&report.node_limits));

    let _ = writeln!(
        out,
        "<h2 id=\"kernel-sockets\">Kernel socket memory</h2><p>How the row “kernel socket memory (slab per \
         socket)” is derived: {}</p>",
        inline(KERNEL_SOCKETS_DERIVATION)
    );
    table(
        &mut out,
        "kernel-sockets-table",
        &report::kernel_socket_table(summaries),
    );
    for warning in report::kernel_warnings(summaries) {
        let _ = writeln!(
            out,
            "<p class=\"warning\"><strong>Warning</strong>: {}</p>",
            escape(&warning)
        );
    }

    if let Some(tls) = report::tls_rows(summaries) {
        let _ = writeln!(out, "<h2 id=\"tls\">What TLS costs per idle connection</h2>");
        table(&mut out, "tls-table", &tls);
        if let Some(floor) = report::tls_floor(summaries, report.tls_session) {
            for line in floor.lines() {
                let _ = writeln!(out, "<p>{}</p>", inline(line));
            }
        }
    }
    if let Some(deflate) = report::deflate_rows(summaries) {
        let _ = writeln!(
            out,
            "<h2 id=\"deflate\">What permessage-deflate costs per idle connection</h2>"
        );
        let _ = writeln!(out, "<p>{}</p>", inline(report::DEFLATE_INTRO));
        table(&mut out, "deflate-table", &deflate);
    }
    if let Some(push) = report::push_rows(summaries) {
        let _ = writeln!(out, "<h2 id=\"push\">Server push</h2>");
        table(&mut out, "push-table", &push);
        if let Some(note) = report::push_floor_note(summaries) {
            let _ = writeln!(out, "<p>{}</p>", inline(&note));
        }
    }

    let _ = writeln!(out, "<h2 id=\"conclusions\">Conclusions</h2><ul>");
    for conclusion in report::conclusions(summaries) {
        let _ = writeln!(out, "<li>{}</li>", inline(&conclusion));
    }
    out.push_str("</ul>\n");

    let _ = writeln!(out, "<h2 id=\"charts\">Charts</h2>");
    for chart in report.charts {
        let _ = writeln!(
            out,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            escape(&chart.title),
            svg_body(&chart.svg)
        );
    }

    let _ = writeln!(out, "<h2 id=\"samples\">Samples</h2>");
    for run in &summaries.runs {
        let id = format!("samples-{}", slug(&run.spec.name));
        let _ = writeln!(out, "<h3 id=\"{}\">{}</h3>", escape(&id), escape(&run.spec.name));
        table(&mut out, &format!("{id}-table"), &report::samples_table(run));
    }

    let _ = writeln!(out, "<h2 id=\"setup\">Machine and commands</h2>");
    let _ = writeln!(out, "<p>{}</p>", escape(&report.machine.describe()));
    let _ = writeln!(
        out,
        "<p>Command:</p><pre><code id=\"command\">{}</code></pre>",
        escape(&report.command_line())
    );
    let _ = writeln!(
        out,
        "<p>Steps: {} connections; client pings every {} s; wsscale {}.</p>",
        escape(&format!("{:?}", plan.steps)),
        plan.client_ping_interval_secs,
        env!("CARGO_PKG_VERSION")
    );
    let mut servers = Table::new(["server", "command"]).with_align(1, Align::Left);
    for run in &plan.runs {
        servers.push([run.name.clone(), run.server.clone()]);
    }
    table(&mut out, "servers-table", &servers);
    out.push_str("</body></html>\n");
    out
}

/// A chart's SVG for the page: from its `<svg` on (no XML declaration inside HTML).
fn svg_body(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |at| &svg[at..])
}

/// Writes index.html into the plan's folder; returns its path.
pub fn write(report: &Report<'_>) -> anyhow::Result<PathBuf> {
    let path = report.plan.out.join(INDEX);
    std::fs::write(&path, page(report)).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_reads_as_markup() {
        assert_eq!(
            escape(r#"node "srv.js" --x='1' <a> & b"#),
            "node &quot;srv.js&quot; --x=&#39;1&#39; &lt;a&gt; &amp; b"
        );
        assert_eq!(escape("plain text, ÷ ×"), "plain text, ÷ ×");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn renders_the_report_sentences_escaped() {
        assert_eq!(
            inline("**2.0×** with `--read-buffer-size` <b>"),
            "<strong>2.0×</strong> with <code>--read-buffer-size</code> &lt;b&gt;"
        );
        assert_eq!(inline("`open"), "<code>open</code>");
    }

    #[test]
    fn writes_tables_with_their_cells_escaped() {
        let mut t = Table::new(["server", "command"]);
        t.push(["x<y", "a & \"b\""]);
        let mut out = String::new();
        table(&mut out, "t", &t);
        assert!(
            out.contains("<td class=\"l\">x&lt;y</td><td class=\"r\">a &amp; &quot;b&quot;</td>"),
            "{out}"
        );
        assert_eq!(slug("Node WS/2"), "node-ws-2");
    }
}
