// The usage page: reads the range from the address bar, fetches /aigc/usage and
// /aigc/usage/series with the login cookie, and draws the charts (uPlot) and the table.
// Every text from the server goes in through textContent, never as HTML.
(function () {
  "use strict";

  const PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
  ];
  const FIELDS = ["since", "until", "group_by", "model", "key", "front_door"];
  const root = document.body.dataset.root || "";
  const charts = [];

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // a decimal as its digits, at most 10 after the point (the table's scale), no exponent
  function decimal(value) {
    const fixed = Number(value).toFixed(10);
    return fixed.includes(".") ? fixed.replace(/0+$/, "").replace(/\.$/, "") : fixed;
  }

  function costText(cost) {
    const units = Object.keys(cost).sort();
    return units.length ? units.map((u) => decimal(cost[u]) + " " + u).join(" + ") : "0";
  }

  function ms(value) {
    return value === null || value === undefined ? "" : decimal(Math.round(value * 10) / 10);
  }

  function params() {
    const given = new URLSearchParams(window.location.search);
    const chosen = new URLSearchParams();
    for (const name of FIELDS) {
      const value = (given.get(name) || "").trim();
      if (value) chosen.set(name, value);
    }
    return chosen;
  }

  function fillForm(chosen) {
    const form = document.getElementById("range");
    for (const name of FIELDS) {
      const input = form.elements.namedItem(name);
      if (input && chosen.has(name)) input.value = chosen.get(name);
    }
    // an empty field would come back as ?model=&key=: leave them out of the address
    form.addEventListener("submit", () => {
      for (const name of FIELDS) {
        const input = form.elements.namedItem(name);
        if (input && !input.value.trim()) input.disabled = true;
      }
    });
    for (const button of document.querySelectorAll("button[data-since]")) {
      button.addEventListener("click", () => {
        form.elements.namedItem("since").value = button.dataset.since;
        form.elements.namedItem("until").value = "";
      });
    }
  }

  async function getJson(path, query) {
    const response = await fetch(root + path + (query.toString() ? "?" + query : ""), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      window.location.assign(root + "/login?next=" + encodeURIComponent("/usage" + window.location.search));
      throw new Error("signed out");
    }
    if (!response.ok || !body || body.status !== 200) {
      throw new Error((body && body.msg) || "the server answered " + response.status);
    }
    return body.data;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
  }

  // ---------------------------------------------------------------- the table ----------
  function renderTable(report) {
    const byKey = report.group_by === "key";
    const heading = { model: "model", key: "api_key", day: "day (UTC)", hour: "hour (UTC)" };
    const columns = [heading[report.group_by]];
    if (byKey) columns.push("name");
    columns.push(
      "requests", "errors", "aborted", "prompt tokens", "completion tokens",
      "total tokens", "estimated tokens", "cost", "p50 latency ms", "p50 ttft ms",
    );
    const cells = (label, name, f) => {
      const values = [label];
      if (byKey) values.push(name || "");
      values.push(
        f.requests, f.errors, f.aborted, f.prompt_tokens, f.completion_tokens,
        f.total_tokens, f.estimated_tokens, costText(f.cost), ms(f.p50_latency_ms),
        ms(f.p50_ttft_ms),
      );
      return values;
    };
    const table = document.getElementById("table");
    table.replaceChildren();
    const head = el("thead");
    const headRow = el("tr");
    for (const column of columns) headRow.appendChild(el("th", column));
    head.appendChild(headRow);
    const body = el("tbody");
    for (const row of report.rows) {
      const tr = el("tr");
      tr.dataset.group = row.group;
      for (const value of cells(row.group, row.name, row)) tr.appendChild(el("td", value));
      body.appendChild(tr);
    }
    if (!report.rows.length) {
      const tr = el("tr");
      const td = el("td", "No usage in this range.", "empty");
      td.colSpan = columns.length;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    const foot = el("tfoot");
    const total = el("tr");
    total.id = "total";
    for (const value of cells("total", "", report.total)) total.appendChild(el("td", value));
    foot.appendChild(total);
    table.append(head, body, foot);
    const filters = Object.entries(report.filters).map(([k, v]) => k + "=" + v).join(", ");
    document.getElementById("period").textContent =
      report.since + " to " + report.until + (filters ? " (" + filters + ")" : "");
  }

  // ---------------------------------------------------------------- the charts ---------
  const DAY = 86400;

  // x ticks on whole buckets, labelled in UTC: dates for days, times (and dates) for hours
  function timeAxis(bucket) {
    const iso = (ts) => new Date(ts * 1000).toISOString();
    if (bucket === "day") {
      return {
        incrs: [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 91 * DAY, 182 * DAY, 364 * DAY],
        values: (u, ticks) => ticks.map((ts) => iso(ts).slice(0, 10)),
      };
    }
    return {
      incrs: [3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, DAY],
      values: (u, ticks) =>
        ticks.map((ts) => (ts % DAY === 0 ? iso(ts).slice(5, 10) + " " : "") + iso(ts).slice(11, 16)),
    };
  }

  function chart(container, title, xs, lines, valueText, bucket) {
    const box = el("figure", null, "chart");
    box.dataset.title = title;
    container.appendChild(box);
    const options = {
      title: title,
      width: Math.max(320, container.clientWidth - 16),
      height: 260,
      padding: [12, 40, 0, 0], // room for the last date label
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [timeAxis(bucket), { size: 70, values: (u, ticks) => ticks.map(valueText) }],
      series: [{ label: "UTC" }].concat(
        lines.map((line) => ({
          label: line.label,
          stroke: line.color,
          width: 2,
          points: { show: true, size: 6, fill: line.color },
          value: (u, v) => (v === null || v === undefined ? "--" : valueText(v)),
        })),
      ),
    };
    const plot = new uPlot(options, [xs].concat(lines.map((line) => line.values)), box);
    charts.push(plot);
    return plot;
  }

  function renderCharts(series) {
    const container = document.getElementById("charts");
    container.replaceChildren();
    charts.length = 0;
    if (!series.series.length) {
      container.appendChild(el("p", "No usage to chart in this range.", "empty"));
      return;
    }
    const xs = series.buckets.map((iso) => Date.parse(iso) / 1000);
    const colors = new Map(series.series.map((one, i) => [one.model, PALETTE[i % PALETTE.length]]));
    const per = series.bucket === "hour" ? "per hour" : "per day";
    chart(
      container,
      "Tokens " + per,
      xs,
      series.series.map((one) => ({ label: one.model, color: colors.get(one.model), values: one.tokens })),
      (v) => String(Math.round(v)),
      series.bucket,
    );
    const units = [...new Set(series.series.flatMap((one) => Object.keys(one.cost)))].sort();
    for (const unit of units) {
      const lines = series.series
        .filter((one) => unit in one.cost)
        .map((one) => ({ label: one.model, color: colors.get(one.model), values: one.cost[unit] }));
      chart(container, "Cost (" + unit + ") " + per, xs, lines, decimal, series.bucket);
    }
  }

  window.addEventListener("resize", () => {
    const container = document.getElementById("charts");
    for (const plot of charts) {
      plot.setSize({ width: Math.max(320, container.clientWidth - 16), height: 260 });
    }
  });

  async function main() {
    const chosen = params();
    fillForm(chosen);
    const forSeries = new URLSearchParams(chosen);
    forSeries.delete("group_by");
    document.body.dataset.state = "loading";
    try {
      const [report, series] = await Promise.all([
        getJson("/aigc/usage", chosen),
        getJson("/aigc/usage/series", forSeries),
      ]);
      renderTable(report);
      renderCharts(series);
      document.body.dataset.state = "ready";
    } catch (error) {
      showError(error.message);
      document.body.dataset.state = "error";
    }
  }

  main();
})();
