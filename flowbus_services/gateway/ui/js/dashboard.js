// The dashboard: projects (a filter), flows with their latest runs, the last
// 24 hours' runs by state, late runs and the agents online.

import { h, labels, link, replace, section, stateFamily, table, when } from "./dom.js";
import { gql } from "./api.js";

// The states charted; every other one is counted under "Other".
const CHARTED = ["Scheduled", "Submitted", "Running", "Success", "Failed", "Cancelled"];
// A run still Scheduled this long after its start time is late.
const LATE_AFTER_MS = 60_000;

export async function dashboardPage({ view, who, query, navigate }) {
  document.title = "Dashboard · flowbus";
  const project = query.get("project") || "";
  const now = Date.now();
  const inProject = project ? { flow: { project_id: { _eq: project } } } : {};
  const recent = { created: { _gte: new Date(now - 86_400_000).toISOString() }, ...inProject };
  const counts = CHARTED.map((state, i) =>
    `s${i}: flow_run_aggregate(where: {_and: [$recent, {state: {_eq: "${state}"}}]}) { aggregate { count } }`).join("\n");
  const data = await gql(`query Dashboard($flows: flow_bool_exp!, $recent: flow_run_bool_exp!, $late: flow_run_bool_exp!, $online: timestamptz!) {
    project(order_by: {name: asc}) { id name }
    flow(where: $flows, order_by: {name: asc}, limit: 500) {
      id name version project { id name }
      flow_runs(order_by: {created: desc}, limit: 8) { id name state }
    }
    total: flow_run_aggregate(where: $recent) { aggregate { count } }
    ${counts}
    late: flow_run(where: $late, order_by: {scheduled_start_time: asc}, limit: 20) {
      id name scheduled_start_time labels flow { id name }
    }
    agent(where: {last_queried: {_gte: $online}}, order_by: {name: asc}) { id name type labels last_queried }
  }`, {
    flows: { archived: { _eq: false }, ...(project ? { project_id: { _eq: project } } : {}) },
    recent,
    late: { state: { _eq: "Scheduled" }, scheduled_start_time: { _lt: new Date(now - LATE_AFTER_MS).toISOString() }, ...inProject },
    online: new Date(now - who.agentOnlineSeconds * 1000).toISOString(),
  });

  const filter = h("select", { id: "project-filter", onchange: (e) => navigate(e.target.value ? `/?project=${e.target.value}` : "/") },
    h("option", { value: "" }, "All projects"),
    data.project.map((p) => h("option", { value: p.id, selected: p.id === project }, p.name)));

  const flowRows = data.flow.map((f) => h("tr", {},
    h("th", { scope: "row" }, link(`/flow/${f.id}`, f.name)),
    h("td", {}, f.project?.name ?? ""),
    h("td", { class: "num" }, f.version),
    h("td", {}, f.flow_runs.length
      ? h("span", { class: "run-dots" }, f.flow_runs.map((r) =>
        h("a", { href: `/flow-run/${r.id}`, class: `dot state-${stateFamily(r.state)}`, title: `${r.name}: ${r.state}`, "aria-label": `Run ${r.name}: ${r.state}` })))
      : h("span", { class: "muted" }, "no runs yet"))));

  const total = data.total.aggregate.count;
  const bars = CHARTED.map((state, i) => [state, data[`s${i}`].aggregate.count]);
  const other = total - bars.reduce((sum, [, n]) => sum + n, 0);
  if (other > 0) bars.push(["Other", other]);
  const biggest = Math.max(1, ...bars.map(([, n]) => n));
  const chart = h("ul", { class: "bars", "aria-label": `Runs created in the last 24 hours by state: ${total} in all` },
    bars.map(([state, n]) => {
      const bar = h("span", { class: `bar state-${state === "Other" ? "pending" : stateFamily(state)}` });
      bar.style.width = `${(100 * n) / biggest}%`; // CSSOM, allowed by the page's CSP
      return h("li", {}, h("span", { class: "bar-label" }, state), h("span", { class: "bar-track" }, bar), h("span", { class: "num" }, n));
    }));

  const lateRows = data.late.map((r) => h("tr", {},
    h("th", { scope: "row" }, link(`/flow-run/${r.id}`, r.name)),
    h("td", {}, r.flow ? link(`/flow/${r.flow.id}`, r.flow.name, { "aria-label": `Flow ${r.flow.name}` }) : ""),
    h("td", {}, when(r.scheduled_start_time)),
    h("td", {}, labels(r.labels))));

  const agentRows = data.agent.map((a) => h("tr", {},
    h("th", { scope: "row" }, a.name), h("td", {}, a.type), h("td", {}, labels(a.labels)), h("td", {}, when(a.last_queried))));

  replace(view,
    h("div", { class: "page-head" }, h("h1", {}, "Dashboard"),
      h("div", { class: "filter" }, h("label", { for: "project-filter" }, "Project"), filter)),
    h("div", { class: "grid" },
      section("Flows", table(["Flow", "Project", "Version", "Latest runs"], flowRows)),
      section("Runs in the last 24 hours", chart),
      section("Late runs", h("p", { class: "muted small" }, "Still Scheduled a minute or more after their start time."),
        table(["Run", "Flow", "Scheduled start", "Labels"], lateRows)),
      section("Agents online", table(["Agent", "Type", "Labels", "Last seen"], agentRows),
        h("p", {}, link("/agents", "All agents")))));
}
